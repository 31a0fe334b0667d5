"""Atomic file writing shared by the whole package.

Every output is first written to a temporary file in the target's directory and
then moved into place with :func:`os.replace`, which is atomic on POSIX and
Windows when source and target share a file system.  A reader (or Snakemake)
therefore never sees a half-written file, and a failed writer leaves any
existing target untouched.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_text", "atomic_write_bytes"]

# mkstemp creates files with mode 0600; give results the usual umask-based mode.
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    The parent directory is created if needed.  If the ``with`` body raises, the
    temporary file is removed and ``path`` is left as it was.  The temporary name
    keeps the target's suffix so that writers which infer the format from the
    extension (e.g. ``matplotlib.savefig``) still work::

        with atomic_path("fig.png") as tmp:
            fig.savefig(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp = Path(tmp)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Atomically write ``data`` to ``path``."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Atomically write ``text`` to ``path`` (UTF-8 by default)."""
    atomic_write_bytes(path, text.encode(encoding))


def try_download(download, allowed: bool = True):
    """``(download(), None)``, or ``(None, why)`` when downloading failed or is not allowed: the
    dataset loaders name the reason in their one-line "not found" message."""
    from .errors import DataError

    if not allowed:
        return None, "download disabled"
    try:
        return download(), None
    except (OSError, DataError) as e:
        return None, str(e)
