from __future__ import annotations

import math

import numpy as np
import ot
import pytest
import torch
from scipy.stats import norm
from torch import nn

from pyro_prune.models import MLP, LeNet5, bayesianize
from pyro_prune.models.bayesian import link_output_gates
from pyro_prune.predictive import (
    _activation_after,
    _consumer_of,
    aggregate_w2,
    apply_mask,
    empty_mask,
    kept_mask,
    neuron_w2,
    posterior_predictive,
    w2_shift,
    wasserstein2,
    wasserstein2_1d,
    wasserstein2_gaussian,
)


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


# ---------------------------------------------------------------------------- W2 hand cases
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_w2_1d_hand_cases(dtype: torch.dtype) -> None:
    t = lambda *v: torch.tensor(v, dtype=dtype)  # noqa: E731
    assert float(wasserstein2_1d(t(0.0, 1.0), t(1.0, 2.0))) == pytest.approx(1.0)
    assert float(wasserstein2_1d(t(3.0, 0.0, 1.0), t(0.0, 0.0, 0.0))) == pytest.approx(math.sqrt(10 / 3))
    # unequal counts: the single point 0 against {0, 2}
    assert float(wasserstein2_1d(t(0.0), t(0.0, 2.0))) == pytest.approx(math.sqrt(2.0))
    # {0, 3} against {0, 1, 2}: quantile steps on (0,1/3], (1/3,1/2], (1/2,2/3], (2/3,1]
    expected = math.sqrt((1 / 3) * 0 + (1 / 6) * 1 + (1 / 6) * 4 + (1 / 3) * 1)
    assert float(wasserstein2_1d(t(0.0, 3.0), t(0.0, 1.0, 2.0))) == pytest.approx(expected)
    assert wasserstein2(t(0.0, 1.0)[:, None], t(1.0, 2.0)[:, None]).dtype == dtype


@pytest.mark.parametrize("sp,sq", [(7, 7), (5, 8), (12, 3), (1, 4)])
def test_w2_1d_matches_exact_optimal_transport(sp: int, sq: int) -> None:
    gen = torch.Generator().manual_seed(sp * 10 + sq)
    p, q = torch.randn(sp, generator=gen, dtype=torch.float64), torch.randn(sq, generator=gen, dtype=torch.float64) + 0.5
    m = (p[:, None] - q[None, :]).numpy() ** 2
    ref = math.sqrt(ot.emd2(np.full(sp, 1 / sp), np.full(sq, 1 / sq), m))
    assert float(wasserstein2_1d(p, q)) == pytest.approx(ref, rel=1e-9)
    assert float(wasserstein2(p[:, None], q[:, None])) == pytest.approx(ref, rel=1e-9)


def test_w2_multivariate_translation_permutation_and_batch_broadcast() -> None:
    gen = torch.Generator().manual_seed(0)
    p = torch.randn(20, 3, 4, generator=gen, dtype=torch.float64)  # [draws, batch=3, event=4]
    shift = torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.float64)
    q = p[torch.randperm(20, generator=gen)] + shift
    w = wasserstein2(p, q)
    assert w.shape == (3,)
    torch.testing.assert_close(w, torch.full((3,), float(shift.norm()), dtype=torch.float64))
    # batch dims broadcast: one reference distribution against three
    w_b = wasserstein2(p[:, :1], q)
    assert w_b.shape == (3,)
    assert float(w_b[0]) == pytest.approx(float(shift.norm()))
    # identical samples: zero
    assert float(wasserstein2(p, p).abs().max()) < 1e-6


