"""Each local job claims its own GPUs.

Snakemake's ``--resources gpu=N`` caps how many GPUs the running jobs use together but does not
say which ones: without a claim, every job would pick cuda:0. ``claim_gpus`` takes a non-blocking
exclusive ``flock`` on one lock file per visible device, in a per-user folder of this machine's
temporary directory; it keeps the locks for the life of the process (the launcher of a torchrun
group holds them for its workers) and sets CUDA_VISIBLE_DEVICES to the claimed devices, which the
process and its children then see as cuda:0, cuda:1, ... The kernel drops a lock when its holder
dies, SIGKILL included, so a killed job never leaves a device claimed.

Inside a SLURM job nothing is claimed: SLURM gave the job its devices.
"""

import fcntl
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .errors import ConfigError

LOCK_DIR = Path(tempfile.gettempdir()) / f"fgbench-gpu-locks-{os.getuid()}"
_held = []  # the open lock files of this process: closing one would free its device


def visible_gpus() -> list:
    """The devices this process may use: CUDA_VISIBLE_DEVICES' entries (indices or UUIDs) when it
    is set, else 0 .. n-1. n is counted in a child process: CUDA reads CUDA_VISIBLE_DEVICES once,
    when it initialises, and this process must still be able to set it."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [entry.strip() for entry in env.split(",") if entry.strip()]
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
                           capture_output=True, text=True)
    count = probe.stdout.split()[-1] if probe.returncode == 0 and probe.stdout.split() else "0"
    return [str(i) for i in range(int(count))]


def claim_gpus(n: int, *, visible=None, lock_dir=LOCK_DIR, poll_seconds: float = 5.0, log=print) -> list:
    """Claim ``n`` free devices among ``visible`` (default ``visible_gpus()``), waiting while
    fewer are free, and set CUDA_VISIBLE_DEVICES to them; return the claimed entries. ``n = 0``:
    nothing. In a SLURM job: no claim, the first ``n`` visible devices."""
    if n == 0:
        return []
    visible = visible_gpus() if visible is None else [str(v) for v in visible]
    if n < 0 or n > len(visible):
        shown = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
        raise ConfigError(f"--gpus {n} asks for {n} GPU(s) but {len(visible)} are visible (CUDA_VISIBLE_DEVICES={shown}); "
                          "set --gpus (the rule's resources.gpu) between 0 and the number of GPUs")
    if "SLURM_JOB_ID" in os.environ:
        return visible[:n]
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    waiting = False
    while (claimed := _try_claim(n, visible, lock_dir)) is None:
        if not waiting:
            log(f"fgbench: waiting for {n} free GPU(s) among {', '.join(visible)}: the others are claimed by "
                f"other fgbench jobs on this machine (lock files in {lock_dir})", flush=True)
            waiting = True
        time.sleep(poll_seconds)
    entries = [entry for entry, _ in claimed]
    _held.extend(lock for _, lock in claimed)
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(entries)
    log(f"fgbench: claimed GPU(s) {', '.join(entries)} (CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']})", flush=True)
    return entries


def _try_claim(n: int, visible: list, lock_dir: Path):
    """[(entry, open lock file)] for ``n`` devices, or None, holding nothing, if fewer are free:
    all or nothing, so that two jobs that each hold part of what they need cannot wait forever."""
    held = []
    for entry in visible:
        lock = open(lock_dir / f"gpu-{re.sub(r'[^A-Za-z0-9._-]', '_', entry)}.lock", "a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")  # who holds it, for a curious user
        lock.flush()
        held.append((entry, lock))
        if len(held) == n:
            return held
    for _, lock in held:
        lock.close()
    return None
