from __future__ import annotations

import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch import nn
from torch.utils.data import TensorDataset

from pyro_prune.inference import fit
from pyro_prune.inference.elbo import fast_elbo_loss, pyro_elbo_loss
from pyro_prune.models import MLP, LeNet5, NoiseMode, StructureMask, bayesianize, noise_mode
from pyro_prune.models.bayesian import (
    DEFAULT_INIT_LOG_SCALE,
    BayesianConv1d,
    BayesianConv2d,
    BayesianConv3d,
    BayesianLayer,
    BayesianLinear,
    bayesian_layer_rule,
    bayesian_weights,
    gaussian_kl,
    link_output_gates,
    register_bayesian_layer,
)


def _randomise(layer: nn.Module, seed: int = 0, log_scale: tuple[float, float] = (-2.0, -0.5)) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if "log_scale" in name:
                p.copy_(torch.empty(p.shape).uniform_(*log_scale, generator=gen))
            elif name.endswith("_loc"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


def _gaussian_mlp(seed: int = 0, **kw) -> MLP:
    torch.manual_seed(seed)
    net = MLP(6, [5, 4], 3, weights="gaussian", gate="mask", num_data=50, **kw)
    link_output_gates(net)
    _randomise(net, seed)
    return net


# ---------------------------------------------------------------------------- conventions
@pytest.mark.parametrize("bias", [True, False])
def test_linear_parameters_posterior_rows_and_deterministic_copy(bias: bool) -> None:
    layer = BayesianLinear(7, 4, bias=bias, prior_scale=0.5)
    assert layer.weight_loc.shape == layer.weight_log_scale.shape == (4, 7)
    torch.testing.assert_close(layer.weight_log_scale, torch.full((4, 7), DEFAULT_INIT_LOG_SCALE))
    bound = 1 / math.sqrt(7)
    assert float(layer.weight_loc.detach().abs().max()) <= bound + 1e-6
    _randomise(layer)
    loc, scale, prior = layer.weight_posterior()
    assert prior == 0.5
    assert loc.shape == scale.shape == (4, 8 if bias else 7)
    torch.testing.assert_close(loc[:, :7], layer.weight_loc)
    torch.testing.assert_close(scale[:, :7], layer.weight_log_scale.exp())
    if bias:
        assert layer.bias_loc.shape == layer.bias_log_scale.shape == (4,)
        torch.testing.assert_close(loc[:, 7], layer.bias_loc)
        torch.testing.assert_close(scale[:, 7], layer.bias_log_scale.exp())
    else:
        assert layer.bias_loc is None and layer.bias_log_scale is None
    det = layer.as_deterministic()
    assert isinstance(det, nn.Linear) and (det.bias is not None) == bias
    x = torch.randn(5, 7)
    with noise_mode(layer, NoiseMode.MEAN):
        torch.testing.assert_close(layer(x), det(x))


@pytest.mark.parametrize("stride,padding,groups", [(1, 0, 1), (2, 1, 1), (1, "same", 2)])
def test_conv_parameters_and_deterministic_copy(stride: int, padding, groups: int) -> None:
    layer = BayesianConv2d(4, 6, 3, stride=stride, padding=padding, groups=groups)
    assert layer.weight_loc.shape == (6, 4 // groups, 3, 3)
    assert layer.bias_loc.shape == (6,)
    _randomise(layer)
    loc, scale, _ = layer.weight_posterior()
    assert loc.shape == (6, 4 // groups * 9 + 1)
    det = layer.as_deterministic()
    assert isinstance(det, nn.Conv2d)
    x = torch.randn(2, 4, 8, 8)
    with noise_mode(layer, NoiseMode.MEAN):
        torch.testing.assert_close(layer(x), det(x))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="prior_scale"):
        BayesianLinear(3, 2, prior_scale=0.0)
    with pytest.raises(TypeError, match="prior_scale"):
        BayesianLinear(3, 2, prior_scale="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="in_features"):
        BayesianLinear(0, 2)
    with pytest.raises(ValueError, match="init_log_scale"):
        BayesianLinear(3, 2, init_log_scale=float("nan"))
    with pytest.raises(ValueError, match="groups"):
        BayesianConv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="padding"):
        BayesianConv2d(3, 4, 3, padding="full")
    with pytest.raises(TypeError, match="module"):
        bayesian_weights("net")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="padding_mode"):
        BayesianConv2d(1, 2, 3, padding=1, padding_mode="mirror")
    with pytest.raises(TypeError, match="nn.Conv1d"):
        BayesianConv1d.from_conv(nn.Conv2d(1, 2, 3))
    with pytest.raises(ValueError, match="kernel_size must be an int or 3 ints"):
        BayesianConv3d(1, 2, (3, 3))
    with pytest.raises(ValueError, match="structures"):
        BayesianLinear(3, 2).link_output_gate(StructureMask(3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_layers_move_to_another_dtype_and_run_in_every_mode(dtype: torch.dtype, kind: str) -> None:
    layer = BayesianLinear(4, 3) if kind == "linear" else BayesianConv2d(4, 3, 3, padding=1)
    layer = layer.to(dtype)
    x = torch.randn(2, 4, dtype=dtype) if kind == "linear" else torch.randn(2, 4, 5, 5, dtype=dtype)
    for mode in NoiseMode:
        with noise_mode(layer, mode):
            out = poutine.trace(layer).get_trace(x).nodes["_RETURN"]["value"]
        assert out.dtype == dtype and out.shape[:2] == (2, 3)
    assert layer.kl_divergence().dtype == dtype
    assert layer.as_deterministic().weight.dtype == dtype


# ---------------------------------------------------------------------------- Pyro sites
def test_model_and_guide_sites_share_names_plates_and_shapes() -> None:
    net = _gaussian_mlp()
    x, y = torch.randn(10, 6), torch.randint(0, 3, (10,))
    with noise_mode(net.net, NoiseMode.SAMPLE):
        model_tr = poutine.trace(net).get_trace(x, y)
    guide_tr = poutine.trace(net.guide).get_trace(x, y)
    latent = {n for n, s in guide_tr.nodes.items() if s["type"] == "sample" and not site_is_subsample(s)}
    assert latent == {f"{m}.{p}" for m in ("fc1", "fc2", "out") for p in ("weight", "bias")}
    for name in latent:
        fm, fg = model_tr.nodes[name]["fn"], guide_tr.nodes[name]["fn"]
        assert fm.batch_shape == fg.batch_shape and fm.event_shape == fg.event_shape
        # the plate runs over the output structures, to_event over the incoming weights
        assert [f.name for f in model_tr.nodes[name]["cond_indep_stack"]] == [f"{name.split('.')[0]}_plate"]
    assert model_tr.nodes["fc1.weight"]["fn"].batch_shape == (5,)
    assert model_tr.nodes["fc1.weight"]["fn"].event_shape == (6,)
    prior = model_tr.nodes["fc2.weight"]["fn"].base_dist
    torch.testing.assert_close(prior.scale, torch.ones(4, 5))
    torch.testing.assert_close(prior.loc, torch.zeros(4, 5))


def test_removed_rows_are_masked_in_model_and_guide() -> None:
    net = _gaussian_mlp()
    net.net.fc1_gate.prune(torch.tensor([True, False, False, True, False]))
    guide_tr = poutine.trace(net.guide).get_trace()
    assert guide_tr.nodes["fc1.weight"]["mask"].tolist() == [False, True, True, False, True]
    assert guide_tr.nodes["fc1.bias"]["mask"].tolist() == [False, True, True, False, True]
    assert guide_tr.nodes["fc2.weight"]["mask"] is None


# ---------------------------------------------------------------------------- KL
@pytest.mark.parametrize("prior_scale", [0.1, 1.0, 3.0])
def test_closed_form_kl_matches_torch_and_masks_removed_rows(prior_scale: float) -> None:
    net = _gaussian_mlp(prior_scale=prior_scale)
    layer = net.net.fc1
    loc, scale, _ = layer.weight_posterior()
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(loc, scale),
                                            torch.distributions.Normal(0.0, prior_scale))
    torch.testing.assert_close(gaussian_kl(loc, scale, prior_scale), ref)
    torch.testing.assert_close(layer.kl_divergence(), ref.sum())
    net.set_kl_scale(2.5)
    torch.testing.assert_close(layer.kl_divergence(), 2.5 * ref.sum())
    net.net.fc1_gate.prune(torch.tensor([True, False, False, True, False]))
    torch.testing.assert_close(layer.kl_divergence(), 2.5 * ref[[1, 2, 4]].sum())


# ---------------------------------------------------------------------------- REPARAM
def _moments(layer: nn.Module, x: torch.Tensor, draws: int) -> tuple[torch.Tensor, torch.Tensor]:
    rep = x.unsqueeze(0).expand(draws, *x.shape).reshape(draws * x.shape[0], *x.shape[1:])
    with torch.no_grad(), noise_mode(layer, NoiseMode.REPARAM):
        out = layer(rep).reshape(draws, *x.shape[:1], *layer(x[:1]).shape[1:])
    return out.mean(0), out.var(0)


def test_local_reparameterisation_has_the_exact_linear_moments() -> None:
    torch.manual_seed(0)
    layer = BayesianLinear(5, 3)
    _randomise(layer)
    x = torch.randn(4, 5)
    mean, var = _moments(layer, x, 20000)
    w_var, b_var = layer.weight_scale**2, layer.bias_scale**2
    exact_mean = (x @ layer.weight_loc.T + layer.bias_loc).detach()
    exact_var = (x**2 @ w_var.T + b_var).detach()
    torch.testing.assert_close(mean, exact_mean, atol=4 * float(exact_var.max().sqrt()) / math.sqrt(20000), rtol=0)
    torch.testing.assert_close(var, exact_var, rtol=0.05, atol=0)
    # and the weight-space draws of the guide give the same moments
    with torch.no_grad():
        outs = []
        for _ in range(2000):
            w, b = layer.guide_sample()
            outs.append(x @ w.T + b)
        outs = torch.stack(outs)
    torch.testing.assert_close(outs.var(0), exact_var, rtol=0.15, atol=0)


def test_local_reparameterisation_for_conv_has_the_exact_per_position_moments() -> None:
    torch.manual_seed(1)
    layer = BayesianConv2d(2, 3, 3, padding=1)
    _randomise(layer)
    x = torch.randn(2, 2, 5, 5)
    mean, var = _moments(layer, x, 8000)
    import torch.nn.functional as F

    with torch.no_grad():
        exact_mean = F.conv2d(x, layer.weight_loc, layer.bias_loc, padding=1)
        exact_var = F.conv2d(x**2, layer.weight_scale**2, layer.bias_scale**2, padding=1)
    assert float((mean - exact_mean).abs().max()) < 5 * float(exact_var.max().sqrt()) / math.sqrt(8000)
    torch.testing.assert_close(var, exact_var, rtol=0.08, atol=0)


# ---------------------------------------------------------------------------- ELBO
@pytest.mark.parametrize("kl_scale", [1.0, 0.3])
def test_fast_elbo_with_one_draw_equals_trace_mean_field_elbo(kl_scale: float) -> None:
    net = _gaussian_mlp()
    net.set_kl_scale(kl_scale)
    net.net.fc2_gate.prune(torch.tensor([False, True, False, False]))
    x, y = torch.randn(10, 6), torch.randint(0, 3, (10,))
    torch.manual_seed(4)
    pyro_loss = pyro_elbo_loss(net, x, y)
    torch.manual_seed(4)
    fast_loss, _ = fast_elbo_loss(net, x, y, per_example=False)
    torch.testing.assert_close(fast_loss, pyro_loss, rtol=1e-5, atol=1e-4)


def test_local_reparameterisation_and_pyro_elbo_have_the_same_expectation() -> None:
    net = _gaussian_mlp(seed=2)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    n = 500
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    with torch.no_grad():
        pyro_losses = torch.stack([pyro_elbo_loss(net, x, y) for _ in range(n)])
        fast_losses = torch.stack([fast_elbo_loss(net, x, y)[0] for _ in range(n)])
    se = (pyro_losses.var() / n + fast_losses.var() / n).sqrt()
    assert abs(float(pyro_losses.mean() - fast_losses.mean())) < 4 * float(se)


def test_regression_net_fits_with_both_engines_and_learns_the_noise() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(160, 2, generator=gen)
    y = (x[:, :1] * 1.5 - x[:, 1:] + 0.1 * torch.randn(160, 1, generator=gen))
    data = TensorDataset(x, y)
    for engine in ("fast", "pyro"):
        torch.manual_seed(0)
        net = MLP(2, [16], 1, likelihood="gaussian", weights="gaussian", gate="mask", prior_scale=1.0)
        res = fit(net, data, epochs=40 if engine == "fast" else 15, batch_size=32, lr=2e-2,
                  progress=False, engine=engine, seed=0)
        assert all(math.isfinite(r["loss"]) for r in res.history)
        assert res.history[-1]["loss"] < res.history[0]["loss"]
        if engine == "fast":
            assert res.history[-1]["train_rmse"] < 0.5
            assert float(net.obs_scale.detach()) < 0.6


# ---------------------------------------------------------------------------- conversion
def test_bayesian_weights_start_at_the_given_weights_and_keep_the_graph() -> None:
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 16, 4))
    x = torch.randn(2, 1, 4, 4)
    expected = plain(x)
    gm = torch.fx.symbolic_trace(plain)
    out = bayesian_weights(gm, prior_scale=0.3)
    assert out is gm
    assert isinstance(gm.get_submodule("0"), BayesianConv2d)
    assert isinstance(gm.get_submodule("3"), BayesianLinear)
    assert gm.get_submodule("3").prior_scale == 0.3
    with noise_mode(gm, NoiseMode.MEAN):
        torch.testing.assert_close(gm(x), expected)


