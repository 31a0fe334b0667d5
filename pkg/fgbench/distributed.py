"""Multi-process training with DistributedDataParallel (DDP) under torchrun.

``fgbench train --nproc N`` (CPU: gloo) or ``--gpus N`` (one GPU per process: NCCL) starts
itself N times through torch.distributed.run (``launch``); a user may also start ``fgbench
train`` with torchrun directly. A worker finds RANK, WORLD_SIZE and LOCAL_RANK in its environment
and joins the group in ``process_group``. Without a process group every helper here is an
identity, so the single-process code path is the same code.

How N processes equal one process with the same global batch (``train.batch_size``):

- every rank draws the same global batches from the same seeded generator and loads and augments
  the whole batch (augmentations draw from the global RNG, which thereby stays the same on every
  rank and the same as in one process), then trains on its contiguous slice (``share``). The
  price: reading and augmenting the batch is not divided among the ranks;
- BatchNorm becomes SyncBatchNorm (``sync_batchnorm``: statistics of the global batch), except
  in the momentum-contrast methods, which keep per-rank BN and MoCo's shuffle-BN
  (``Method.shuffle_bn``), and under ``train.bn_group_size``;
- ``train.bn_group_size`` g emulates the releases' per-GPU BatchNorm in any number of processes
  (``group_batchnorm``): each process splits its batch into groups of g, each normalised by its
  own statistics, so one process with batch B equals B/g GPUs of g images; the momentum methods'
  key batch is shuffled across the groups first (``models.momentum.batch_shuffle``), as MoCo's
  shuffle-BN does across GPUs;
- a loss that couples the samples of a batch sees the global batch (``global_batch``); per-sample
  losses need nothing, DDP's gradient average is exact for them;
- passes over the whole training set (SCGM's E-step, vMF's initialisation, STML's neighbour
  pass) are split across ranks and gathered (``gather_uneven``, ``sum_over_ranks``), and what they
  decide is broadcast from rank 0 (``broadcast_from_main``).

The methods use these helpers, so this module imports nothing of fgbench but its errors.
"""

import contextlib
import ctypes
import inspect
import os
import signal
import sys
import warnings
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

from .errors import ConfigError, TrainingError

# Rank 0 validates and writes the checkpoint alone while the other ranks wait at their next
# collective; NCCL's default of 10 minutes is short for a large validation split.
TIMEOUT = timedelta(hours=2)


