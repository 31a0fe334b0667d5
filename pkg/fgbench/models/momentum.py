"""Building blocks of momentum-contrast methods (MoCo-v2, ANCOR, SCGM-A): the key-encoder
momentum update, key queues, ANCOR's angular normalisation and MoCo's shuffle-BN helpers.

Queues are ``nn.Module`` s whose contents and write pointers are buffers, so a method's
``state_dict()`` holds them and training resumes exactly from a checkpoint.

The distributed helpers follow MoCo's official code (``moco/builder.py``): without an initialised
process group they are exact identities and draw no random numbers (shuffling the batch inside one
process does not change its BatchNorm statistics), unless BatchNorm works in groups
(``train.bn_group_size``), when the batch is shuffled across the groups.
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..distributed import active, concat_all_gather  # concat_all_gather: MoCo's name, used from here


@torch.no_grad()
def momentum_update(key: nn.Module, query: nn.Module, m: float) -> None:
    """theta_k <- m * theta_k + (1 - m) * theta_q over the **state dict** of ``key``.

    As ANCOR's ``k2q_mapping``: parameters and floating buffers (BatchNorm running statistics)
    are averaged; other buffers (``num_batches_tracked``) are copied from the query. ``key`` and
    ``query`` must have the same state-dict keys and shapes (build the key module as a copy of the
    query module, e.g. the key projector as a copy of the query projector whose last Linear is
    ANCOR's ``fc1``).
    """
    k_state, q_state = key.state_dict(), query.state_dict()
    if k_state.keys() != q_state.keys():
        missing, extra = sorted(q_state.keys() - k_state.keys()), sorted(k_state.keys() - q_state.keys())
        raise ValueError(f"key and query modules differ: only in query {missing}, only in key {extra}")
    for name, k in k_state.items():  # state_dict tensors share storage with the module's
        q = q_state[name]
        if k.is_floating_point():
            k.mul_(m).add_(q.to(k.dtype), alpha=1.0 - m)
        else:
            k.copy_(q)


def _random_unit(*shape) -> torch.Tensor:
    """Random unit vectors along the last dimension (MoCo/ANCOR initialise queues this way)."""
    return F.normalize(torch.randn(*shape), dim=-1)


def _ring_write(buffer: torch.Tensor, ptr: int, keys: torch.Tensor) -> int:
    """Write ``keys`` (n, dim) into ring ``buffer`` (size, dim) from ``ptr``, wrapping past the end;
    return the new pointer. When n > size only the last ``size`` keys survive, in the positions a
    one-by-one write would leave them."""
    n, size = keys.shape[0], buffer.shape[0]
    start = ptr
    if n > size:
        keys, start = keys[n - size :], (ptr + n - size) % size
    positions = (start + torch.arange(keys.shape[0], device=buffer.device)) % size
    buffer[positions] = keys.detach().to(buffer.dtype)
    return (ptr + n) % size


class Queue(nn.Module):
    """MoCo's single queue of keys: a ring buffer ``queue`` (size, dim), float32, initialised as
    random unit vectors, and its write pointer ``ptr`` (0-d long)."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.register_buffer("queue", _random_unit(size, dim))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Append ``keys`` (B, dim), overwriting the oldest entries (stored as float32)."""
        self.ptr.fill_(_ring_write(self.queue, int(self.ptr), keys))


class ClassQueues(nn.Module):
    """ANCOR's ``--queue multi``: one ring buffer of keys per class.

    Buffers: ``queue`` (num_classes, size, dim) float32, initialised as random unit vectors;
    ``ptr`` (num_classes,) long. Keys are stored raw (ANCOR stores un-normalised embeddings).
    """

    def __init__(self, num_classes: int, size: int, dim: int):
        super().__init__()
        self.register_buffer("queue", _random_unit(num_classes, size, dim))
        self.register_buffer("ptr", torch.zeros(num_classes, dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, labels: torch.Tensor) -> None:
        """Write each class's keys (in batch order) into that class's ring buffer."""
        for c in torch.unique(labels).tolist():
            self.ptr[c] = _ring_write(self.queue[c], int(self.ptr[c]), keys[labels == c])

    def entries(self, labels: torch.Tensor) -> torch.Tensor:
        """(B, size, dim): the queue of each sample's class. Memory B * size * dim; the training
        losses work class by class instead (see ``methods.contrastive``)."""
        return self.queue[labels]


def angular_normalise(v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """ANCOR's angular normalisation A(v) = N(N(v) - N(w)), N = L2 normalisation (last dim).

    ``w`` is the class weight: broadcastable to ``v``, or with one dimension fewer than ``v``, in
    which case it is one weight per row of ``v``'s leading dimension (w (B, D) for queue entries
    v (B, K, D), or (C, D) for per-class queues (C, K, D)).
    """
    if w.dim() == v.dim() - 1 and v.dim() >= 2:
        w = w.unsqueeze(-2)
    return F.normalize(F.normalize(v, dim=-1) - F.normalize(w, dim=-1), dim=-1)


@torch.no_grad()
def batch_shuffle(x: torch.Tensor, grouped: bool = False):
    """MoCo's shuffle-BN, step 1: gather the batch of all ranks, permute it with a permutation
    drawn on rank 0 and broadcast, and give each rank its slice. Returns ``(x_shuffled,
    idx_unshuffle)``. Without DDP: with ``grouped`` (the key encoder's BatchNorm splits the batch
    into groups, ``train.bn_group_size``) the batch is permuted in this process, so each group
    normalises a random mix of keys, as each GPU does in MoCo; otherwise ``(x, arange(B))`` and no
    random draw."""
    if not active():
        if grouped:
            idx_shuffle = torch.randperm(x.shape[0], device=x.device)
            return x[idx_shuffle], torch.argsort(idx_shuffle)
        return x, torch.arange(x.shape[0], device=x.device)
    gathered = concat_all_gather(x)
    ranks = gathered.shape[0] // x.shape[0]
    idx_shuffle = torch.randperm(gathered.shape[0], device=x.device)
    dist.broadcast(idx_shuffle, src=0)
    idx_unshuffle = torch.argsort(idx_shuffle)
    return gathered[idx_shuffle.view(ranks, -1)[dist.get_rank()]], idx_unshuffle


@torch.no_grad()
def batch_unshuffle(x: torch.Tensor, idx_unshuffle: torch.Tensor) -> torch.Tensor:
    """MoCo's shuffle-BN, step 2: gather the outputs of all ranks and give each rank back the
    rows of its own original samples; without DDP, ``x`` in its original order."""
    if not active():
        return x[idx_unshuffle]
    gathered = concat_all_gather(x)
    ranks = gathered.shape[0] // x.shape[0]
    return gathered[idx_unshuffle.view(ranks, -1)[dist.get_rank()]]
