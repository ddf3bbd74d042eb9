"""Minibatches of any training set for :func:`~pyro_prune.inference.fit`, per rank.

:func:`batch_source` turns what the user passes as ``train`` into a :class:`BatchSource`:

* a ``TensorDataset(inputs, targets)``, or the pair of tensors ``(inputs, targets)``
  itself (:func:`~pyro_prune._checks.as_dataset` makes it one): minibatches by index slicing
  of the tensors
  (:class:`TensorBatches`; several times faster than a ``DataLoader`` collating single
  examples, and the random order is the one :func:`fit` has always drawn, so results with
  a given seed do not depend on the release);
* any other map-style ``Dataset`` (e.g. one that reads files and applies transforms or
  augmentation per example): a shuffling ``DataLoader`` (:class:`LoaderBatches`), which
  holds one batch in memory at a time;
* an ``IterableDataset`` (a stream; its length comes from ``len()`` or ``num_data``);
* a ``DataLoader`` the user configured (workers, pinned memory, collate function...): used
  as it is in one process; its ``batch_size`` is the global batch.

In a data-parallel run (:mod:`pyro_prune.inference.distributed`) each rank gets its share of
every global batch: the tensor path gives rank ``r`` the examples ``r, r + N, ...`` of the
batch that one process would draw; map-style data sets go through a
``DistributedSampler`` (seeded by ``seed``, a new order every epoch); streams give each
rank every ``N``-th example.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, TensorDataset

from pyro_prune._checks import as_dataset
from pyro_prune.inference.distributed import DistributedInfo

SINGLE_PROCESS = DistributedInfo()

__all__ = ["BatchSource", "LoaderBatches", "TensorBatches", "batch_source", "dataset_length", "pair"]


def dataset_length(data: Any) -> int | None:
    """``len`` of a data set or of a ``DataLoader``'s data set; ``None`` when it has none."""
    inner = data.dataset if isinstance(data, DataLoader) else data
    try:
        return len(inner)  # type: ignore[arg-type]
    except TypeError:
        return None


