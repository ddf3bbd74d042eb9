"""Test-set log predictive density and its paired difference (the uncertainty cost of pruning)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from pyro_prune.models import MLP, bayesianize
from pyro_prune.predictive import (
    compare_lpd,
    evaluate_predictive,
    log_predictive_density,
    posterior_predictive,
)


def _net(seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    net = MLP(5, [7, 6], 3)
    with torch.no_grad():
        for layer in net.noise_layers().values():
            layer.loc.uniform_(-1.5, -0.1)
            layer.log_scale.uniform_(-1.0, 0.0)
    return net


@pytest.mark.parametrize("engine", ["fast", "pyro"])
def test_lpd_is_the_log_of_the_average_predictive_probability(engine: str) -> None:
    net = _net()
    x = torch.randn(40, 5)
    y = torch.randint(0, 3, (40,))
    lpd = log_predictive_density(net, TensorDataset(x, y), draws=64, seed=3, engine=engine)
    # the same draws through the public predictive, averaged in probability space (numpy)
    probs = posterior_predictive(net, x, draws=64, seed=3, engine=engine, output="probs").double().numpy()
    direct = np.log(probs[:, np.arange(40), y.numpy()].mean(0))
    np.testing.assert_allclose(lpd.numpy(), direct, rtol=1e-6, atol=1e-7)  # probs are float32
    assert lpd.dtype == torch.float64 and bool((lpd < 0).all())


def test_a_point_posterior_gives_the_plain_log_likelihood() -> None:
    net = _net()
    with torch.no_grad():  # every noise posterior a (numerically) point mass
        for layer in net.noise_layers().values():
            layer.log_scale.fill_(-18.0)
    x, y = torch.randn(30, 5), torch.randint(0, 3, (30,))
    lpd = log_predictive_density(net, TensorDataset(x, y), draws=5)
    expected = torch.log_softmax(net.predict(x).double(), -1)[torch.arange(30), y]
    torch.testing.assert_close(lpd, expected, rtol=1e-5, atol=1e-5)


def test_gaussian_likelihood_known_case() -> None:
    torch.manual_seed(0)
    net = bayesianize(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)),
                      likelihood="gaussian")
    with torch.no_grad():
        for layer in net.noise_layers().values():
            layer.log_scale.fill_(-18.0)
    x, y = torch.randn(20, 3), torch.randn(20, 2)
    lpd = log_predictive_density(net, TensorDataset(x, y), draws=4)
    sigma = net.obs_scale.detach().double()
    expected = torch.distributions.Normal(net.predict(x).double(), sigma).log_prob(y.double()).sum(-1)
    torch.testing.assert_close(lpd, expected, rtol=1e-5, atol=1e-5)


def test_paired_difference_and_its_standard_error() -> None:
    net = _net(1)
    x, y = torch.randn(50, 5), torch.randint(0, 3, (50,))
    data = TensorDataset(x, y)
    full = log_predictive_density(net, data, draws=32, seed=0)
    # common random numbers: the same seed, the same draws
    assert torch.equal(full, log_predictive_density(net, data, draws=32, seed=0))
    gate = next(iter(net.gates().values()))
    gate.prune(torch.arange(gate.num_structures) < 3)
    pruned = log_predictive_density(net, data, draws=32, seed=0)
    cmp = compare_lpd(pruned, full)
    d = (pruned - full).numpy()
    assert cmp.n == 50
    assert cmp.difference == pytest.approx(d.sum())
    assert cmp.se == pytest.approx(math.sqrt(50) * d.std(ddof=1))
    assert cmp.pruned == pytest.approx(float(pruned.sum())) and cmp.full == pytest.approx(float(full.sum()))
    assert cmp.pruned_mean == pytest.approx(float(pruned.mean()))
    assert f"difference {cmp.difference:+.1f} +- {cmp.se:.1f} over 50 test points" in str(cmp)
    same = compare_lpd(full, full)
    assert same.difference == 0.0 and same.se == 0.0
    with pytest.raises(ValueError, match="same length"):
        compare_lpd(pruned, full[:10])


def test_evaluate_predictive_matches_a_hand_computation(bnn) -> None:
    net = bnn("gaussian", out=1, seed=7)
    x, y = torch.randn(12, 4), torch.randn(12, 1)
    draws = posterior_predictive(net, x, draws=20, engine="fast", seed=3).double()
    sigma = float(net.obs_scale)
    m = evaluate_predictive(net, torch.utils.data.TensorDataset(x, y), draws=20, seed=3, target_scale=2.0)
    rmse = float(((draws.mean(0) - y) ** 2).mean().sqrt()) * 2.0
    dens = torch.exp(-0.5 * (y.double() - draws) ** 2 / sigma**2) / math.sqrt(2 * math.pi * sigma**2)
    ll = float(dens.mean(0).log().mean()) - math.log(2.0)
    assert m["rmse"] == pytest.approx(rmse) and m["ll"] == pytest.approx(ll)
    cls = bnn()
    labels = torch.randint(0, 3, (12,))
    probs = posterior_predictive(cls, x, draws=20, seed=3, engine="fast").double().mean(0)
    mc = evaluate_predictive(cls, torch.utils.data.TensorDataset(x, labels), draws=20, seed=3)
    assert mc["accuracy"] == pytest.approx(float((probs.argmax(-1) == labels).double().mean()))
    assert mc["nll"] == pytest.approx(float(-probs[torch.arange(12), labels].log().mean()))
