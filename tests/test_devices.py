"""Per-job GPU claiming (fgbench.devices), without GPUs: the visible devices are injected.

Claimants are small processes (no torch) that claim, print, and hold their claim until told to
exit; the tests read their output lines and never assert on timing (the read limits only stop a
test that would otherwise hang)."""

import json
import os
import queue
import signal
import subprocess
import sys
import threading

import pytest

from fgbench import devices
from fgbench.errors import ConfigError

CLAIMANT = """
import json, os, sys
from fgbench.devices import claim_gpus
claim_gpus(int(sys.argv[1]), visible=json.loads(sys.argv[2]), lock_dir=sys.argv[3], poll_seconds=0.05)
print("holding", os.environ["CUDA_VISIBLE_DEVICES"], flush=True)
sys.stdin.readline()  # keep the claim until the test closes stdin
"""
READ_LIMIT = 120  # seconds; a guard against a hang, not a measurement


class Claimant:
    def __init__(self, n, visible, lock_dir):
        self.proc = subprocess.Popen([sys.executable, "-c", CLAIMANT, str(n), json.dumps(visible), str(lock_dir)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def next_line(self) -> str:
        line = self.lines.get(timeout=READ_LIMIT)
        assert line is not None, f"claimant exited with {self.proc.wait()} before printing"
        return line

    def holding(self) -> str:
        """The CUDA_VISIBLE_DEVICES it set, once it holds its claim (skipping other lines)."""
        while not (line := self.next_line()).startswith("holding "):
            pass
        return line.split(" ", 1)[1]

    def release(self):
        self.proc.stdin.close()
        assert self.proc.wait(timeout=READ_LIMIT) == 0

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=READ_LIMIT)


@pytest.fixture
def claimants():
    started = []

    def start(n, visible, lock_dir):
        started.append(Claimant(n, visible, lock_dir))
        return started[-1]

    yield start
    for c in started:
        if c.proc.poll() is None:
            c.kill()


@pytest.fixture
def own_locks(monkeypatch):
    """Locks claimed in the test process are released after the test."""
    held = []
    monkeypatch.setattr(devices, "_held", held)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    yield
    for lock in held:
        lock.close()


def test_concurrent_jobs_get_different_gpus_and_a_third_waits_for_one(claimants, tmp_path):
    visible = ["0", "1"]
    a, b = claimants(1, visible, tmp_path), claimants(1, visible, tmp_path)
    a_device, b_device = a.holding(), b.holding()
    assert {a_device, b_device} == {"0", "1"}

    c = claimants(1, visible, tmp_path)
    assert c.next_line() == ("fgbench: waiting for 1 free GPU(s) among 0, 1: the others are claimed by other "
                             f"fgbench jobs on this machine (lock files in {tmp_path})")
    a.kill()  # SIGKILL: the kernel drops its lock
    # the next line is the claim: it said once that it waits
    assert c.next_line() == f"fgbench: claimed GPU(s) {a_device} (CUDA_VISIBLE_DEVICES={a_device})"
    assert c.holding() == a_device
    b.release()
    c.release()


def test_a_waiting_job_holds_nothing(claimants, tmp_path):
    """All or nothing: a job waiting for two GPUs while one is taken keeps no lock on the other,
    so two jobs can never each hold half of what they wait for."""
    visible = ["0", "1"]
    a = claimants(1, visible, tmp_path)
    assert a.holding() == "0"
    pair = claimants(2, visible, tmp_path)
    assert pair.next_line().startswith("fgbench: waiting for 2 free GPU(s) among 0, 1")
    single = claimants(1, visible, tmp_path)
    assert single.holding() == "1"
    a.release()
    single.release()
    assert pair.holding() == "0,1"
    pair.release()


def test_claim_sets_cuda_visible_devices_to_the_claimed_entries(own_locks, tmp_path, capsys):
    visible = ["GPU-8f2a", "GPU-91c3", "MIG-1/2/3"]
    assert devices.claim_gpus(2, visible=visible, lock_dir=tmp_path) == ["GPU-8f2a", "GPU-91c3"]
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "GPU-8f2a,GPU-91c3"
    assert capsys.readouterr().out == "fgbench: claimed GPU(s) GPU-8f2a, GPU-91c3 (CUDA_VISIBLE_DEVICES=GPU-8f2a,GPU-91c3)\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu-GPU-8f2a.lock", "gpu-GPU-91c3.lock"]
    assert (tmp_path / "gpu-GPU-8f2a.lock").read_text() == f"{os.getpid()}\n"  # who holds it


def test_visible_devices_are_the_entries_of_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 3")
    assert devices.visible_gpus() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert devices.visible_gpus() == []


def test_zero_gpus_claims_nothing(own_locks, tmp_path):
    assert devices.claim_gpus(0, visible=["0"], lock_dir=tmp_path / "locks") == []
    assert "CUDA_VISIBLE_DEVICES" not in os.environ and not (tmp_path / "locks").exists()


def test_inside_slurm_nothing_is_claimed(own_locks, tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert devices.claim_gpus(1, visible=["0", "1"], lock_dir=tmp_path / "locks") == ["0"]
    assert "CUDA_VISIBLE_DEVICES" not in os.environ and not (tmp_path / "locks").exists()


def test_more_gpus_than_visible(own_locks, tmp_path):
    with pytest.raises(ConfigError, match=r"--gpus 3 asks for 3 GPU\(s\) but 2 are visible \(CUDA_VISIBLE_DEVICES=unset\); "
                                          r"set --gpus \(the rule's resources.gpu\) between 0 and the number of GPUs"):
        devices.claim_gpus(3, visible=["0", "1"], lock_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["train", "embed"])
def test_gpus_on_a_machine_without_them_is_one_clear_error(tmp_path, command):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU visible, on any machine
    env.pop("SLURM_JOB_ID", None)
    paths = {"train": ["--data", "d.npz", "--out-dir", str(tmp_path / "out")],
             "embed": ["--model", "m.pt", "--data", "d.npz", "--out", str(tmp_path / "out" / "e.npz")]}[command]
    proc = subprocess.run([sys.executable, "-m", "fgbench.cli", command, "--spec", json.dumps({"train": {"batch_size": 8}}),
                           *paths, "--gpus", "1"], capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "fgbench: error: --gpus 1 asks for 1 GPU(s) but 0 are visible (CUDA_VISIBLE_DEVICES=); set --gpus (the "
        "rule's resources.gpu) between 0 and the number of GPUs"]