def steps_per_epoch(data: Any, batch_size: int) -> int | None:
    """The optimizer steps of an epoch over ``data`` at ``batch_size`` (a ``DataLoader``: its
    own batches); ``None`` for a stream without a length."""
    if isinstance(data, DataLoader):
        try:
            return len(data)
        except TypeError:  # an IterableDataset without a length
            return None
    examples = dataset_length(data)
    return None if examples is None else -(-examples // batch_size)


def pair(batch: Any, arg: str = "train") -> tuple[Tensor, Tensor]:
    """``(inputs, targets)`` of a collated batch, or a ``TypeError`` saying what it is."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and all(isinstance(t, Tensor) for t in batch):
        return batch[0], batch[1]
    what = type(batch).__name__ + (f" of {len(batch)}" if isinstance(batch, (tuple, list)) else "")
    raise TypeError(f"{arg} must yield (input, target) pairs of tensors, got a {what}")


class BatchSource:
    """The minibatches of one epoch on this rank.

    Attributes:
        even: every rank gets the same number of batches per epoch (the training loop can
            then skip the end-of-epoch agreement of a stream).
        batch_size: the global batch.
    """

    even: bool = True
    batch_size: int = 0

    def epoch(self, epoch: int) -> Iterator[tuple[Tensor, Tensor, int]]:
        """``(inputs, targets, global_batch)`` of this rank, batch by batch.

        ``global_batch``: the examples of this step over all ranks, of which this rank
        holds the positions ``rank::world_size`` (its inputs may be empty).
        """
        raise NotImplementedError


class TensorBatches(BatchSource):
    """Index-sliced minibatches of in-memory tensors in the order of a seeded ``randperm``.

    One process draws ``randperm(n, generator)`` each epoch and takes consecutive slices of
    ``batch_size``; rank ``r`` of ``N`` takes the examples ``r::N`` of each such slice (its
    share may be empty for a last batch smaller than ``N``: it still takes the step).
    """

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, generator: torch.Generator,
                 info: DistributedInfo | None = None) -> None:
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.generator = generator
        self.info = info if info is not None else SINGLE_PROCESS

    def epoch(self, epoch: int) -> Iterator[tuple[Tensor, Tensor, int]]:
        order = torch.randperm(len(self.x), generator=self.generator)
        rank, world = self.info.rank, self.info.world_size
        for i in range(0, len(order), self.batch_size):
            idx = order[i : i + self.batch_size]
            total = len(idx)
            if world > 1:
                idx = idx[rank::world]
            yield self.x[idx], self.y[idx], total


class _Strided(IterableDataset):
    """Every ``world``-th example of a stream, starting at ``rank``."""

    def __init__(self, data: Any, rank: int, world: int) -> None:
        self.data, self.rank, self.world = data, rank, world

    def __iter__(self) -> Iterator[Any]:
        for i, item in enumerate(self.data):
            if i % self.world == self.rank:
                yield item


class LoaderBatches(BatchSource):
    """Minibatches from a ``DataLoader`` (one holding the rank's shard in a distributed run)."""

    def __init__(self, loader: DataLoader, batch_size: int, *, even: bool, world: int = 1) -> None:
        self.loader = loader
        self.batch_size = batch_size
        self.even = even
        self.world = world

    def epoch(self, epoch: int) -> Iterator[tuple[Tensor, Tensor, int]]:
        sampler = getattr(self.loader, "sampler", None)
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        for batch in self.loader:
            x, y = pair(batch)
            yield x, y, len(x) * self.world  # equal shares (a stream's last ones may differ)


def _per_rank(batch_size: int, info: DistributedInfo, arg: str) -> int:
    if batch_size % info.world_size:
        raise ValueError(f"{arg}={batch_size} must be a multiple of the number of processes "
                         f"({info.world_size}): it is the global batch")
    return batch_size // info.world_size


def _loader_options(loader: DataLoader) -> dict[str, Any]:
    options: dict[str, Any] = {"collate_fn": loader.collate_fn, "num_workers": loader.num_workers,
                               "pin_memory": loader.pin_memory, "drop_last": loader.drop_last,
                               "worker_init_fn": loader.worker_init_fn, "timeout": loader.timeout}
    if loader.num_workers > 0:
        options["persistent_workers"] = loader.persistent_workers
        options["prefetch_factor"] = loader.prefetch_factor
    return options


def batch_source(train: Any, batch_size: int, *, generator: torch.Generator, seed: int,
                 info: DistributedInfo | None = None) -> BatchSource:
    """The :class:`BatchSource` of ``train`` (see the module docstring for what is accepted)."""
    info = info if info is not None else SINGLE_PROCESS
    train = as_dataset(train, "train")
    if isinstance(train, TensorDataset) and len(train.tensors) == 2:
        x, y = train.tensors
        return TensorBatches(x, y, batch_size, generator, info)
    if isinstance(train, DataLoader):
        if train.batch_size is None:
            raise ValueError("train: a DataLoader with batch_size=None (no batching) cannot be trained on")
        data, options, global_batch = train.dataset, _loader_options(train), int(train.batch_size)
        if not info.active:
            return LoaderBatches(train, global_batch, even=True)
        if isinstance(train.sampler, DistributedSampler):  # already sharded by the user
            return LoaderBatches(train, global_batch * info.world_size, even=True,
                                 world=info.world_size)
    else:
        data, options, global_batch = train, {}, batch_size
    local = _per_rank(global_batch, info, "batch_size") if info.active else global_batch
    if isinstance(data, IterableDataset):
        stream = _Strided(data, info.rank, info.world_size) if info.active else data
        return LoaderBatches(DataLoader(stream, batch_size=local, **options), global_batch,
                             even=not info.active, world=info.world_size)
    if info.active:
        sampler: DistributedSampler = DistributedSampler(data, num_replicas=info.world_size, rank=info.rank,
                                     shuffle=True, seed=seed, drop_last=False)
        return LoaderBatches(DataLoader(data, batch_size=local, sampler=sampler, **options),
                             global_batch, even=True, world=info.world_size)
    return LoaderBatches(DataLoader(data, batch_size=local, shuffle=True, generator=generator,
                                    **options), global_batch, even=True)


def eval_batches(data: Any, batch_size: int, arg: str = "dataset") -> Iterator[tuple[Tensor, Tensor]]:
    """Every example of ``data`` (named ``arg`` in errors) once, in order, in batches (for
    evaluation)."""
    data = as_dataset(data, arg)
    if isinstance(data, TensorDataset) and len(data.tensors) == 2:
        x, y = data.tensors
        for i in range(0, len(x), batch_size):
            yield x[i : i + batch_size], y[i : i + batch_size]
        return
    if isinstance(data, DataLoader):
        loader = data
        if isinstance(data.sampler, DistributedSampler) or not isinstance(data.dataset, IterableDataset):
            loader = DataLoader(data.dataset, batch_size=data.batch_size or batch_size, shuffle=False,
                                **{**_loader_options(data), "drop_last": False})
    else:
        loader = DataLoader(data, batch_size=batch_size, shuffle=False)
    for batch in loader:
        yield pair(batch, arg)
