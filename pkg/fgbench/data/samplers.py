"""Batch samplers. ``class_random`` is RevDML's (``datasampler/class_random_sampler.py``); with
``replacement=False`` it is vMF's episodic sampler (``vmf_embeddings/datasets/utils.py``,
``EpisodicBatchSampler``)."""

import torch
from torch.utils.data import Sampler


class ClassRandomBatchSampler(Sampler):
    """Batches of ``batch_size // samples_per_class`` class draws, ``samples_per_class`` images each.

    ``replacement=True`` (RevDML): classes are drawn uniformly **with** replacement (a class may
    appear twice in a batch), images within a class uniformly with replacement.
    ``replacement=False`` (vMF's episodes): distinct classes (all of them when there are fewer),
    and distinct images within each class (all of a class smaller than ``samples_per_class``), so
    no image appears twice in a batch; batches are drawn independently of each other.
    Either way ``len(labels) // batch_size`` batches per epoch. Needs a torch ``generator`` so
    that epochs are reproducible.
    """

    def __init__(self, labels, *, batch_size: int, samples_per_class: int, generator: torch.Generator,
                 replacement: bool = True):
        if batch_size % samples_per_class:
            raise ValueError(f"batch_size {batch_size} is not a multiple of samples_per_class {samples_per_class}")
        labels = torch.as_tensor(labels)
        self.by_class = [torch.nonzero(labels == c).flatten() for c in torch.unique(labels)]
        self.draws = batch_size // samples_per_class
        self.samples_per_class = samples_per_class
        self.num_batches = max(1, len(labels) // batch_size)
        self.generator = generator
        self.replacement = replacement

    def __len__(self):
        return self.num_batches

    def __iter__(self):
        for _ in range(self.num_batches):
            yield self._with_replacement() if self.replacement else self._without_replacement()

    def _with_replacement(self):
        g, batch = self.generator, []
        for c in torch.randint(len(self.by_class), (self.draws,), generator=g).tolist():
            members = self.by_class[c]
            batch += members[torch.randint(len(members), (self.samples_per_class,), generator=g)].tolist()
        return batch

    def _without_replacement(self):
        g, batch = self.generator, []
        for c in torch.randperm(len(self.by_class), generator=g)[: self.draws].tolist():
            members = self.by_class[c]
            batch += members[torch.randperm(len(members), generator=g)[: self.samples_per_class]].tolist()
        return batch