def test_bayesianize_with_gaussian_weights_and_mask_gates() -> None:
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(4, 5)
    net = bayesianize(plain, gate="mask", weights="gaussian")
    assert link_output_gates(net) == 1
    torch.testing.assert_close(net.predict(x), plain(x))
    gate_name = next(iter(net.gates()))
    assert isinstance(net.net.get_submodule(net.gates()[gate_name].producer_name), BayesianLinear)


@pytest.mark.parametrize("gate", ["mask", "noise"])
def test_lenet5_with_gaussian_weights_runs_in_every_mode(gate: str) -> None:
    torch.manual_seed(0)
    net = LeNet5(1, 3, 8, weights="gaussian", gate=gate, num_data=20)
    assert link_output_gates(net) == 4
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 3, (4,))
    loss, out = fast_elbo_loss(net, x, y)
    assert out.shape == (4, 3) and torch.isfinite(loss)
    assert torch.isfinite(pyro_elbo_loss(net, x, y))
    assert net.predict(x).shape == (4, 3)


def test_mask_gate_after_a_bayesian_layer_removes_neurons_in_every_mode() -> None:
    net = _gaussian_mlp()
    net.net.fc1_gate.prune(torch.tensor([True, False, False, True, False]))
    seen = {}

    def hook(_m, _i, out):
        seen["h"] = out

    handle = net.net.fc1_gate.register_forward_hook(hook)
    x = torch.randn(7, 6)
    for mode in (NoiseMode.MEAN, NoiseMode.REPARAM, NoiseMode.SAMPLE):
        with noise_mode(net.net, mode):
            poutine.trace(net.net).get_trace(x)
        assert torch.all(seen["h"][:, [0, 3]] == 0)
        assert torch.all(seen["h"][:, [1, 2, 4]] != 0)
    handle.remove()


