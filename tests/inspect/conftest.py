"""Fixtures of the inspect tests: one LeNet-5 and its InferenceData, shared by the modules."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from pyro_prune import inspect as pa
from pyro_prune.models import LeNet5


def _randomise_noise(net, seed: int = 0) -> None:
    """Spread the noise posteriors so that criteria disagree and dF has both signs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in net.noise_layers().values():
            n = layer.num_structures
            layer.loc.copy_(-20 * torch.rand(n, generator=g))
            layer.log_scale.copy_(-3 + 3 * torch.rand(n, generator=g))


@pytest.fixture(scope="session")
def digits_small() -> TensorDataset:
    """80 test digits."""
    from pyro_prune.data import load_dataset

    test = load_dataset("digits", "test")
    return TensorDataset(test.inputs[:80], test.targets[:80])


@pytest.fixture(scope="session")
def lenet(digits_small):
    """A LeNet-5 with spread noise posteriors and removed structures, and its InferenceData."""
    torch.manual_seed(0)
    net = LeNet5(1, 10, 8)
    _randomise_noise(net)
    net.net.fc1_gate.kept[:30] = False
    net.net.conv2_gate.kept[3] = False
    idata = pa.to_inference_data(net, data=digits_small, num_samples=40, seed=1)
    return net, idata


@pytest.fixture
def randomise_noise():
    """The function that spreads a network's noise posteriors (see ``_randomise_noise``)."""
    return _randomise_noise
