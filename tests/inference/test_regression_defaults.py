"""Continuous pruning of a regression network on the library's defaults, on a real UCI set.

The defaults' KL weight for a Gaussian likelihood is the ELBO's (``kl_scale="auto"``): on the
UCI sets the paper's weight, the classifiers' default, raised the test RMSE by up to 53%
(``benchmarks/regression_defaults.py``). Here the default run must prune most of the network
at about the unpruned network's error, and the paper's weight must do worse on this split.
"""

from __future__ import annotations

import os

import foreign_networks as foreign
import pytest
import torch
from torch import nn

from pyro_prune import compression
from pyro_prune.convert import to_deterministic
from pyro_prune.data import load_dataset
from pyro_prune.inference import ContinuousPruning, evaluate, fit
from pyro_prune.models import MLP, bayesianize

needs_data = pytest.mark.skipif(not os.environ.get("PYRO_PRUNE_DATA"),
                                reason="set PYRO_PRUNE_DATA to the folder with the real data sets")

EPOCHS = 40  # 27 steps each at batch 32 on concrete's 927 training rows


def _fit(train, **options) -> MLP:
    torch.manual_seed(0)
    model = MLP(train.tensors[0].shape[1], [50, 50], 1, likelihood="gaussian")
    fit(model, train, epochs=EPOCHS, lr=1e-2, batch_size=32, seed=0, progress=False, **options)
    return model


@needs_data
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


@needs_data
def test_fit_on_nothing_but_the_defaults_chooses_enough_epochs_to_prune_a_small_data_set(caplog) -> None:
    """``fit(model, data, schedule=ContinuousPruning())`` and nothing else: concrete's 927 rows
    are 8 steps an epoch at the default batch 128, so the default 20 epochs (160 steps) would
    remove nothing; ``fit`` takes 101 (3x the 267 steps the noise needs) and says why."""
    train, test = load_dataset("uci/concrete", "train"), load_dataset("uci/concrete", "test")
    torch.manual_seed(0)
    model = MLP(8, [50, 50], 1, likelihood="gaussian")
    with caplog.at_level("INFO", logger="pyro_prune"):
        result = fit(model, train, seed=0, progress=False, schedule=ContinuousPruning())
    assert result.config["epochs"] == 101
    assert any(r.getMessage().startswith("epochs: 101, not 20: an epoch is 8 optimizer steps") for r in caplog.records)
    torch.manual_seed(0)
    unpruned = MLP(8, [50, 50], 1, likelihood="gaussian")
    fit(unpruned, train, epochs=101 + 10, seed=0, progress=False)
    assert compression(model) > 0.5
    assert evaluate(model, test)["rmse"] < 1.15 * evaluate(unpruned, test)["rmse"]


@needs_data
def test_a_plain_torch_regression_network_prunes_on_the_defaults() -> None:
    """A network as its author writes it (SiLU, no library layer), bayesianized with a Gaussian
    likelihood and fitted on the pair of tensors of concrete: the ELBO's weight, most of it
    removed at an error far below the target's spread (1, the targets are standardised), and
    the converted plain network predicts as the Pyro model does."""
    train, test = load_dataset("uci/concrete", "train"), load_dataset("uci/concrete", "test")
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(8, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 1))
    model = bayesianize(plain, likelihood="gaussian")
    result = fit(model, train.tensors, epochs=EPOCHS, lr=1e-2, batch_size=32, seed=0, progress=False,
                 schedule=ContinuousPruning())
    assert result.config["kl_scale"] == 1.0
    assert compression(model) > 0.5
    assert evaluate(model, test.tensors)["rmse"] < 0.45
    x = test.tensors[0][:64]
    assert torch.allclose(to_deterministic(model)(x), model.predict(x), atol=1e-5)


def test_a_hugging_face_regression_head_gets_the_elbo_weight() -> None:
    """A tiny ``ViTForImageClassification`` from its config (random weights) used as a
    regressor: ``"auto"`` is the ELBO's weight for its gates, as for the library's MLP, and a
    classifier built the same way keeps the paper's."""
    x = foreign.images(32)
    y = x.mean(dim=(1, 2, 3))[:, None].repeat(1, foreign.CLASSES)
    torch.manual_seed(0)
    regressor = bayesianize(foreign.hf_vit(), likelihood="gaussian", example_input=x[:2])
    assert fit(regressor, (x, y), epochs=1, batch_size=16, progress=False).config["kl_scale"] == 1.0
    classifier = bayesianize(foreign.hf_vit(), example_input=x[:2])
    labels = torch.arange(32) % foreign.CLASSES
    structures = sum(g.num_structures for g in classifier.gates().values())
    assert fit(classifier, (x, labels), epochs=0, progress=False).config["kl_scale"] == pytest.approx(32 / structures)
