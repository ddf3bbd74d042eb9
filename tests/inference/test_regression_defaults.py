"""Continuous pruning of a regression network on the library's defaults, on a real UCI set.

The defaults' KL weight for a Gaussian likelihood is the ELBO's (``kl_scale="auto"``): on the
UCI sets the paper's weight, the classifiers' default, raised the test RMSE by up to 53%
(``benchmarks/regression_defaults.py``). Here the default run must prune most of the network
at about the unpruned network's error, and the paper's weight must do worse on this split.
"""

from __future__ import annotations

import os

import pytest
import torch

from pyro_prune import compression
from pyro_prune.data import load_dataset
from pyro_prune.inference import ContinuousPruning, evaluate, fit
from pyro_prune.models import MLP

pytestmark = pytest.mark.skipif(not os.environ.get("PYRO_PRUNE_DATA"),
                                reason="set PYRO_PRUNE_DATA to the folder with the real data sets")

EPOCHS = 40  # 27 steps each at batch 32 on concrete's 927 training rows


def _fit(train, **options) -> MLP:
    torch.manual_seed(0)
    model = MLP(train.tensors[0].shape[1], [50, 50], 1, likelihood="gaussian")
    fit(model, train, epochs=EPOCHS, lr=1e-2, batch_size=32, seed=0, progress=False, **options)
    return model


def test_the_defaults_prune_a_regression_network_at_its_unpruned_error() -> None:
    train, test = load_dataset("uci/concrete", "train"), load_dataset("uci/concrete", "test")
    unpruned = evaluate(_fit(train, kl_scale="elbo"), test)["rmse"]
    model = _fit(train, schedule=ContinuousPruning())
    pruned = evaluate(model, test)["rmse"]
    assert all(g.kl_scale == 1.0 for g in model.noise_layers().values())  # "auto" -> the ELBO's
    assert compression(model) > 0.5
    assert pruned < 1.15 * unpruned
    paper = _fit(train, kl_scale="paper", schedule=ContinuousPruning())
    assert compression(paper) > compression(model)
    assert evaluate(paper, test)["rmse"] > 1.15 * unpruned
