"""Small networks and data shared by the tests of Bayes-factor pruning."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from pyro_prune.models import CNN, FCN


def small_fcn(seed: int = 0, **kw) -> FCN:
    torch.manual_seed(seed)
    return FCN(64, 10, hidden=(32, 24, 16), **kw)


def small_cnn(seed: int = 0) -> CNN:
    torch.manual_seed(seed)
    return CNN(1, 10, 8, channels=(4, 8), hidden=(16, 16, 12))


def random_data(n: int = 64, dtype=torch.float32, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 64, generator=g, dtype=dtype)
    y = torch.randint(0, 10, (n,), generator=g)
    return TensorDataset(x, y)
