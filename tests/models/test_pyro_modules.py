"""Networks written as Pyro modules: a ``PyroModule`` that already ran, and Pyro's own priors."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.nn import PyroModule, PyroSample
from torch import nn

from pyro_prune.data import load_dataset
from pyro_prune.inference import ContinuousPruning, evaluate, fit
from pyro_prune.models import PrunableNet, bayesianize


class PyroMLP(PyroModule):
    """A network in Pyro's tutorial style: a PyroModule with PyroModule[nn.Linear] layers."""

    def __init__(self, priors: bool = False) -> None:
        super().__init__()
        self.fc1 = PyroModule[nn.Linear](64, 48)
        self.out = PyroModule[nn.Linear](48, 10)
        if priors:  # a Bayesian network as in Pyro's examples
            self.fc1.weight = PyroSample(dist.Normal(0.0, 1.0).expand([48, 64]).to_event(2))
            self.out.weight = PyroSample(dist.Normal(0.0, 1.0).expand([10, 48]).to_event(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.fc1(x.flatten(1))))


def test_a_pyro_module_that_already_ran_becomes_a_submodule() -> None:
    net = PyroMLP()
    net(torch.zeros(2, 64))  # ran on its own: Pyro marks its context used
    model = PrunableNet(net)
    assert model.net is net
    model(torch.zeros(2, 64), torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize("weights", ["point", "gaussian"])
def test_a_pyro_module_network_is_pruned(weights: str) -> None:
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    torch.manual_seed(0)
    pyro.clear_param_store()
    model = bayesianize(PyroMLP(), weights=weights)
    res = fit(model, train, epochs=8, lr=1e-2, batch_size=32, progress=False, seed=0,
              schedule=ContinuousPruning(finetune_epochs=2))
    assert res.report.removed > 0
    assert evaluate(model, test)["accuracy"] > 0.9


def test_pyro_priors_of_its_own_are_refused() -> None:
    with pytest.raises(TypeError, match=r"\['fc1', 'out'\] sample parameters from Pyro priors of their own "
                                        r"\(PyroSample\).*weights='gaussian', prior_scale=s"):
        bayesianize(PyroMLP(priors=True))