def test_pruned_network_equals_the_physically_smaller_network() -> None:
    net = _gaussian_mlp(seed=3)
    keep1, keep2 = torch.tensor([0, 2, 4]), torch.tensor([1, 3])
    net.net.fc1_gate.prune(~torch.isin(torch.arange(5), keep1))
    net.net.fc2_gate.prune(~torch.isin(torch.arange(4), keep2))
    small = MLP(6, [3, 2], 3, weights="gaussian", gate="mask")
    with torch.no_grad():
        for name, rows, cols in (("fc1", keep1, None), ("fc2", keep2, keep1), ("out", None, keep2)):
            big, sm = net.net.get_submodule(name), small.net.get_submodule(name)
            for p in ("weight_loc", "weight_log_scale", "bias_loc", "bias_log_scale"):
                v = getattr(big, p)
                if rows is not None:
                    v = v[rows]
                if cols is not None and v.dim() == 2:
                    v = v[:, cols]
                getattr(sm, p).copy_(v)
    x = torch.randn(9, 6)
    torch.testing.assert_close(net.predict(x), small.predict(x))
    # a weight draw of the full guide, restricted to the kept structures, gives the same output
    tr = poutine.trace(net.guide).get_trace()
    draws = {n: s["value"] for n, s in tr.nodes.items() if s["type"] == "sample" and not site_is_subsample(s)}
    small_draws = {
        "fc1.weight": draws["fc1.weight"][keep1], "fc1.bias": draws["fc1.bias"][keep1],
        "fc2.weight": draws["fc2.weight"][keep2][:, keep1], "fc2.bias": draws["fc2.bias"][keep2],
        "out.weight": draws["out.weight"][:, keep2], "out.bias": draws["out.bias"],
    }
    with noise_mode(net.net, NoiseMode.SAMPLE), noise_mode(small.net, NoiseMode.SAMPLE):
        full_out = poutine.condition(net.net, draws)(x)
        small_out = poutine.condition(small.net, small_draws)(x)
    torch.testing.assert_close(full_out, small_out)


