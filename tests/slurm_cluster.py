"""A throwaway single-host SLURM cluster for the tests: munged, slurmctld and slurmd from Debian's
packages (slurmctld slurmd slurm-client munge; `make test-deps` installs them), started as root on
loopback with every file (config, keys, sockets, state, spool, logs, pids) under one temporary
directory, and stopped again afterwards. Nothing is installed and nothing outside that directory
is touched: the system's /etc/slurm, /etc/munge and /run/munge are left alone, so a real cluster
on the same machine (or another test session's) is not disturbed.

The cluster is configured like a site *without* accounting (no slurmdbd), so Snakemake's SLURM
plugin must use `squeue` for job status (see workflow/profiles/slurm/config.yaml), and like a site
that *requires* a partition: its two partitions have no Default=YES, so a job without `-p` is
rejected by sbatch.
"""

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "sinfo", "scontrol", "scancel")
PARTITIONS = ("batch", "debug")  # neither is the default: submissions must name one
START_TIMEOUT_S = 60  # a waiting limit for the daemons to come up, not an assertion on speed


def missing_reason():
    """Why this machine cannot host the test cluster, or None when it can."""
    missing = [name for name in DAEMONS if shutil.which(name) is None]
    if missing:
        return (f"SLURM not installed (missing {', '.join(missing)}): `make test-deps` installs Debian's "
                "slurmctld slurmd slurm-client munge")
    if os.geteuid() != 0:
        return "starting slurmd and munged needs root (slurmd launches jobs as their owner)"
    return None


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports nobody listens on now (the daemons bind them right after), so
    this cluster never meets the standard 6817/6818 of a real one or another test session's."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in sockets:  # all bound at once: the kernel cannot hand out the same port twice
            s.bind(("", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def node_line() -> str:
    """This host's node definition as slurmd sees it (`slurmd -C`: CPUs, sockets, cores,
    RealMemory), so the node is never drained for claiming more than it has."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    return next(line for line in out.splitlines() if line.startswith("NodeName="))


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


class SlurmCluster:
    """munged + slurmctld + slurmd in the foreground (children of this process, so stop() ends
    exactly these and nothing else). Use as a context manager, or start()/stop()."""

    def __init__(self, root: Path | None = None):
        # tempfile under /tmp rather than pytest's tmp_path: munged refuses a socket whose
        # directories are not searchable by everybody, and pytest's base directory is 0700.
        self.host = node_line().split()[0].split("=", 1)[1]  # slurmd's own short host name
        self.root = Path(root or tempfile.mkdtemp(prefix="fgbench-slurm-"))
        self.root.chmod(0o755)
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}

    # --- configuration -----------------------------------------------------------------------

    def write_config(self) -> None:
        r = self.root
        for sub in ("munge", "state", "spool", "log", "run", "bin"):
            (r / sub).mkdir(mode=0o755, exist_ok=True)
        node = node_line()
        nodes = f"{node} NodeAddr=127.0.0.1 NodeHostname={self.host} State=UNKNOWN"
        ctld_port, slurmd_port = free_ports(2)
        partitions = "\n".join(
            f"PartitionName={name} Nodes={self.host} Default=NO MaxTime=INFINITE State=UP" for name in PARTITIONS
        )
        self.conf.write_text(f"""\
# Written by tests/slurm_cluster.py: a one-node cluster on loopback, no accounting.
ClusterName=fgbenchtest
# the controller and the node are this host, reached on loopback only
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# our own munged, not the system's /run/munge socket
AuthInfo=socket={self.munge_socket}
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmdPidFile={r}/run/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroup tree needed (containers, CI machines)
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
# cons_tres: what --gpus needs on a real cluster; CR_Core_Memory: --mem is enforced per job
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# no slurmdbd: sacct fails ("accounting storage is disabled"), so the plugin must use squeue,
# which lists finished jobs only for MinJobAge seconds after they end
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=300
ReturnToService=2
SlurmdTimeout=300
InactiveLimit=0
KillWait=5
{nodes}
# no Default=YES: like the many sites where every job must name its partition
{partitions}
""")

    # --- daemons -----------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = self.root / "log" / f"{name}.out"
        self.logs[name] = log
        with open(log, "wb") as out:
            self.procs[name] = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, env=self.env())

    def env(self) -> dict:
        """The environment for SLURM clients (sbatch, squeue, Snakemake and its jobs): our
        slurm.conf, and our srun first on PATH (see write_srun_shim)."""
        path = f"{self.root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
        return {**os.environ, "SLURM_CONF": str(self.conf), "PATH": path}

    def write_srun_shim(self) -> None:
        """An `srun` that knows our slurm.conf. Inside a job, snakemake-executor-plugin-slurm-jobstep
        (0.6.1) runs the rule as `srun ... python -m snakemake ...` with every SLURM_* variable
        removed from srun's environment except a few job IDs, SLURM_CONF included. A real cluster
        keeps its config where srun looks without being told (/etc/slurm/slurm.conf, or configless
        via slurmd/DNS); this one must not touch /etc, so srun is told again here. Jobs inherit
        PATH from the submitting shell (sbatch --export=ALL)."""
        shim = self.root / "bin" / "srun"
        shim.write_text(f'#!/bin/sh\nSLURM_CONF={self.conf} exec {shutil.which("srun")} "$@"\n')
        shim.chmod(0o755)

    def _wait(self, what: str, ready) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    self._fail(f"{name} exited with status {proc.returncode} while waiting for {what}")
            if ready():
                return
            time.sleep(0.5)
        self._fail(f"timed out after {START_TIMEOUT_S} s waiting for {what}")

    def _fail(self, message: str):
        logs = dict(self.logs)
        logs.update({"slurmctld.log": self.root / "log/slurmctld.log", "slurmd.log": self.root / "log/slurmd.log"})
        details = "\n".join(f"--- {name} ({path}):\n{tail(path)}" for name, path in logs.items())
        sinfo = self.run("sinfo", "-N", "-o", "%N %P %t %E", check=False)
        raise RuntimeError(f"test SLURM cluster under {self.root}: {message}\n"
                           f"--- sinfo: {sinfo.stdout}{sinfo.stderr}\n{details}")

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this cluster."""
        proc = subprocess.run(argv, capture_output=True, text=True, env=self.env(), timeout=60)
        if check and proc.returncode:
            raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr}")
        return proc

    def node_states(self) -> set[str]:
        proc = self.run("sinfo", "--noheader", "-N", "-o", "%t", check=False)
        return set(proc.stdout.split()) if proc.returncode == 0 else set()

    def start(self) -> "SlurmCluster":
        try:
            self.write_config()
            self.write_srun_shim()
            key = self.root / "munge" / "munge.key"
            # A key of our own rather than the package's /etc/munge/munge.key: nothing else on
            # the machine can then talk to this cluster, nor this cluster to anything else.
            subprocess.run(["mungekey", "--create", "--keyfile", str(key)], check=True, capture_output=True)
            key.chmod(0o400)
            m = self.root / "munge"
            self._spawn("munged", ["munged", "--foreground", f"--socket={self.munge_socket}", f"--key-file={key}",
                                   f"--pid-file={m}/munged.pid", f"--seed-file={m}/munged.seed",
                                   f"--log-file={m}/munged.log"])
            self._wait("munged's socket", self.munge_socket.exists)
            # -D: stay in the foreground, a child of ours
            self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
            self._wait("slurmctld", lambda: self.run("scontrol", "ping", check=False).stdout.count("is UP") > 0)
            self._spawn("slurmd", ["slurmd", "-D", "-N", self.host, "-f", str(self.conf)])
            self._wait(f"node {self.host} to be idle", lambda: self.node_states() == {"idle"})
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """End our daemons (slurmd first, munged last), then remove the directory."""
        self._cancel_jobs()
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)

    def _cancel_jobs(self) -> None:
        """Jobs still running when the tests end (a failed or interrupted test) are cancelled and
        waited for before slurmd goes: their slurmstepd processes are not our children and would
        otherwise outlive the cluster."""
        if "slurmctld" not in self.procs or self.procs["slurmctld"].poll() is not None:
            return
        self.run("scancel", "--full", f"--user={os.geteuid()}", check=False)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            active = self.run("squeue", "--noheader", "--states=PENDING,RUNNING,COMPLETING,SUSPENDED",
                              "--format=%i", check=False)
            if active.returncode or not active.stdout.strip():
                return
            time.sleep(0.5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
