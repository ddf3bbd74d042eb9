"""Fixtures of the predictive tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from pyro_prune.models import MLP
from pyro_prune.models.bayesian import link_output_gates


def _bnn(likelihood: str = "categorical", hidden=(6,), out: int = 3, seed: int = 0,
         in_features: int = 4) -> MLP:
    torch.manual_seed(seed)
    net = MLP(in_features, list(hidden), out, likelihood=likelihood, weights="gaussian", gate="mask")
    link_output_gates(net)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "log_scale" in name and "obs" not in name:
                p.copy_(torch.empty(p.shape).uniform_(-2.5, -0.5, generator=gen))
            elif name.endswith("_loc"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.7)
    return net.eval()


@pytest.fixture
def bnn() -> Callable[..., MLP]:
    """A small Bayesian MLP with spread-out posteriors: ``bnn(likelihood, hidden, out, seed)``."""
    return _bnn
