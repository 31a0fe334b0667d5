"""``python -m fgbench.unlock [DIR]``: lift the lock a killed Snakemake left in DIR (default: here),
unless a Snakemake process still works there. `make run` calls it first, so the documented rerun
after a kill does not stop on "Directory cannot be locked".

Snakemake itself cannot tell a stale lock from a live one; this looks at the running processes
(Linux /proc): a process whose command line runs snakemake and whose working directory is DIR
holds the lock, and then nothing is touched.
"""

import os
import subprocess
import sys
from pathlib import Path


def _runs_snakemake(argv: list) -> bool:
    """``snakemake ...`` or ``python -m snakemake ...`` (not a shell that merely mentions it)."""
    if argv and Path(argv[0]).name == "snakemake":
        return True
    return len(argv) > 2 and Path(argv[0]).name.startswith("python") and argv[1:3] == ["-m", "snakemake"] \
        or len(argv) > 1 and Path(argv[0]).name.startswith("python") and Path(argv[1]).name == "snakemake"


def snakemake_processes(directory) -> list:
    """Process ids of the Snakemake processes working in ``directory`` (its cwd), this one excluded."""
    target = Path(directory).resolve()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:  # gone, or another user's
            continue
        if _runs_snakemake(argv) and cwd == target:
            found.append(int(entry.name))
    return found


def has_lock(directory) -> bool:
    locks = Path(directory) / ".snakemake" / "locks"
    return locks.is_dir() and any(locks.iterdir())


def main(argv=None) -> int:
    directory = Path((argv or sys.argv[1:] or ["."])[0])
    if not has_lock(directory):
        return 0
    running = snakemake_processes(directory)
    if running:
        print(f"fgbench: a Snakemake process (pid {', '.join(map(str, running))}) works in {directory.resolve()}; "
              "its lock stays", file=sys.stderr)
        return 0
    print(f"fgbench: lifting the stale lock of a killed run in {directory.resolve()} (snakemake --unlock)", file=sys.stderr)
    return subprocess.run([sys.executable, "-m", "snakemake", "--unlock", "--cores", "1", "--directory", str(directory)],
                          stdout=subprocess.DEVNULL).returncode


if __name__ == "__main__":
    sys.exit(main())
