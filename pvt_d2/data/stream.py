"""A training data stream that is a pure function of (seed, iteration), so that ``--resume`` continues exactly.

detectron2's default train loader draws indices from an infinite sampler and augmentations from each worker's RNG;
after a resume both restart from scratch, so the resumed run sees other images and other flips than the
uninterrupted one. Here, stream position ``p`` (the p-th sample of the whole run, across all processes) maps to
one dataset index through a seeded per-epoch permutation, and its augmentation RNGs are seeded from ``(seed, p)``.
Iteration ``it`` on rank ``r`` of ``W`` takes positions ``it*B + r*B/W ... it*B + (r+1)*B/W - 1`` for a global
batch ``B``. Starting at any iteration therefore yields exactly the batches an uninterrupted run would have seen,
for any number of data-loader workers.
"""
from __future__ import annotations

import random
from typing import Any, Callable, Dict, Iterator, List, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

__all__ = ["SeededBatchStream", "build_seeded_train_loader", "stream_seed"]

_MIX = 0x9E3779B97F4A7C15  # 64-bit golden ratio: spreads consecutive ints into unrelated seeds


def stream_seed(seed: int, *keys: int) -> int:
    """A 32-bit seed derived from ``seed`` and integer keys (position, iteration, rank...)."""
    h = seed & 0xFFFFFFFFFFFFFFFF
    for k in keys:
        h = ((h ^ (k & 0xFFFFFFFFFFFFFFFF)) * _MIX + 0x632BE59BD9B4E019) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFF


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class SeededBatchStream(IterableDataset):
    """Infinite per-rank batches of mapped samples, starting at a given iteration.

    Args:
        dataset: an indexable sequence of dataset dicts (e.g. detectron2's ``DatasetFromList``).
        mapper: turns one dataset dict into the model's input dict; may return None to skip a sample.
        global_batch_size: images per iteration summed over all processes (``SOLVER.IMS_PER_BATCH``).
        rank, world_size: this process and the number of processes.
        seed: the stream's seed; the same seed gives the same batches.
        start_iter: the first iteration to produce.
        shuffle: permute the dataset every epoch (else visit it in order).
    """

    def __init__(self, dataset: Sequence[Dict[str, Any]], mapper: Callable, global_batch_size: int, *,
                 rank: int = 0, world_size: int = 1, seed: int = 0, start_iter: int = 0, shuffle: bool = True):
        if len(dataset) == 0:
            raise ValueError("the training dataset is empty")
        if global_batch_size % world_size != 0:
            raise ValueError(
                f"SOLVER.IMS_PER_BATCH={global_batch_size} must be divisible by the number of processes "
                f"({world_size})"
            )
        self.dataset = dataset
        self.mapper = mapper
        self.global_batch_size = global_batch_size
        self.per_rank = global_batch_size // world_size
        self.rank = rank
        self.seed = seed
        self.start_iter = start_iter
        self.shuffle = shuffle
        self._perm_epoch = -1
        self._perm: np.ndarray = np.arange(0)

    def _index(self, position: int) -> int:
        n = len(self.dataset)
        epoch, k = divmod(position, n)
        if not self.shuffle:
            return k
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng(stream_seed(self.seed, epoch)).permutation(n)
            self._perm_epoch = epoch
        return int(self._perm[k])

    def sample(self, position: int) -> Dict[str, Any]:
        """The mapped sample at a stream position (a skipped sample is replaced deterministically)."""
        n = len(self.dataset)
        index = self._index(position)
        for attempt in range(n):
            _seed_all(stream_seed(self.seed, position, attempt))
            out = self.mapper(self.dataset[(index + attempt) % n])
            if out is not None:
                return out
        raise RuntimeError("the mapper rejected every sample of the training dataset")

    def batch(self, iteration: int) -> List[Dict[str, Any]]:
        first = iteration * self.global_batch_size + self.rank * self.per_rank
        return [self.sample(p) for p in range(first, first + self.per_rank)]

    def __iter__(self) -> Iterator[List[Dict[str, Any]]]:
        info = get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        # DataLoader reads workers round-robin, so worker w producing iterations start+w, start+w+n, ... keeps order.
        iteration = self.start_iter + worker
        while True:
            yield self.batch(iteration)
            iteration += num_workers


def _as_is(batch):
    return batch


def build_seeded_train_loader(dataset: Sequence[Dict[str, Any]], mapper: Callable, global_batch_size: int, *,
                              num_workers: int = 0, **stream_kwargs) -> DataLoader:
    """A DataLoader over a :class:`SeededBatchStream` that yields lists of mapped dicts, as detectron2 models take."""
    stream = SeededBatchStream(dataset, mapper, global_batch_size, **stream_kwargs)
    return DataLoader(stream, batch_size=None, num_workers=num_workers, collate_fn=_as_is,
                      persistent_workers=False, pin_memory=False)
