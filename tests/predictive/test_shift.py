"""The W2 shift of a pruning and the W2 neuron scores against exact moments and direct Monte Carlo."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import norm
from torch import nn

from pyro_prune.models import MLP, LeNet5, bayesianize
from pyro_prune.predictive import empty_mask, neuron_w2, w2_shift
from pyro_prune.reduction.neuron_scores import _activation_after, _consumer_of


@pytest.mark.parametrize("likelihood", ["categorical", "gaussian"])
def test_w2_shift_endpoints(likelihood: str, bnn) -> None:
    net = bnn(likelihood, out=3 if likelihood == "categorical" else 1)
    x = torch.randn(10, 4)
    none = w2_shift(net, None, None, x, draws=8)
    assert none.w2 == pytest.approx(0.0, abs=1e-6) and none.kept_fraction == 1.0
    empty = w2_shift(net, None, empty_mask(net), x, draws=8)
    assert empty.normalized == pytest.approx(1.0) and empty.kept_fraction == 0.0
    half = {"fc1_gate": torch.tensor([True, False, True, False, True, False])}
    mid = w2_shift(net, None, half, x, draws=8)
    assert 0 < mid.w2 and mid.kept_fraction == 0.5
    assert mid.w2_empty == pytest.approx(empty.w2_empty)


def _relu_second_moment(m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    s = v.sqrt()
    r = (m / s).numpy()
    return (m**2 + v) * torch.from_numpy(norm.cdf(r)) + m * s * torch.from_numpy(norm.pdf(r))


@pytest.mark.parametrize("engine,draws,tol", [("fast", 4000, 0.04), ("pyro", 250, 0.15)])
def test_neuron_scores_match_the_exact_second_moment(engine: str, draws: int, tol: float, bnn) -> None:
    """One hidden layer: the pre-activation is exactly N(m, v) per input, so
    E[relu(a)^2] = (m^2 + v) Phi(m / s) + m s phi(m / s)."""
    net = bnn(hidden=(6,), seed=2)
    x = torch.randn(8, 4, dtype=torch.float32)
    layer = net.net.fc1
    with torch.no_grad():
        m = (x @ layer.weight_loc.T + layer.bias_loc).double()
        v = (x**2 @ (layer.weight_scale**2).T + layer.bias_scale**2).double()
    exact = _relu_second_moment(m, v).mean(0).float()
    scores = neuron_w2(net, None, x, draws=draws, engine=engine)
    assert set(scores) == {"fc1_gate"}
    torch.testing.assert_close(scores["fc1_gate"], exact, rtol=tol, atol=1e-3)


def test_neuron_scores_match_a_direct_monte_carlo_in_a_deep_net(bnn) -> None:
    net = bnn(hidden=(5, 4), seed=4)
    x = torch.randn(6, 4)
    scores = neuron_w2(net, None, x, draws=3000)
    # direct: draw whole weight sets from the posterior and run the network by hand
    h1, h2, _ = _direct_draws(net, x, 4000)
    for name, h in (("fc1_gate", h1), ("fc2_gate", h2)):
        torch.testing.assert_close(scores[name], (h**2).mean((0, 1)), rtol=0.15, atol=5e-3)


def _direct_draws(net: MLP, x: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` independent weight draws of a 2-hidden-layer net: activations and output weights."""
    gen = torch.Generator().manual_seed(11)

    def draw(layer):
        w = layer.weight_loc + layer.weight_scale * torch.randn(n, *layer.weight_loc.shape, generator=gen)
        b = layer.bias_loc + layer.bias_scale * torch.randn(n, *layer.bias_loc.shape, generator=gen)
        return w.detach(), b.detach()

    with torch.no_grad():
        (w1, b1), (w2, b2), (w3, _) = draw(net.net.fc1), draw(net.net.fc2), draw(net.net.out)
        h1 = torch.relu(torch.einsum("ni,doi->dno", x, w1) + b1[:, None])
        h2 = torch.relu(torch.einsum("dni,doi->dno", h1, w2) + b2[:, None])
    return h1, h2, (w2, w3)


