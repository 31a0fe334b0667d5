"""Multi-process training (DDP): N gloo processes on CPU equal one process with the same global
batch; only rank 0 writes; bad world sizes stop with one message. The CUDA tests (mixed
precision, NCCL) skip on machines without a GPU.

The workers of most tests are forked from the test process with RANK, WORLD_SIZE and
MASTER_ADDR/PORT set, as torchrun sets them (starting a Python with torch for each costs
seconds); one test goes through ``fgbench train --nproc 2``, i.e. torchrun itself.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp
import yaml

from conftest import REPO, prepared_fashion
from fgbench import config as fgconfig
from fgbench.errors import ConfigError
from fgbench.train import loop, train
from fgbench.distributed import check_batch_size

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
OUTPUTS = ["config.yaml", "model.pt", "train_log.csv"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepared_fashion(tmp_path_factory.mktemp("ddp"), n_train=40, n_test=10)


def run_spec(method, setting="coarse_to_fine", epochs=2, params=None, **train):
    """SGD by default: Adam divides each step by sqrt(v), so a parameter whose gradient is zero
    in exact arithmetic (the bias of a layer that feeds a BatchNorm) moves by +-lr on rounding
    noise, differently in every run (up to 8e-3 here after 2 epochs); with SGD a gradient of
    rounding size makes a step of rounding size. The losses agree to 1e-6 with Adam too."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["train"].update(epochs=epochs, device="cpu", batch_size=32, optimizer="sgd", lr=0.05)
    cfg["methods"][method]["train"] = {**cfg["methods"][method].get("train", {}), **train}
    cfg["methods"][method]["params"] = {**cfg["methods"][method].get("params", {}), **(params or {})}
    return fgconfig.train_spec(fgconfig.validate(cfg), "fashion_mnist", setting, method, 0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, spec, data, out, record):
    """One rank, as torchrun starts it; writes ``record/writes-<rank>.json`` (every file it
    renamed into place) and ``record/state-<rank>.pt`` (its method's state after training)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    writes, replace = [], os.replace

    def recording_replace(src, dst):  # every atomic writer ends with os.replace
        writes.append(os.path.basename(dst))
        return replace(src, dst)

    original_epoch = loop._train_epoch

    def epoch_then_keep_state(run, *args):
        stats = original_epoch(run, *args)
        torch.save(run.method.state_dict(), record / f"state-{rank}.pt")
        return stats

    os.replace, loop._train_epoch = recording_replace, epoch_then_keep_state  # this forked child only
    train(spec, data, out)
    (record / f"writes-{rank}.json").write_text(json.dumps(writes))


def train_ddp(spec, data, out, record, world=2):
    record.mkdir(parents=True, exist_ok=True)
    mp.start_processes(_worker, args=(world, free_port(), spec, data, out, record), nprocs=world, start_method="fork")
    return [json.loads((record / f"writes-{r}.json").read_text()) for r in range(world)]


def weights(path):
    return torch.load(path, weights_only=False)["state_dict"]


def assert_same_training(one, two, loss_columns, tol=1e-5, epochs=2):
    """Per-epoch losses within ``tol`` (relative), final weights within 10 ``tol`` relative plus
    ``tol``: the runs differ by float rounding only (sums over two halves, all-reduced statistics;
    measured on this CPU: losses 4e-8 relative, weights 1e-5)."""
    log_one, log_two = pd.read_csv(one / "train_log.csv"), pd.read_csv(two / "train_log.csv")
    assert log_one["epoch"].tolist() == log_two["epoch"].tolist() == list(range(epochs))
    for column in loss_columns:
        np.testing.assert_allclose(log_two[column], log_one[column], rtol=tol, atol=1e-7, err_msg=column)
    a, b = weights(one / "model.pt"), weights(two / "model.pt")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=10 * tol, atol=tol, msg=key)


@pytest.mark.parametrize("method, losses, tol", [
    ("supervised_coarse", ["loss", "train_accuracy"], 1e-5),  # per-sample loss; BatchNorm -> SyncBatchNorm
    ("triplet", ["loss"], 1e-5),  # in-batch triplets and miner draws on the gathered global batch
    # The E-step is gathered before Sinkhorn; its hard pseudo-labels (argmax of P^25) may flip for
    # a sample at a near-tie under rounding (here: 3e-5 relative in epoch 1). Sinkhorn on each
    # rank's half instead gives losses 3% off.
    ("scgm_g", ["loss", "subclass_loss", "superclass_loss", "cls_loss"], 1e-3),
    # its own batch sampler (nearest-neighbour batches from a gathered teacher pass), a loss over
    # all 2B crops of the global batch
    ("stml", ["loss", "rc_loss"], 1e-5),
])
def test_two_processes_train_like_one_with_the_same_global_batch(data, tmp_path, method, losses, tol):
    options = {"scgm_g": {"params": {"n_iter_estep": 1}}, "stml": {"setting": "open_set", "batch_size": 40}}
    spec = run_spec(method, **options.get(method, {}))
    train(spec, data, tmp_path / "one")
    writes = train_ddp(spec, data, tmp_path / "two", tmp_path / "record")
    assert_same_training(tmp_path / "one", tmp_path / "two", losses, tol)
    assert writes[1] == [], "rank 1 wrote files"
    assert sorted(set(writes[0])) == ["checkpoint.pt", *OUTPUTS]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == OUTPUTS
    # the ranks trained the same model: DDP kept their parameters equal
    states = [torch.load(tmp_path / "record" / f"state-{r}.pt") for r in range(2)]
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key


def test_bn_groups_in_one_process_train_like_per_rank_batchnorm(data, tmp_path):
    """train.bn_group_size 16 with a batch of 32: one process normalising two groups of 16 trains
    like two processes of 16 images each with per-rank (not synchronised) BatchNorm, the releases'
    per-GPU BatchNorm. The losses agree; running statistics differ by design (rank 0 keeps its
    own, as a DataParallel release keeps GPU 0's), so weights are not compared."""
    spec = run_spec("supervised_coarse", bn_group_size=16)
    train(spec, data, tmp_path / "one")
    train_ddp(spec, data, tmp_path / "two", tmp_path / "record")
    log_one, log_two = pd.read_csv(tmp_path / "one" / "train_log.csv"), pd.read_csv(tmp_path / "two" / "train_log.csv")
    for column in ("loss", "train_accuracy"):
        np.testing.assert_allclose(log_two[column], log_one[column], rtol=1e-5, atol=1e-7, err_msg=column)
    plain = run_spec("supervised_coarse")  # whole-batch statistics: a different run
    train(plain, data, tmp_path / "plain")
    assert not np.allclose(pd.read_csv(tmp_path / "plain" / "train_log.csv")["loss"], log_one["loss"], rtol=1e-4)


def test_momentum_methods_keep_per_rank_batchnorm_and_share_their_queues(data, tmp_path):
    """MoCo under DDP: per-rank BatchNorm with shuffle-BN, so the runs differ from one process
    by design; the queue gets the keys of all ranks, so every rank holds the same queue without
    DDP broadcasting buffers."""
    queue_size, epochs = 96, 1
    spec = run_spec("moco", epochs=epochs, params={"queue_size": queue_size})
    train_ddp(spec, data, tmp_path / "two", tmp_path / "record")
    states = [torch.load(tmp_path / "record" / f"state-{r}.pt") for r in range(2)]
    splits = loop.load_prepared(data).splits
    steps = (len(splits["train"]) + len(splits["val"])) // 32  # label-free: trains on train + val
    assert int(states[0]["queue.ptr"]) == steps * 32 % queue_size  # every global batch entered the queue
    differing = [key for key in states[0] if not torch.equal(states[0][key], states[1][key])]
    # only the BatchNorm statistics of each rank's own half batch differ (query and key encoder)
    assert differing and all(key.endswith(("running_mean", "running_var")) for key in differing), differing
    assert any(key.startswith("backbone.") for key in differing)


def children(pid: int) -> list:
    """Live child processes of ``pid`` (from /proc; zombies count as dead)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads process parents from /proc")
def test_fgbench_train_nproc_runs_under_torchrun_and_resumes_after_sigkill(data, tmp_path):
    """``fgbench train --nproc 2`` is torchrun's agent for two workers. Killed with SIGKILL after
    its first checkpoint, it takes its workers with it; started again, every rank resumes from the
    checkpoint and the run ends as one process would end it."""
    spec = run_spec("triplet", epochs=4)
    train(spec, data, tmp_path / "one")
    out = tmp_path / "two"
    command = [sys.executable, "-m", "fgbench.cli", "train", "--spec", json.dumps(spec), "--data", str(data),
               "--out-dir", str(out), "--nproc", "2"]
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while not (out / "checkpoint.pt").exists() and launcher.poll() is None:
        time.sleep(0.005)
    workers = children(launcher.pid)
    launcher.send_signal(signal.SIGKILL)
    output = launcher.communicate()[0]
    assert "distributed: 2 processes (gloo), 16 samples each of every global batch of 32" in output
    assert not (out / "model.pt").exists(), "the run finished before it could be killed"
    assert len(workers) == 2
    for _ in range(600):  # up to a minute: a limit against hanging, not a measurement
        if not any(alive(w) for w in workers):
            break
        time.sleep(0.1)
    assert not any(alive(w) for w in workers), "workers outlived their launcher"

    killed_after = torch.load(out / "checkpoint.pt", weights_only=False)["epoch"]
    resumed = subprocess.run(command, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.count(f"resuming from {out / 'checkpoint.pt'} after epoch {killed_after}") == 1  # rank 0 says it
    assert sorted(p.name for p in out.iterdir()) == OUTPUTS
    assert_same_training(tmp_path / "one", out, ["loss"], epochs=4)


def test_batch_size_not_divisible_by_the_world_size(data, tmp_path):
    spec = run_spec("triplet")
    proc = subprocess.run([sys.executable, "-m", "fgbench.cli", "train", "--spec", json.dumps(spec), "--data", str(data),
                           "--out-dir", str(tmp_path / "out"), "--nproc", "3"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "fgbench: error: train.batch_size 32 is not divisible by the world size 3 (training processes): it is the "
        "global batch, split evenly across them; set train.batch_size to a multiple of 3 or change --nproc / --gpus"]
    assert list((tmp_path / "out").iterdir()) == []
    check_batch_size(32, 4)
    with pytest.raises(ConfigError, match="train.batch_size 30 is not divisible by the world size 4"):
        check_batch_size(30, 4)  # what a worker started by torchrun itself checks


def test_nproc_and_gpus_must_agree(data, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fgbench.cli", "train", "--spec", json.dumps(run_spec("triplet")),
                           "--data", str(data), "--out-dir", str(tmp_path), "--nproc", "2", "--gpus", "3"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("fgbench: error: --nproc 2 disagrees with --gpus 3")


# --- CUDA: skipped without a GPU --------------------------------------------------------------
def cuda_spec(method="supervised_coarse", **train):
    spec = run_spec(method, epochs=1, **train)
    spec["train"].update(device="cuda", precision="fp16")
    return spec


@needs_cuda
def test_mixed_precision_training_step_on_cuda(data, tmp_path, monkeypatch):
    from fgbench.methods.supervised import SupervisedCoarse

    seen, original = [], SupervisedCoarse.training_step

    def recording_step(self, batch):
        seen.append((torch.is_autocast_enabled("cuda"), batch["images"].device.type))
        return original(self, batch)

    monkeypatch.setattr(SupervisedCoarse, "training_step", recording_step)
    train(cuda_spec(), data, tmp_path)
    assert seen and all(s == (True, "cuda") for s in seen)
    log = pd.read_csv(tmp_path / "train_log.csv")
    assert np.isfinite(log["loss"]).all()
    state = weights(tmp_path / "model.pt")
    assert all(v.dtype != torch.float16 and torch.isfinite(v.float()).all() for v in state.values())


@needs_cuda
def test_nccl_ddp_with_world_size_one(data, tmp_path):
    spec = cuda_spec()
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
                           "-m", "fgbench.cli", "train", "--spec", json.dumps(spec), "--data", str(data),
                           "--out-dir", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "distributed: 1 process (nccl)" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == OUTPUTS


@needs_cuda
def test_train_claims_one_gpu(data, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    proc = subprocess.run([sys.executable, "-m", "fgbench.cli", "train", "--spec", json.dumps(cuda_spec()),
                           "--data", str(data), "--out-dir", str(tmp_path), "--gpus", "1"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "fgbench: claimed GPU(s) " in proc.stdout and "training supervised_coarse on cuda" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == OUTPUTS


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_two_gpus_train_like_one(data, tmp_path):
    """NCCL and SyncBatchNorm on two GPUs against one GPU; cuDNN and TF32 are not bit-exact, hence
    the looser tolerance."""
    spec = cuda_spec("triplet")
    spec["train"]["precision"] = "fp32"
    train(spec, data, tmp_path / "one")
    proc = subprocess.run([sys.executable, "-m", "fgbench.cli", "train", "--spec", json.dumps(spec), "--data", str(data),
                           "--out-dir", str(tmp_path / "two"), "--gpus", "2"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "distributed: 2 processes (nccl)" in proc.stdout
    one, two = (pd.read_csv(tmp_path / d / "train_log.csv") for d in ("one", "two"))
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-2)