@pytest.mark.parametrize("d", [2, 3])
def test_w2_of_empirical_gaussians_equals_the_closed_form(d: int) -> None:
    """Whitened samples X = m1 + C1^(1/2) Z have exactly the moments (m1, C1); their image under
    the Gaussian optimal map T is cyclically monotone, so the empirical W2 equals the closed form."""
    gen = torch.Generator().manual_seed(d)
    s = 60
    z = torch.randn(s, d, generator=gen, dtype=torch.float64)
    z = z - z.mean(0)
    chol = torch.linalg.cholesky(z.T @ z / s)
    z = z @ torch.linalg.inv(chol).T  # empirical mean 0, covariance I
    a1, a2 = torch.randn(d, d, generator=gen, dtype=torch.float64), torch.randn(d, d, generator=gen, dtype=torch.float64)
    c1, c2 = a1 @ a1.T + 0.1 * torch.eye(d), a2 @ a2.T + 0.1 * torch.eye(d)
    m1, m2 = torch.randn(d, generator=gen, dtype=torch.float64), torch.randn(d, generator=gen, dtype=torch.float64)
    evals, evecs = torch.linalg.eigh(c1)
    c1_half = evecs @ torch.diag(evals.sqrt()) @ evecs.T
    c1_inv_half = evecs @ torch.diag(evals.rsqrt()) @ evecs.T
    e2, v2 = torch.linalg.eigh(c1_half @ c2 @ c1_half)
    transport = c1_inv_half @ (v2 @ torch.diag(e2.sqrt()) @ v2.T) @ c1_inv_half
    x = m1 + z @ c1_half
    y = m2 + (x - m1) @ transport.T
    closed = float(wasserstein2_gaussian(m1, c1, m2, c2))
    assert float(wasserstein2(x[:, None], y[:, None])[0]) == pytest.approx(closed, rel=1e-6)


def test_gaussian_closed_form_special_cases() -> None:
    m1, m2 = torch.tensor([0.0, 1.0]), torch.tensor([3.0, -1.0])
    d1, d2 = torch.tensor([4.0, 1.0]), torch.tensor([1.0, 9.0])
    expected = math.sqrt(float(((m1 - m2) ** 2).sum() + ((d1.sqrt() - d2.sqrt()) ** 2).sum()))
    assert float(wasserstein2_gaussian(m1, torch.diag(d1), m2, torch.diag(d2))) == pytest.approx(expected)
    c = torch.tensor([[2.0, 0.5], [0.5, 1.0]])
    assert float(wasserstein2_gaussian(m1, c, m1, c)) == pytest.approx(0.0, abs=1e-6)
    # batched and symmetric
    cs = torch.stack([c, torch.eye(2)])
    w = wasserstein2_gaussian(torch.zeros(2, 2), cs, torch.ones(2, 2), cs.flip(0))
    assert w.shape == (2,)
    assert float(w[0]) == pytest.approx(float(w[1]))


def test_w2_bad_inputs() -> None:
    with pytest.raises(ValueError, match="event"):
        wasserstein2(torch.zeros(4, 2), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="samples_p"):
        wasserstein2(torch.zeros(4), torch.zeros(4, 1))
    with pytest.raises(ValueError, match="broadcast"):
        wasserstein2(torch.zeros(4, 2, 1), torch.zeros(4, 3, 1))
    with pytest.raises(ValueError, match="NaN"):
        wasserstein2(torch.full((3, 1), float("nan")), torch.zeros(3, 1))
    with pytest.raises(TypeError, match="floating"):
        wasserstein2(torch.zeros(3, 1, dtype=torch.long), torch.zeros(3, 1))
    with pytest.raises(ValueError, match="square"):
        wasserstein2_gaussian(torch.zeros(2), torch.zeros(2, 3), torch.zeros(2), torch.eye(2))
    assert aggregate_w2(torch.tensor([3.0, 4.0])) == pytest.approx(math.sqrt(12.5))


# ---------------------------------------------------------------------------- predictive draws
@pytest.mark.parametrize("method", ["pyro", "fast"])
@pytest.mark.parametrize("likelihood,output,shape", [
    ("categorical", "auto", (5, 7, 3)), ("categorical", "logits", (5, 7, 3)),
    ("categorical", "obs", (5, 7)), ("gaussian", "auto", (5, 7, 2)), ("gaussian", "obs", (5, 7, 2)),
])
def test_posterior_predictive_shapes(method: str, likelihood: str, output: str, shape: tuple) -> None:
    net = _bnn(likelihood, out=3 if likelihood == "categorical" else 2)
    net.num_data = 4  # smaller than the input batch: predictive draws must not care
    x = torch.randn(7, 4)
    draws = posterior_predictive(net, x, draws=5, method=method, output=output, draw_chunk=2, data_chunk=3)
    assert draws.shape == shape
    if likelihood == "categorical" and output == "auto":
        torch.testing.assert_close(draws.sum(-1), torch.ones(5, 7))
    assert net.num_data == 4