# --- the process group --------------------------------------------------------------------------
def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0, the only rank that validates, prints and writes files."""
    return rank() == 0


def worker_device(device: torch.device) -> torch.device:
    """Under torchrun a CUDA worker uses the GPU of its LOCAL_RANK."""
    if device.type != "cuda" or not launched_by_torchrun():
        return device
    workers, gpus = int(os.environ.get("LOCAL_WORLD_SIZE", 1)), torch.cuda.device_count()
    if workers > gpus:  # the same verdict on every rank, so rank 0 reports it for all
        raise ConfigError(f"{workers} CUDA training processes on this machine but {gpus} GPU(s) visible: train with "
                          "--gpus N (one process per GPU), or set train.device to cpu for --nproc")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    torch.cuda.set_device(device)
    return device


@contextlib.contextmanager
def process_group(device: torch.device):
    """Join torchrun's group for the duration (NCCL for CUDA, gloo for CPU) and leave it after.
    Outside torchrun, or when the caller already joined a group, nothing."""
    if not launched_by_torchrun() or active():
        yield
        return
    _exit_with_parent()
    cuda = device.type == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT, device_id=device if cuda else None)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _exit_with_parent() -> None:
    """Die with the launcher (Linux's PR_SET_PDEATHSIG): a launcher killed by SIGKILL cannot stop
    its workers, and a restarted job must not train beside the orphans of the killed one."""
    if not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def check_batch_size(batch_size: int, world: int) -> None:
    if batch_size % world:
        raise ConfigError(
            f"train.batch_size {batch_size} is not divisible by the world size {world} (training processes): "
            f"it is the global batch, split evenly across them; set train.batch_size to a multiple of {world} "
            "or change --nproc / --gpus")


def launch(nproc: int, argv: list) -> int:
    """Run ``fgbench <argv>`` in ``nproc`` processes under torch.distributed.run (torchrun
    --standalone: one machine, a free port) and return the exit status of the first failed
    worker (0 when all succeeded). This process is the workers' agent: it keeps the GPU locks of
    ``fgbench.devices`` for them, and the workers die with it."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # torchrun would set 1 and warn; a CPU run gets its share of the cores
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // nproc)))
    try:
        run(parse_args(["--standalone", "--nproc-per-node", str(nproc), "-m", "fgbench.cli", *argv]))
    except ChildFailedError as e:
        return _exit_status([failure.exitcode for _, failure in sorted(e.failures.items())])
    except SignalException as e:  # SIGTERM or SIGINT: the agent stopped its workers first
        return 128 + int(e.sigval)
    return 0


def _exit_status(codes: list) -> int:
    """The first worker's own exit status, else the shell's 128 + N for death by signal N."""
    return next((code for code in codes if code > 0), 128 - min(codes, default=-1))


# --- the model ----------------------------------------------------------------------------------
class _TrainingStep(nn.Module):
    """A method whose ``forward`` is its ``training_step``: DDP prepares the gradient all-reduce in
    ``forward``, so the step must run through it."""

    def __init__(self, method: nn.Module):
        super().__init__()
        self.method = method

    def forward(self, batch: dict):
        return self.method.training_step(batch)


def wrap(method: nn.Module, device: torch.device) -> nn.Module:
    """The module the training loop calls with a batch: DDP around the method in a process
    group, the plain method otherwise. Embedding, validation and checkpoints use ``method``
    itself (rank 0 alone must never enter a collective, which DDP's forward may).

    Buffers are not broadcast before every forward: the buffers (queues, pseudo-labels, BN
    statistics) are the same on every rank by construction (keys gathered, E-step broadcast,
    SyncBatchNorm), except the per-rank BN statistics of momentum methods, which training never
    reads; broadcasting rank 0's would copy ANCOR's per-class queues (classes x 65536 x 128
    floats) at every step."""
    step = _TrainingStep(method)
    if not active():
        return step
    options = inspect.signature(DistributedDataParallel).parameters
    no_sync = "forward_sync_buffers" if "forward_sync_buffers" in options else "broadcast_buffers"  # renamed in torch 2.15
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(step, device_ids=device_ids, **{no_sync: False})


def sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm layer with statistics over the global batch: torch's SyncBatchNorm on CUDA.
    torch's SyncBatchNorm kernels are CUDA-only, and DDP refuses it on CPU, so on CPU (gloo) each
    layer becomes a ``CpuSyncBatchNorm`` in place (same parameters and buffers)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for layer in module.modules():
        if isinstance(layer, _BatchNorm):
            layer.__class__ = CpuSyncBatchNorm  # same state; only the training forward differs
    return module


class CpuSyncBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics are those of the global batch, for CPU tensors: the
    global mean and variance come from all-reduced per-rank sums. The all-reduce keeps the autograd
    graph and its backward sums the gradients of all ranks, as torch's SyncBatchNorm backward does.
    In eval mode, or alone, it is plain BatchNorm."""

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or world_size() == 1:
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = x.new_full((1,), x.numel() / x.shape[1])
        sums = _all_reduce_with_grad(torch.cat([count, x.sum(dims)]))
        n, mean = sums[0], sums[1:] / sums[0]
        centred = x - mean.view(shape)
        var = _all_reduce_with_grad(centred.pow(2).sum(dims)) / n  # biased: normalises the batch
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            _update_running_stats(self, mean.detach(), var.detach() * n / (n - 1).clamp(min=1))
        return y


@torch.no_grad()
def _update_running_stats(layer: _BatchNorm, mean, unbiased_var) -> None:
    """BatchNorm's running-statistics step with a batch mean and unbiased variance."""
    layer.num_batches_tracked.add_(1)
    factor = layer.momentum if layer.momentum is not None else 1.0 / layer.num_batches_tracked.item()
    layer.running_mean.mul_(1 - factor).add_(mean.to(layer.running_mean.dtype), alpha=factor)
    layer.running_var.mul_(1 - factor).add_(unbiased_var.to(layer.running_var.dtype), alpha=factor)


def group_batchnorm(module: nn.Module, group_size: int) -> nn.Module:
    """Every BatchNorm layer of ``module`` becomes a ``GroupBatchNorm`` of ``group_size`` in place
    (same parameters and buffers, so checkpoints and model.pt are unchanged)."""
    for layer in module.modules():
        if isinstance(layer, _BatchNorm):
            layer.__class__ = GroupBatchNorm
            layer.group_size = group_size
    return module


def splits_batch(module: nn.Module, batch: int) -> bool:
    """Whether a training batch of ``batch`` images is split into BatchNorm groups in ``module``."""
    return any(isinstance(m, GroupBatchNorm) and m.training and batch > m.group_size for m in module.modules())


class GroupBatchNorm(_BatchNorm):
    """BatchNorm over groups of ``group_size`` consecutive samples, as if each group were one GPU's
    batch (MoCo's single-GPU ``SplitBatchNorm``; its groups are strided, these contiguous, like
    the rank slices of ``share``). A batch of B > g samples is cut into ceil(B / g) groups of
    near-equal size (exactly g when g divides B); each is normalised with its own statistics; the
    running statistics take one step with the groups' mean of means and mean of unbiased
    variances (what averaging per-GPU running statistics gives). A batch of at most g, and eval
    mode, are plain BatchNorm."""

    group_size = 64

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.shape[0] <= self.group_size:
            return super().forward(x)
        groups = x.tensor_split(-(-x.shape[0] // self.group_size))
        y = torch.cat([F.batch_norm(g, None, None, self.weight, self.bias, True, 0.0, self.eps) for g in groups])
        if self.track_running_stats:
            dims = [0, *range(2, x.dim())]
            with torch.no_grad():
                means = torch.stack([g.float().mean(dims) for g in groups]).mean(0)
                variances = torch.stack([g.float().var(dims, unbiased=True) for g in groups]).mean(0)
            _update_running_stats(self, means, variances)
        return y


# --- batches and collectives ------------------------------------------------------------------
def _slice_bounds(n: int, world: int, r: int) -> tuple:
    base, extra = divmod(n, world)
    start = r * base + min(r, extra)
    return start, start + base + (r < extra)


def share(batch: dict, *, even: bool = True) -> dict:
    """This rank's contiguous slice of a global batch (a dict of tensors of equal length): rows
    [r B/N, (r+1) B/N). Slices in rank order concatenate back to the global batch, so a loss on
    ``global_batch`` sees the samples in the single-process order. Training batches must split
    evenly (``even``); whole-set passes may not (their last batch), and the first B mod N ranks
    then take one row more."""
    world = world_size()
    if world == 1:
        return batch
    n = len(next(iter(batch.values())))
    if even and n % world:
        raise TrainingError(f"a training batch of {n} samples does not split over {world} processes; "
                            f"set train.batch_size to a multiple of {world}")
    start, stop = _slice_bounds(n, world, rank())
    return {k: v[start:stop] for k, v in batch.items()}


def _comm(x: torch.Tensor) -> torch.Tensor:
    """``x`` on the device the backend communicates from (NCCL: this rank's GPU)."""
    if dist.get_backend() == dist.Backend.NCCL:
        return x.to(torch.device("cuda", torch.cuda.current_device()))
    return x.cpu()


def _quiet(collective, *args):
    # torch 2.15 deprecates torch.distributed.nn.functional in favour of the private
    # torch.distributed._functional_collectives; the public functions still work.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return collective(*args)


def _all_reduce_with_grad(x: torch.Tensor) -> torch.Tensor:
    from torch.distributed.nn.functional import all_reduce

    return _quiet(all_reduce, x)


def global_batch(*tensors):
    """The global batch of each tensor: the slices of all ranks (equal sizes, see ``share``)
    concatenated in rank order; the tensor itself without a process group. Tensors that need a
    gradient go through torch.distributed.nn.functional.all_gather, which keeps the graph.

    Why the gradients then equal the single-process ones: every rank computes the same loss L on
    the same global batch. The all-gather's backward sums the gradients that all ranks send to a
    slice, so rank r's slice x_r receives N dL/dx_r, and its parameter gradient is N times the part
    of dL/dtheta that flows through x_r. DDP averages over the N ranks: (1/N) sum_r N dL/dtheta|x_r
    = dL/dtheta. Parameters of the loss itself (proxies, margins) get dL/dtheta on every rank,
    which the average leaves unchanged.
    """
    if not active():
        return tensors[0] if len(tensors) == 1 else tensors
    from torch.distributed.nn.functional import all_gather

    out = [torch.cat(_quiet(all_gather, x)) if x.requires_grad else concat_all_gather(x) for x in tensors]
    return out[0] if len(out) == 1 else tuple(out)


@torch.no_grad()
def concat_all_gather(x: torch.Tensor) -> torch.Tensor:
    """``x`` of every rank concatenated along dim 0 in rank order, no gradient (MoCo's
    ``concat_all_gather``); ``x`` itself without a process group. Every rank passes the same
    shape (``gather_uneven`` for passes whose last batch may differ)."""
    if not active():
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


@torch.no_grad()
def gather_uneven(x: torch.Tensor) -> torch.Tensor:
    """``x`` (n_r, ...) of every rank concatenated in rank order, n_r may differ (whole-set
    passes); no gradient. ``x`` itself without a process group."""
    if not active():
        return x
    size = _comm(torch.tensor([len(x)]))
    sizes = [torch.empty_like(size) for _ in range(world_size())]
    dist.all_gather(sizes, size)
    sizes = [int(s) for s in sizes]
    padded = _comm(torch.zeros((max(sizes), *x.shape[1:]), dtype=x.dtype))
    padded[: len(x)] = _comm(x)
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([part[:size] for part, size in zip(parts, sizes)]).to(x.device)


@torch.no_grad()
def sum_over_ranks(x: torch.Tensor) -> torch.Tensor:
    if not active():
        return x
    total = _comm(x.clone())
    dist.all_reduce(total)
    return total.to(x.device)


def mean_over_ranks(x: torch.Tensor) -> torch.Tensor:
    return sum_over_ranks(x) / world_size()


@torch.no_grad()
def broadcast_from_main(x: torch.Tensor) -> torch.Tensor:
    """Rank 0's ``x`` on every rank: one decision for all (a GPU need not give bit-identical
    results for the same input on two devices, and an argmax can then differ)."""
    if not active():
        return x
    out = _comm(x.clone())
    dist.broadcast(out, src=0)
    return out.to(x.device)