# ---------------------------------------------------------------------------- Gaussian BMR
def test_gaussian_bmr_scores_structures_from_the_weight_posterior() -> None:
    from pyro_prune.reduction import delta_f_gaussian, structure_removals, structure_scores

    net = _gaussian_mlp(prior_scale=0.8)
    layer = net.net.fc1
    with torch.no_grad():  # neuron 0: posterior = prior (no evidence); neuron 1: strong weights
        layer.weight_loc[0].zero_()
        layer.bias_loc[0] = 0.0
        layer.weight_log_scale[0].fill_(math.log(0.8))
        layer.bias_log_scale[0] = math.log(0.8)
        layer.weight_loc[1].fill_(3.0)
        layer.weight_log_scale[1].fill_(-4.0)
    loc, scale, prior = layer.weight_posterior()
    expected = delta_f_gaussian(loc.detach(), scale.detach(), prior_scale=prior, dim=-1)
    scores = structure_scores(net, "gaussian_bmr")
    torch.testing.assert_close(scores["fc1_gate"], -expected)
    removals = structure_removals(net, "gaussian_bmr")
    assert bool(removals["fc1_gate"][0]) and not bool(removals["fc1_gate"][1])
    assert removals["fc2_gate"].shape == (4,)


@pytest.mark.parametrize("make", [
    lambda: MLP(6, [5, 4], 3, weights="gaussian"),
    lambda: MLP(6, [5], 3, weights="gaussian", gate="mask"),
    lambda: LeNet5(1, 3, 8, weights="gaussian"),
], ids=["mlp-noise", "mlp-mask", "lenet5-noise"])
def test_models_with_gaussian_weights_link_their_gates_when_built(make) -> None:
    torch.manual_seed(0)
    net = make()
    gates = net.gates()
    for gate in gates.values():
        producer = net.net.get_submodule(gate.producer_name)
        assert isinstance(producer, BayesianLayer)
        assert any(g is gate for g in producer._output_gates)
    # removing structures takes exactly their incoming rows out of the producer's KL
    gate = next(iter(gates.values()))
    producer = net.net.get_submodule(gate.producer_name)
    _randomise(producer)
    loc, scale, prior_scale = producer.weight_posterior()
    rows = gaussian_kl(loc, scale, prior_scale).sum(-1).detach()
    before = float(producer.kl_divergence().detach())
    keep = torch.ones(gate.num_structures, dtype=torch.bool)
    keep[::2] = False
    gate.prune(~keep)
    after = float(producer.kl_divergence().detach())
    assert after < before
    assert after == pytest.approx(float(rows[keep].sum()) * producer.kl_scale, rel=1e-6)
    assert before == pytest.approx(float(rows.sum()) * producer.kl_scale, rel=1e-6)