@pytest.mark.parametrize("method", ["pyro", "fast"])
def test_common_random_numbers_and_untouched_rng(method: str) -> None:
    net = _bnn()
    x = torch.randn(6, 4)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = posterior_predictive(net, x, draws=4, method=method, seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    b = posterior_predictive(net, x, draws=4, method=method, seed=7)
    c = posterior_predictive(net, x, draws=4, method=method, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_pyro_and_fast_draws_have_the_same_marginals() -> None:
    net = _bnn("gaussian", hidden=(5,), out=1, seed=1)
    x = torch.randn(3, 4)
    fast = posterior_predictive(net, x, draws=4000, method="fast")[..., 0]
    slow = posterior_predictive(net, x, draws=250, method="pyro", draw_chunk=125)[..., 0]
    se = (fast.var(0) / 4000 + slow.var(0) / 250).sqrt()
    assert torch.all((fast.mean(0) - slow.mean(0)).abs() < 4 * se)
    ratio = slow.var(0) / fast.var(0)
    assert torch.all((ratio > 0.65) & (ratio < 1.5))


def test_predictive_with_an_autoguide_needs_the_pyro_method() -> None:
    from pyro.infer.autoguide import AutoNormal

    net = _bnn()
    x = torch.randn(5, 4)
    guide = AutoNormal(net)
    from pyro_prune.models import NoiseMode, noise_mode

    with noise_mode(net.net, NoiseMode.SAMPLE):
        guide(x, torch.zeros(5, dtype=torch.long))  # create the autoguide's parameters
    draws = posterior_predictive(net, x, guide=guide, draws=3, method="pyro")
    assert draws.shape == (3, 5, 3)
    with pytest.raises(ValueError, match="fast"):
        posterior_predictive(net, x, guide=guide, draws=3, method="fast")


# ---------------------------------------------------------------------------- masks and shift
def test_apply_mask_is_temporary_and_checked() -> None:
    net = _bnn()
    net.net.fc1_gate.prune(torch.tensor([True, False, False, False, False, False]))
    before = kept_mask(net)
    mask = {"fc1_gate": torch.tensor([True, True, False, True, True, True])}
    with apply_mask(net, mask):
        assert net.net.fc1_gate.kept.tolist() == [False, True, False, True, True, True]
    assert torch.equal(net.net.fc1_gate.kept, before["fc1_gate"])
    with apply_mask(net, empty_mask(net)):
        assert not bool(net.net.fc1_gate.kept.any())
    with pytest.raises(ValueError, match="unknown gate"):
        with apply_mask(net, {"nope": torch.ones(6, dtype=torch.bool)}):
            pass
    with pytest.raises(ValueError, match="bool tensor"):
        with apply_mask(net, {"fc1_gate": torch.ones(6)}):
            pass


@pytest.mark.parametrize("likelihood", ["categorical", "gaussian"])
def test_w2_shift_endpoints(likelihood: str) -> None:
    net = _bnn(likelihood, out=3 if likelihood == "categorical" else 1)
    x = torch.randn(10, 4)
    none = w2_shift(net, None, None, x, draws=8)
    assert none.w2 == pytest.approx(0.0, abs=1e-6) and none.kept_fraction == 1.0
    empty = w2_shift(net, None, empty_mask(net), x, draws=8)
    assert empty.normalized == pytest.approx(1.0) and empty.kept_fraction == 0.0
    half = {"fc1_gate": torch.tensor([True, False, True, False, True, False])}
    mid = w2_shift(net, None, half, x, draws=8)
    assert 0 < mid.w2 and mid.kept_fraction == 0.5
    assert mid.w2_empty == pytest.approx(empty.w2_empty)


def test_empty_network_outputs_the_output_bias_only() -> None:
    net = _bnn(hidden=(5, 4))
    x = torch.randn(3, 4)
    with apply_mask(net, empty_mask(net)):
        out = net.predict(x)
    torch.testing.assert_close(out, net.net.out.bias_loc.detach().expand(3, 3))


# ---------------------------------------------------------------------------- neuron scores
def _relu_second_moment(m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    s = v.sqrt()
    r = (m / s).numpy()
    return (m**2 + v) * torch.from_numpy(norm.cdf(r)) + m * s * torch.from_numpy(norm.pdf(r))


@pytest.mark.parametrize("method,draws,tol", [("fast", 4000, 0.04), ("pyro", 250, 0.15)])
def test_neuron_scores_match_the_exact_second_moment(method: str, draws: int, tol: float) -> None:
    """One hidden layer: the pre-activation is exactly N(m, v) per input, so
    E[relu(a)^2] = (m^2 + v) Phi(m / s) + m s phi(m / s)."""
    net = _bnn(hidden=(6,), seed=2)
    x = torch.randn(8, 4, dtype=torch.float32)
    layer = net.net.fc1
    with torch.no_grad():
        m = (x @ layer.weight_loc.T + layer.bias_loc).double()
        v = (x**2 @ (layer.weight_scale**2).T + layer.bias_scale**2).double()
    exact = _relu_second_moment(m, v).mean(0).float()
    scores = neuron_w2(net, None, x, draws=draws, method=method)
    assert set(scores) == {"fc1_gate"}
    torch.testing.assert_close(scores["fc1_gate"], exact, rtol=tol, atol=1e-3)


def test_neuron_scores_match_a_direct_monte_carlo_in_a_deep_net() -> None:
    net = _bnn(hidden=(5, 4), seed=4)
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


def test_contribution_scores_match_a_direct_monte_carlo() -> None:
    net = _bnn(hidden=(5, 4), seed=5)
    x = torch.randn(6, 4)
    scores = neuron_w2(net, None, x, draws=3000, score="contribution")
    h1, h2, (w2, w3) = _direct_draws(net, x, 4000)
    # the signal each neuron sends on: ||h_j w_{:, j}||^2, averaged over draws and inputs
    direct = {"fc1_gate": ((h1**2).unsqueeze(2) * (w2**2).unsqueeze(1)).sum(2).mean((0, 1)),
              "fc2_gate": ((h2**2).unsqueeze(2) * (w3**2).unsqueeze(1)).sum(2).mean((0, 1))}
    for name in direct:
        torch.testing.assert_close(scores[name], direct[name], rtol=0.15, atol=5e-3)


def test_contribution_is_activation_times_outgoing_second_moments_of_kept_rows() -> None:
    net = _bnn(hidden=(5, 4), seed=8)
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


def test_contribution_score_sees_a_noisy_unit_with_no_outgoing_weight() -> None:
    """A unit with prior-like incoming weights has a large activation; with its outgoing weights
    pinned at zero it sends nothing on: high activation score, near-zero contribution."""
    net = _bnn(hidden=(4,), seed=6)
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


def test_removed_neurons_score_zero_and_conv_channels_are_scored() -> None:
    net = _bnn()
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


def test_activation_after_a_gate_is_found_in_sequential_and_fx_graphs() -> None:
    net = _bnn()
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


def test_evaluate_predictive_matches_a_hand_computation() -> None:
    from pyro_prune.predictive import evaluate_predictive

    net = _bnn("gaussian", out=1, seed=7)
    x, y = torch.randn(12, 4), torch.randn(12, 1)
    draws = posterior_predictive(net, x, draws=20, method="fast", seed=3).double()
    sigma = float(net.obs_scale)
    m = evaluate_predictive(net, torch.utils.data.TensorDataset(x, y), draws=20, seed=3, target_scale=2.0)
    rmse = float(((draws.mean(0) - y) ** 2).mean().sqrt()) * 2.0
    dens = torch.exp(-0.5 * (y.double() - draws) ** 2 / sigma**2) / math.sqrt(2 * math.pi * sigma**2)
    ll = float(dens.mean(0).log().mean()) - math.log(2.0)
    assert m["rmse"] == pytest.approx(rmse) and m["ll"] == pytest.approx(ll)
    cls = _bnn()
    labels = torch.randint(0, 3, (12,))
    probs = posterior_predictive(cls, x, draws=20, seed=3, method="fast").double().mean(0)
    mc = evaluate_predictive(cls, torch.utils.data.TensorDataset(x, labels), draws=20, seed=3)
    assert mc["accuracy"] == pytest.approx(float((probs.argmax(-1) == labels).double().mean()))
    assert mc["nll"] == pytest.approx(float(-probs[torch.arange(12), labels].log().mean()))
