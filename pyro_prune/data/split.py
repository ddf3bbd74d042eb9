"""Seeded, stratified validation splits of a training set."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from torch.utils.data import TensorDataset

from pyro_prune.data.types import LabeledDataset, Split

__all__ = ["split_indices", "train_val_split"]


def split_indices(
    labels: np.ndarray, fraction: float, seed: int, stratify: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (kept, held-out) indices; ``round(fraction * n)`` held out.

    Stratified: each class gives ``fraction`` of its examples, rounded by largest remainder so
    that the total is exact. Uses ``numpy.random.RandomState(seed)``, whose stream NumPy keeps
    fixed across versions, so a split never changes under an upgrade.
    """
    n = len(labels)
    n_held = math.floor(fraction * n + 0.5)
    rng = np.random.RandomState(seed)
    if not stratify:
        held = rng.permutation(n)[:n_held]
    else:
        classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        exact = fraction * counts
        quota = np.floor(exact).astype(np.int64)
        remainder = n_held - int(quota.sum())
        if remainder > 0:  # largest fractional parts first, ties by class order
            order = np.lexsort((np.arange(len(classes)), -(exact - quota)))
            quota[order[:remainder]] += 1
        held_parts = []
        for c in range(len(classes)):
            members = np.flatnonzero(inverse == c)
            held_parts.append(members[rng.permutation(members.size)[: quota[c]]])
        held = np.concatenate(held_parts)
    mask = np.zeros(n, dtype=bool)
    mask[held] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def train_val_split(
    dataset: TensorDataset,
    val_fraction: float = 0.2,
    seed: int = 0,
    stratify: bool = True,
) -> tuple[TensorDataset, TensorDataset]:
    """Split a training set into (train, val), seeded; BMRS (Wright et al., 2024) uses 80/20.

    ``round(val_fraction * N)`` examples go to ``val``. With ``stratify`` and integer class
    targets each class contributes the same fraction (exact up to rounding); regression data
    is split uniformly at random. Both parts keep the original order. A
    :class:`LabeledDataset` gives :class:`LabeledDataset` parts with the same ``info`` (the
    validation part has ``info.split == Split.VAL``); any other ``TensorDataset`` gives
    ``TensorDataset`` parts. The tensors are copied, so the input can be dropped afterwards.
    """
    if not isinstance(dataset, TensorDataset):
        raise TypeError(f"dataset must be a TensorDataset, got {type(dataset).__name__}")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)):
        raise TypeError(f"val_fraction must be a float, got {type(val_fraction).__name__}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    n = len(dataset)
    n_val = math.floor(val_fraction * n + 0.5)
    if n_val < 1 or n_val > n - 1:
        raise ValueError(
            f"val_fraction={val_fraction} of {n} examples leaves an empty train or val part"
        )
    labels = np.zeros(n, dtype=np.int64)
    classification = False
    if len(dataset.tensors) > 1:
        targets = dataset.tensors[1]
        classification = not targets.is_floating_point() and targets.dim() == 1
        if classification:
            labels = targets.detach().cpu().numpy()
    train_idx, val_idx = split_indices(labels, val_fraction, seed, stratify and classification)

    def part(idx: np.ndarray, split: Split | None) -> TensorDataset:
        index = torch.from_numpy(idx)
        tensors = [t.index_select(0, index.to(t.device)) for t in dataset.tensors]
        if isinstance(dataset, LabeledDataset):
            info = dataset.info if split is None else dataclasses.replace(dataset.info, split=split)
            return LabeledDataset(tensors[0], tensors[1], info)
        return TensorDataset(*tensors)

    return part(train_idx, None), part(val_idx, Split.VAL)
