"""md5 checks of a dataset's official files, wherever they were found (``root``, Debian's
package, a download), once, at prepare time: a file of the right size and the wrong content
would otherwise train on noise. ``datasets.<name>.verify: false`` skips them for a copy the user
modified on purpose.
"""

import gzip
import hashlib
from pathlib import Path

from ..errors import DataError


def file_md5(path, decompress: bool = False) -> str:
    """md5 of a file's bytes, or with ``decompress`` of a ``.gz`` file's payload."""
    path = Path(path)
    digest = hashlib.md5()
    opener = gzip.open if decompress and path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except (OSError, EOFError) as e:  # EOFError: a truncated .gz
        raise DataError(f"cannot read {path} to check its md5 ({e}); replace it with the official file") from e
    return digest.hexdigest()


def verify(files: dict, dataset: str, cfg: dict, decompress: bool = False) -> None:
    """Stop at the first of ``files`` ({path: expected md5}) whose md5 differs, unless the
    config says ``verify: false``. With ``decompress``, a ``.gz`` file is checked by its payload
    (Debian re-compresses the official files; their contents are upstream's)."""
    if not cfg.get("verify", True):
        return
    for path, expected in files.items():
        digest = file_md5(path, decompress)
        if digest != expected:
            raise DataError(
                f"{path} has md5 {digest}, expected {expected} (the official {dataset} file): the copy is damaged "
                f"or modified; replace it with the official file, or set datasets.{dataset}.verify: false to use it as it is")