# ---------------------------------------------------------------------------- foreign reads
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_weight_and_bias_read_the_posterior_mean(kind: str, bias: bool, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    layer = (BayesianLinear(4, 3, bias=bias) if kind == "linear" else BayesianConv2d(4, 3, 3, bias=bias)).to(dtype)
    plain = layer.as_deterministic()
    assert layer.weight is layer.weight_loc  # the same parameter: dtype, device, shape, grad
    assert layer.weight.shape == plain.weight.shape and layer.weight.dtype == plain.weight.dtype == dtype
    assert (layer.bias is layer.bias_loc) if bias else layer.bias is None
    # no extra parameter: the state dict, the parameter names and the Pyro sites are unchanged
    names = {n for n, _ in layer.named_parameters()}
    assert names == set(layer.state_dict()) == {"weight_loc", "weight_log_scale"} | (
        {"bias_loc", "bias_log_scale"} if bias else set())
    # foreign code computing with .weight uses the mean, in every mode, and trains the mean
    x = torch.randn(2, 4, dtype=dtype) if kind == "linear" else torch.randn(2, 4, 5, 5, dtype=dtype)
    op = layer._op(x, layer.weight, layer.bias)
    with noise_mode(layer, NoiseMode.MEAN):
        torch.testing.assert_close(op, layer(x))
    op.sum().backward()
    assert layer.weight_loc.grad is not None and layer.weight_log_scale.grad is None
    # an in-place write (init code) sets the mean
    with torch.no_grad():
        layer.weight.mul_(2.0)
    torch.testing.assert_close(layer.as_deterministic().weight, 2.0 * plain.weight)


def test_assigning_weight_or_bias_is_an_error_naming_the_posterior_mean() -> None:
    layer = BayesianLinear(3, 2)
    for name in ("weight", "bias"):
        with pytest.raises(AttributeError, match=f"{name}_loc"):
            setattr(layer, name, nn.Parameter(torch.zeros(2, 3)))
        with pytest.raises(AttributeError, match="posterior mean"):
            setattr(layer, name, None)


# ---------------------------------------------------------------------------- rules
class _Dense(nn.Module):
    """A linear layer storing its weight [in, out], as some libraries do."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.n_in, self.n_out = n_in, n_out
        self.w = nn.Parameter(torch.randn(n_in, n_out) / n_in**0.5)
        self.b = nn.Parameter(torch.randn(n_out) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w + self.b


def test_hugging_face_conv1d_becomes_a_bayesian_linear_with_its_weights_as_means() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    conv = transformers.pytorch_utils.Conv1D(6, 4)  # nf=6 outputs, nx=4 inputs, weight [4, 6]
    net = nn.Sequential(conv, nn.ReLU())
    x = torch.randn(3, 5, 4)
    want = net(x)
    bayesian_weights(net, prior_scale=0.5)
    layer = net[0]
    assert isinstance(layer, BayesianLinear) and layer.replaces is transformers.pytorch_utils.Conv1D
    assert (layer.in_features, layer.out_features, layer.prior_scale, layer.site_name) == (4, 6, 0.5, "0")
    torch.testing.assert_close(layer.weight_loc, conv.weight.T)
    with noise_mode(net, NoiseMode.MEAN):
        torch.testing.assert_close(net(x), want)


def test_a_registered_rule_converts_a_users_layer_and_bayesianize_checks_it(monkeypatch) -> None:
    from pyro_prune.models import bayesian

    monkeypatch.setattr(bayesian, "_RULES", dict(bayesian._RULES))  # the rules given here go after
    torch.manual_seed(0)
    from pyro_prune.convert import register_layer

    register_layer(_Dense, out_axis=-1, tensors={"w": (1, 0), "b": (0, None)}, out_size="n_out",
                   in_size="n_in", scaled=("w", "b"))
    assert bayesian_layer_rule(_Dense(3, 2)) is None  # the graph knows it, bayesian_weights not yet
    with pytest.warns(RuntimeWarning, match=r"\['0', '2'\] keep point weights: no Bayesian rule"):
        bayesian_weights(nn.Sequential(_Dense(5, 8), nn.ReLU(), _Dense(8, 3)))
    plain = nn.Sequential(_Dense(5, 8), nn.ReLU(), _Dense(8, 3))
    x = torch.randn(6, 5)
    # a wrong rule (the weight not transposed: same shapes, a different layer) is caught
    register_bayesian_layer(_Dense, lambda m, **kw: BayesianLinear.from_tensors(m.w.reshape(m.n_out, m.n_in), m.b, **kw))
    with pytest.raises(ValueError, match=r"replaced '0' \(_Dense\) does not compute"):
        bayesianize(plain, weights="gaussian", example_input=x[:2])
    register_bayesian_layer(_Dense, lambda m, **kw: BayesianLinear.from_tensors(m.w.T, m.b, **kw))
    model = bayesianize(plain, weights="gaussian", example_input=x[:2], noise_on=[_Dense], gate="mask")
    torch.testing.assert_close(model.predict(x), plain(x))
    layer = model.net.get_submodule("0")
    assert isinstance(layer, BayesianLinear) and layer.replaces is _Dense
    gate = model.gates()["0_gate"]
    assert any(g is gate for g in layer._output_gates)  # noise_on=[_Dense] matched the Bayesian layer
    for bad, err in ((nn.Linear(2, 2), TypeError), (BayesianLinear, TypeError)):
        with pytest.raises(err, match="layer_type"):
            register_bayesian_layer(bad, lambda m, **kw: m)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="rule"):
        register_bayesian_layer(_Dense, "transpose")  # type: ignore[arg-type]
    register_bayesian_layer(_Dense, lambda m, **kw: m)
    with pytest.raises(TypeError, match="returned _Dense, not a BayesianLayer"):
        bayesian_weights(nn.Sequential(_Dense(2, 2)))
    with pytest.raises(ValueError, match="weight must be a floating"):
        BayesianLinear.from_tensors(torch.zeros(3))
    with pytest.raises(ValueError, match=r"bias must be None or a tensor of shape \(2,\)"):
        BayesianLinear.from_tensors(torch.zeros(2, 3), torch.zeros(3))


def test_a_shared_layer_stays_shared_and_a_tied_weight_keeps_its_point_value() -> None:
    torch.manual_seed(0)
    shared = nn.Linear(4, 4)
    net = nn.ModuleDict({"a": shared, "b": shared, "emb": nn.Embedding(7, 4), "head": nn.Linear(4, 7, bias=False)})
    net["head"].weight = net["emb"].weight  # tied, as a language model's output layer
    with pytest.warns(RuntimeWarning, match=r"\['head'\] keep point weights: their weight is tied"):
        bayesian_weights(net)
    assert isinstance(net["a"], BayesianLinear) and net["a"] is net["b"]
    assert type(net["head"]) is nn.Linear and net["head"].weight is net["emb"].weight


def test_pyro_wrappers_convert_unless_they_hold_priors_of_their_own() -> None:
    from pyro.nn import PyroModule, PyroSample

    torch.manual_seed(0)
    plain = PyroModule[nn.Linear](4, 3)
    sampled = PyroModule[nn.Linear](3, 2)
    sampled.weight = PyroSample(pyro.distributions.Normal(0.0, 1.0).expand([2, 3]).to_event(2))
    assert bayesian_layer_rule(plain) == BayesianLinear.from_linear
    assert bayesian_layer_rule(sampled) is None
    net = nn.Sequential(plain, sampled)
    with pytest.warns(RuntimeWarning, match=r"\['1'\] keep point weights"):
        bayesian_weights(net)
    assert isinstance(net[0], BayesianLinear) and issubclass(net[0].replaces, nn.Linear)
    assert net[1] is sampled


def test_a_gate_over_groups_of_rows_masks_those_rows() -> None:
    torch.manual_seed(0)
    layer = BayesianLinear(3, 6)
    _randomise(layer)
    heads = StructureMask(2)
    layer.link_output_gate(heads, rows=torch.tensor([0, 0, 1, 1, -1, -1]))
    neurons = StructureMask(6)
    layer.link_output_gate(neurons)
    assert layer.output_kept() is None
    loc, scale, prior_scale = layer.weight_posterior()
    rows = gaussian_kl(loc, scale, prior_scale).sum(-1).detach()
    heads.prune(torch.tensor([True, False]))
    neurons.prune(torch.tensor([False, False, False, False, True, False]))
    assert layer.output_kept().tolist() == [False, False, True, True, False, True]
    assert float(layer.kl_divergence().detach()) == pytest.approx(float(rows[[2, 3, 5]].sum()), rel=1e-6)
    layer.link_output_gate(heads, rows=torch.tensor([-1, -1, 0, 0, 1, 1]))  # relinking replaces
    assert layer.output_kept().tolist() == [True, True, False, False, False, True]
    for bad in (torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 1, 1, 2, 2]), torch.zeros(6),
                torch.tensor([0, 0, 1, 1, -2, -1])):
        with pytest.raises(ValueError, match="rows must be an integer tensor of shape"):
            layer.link_output_gate(heads, rows=bad)


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "circular"])
@pytest.mark.parametrize("padding", [1, "same"])
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_every_convolution_becomes_bayesian_with_its_outputs(dims: int, padding, padding_mode: str) -> None:
    torch.manual_seed(dims)
    plain_type = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1]
    plain = plain_type(4, 6, 3, padding=padding, dilation=2 if padding == "same" else 1, groups=2,
                       padding_mode=padding_mode)
    x = torch.randn(2, 4, *([7] * dims))
    net = bayesian_weights(nn.Sequential(plain))
    layer = net[0]
    assert type(layer) is (BayesianConv1d, BayesianConv2d, BayesianConv3d)[dims - 1]
    assert layer.replaces is plain_type and layer.weight.shape == plain.weight.shape
    with noise_mode(layer, NoiseMode.MEAN):
        torch.testing.assert_close(layer(x), plain(x))
    back = layer.as_deterministic()
    assert type(back) is plain_type and back.padding_mode == padding_mode
    torch.testing.assert_close(back(x), plain(x))
    # the local reparameterisation draws around the same mean, with the per-position variance
    # of the padded input (what a weight draw gives at one position)
    _randomise(layer)
    with torch.no_grad(), noise_mode(layer, NoiseMode.MEAN):
        mean = layer(x)
    var_layer = layer.as_deterministic()
    with torch.no_grad():
        var_layer.weight.copy_(layer.weight_scale**2)
        var_layer.bias.copy_(layer.bias_scale**2)
        exact_var = var_layer(x * x)
    with torch.no_grad(), noise_mode(layer, NoiseMode.REPARAM):
        draws = torch.stack([layer(x) for _ in range(400)])
    z = (draws.mean(0) - mean) / (exact_var / 400).sqrt()
    assert float(z.abs().max()) < 5.5
    torch.testing.assert_close(draws.var(0), exact_var, rtol=0.35, atol=0)
