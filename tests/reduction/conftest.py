"""Fixtures of the reduction tests."""

from __future__ import annotations

import pytest
from torch.utils.data import TensorDataset

from pyro_prune.data import load_dataset


@pytest.fixture(scope="module")
def digits() -> tuple[TensorDataset, TensorDataset]:
    return load_dataset("digits", split="train"), load_dataset("digits", split="test")
