"""DataLoader construction with reproducible, never-repeating per-worker and per-epoch randomness.

``build_loader`` returns a ``ClipLoader`` (a ``torch.utils.data.DataLoader``) with ``set_epoch(epoch)``. For
each epoch it re-seeds the shuffling order (``seed + epoch``; ``DistributedSampler.set_epoch`` under DDP),
the workers' base seed, and the dataset's ``epoch`` (our datasets seed each item from ``(seed, epoch, index)``,
see ``mfnet.data.datasets``). If a loop iterates the loader again without calling ``set_epoch``, the epoch
advances by one by itself, so clips never repeat by accident. Workers also seed ``random`` and ``numpy`` from
their own torch seed, for third-party transforms. Workers are not persistent: they are started per epoch and
receive the dataset with the current epoch.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: seeds ``random`` and ``numpy`` from the worker's torch seed (base seed + worker id)."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


class ClipLoader(DataLoader):
    """A ``DataLoader`` whose randomness follows ``(seed, epoch)``; call ``set_epoch`` before each epoch."""

    def __init__(self, dataset: Dataset, *, seed: int, epoch: int, **kwargs: Any) -> None:
        self._seed = int(seed)
        self._shuffle_generator = torch.Generator()
        self._base_generator = torch.Generator()
        sampler = kwargs.get("sampler")
        if sampler is None:
            kwargs["sampler"] = (
                RandomSampler(dataset, generator=self._shuffle_generator)
                if kwargs.pop("shuffle", False)
                else SequentialSampler(dataset)
            )
        else:
            kwargs.pop("shuffle", None)
        super().__init__(dataset, generator=self._base_generator, **kwargs)
        self._epoch = 0
        self._iterated = False
        self.set_epoch(epoch)

    @property
    def epoch(self) -> int:
        """The epoch the next iteration draws."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Chooses the epoch of the next iteration (shuffle order, random clips, augmentations)."""
        self._epoch = int(epoch)
        self._iterated = False
        self._shuffle_generator.manual_seed(self._seed + self._epoch)
        self._base_generator.manual_seed((self._seed * 1_000_003 + self._epoch) % 2**63)
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(self._epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self._epoch)

    def __iter__(self) -> Iterator[Any]:
        if self._iterated:  # iterated again without set_epoch: move to the next epoch
            self.set_epoch(self._epoch + 1)
        self._iterated = True
        return super().__iter__()


def build_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    num_workers: int = 0,
    seed: int = 0,
    epoch: int = 0,
    distributed: bool = False,
    drop_last: bool | None = None,
    pin_memory: bool = False,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> ClipLoader:
    """Builds the loader of a training or evaluation run.

    Args:
        dataset: a map-style dataset (``VideoClipDataset``, ``ImageDataset``, ...).
        batch_size: items per batch (per process under DDP).
        shuffle: random order (training) or the dataset's order (evaluation).
        num_workers: worker processes (0 loads in the calling process).
        seed: the run's seed; with ``epoch`` it fixes the order, clips and augmentations.
        epoch: the first epoch the loader draws (resuming a run passes its epoch).
        distributed: shard with ``DistributedSampler`` over the initialised process group (each rank sees
            ``len / world_size`` items, padded to equal length for evaluation without ``drop_last``).
        drop_last: drop the last incomplete batch (default: when shuffling).
        pin_memory: pin batches for faster GPU copies.
        collate_fn: custom collation (default stacks tensors and turns ints/bools into tensors).
    """
    drop_last = shuffle if drop_last is None else drop_last
    kwargs: dict[str, Any] = {
        "batch_size": batch_size,
        "num_workers": num_workers,
        "drop_last": drop_last,
        "pin_memory": pin_memory,
        "worker_init_fn": seed_worker if num_workers > 0 else None,
        "shuffle": shuffle,
    }
    if collate_fn is not None:
        kwargs["collate_fn"] = collate_fn
    if num_workers > 0:
        kwargs["prefetch_factor"] = 2
    if distributed:
        kwargs["sampler"] = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
    return ClipLoader(dataset, seed=seed, epoch=epoch, **kwargs)