def test_contribution_scores_match_a_direct_monte_carlo(bnn) -> None:
    net = bnn(hidden=(5, 4), seed=5)
    x = torch.randn(6, 4)
    scores = neuron_w2(net, None, x, draws=3000, score="contribution")
    h1, h2, (w2, w3) = _direct_draws(net, x, 4000)
    # the signal each neuron sends on: ||h_j w_{:, j}||^2, averaged over draws and inputs
    direct = {"fc1_gate": ((h1**2).unsqueeze(2) * (w2**2).unsqueeze(1)).sum(2).mean((0, 1)),
              "fc2_gate": ((h2**2).unsqueeze(2) * (w3**2).unsqueeze(1)).sum(2).mean((0, 1))}
    for name in direct:
        torch.testing.assert_close(scores[name], direct[name], rtol=0.15, atol=5e-3)


def test_contribution_is_activation_times_outgoing_second_moments_of_kept_rows(bnn) -> None:
    net = bnn(hidden=(5, 4), seed=8)
    net.net.fc2_gate.prune(torch.tensor([True, False, True, False]))
    x = torch.randn(6, 4)
    act = neuron_w2(net, None, x, draws=16, seed=2)
    con = neuron_w2(net, None, x, draws=16, seed=2, score="contribution")
    fc2, out = net.net.fc2, net.net.out
    with torch.no_grad():
        m2_fc2 = (fc2.weight_loc**2 + fc2.weight_scale**2) * net.net.fc2_gate.kept[:, None]
        m2_out = out.weight_loc**2 + out.weight_scale**2
    torch.testing.assert_close(con["fc1_gate"], act["fc1_gate"] * m2_fc2.sum(0))
    torch.testing.assert_close(con["fc2_gate"], act["fc2_gate"] * m2_out.sum(0))


def test_contribution_score_sees_a_noisy_unit_with_no_outgoing_weight(bnn) -> None:
    """A unit with prior-like incoming weights has a large activation; with its outgoing weights
    pinned at zero it sends nothing on: high activation score, near-zero contribution."""
    net = bnn(hidden=(4,), seed=6)
    with torch.no_grad():
        net.net.fc1.weight_loc[0].fill_(0.0)
        net.net.fc1.weight_log_scale[0].fill_(math.log(3.0))
        net.net.out.weight_loc[:, 0] = 0.0
        net.net.out.weight_log_scale[:, 0] = -9.0
    x = torch.randn(30, 4)
    act = neuron_w2(net, None, x, draws=64)["fc1_gate"]
    con = neuron_w2(net, None, x, draws=64, score="contribution")["fc1_gate"]
    assert int(act.argmax()) == 0
    assert int(con.argmin()) == 0


def test_removed_neurons_score_zero_and_conv_channels_are_scored(bnn) -> None:
    net = bnn()
    net.net.fc1_gate.prune(torch.tensor([False, True, False, False, True, False]))
    s = neuron_w2(net, None, torch.randn(5, 4), draws=4)["fc1_gate"]
    assert s[1] == 0 and s[4] == 0 and bool((s[[0, 2, 3, 5]] >= 0).all())
    torch.manual_seed(0)
    lenet = LeNet5(1, 3, 8, weights="gaussian", gate="mask").eval()
    for score in ("activation", "contribution"):
        scores = neuron_w2(lenet, None, torch.randn(3, 1, 8, 8), draws=2, score=score)
        assert {k: tuple(v.shape) for k, v in scores.items()} == {
            "conv1_gate": (6,), "conv2_gate": (16,), "fc1_gate": (120,), "fc2_gate": (84,)}
        assert all(bool((v >= 0).all()) and float(v.sum()) > 0 for v in scores.values())


class _FunctionalNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 5)
        self.b = nn.Linear(5, 3)
        self.c = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.tanh(self.b(torch.relu(self.a(x)))))


def test_activation_after_a_gate_is_found_in_sequential_and_fx_graphs(bnn) -> None:
    net = bnn()
    assert isinstance(_activation_after(net.net, "fc1_gate"), nn.ReLU)
    g = bayesianize(_FunctionalNet(), gate="mask", weights="gaussian")
    z = torch.tensor([-1.0, 0.5])
    torch.testing.assert_close(_activation_after(g.net, "a_gate")(z), torch.relu(z))
    torch.testing.assert_close(_activation_after(g.net, "b_gate")(z), torch.tanh(z))
    scores = neuron_w2(g.eval(), None, torch.randn(4, 4), draws=3)
    assert set(scores) == {"a_gate", "b_gate"}
    assert _consumer_of(g.net, "a_gate") is g.net.get_submodule("b")
    assert _consumer_of(net.net, "fc1_gate") is net.net.out
    contribution = neuron_w2(g.eval(), None, torch.randn(4, 4), draws=3, score="contribution")
    assert contribution["b_gate"].shape == (3,)
