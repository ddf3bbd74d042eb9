"""Criteria, schedules and predictions read the posterior of a fitted Pyro autoguide."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pyro
import pytest
import torch
from pyro.infer.autoguide import (
    AutoDelta,
    AutoDiagonalNormal,
    AutoLowRankMultivariateNormal,
    AutoNormal,
    init_to_feasible,
)
from scipy import integrate, stats

from pyro_prune.data import load_dataset
from pyro_prune.distributions import TruncatedLogNormal
from pyro_prune.inference import ContinuousPruning, evaluate, fit
from pyro_prune.inference.guides import (
    LogitNormalNoise,
    PointNoise,
    attached_guide,
    copy_weight_posterior,
    guide_delta_f,
    guide_noise_posterior,
    guide_score,
    init_to_model,
    monte_carlo_delta_f,
)
from pyro_prune.models import MLP
from pyro_prune.reduction import (
    delta_f_loguniform,
    get_criterion,
    structure_removals,
    structure_scores,
)

A, B = -20.0, 0.0
GUIDES = {
    "AutoNormal": lambda m: AutoNormal(m),
    "AutoDiagonalNormal": lambda m: AutoDiagonalNormal(m, init_loc_fn=init_to_feasible),
    "AutoLowRankMultivariateNormal": lambda m: AutoLowRankMultivariateNormal(m, init_loc_fn=init_to_feasible),
}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", split="train"), load_dataset("digits", split="test")


def _fitted(guide_name: str, digits, epochs: int = 4, schedule=None):
    train, _ = digits
    torch.manual_seed(0)
    pyro.clear_param_store()
    net = MLP(64, [32, 32], 10)
    guide = GUIDES[guide_name](net)
    res = fit(net, train, epochs=epochs, guide=guide, progress=False, kl_scale="paper",
              noise_lr=3e-2, schedule=schedule, seed=0)
    return net, guide, res


# ------------------------------------------------------------------- the family's numbers
def _u_of_log_theta(lt: float, d: float | None = None) -> float:
    """u = log(theta - a) - log(b - theta), with theta - a = a expm1(d), d = log theta - A."""
    d = lt - A if d is None else d
    return A + math.log(math.expm1(d)) - math.log(math.exp(B) - math.exp(A + d))


def _q_log_theta(lt: float, m: float, s: float, d: float | None = None) -> float:
    """Density of log theta when theta = a + (b - a) sigmoid(u), u ~ N(m, s^2)."""
    d = lt - A if d is None else d
    t = math.exp(A + d)
    du = 1.0 / -math.expm1(-d) + t / (math.exp(B) - t)  # d u / d log theta
    return stats.norm.pdf(_u_of_log_theta(lt, d), m, s) * du


@pytest.mark.parametrize("m,s", [(0.0, 0.1), (-10.0, 5.0), (-25.0, 3.0), (-31.0, 1.0), (3.0, 0.01)])
def test_bmrs_u_closed_form_matches_quadrature(m: float, s: float) -> None:
    post = LogitNormalNoise(torch.tensor([m], dtype=torch.float64), torch.tensor([s], dtype=torch.float64), A, B)
    for name, p1 in (("bmrs_u8", 8), ("bmrs_u4", 4)):
        lo, hi = -23 * math.log(2), -p1 * math.log(2)
        # the interval's mass from scipy's log CDF (upper tail mirrored), and by quadrature
        za, zb = (_u_of_log_theta(lo) - m) / s, (_u_of_log_theta(hi) - m) / s
        if za > 0:
            za, zb = -zb, -za
        log_mass = stats.norm.logcdf(zb) + math.log1p(-math.exp(stats.norm.logcdf(za) - stats.norm.logcdf(zb)))
        if log_mass > -600:
            quad, _ = integrate.quad(_q_log_theta, lo, hi, args=(m, s), points=[min(max(m, lo), hi)],
                                     limit=200, epsabs=0)
            assert quad == pytest.approx(math.exp(log_mass), rel=1e-6)
        expected = math.log(B - A) - math.log(hi - lo) + log_mass
        got = float(guide_delta_f(post, get_criterion(name)))
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("m,s", [(-10.0, 6.0), (-28.0, 2.0), (-33.0, 1.0), (-20.0, 5.0)])
@pytest.mark.parametrize("reduced_var", [1e-12, 0.25])
def test_bmrs_n_quadrature_matches_scipy(m: float, s: float, reduced_var: float) -> None:
    post = LogitNormalNoise(torch.tensor([m], dtype=torch.float64), torch.tensor([s], dtype=torch.float64), A, B)
    crit = get_criterion("bmrs_n", reduced_var=reduced_var)
    sd = math.sqrt(reduced_var)
    z = 0.5  # the half-normal's normaliser on [A, B] with mu_r = A

    # an independent reference in log theta (the guide integrates in u):
    # E_{p~}[q(log theta)] with log theta = A + sd x, x half-normal, over y = log x
    def integrand(y: float) -> float:
        x = math.exp(y)
        return x * stats.norm.pdf(x) / z * _q_log_theta(A + sd * x, m, s, d=sd * x)

    # where q puts log theta: u = m, i.e. log theta - A = log1p(e^(m - A) (1 - a)) roughly
    y_peak = math.log(math.log1p(math.exp(m - A)) / sd)
    hi = math.log(min(40.0, (B - A) / sd))
    ref, _ = integrate.quad(integrand, -120.0, hi, points=[min(y_peak, hi - 1e-3)], limit=500,
                            epsabs=0, epsrel=1e-10)
    expected = math.log(B - A) + math.log(ref)
    got = float(guide_delta_f(post, crit))
    assert got == pytest.approx(expected, abs=1e-3 * max(1.0, abs(expected)))
    # the released code's variant is the same plus 0.5 log 2 pi
    code = float(guide_delta_f(post, get_criterion("bmrs_n_code", reduced_var=reduced_var)))
    assert code - got == pytest.approx(0.5 * math.log(2 * math.pi), abs=1e-9)


def test_closed_forms_match_monte_carlo() -> None:
    loc = torch.tensor([-12.0, -8.0, -6.0], dtype=torch.float64)
    scale = torch.tensor([4.0, 2.0, 1.5], dtype=torch.float64)
    post = LogitNormalNoise(loc, scale, A, B)
    for name in ("bmrs_u8", "bmrs_u4"):
        crit = get_criterion(name)
        mc, se = monte_carlo_delta_f(post, crit, draws=200_000)
        exact = guide_delta_f(post, crit)
        assert torch.all(se < 0.05)
        assert torch.all((mc - exact).abs() < 4 * se + 1e-3), (name, mc, exact, se)
    # moments: E[theta] and SNR against draws (seeded: the tolerances are a few SE)
    torch.manual_seed(0)
    theta = post.rsample((200_000,))
    mean, var = post.moments()
    torch.testing.assert_close(mean, theta.mean(0), rtol=0.0, atol=5 * float(theta.std(0).max()) / math.sqrt(2e5))
    torch.testing.assert_close(var.sqrt(), theta.std(0), rtol=0.06, atol=0.0)


@pytest.mark.parametrize("criterion", ["bmrs", "bmrs_n", "bmrs_u8", "bmrs_u4", "bmrs_u_off"])
def test_point_posterior_refuses_bmr(criterion: str) -> None:
    # dF -> log p~(theta*) - log p(theta*): -inf below BMRS_U's interval (-19.5, where MAP
    # drives an unneeded structure) and a constant inside it, so BMR is refused
    theta = torch.exp(torch.tensor([-12.0, -2.0, -19.5], dtype=torch.float64))
    post = PointNoise(theta, A, B)
    with pytest.raises(TypeError, match=f"criterion '{criterion}' is Bayesian model reduction.*point posterior"):
        guide_delta_f(post, get_criterion(criterion))
    with pytest.raises(TypeError, match="AutoNormal, AutoDiagonalNormal"):
        guide_score(post, get_criterion(criterion))
    assert torch.equal(guide_score(post, get_criterion("e_theta")), theta)


# ------------------------------------------------------------------ fitted autoguides
@pytest.mark.parametrize("guide_name", list(GUIDES))
def test_criteria_read_the_fitted_guide(guide_name: str, digits) -> None:
    net, guide, _ = _fitted(guide_name, digits)
    assert attached_guide(net) is guide
    for name, layer in net.noise_layers().items():
        post = guide_noise_posterior(guide, layer)
        assert isinstance(post, LogitNormalNoise)
        # bmrs_u through the public API is the guide's closed form, not the layer's own
        ours = structure_scores(net, "bmrs_u8")[name].double()
        torch.testing.assert_close(ours, -guide_delta_f(post, get_criterion("bmrs_u8")))
        builtin = structure_scores(net, "bmrs_u8", guide=net.guide)[name]
        torch.testing.assert_close(builtin, -delta_f_loguniform(layer.loc, layer.scale))
        assert not torch.allclose(ours.float(), builtin)
        # against draws of the guide itself (its own sampling path, not ours)
        draws = torch.stack([pyro.poutine.trace(guide).get_trace(torch.zeros(1, 64)).nodes[layer.site_name]["value"]
                             for _ in range(300)]).detach().double()
        mean, _ = post.moments()
        se = draws.std(0) / math.sqrt(len(draws))
        assert torch.all((draws.mean(0) - mean).abs() < 5 * se + 1e-6)
        # the posterior mean the network predicts with is the guide's
        torch.testing.assert_close(layer.expected_theta().double(), mean * layer.kept.double())


@pytest.mark.slow
@pytest.mark.parametrize(("weights", "make"), [("point", AutoNormal), ("point", AutoDiagonalNormal),
                                               ("gaussian", AutoNormal)], ids=str)
def test_continuous_pruning_with_an_autoguide_prunes_on_the_defaults(weights: str, make, digits, caplog) -> None:
    """The default criterion under a Gaussian autoguide is BMRS_U-4, said in one line, and
    the default KL weight tempers the guide's posterior as it does the built-in one
    (``benchmarks/autoguide_criteria.py``, mean of seeds 0-2: 24.5% removed under AutoNormal,
    22.7% under AutoDiagonalNormal, 41.7% with Gaussian weights under AutoNormal)."""
    train, test = digits
    torch.manual_seed(0)
    pyro.clear_param_store()
    net = MLP(64, [100, 100], 10, weights=weights)
    guide = make(net, init_loc_fn=init_to_model(net))
    with caplog.at_level("INFO", logger="pyro_prune"):
        res = fit(net, train, epochs=20, lr=1e-2, batch_size=64, guide=guide, progress=False,
                  schedule=ContinuousPruning(), seed=0)
    assert res.report.criterion == "bmrs_u4" and "ContinuousPruning(criterion='bmrs_u4'" in res.config["schedule"]
    assert any(r.getMessage().startswith(f"criterion: bmrs_u4, the default under a Gaussian autoguide ({make.__name__}")
               for r in caplog.records)
    assert res.last["compression"] > 0.15
    assert evaluate(net, test)["accuracy"] > 0.92


def test_unsupported_guide_is_refused_by_name(digits) -> None:
    train, _ = digits
    net = MLP(64, [16], 10)

    def my_guide(x, y=None):  # a hand-written guide: the reduction cannot read it
        for layer in net.noise_layers().values():
            loc = pyro.param(f"{layer.site_name}_m", torch.zeros(layer.num_structures))
            with pyro.plate(f"{layer.site_name}_plate", layer.num_structures, dim=-1):
                pyro.sample(layer.site_name, TruncatedLogNormal(loc, torch.ones(()) * 0.1, A, B))

    with pytest.warns(RuntimeWarning, match="AutoNormal"):
        fit(net, train, epochs=1, guide=my_guide, progress=False)
    with pytest.raises(TypeError, match="supported guides: .*AutoNormal, AutoDiagonalNormal"):
        structure_removals(net, "bmrs_n")
    with pytest.raises(TypeError, match="AutoLowRankMultivariateNormal"):
        ContinuousPruning("bmrs_u").on_epoch_end(type("C", (), {"model": net, "epochs": 5})(), 1)
    # weight criteria do not read the noise posterior: still usable
    assert set(structure_scores(net, "l2")) == set(net.gates())


def test_a_guide_of_another_model_is_refused(digits) -> None:
    net, _, _ = _fitted("AutoNormal", digits, epochs=1)
    other = MLP(64, [32, 32], 10)
    foreign = AutoNormal(other)
    pyro.poutine.trace(foreign).get_trace(torch.zeros(2, 64), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="another model"):
        structure_scores(net, "bmrs_u", guide=foreign)
    with pytest.raises(TypeError, match="supported guides"):
        structure_scores(net, "bmrs_u", guide=lambda x, y=None: None)


def test_autodelta_reads_a_point_posterior(digits) -> None:
    train, _ = digits
    torch.manual_seed(0)
    net = MLP(64, [16], 10)
    guide = AutoDelta(net, init_loc_fn=init_to_feasible)
    fit(net, train, epochs=1, guide=guide, progress=False)
    layer = next(iter(net.noise_layers().values()))
    theta = guide.median()[layer.site_name].detach()
    torch.testing.assert_close(layer.expected_theta(), theta * layer.kept)
    scores = structure_scores(net, "e_theta")[next(iter(net.noise_layers()))]
    torch.testing.assert_close(scores, theta.double())


def test_autodelta_with_a_bmr_schedule_is_refused_before_training(digits) -> None:
    train, _ = digits
    torch.manual_seed(0)
    pyro.clear_param_store()
    net = MLP(64, [16], 10)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(TypeError, match="'bmrs' is Bayesian model reduction.*rank the point posterior with criterion 'e_theta'"):
        fit(net, train, epochs=2, guide=AutoDelta(net, init_loc_fn=init_to_feasible), progress=False,
            schedule=ContinuousPruning())
    assert attached_guide(net) is None  # the model as it was given, untrained
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    net2 = MLP(64, [16], 10)
    fit(net2, train, epochs=1, guide=AutoDelta(net2, init_loc_fn=init_to_feasible), progress=False)
    with pytest.raises(TypeError, match="point posterior"):
        structure_removals(net2, "bmrs_u8")


@pytest.mark.parametrize("make", [
    lambda m: AutoDiagonalNormal(m),
    lambda m: AutoLowRankMultivariateNormal(m),
    lambda m: AutoDelta(m),
], ids=["AutoDiagonalNormal", "AutoLowRankMultivariateNormal", "AutoDelta"])
def test_a_guide_starting_the_network_switched_off_is_refused(make, digits) -> None:
    # init_to_median (these guides' default) starts theta at the prior's median e^-10: every
    # gated layer passes 5e-5 of its signal, the network cannot train (chance accuracy)
    train, _ = digits
    torch.manual_seed(0)
    pyro.clear_param_store()
    net = MLP(64, [16], 10)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match=r"starts the noise of 'fc1_gate' at E\[theta\] / theta_ref = [1-9](\.\d)?e-05 .*"
                                         r"init_loc_fn=init_to_feasible"):
        fit(net, train, epochs=1, guide=make(net), progress=False)
    assert attached_guide(net) is None
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_a_fitted_guide_is_not_judged_by_its_start_again(digits) -> None:
    # a second fit continues the guide where the first left it, wherever training took the
    # structures: only a guide run for the first time is checked
    train, _ = digits
    net, guide, _ = _fitted("AutoNormal", digits, epochs=1)
    layer = net.noise_layers()["fc1_gate"]
    loc, _ = guide._get_loc_and_scale(layer.site_name)
    with torch.no_grad():
        loc.fill_(-12.0)  # as if training had driven every structure of fc1 down
    assert float(guide_noise_posterior(guide, layer).moments()[0].median()) < 1e-3
    fit(net, train, epochs=1, guide=guide, progress=False, seed=1)
    assert attached_guide(net) is guide


def test_a_new_guide_taking_another_guides_parameters_is_warned_of(digits) -> None:
    """Pyro's param store keys an autoguide's parameters by its name: a second AutoNormal of a
    network of the same layout starts from the first one's fitted values and trains them
    for both. fit says so (and not after pyro.clear_param_store())."""
    train, _ = digits
    first, first_guide, _ = _fitted("AutoNormal", digits, epochs=1)
    fitted = {k: v.clone() for k, v in first_guide.state_dict().items()}
    second = MLP(64, [32, 32], 10)
    with pytest.warns(RuntimeWarning, match=r"guide AutoNormal had not been run, yet Pyro's param store "
                                            r"already held \d+ of its parameters \('AutoNormal\.locs\..*"
                                            r"pyro\.clear_param_store\(\)"):
        fit(second, train, epochs=1, guide=AutoNormal(second), progress=False, seed=1)
    assert any(not torch.equal(fitted[k], v) for k, v in first_guide.state_dict().items())  # shared
    pyro.clear_param_store()
    third = MLP(64, [32, 32], 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        fit(third, train, epochs=1, guide=AutoNormal(third), progress=False, seed=1)


def test_init_to_model_starts_at_the_model() -> None:
    torch.manual_seed(0)
    pyro.clear_param_store()
    net = MLP(64, [16], 10, weights="gaussian")
    guide = AutoNormal(net, init_loc_fn=init_to_model(net))
    pyro.poutine.trace(guide).get_trace(torch.zeros(2, 64), torch.zeros(2, dtype=torch.long))
    medians = guide.median()
    for name in ("fc1", "out"):
        layer = net.net.get_submodule(name)
        assert torch.equal(medians[f"{name}.weight"].detach(), layer.weight_loc.detach())
        assert torch.equal(medians[f"{name}.bias"].detach(), layer.bias_loc.detach())
    # the noise at the interior point u = 0: theta = a + (b - a) / 2
    torch.testing.assert_close(medians["fc1_gate.theta"].detach(),
                               torch.full((16,), (math.exp(A) + math.exp(B)) / 2))


def test_a_guide_starting_every_weight_at_zero_is_refused(digits) -> None:
    train, _ = digits
    torch.manual_seed(0)
    pyro.clear_param_store()
    net = MLP(64, [16], 10, weights="gaussian")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match=r"starts every weight of 'fc1' at 0: .*init_to_model\(model\)"):
        fit(net, train, epochs=1, guide=AutoNormal(net), progress=False)
    assert attached_guide(net) is None
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


@pytest.mark.parametrize("make", [AutoNormal, AutoDiagonalNormal], ids=["AutoNormal", "AutoDiagonalNormal"])
def test_the_guides_weight_posterior_is_what_predictions_read(make, digits) -> None:
    # the layers' own weight parameters are untouched by SVI under an autoguide: fit copies
    # the guide's marginals into them, so evaluate and the converted network use the fit
    from pyro_prune.convert import to_deterministic

    train, test = digits
    torch.manual_seed(0)
    pyro.clear_param_store()
    net = MLP(64, [32], 10, weights="gaussian")
    guide = make(net, init_loc_fn=init_to_model(net))
    # one KL weight for all sites: a joint Normal cannot weight the noise apart from the
    # weights (kl_scale "auto"; refused, see test_tempered_guide.py)
    fit(net, train, epochs=3, lr=1e-2, guide=guide, progress=False, seed=0,
        kl_scale="auto" if make is AutoNormal else "elbo")
    for name in ("fc1", "out"):
        layer = net.net.get_submodule(name)
        if isinstance(guide, AutoNormal):
            loc, scale = guide._get_loc_and_scale(f"{name}.weight")
        else:
            site = {s["name"]: (lo, sc) for (s, lo), (_, sc) in
                    zip(guide._unpack_latent(guide.loc), guide._unpack_latent(guide.scale))}
            loc, scale = site[f"{name}.weight"]
        torch.testing.assert_close(layer.weight_loc.detach(), loc.detach())
        torch.testing.assert_close(layer.weight_log_scale.detach().exp(), scale.detach())
    assert evaluate(net, test)["accuracy"] > 0.85
    x, y = test.tensors
    with torch.no_grad():
        converted = to_deterministic(net)(x).argmax(-1)
        assert torch.equal(converted, net.predict(x).argmax(-1))
    assert copy_weight_posterior(net, guide) == ["fc1", "out"]


def test_arviz_export_reads_the_fitted_guide(digits) -> None:
    from pyro_prune import inspect as pa

    net, guide, _ = _fitted("AutoNormal", digits, epochs=1)
    idata = pa.to_inference_data(net, num_samples=4, criteria=["bmrs_u8", "e_theta"])
    red = idata["reduction"] if not hasattr(idata, "reduction") else idata.reduction
    names = list(red.data_vars)
    assert any(n.endswith("_guide_loc") for n in names) and not any(n.endswith("_loc") and "guide" not in n
                                                                   for n in names)
    name, layer = next(iter(net.noise_layers().items()))
    var = next(n for n in names if n.endswith("_dF"))
    df = guide_delta_f(guide_noise_posterior(guide, layer), get_criterion("bmrs_u8")).numpy()
    np.testing.assert_allclose(np.asarray(red[var].values)[0], df, rtol=1e-6)


# ------------------------------------------------------- networks the project did not write
def test_a_plain_torch_network_with_gaussian_weights_under_an_autoguide(digits) -> None:
    from torch import nn

    from pyro_prune.convert import to_deterministic
    from pyro_prune.models import bayesianize

    train, test = digits
    torch.manual_seed(0)
    pyro.clear_param_store()
    mine = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    model = bayesianize(mine, weights="gaussian")
    with pytest.raises(ValueError, match="starts every weight of '1' at 0"):
        fit(model, train, epochs=1, guide=AutoNormal(model), progress=False)
    pyro.clear_param_store()
    guide = AutoNormal(model, init_loc_fn=init_to_model(model))
    fit(model, train, epochs=5, lr=1e-2, guide=guide, progress=False, seed=0)
    assert evaluate(model, test)["accuracy"] > 0.9
    x, _ = test.tensors
    with torch.no_grad():
        assert torch.equal(to_deterministic(model)(x).argmax(-1), model.predict(x).argmax(-1))


def test_a_tiny_transformer_under_autoguides() -> None:
    import foreign_networks as foreign
    from torch.utils.data import TensorDataset

    from pyro_prune.models import bayesianize

    torch.manual_seed(0)
    ids = torch.randint(0, 50, (128, 12))
    data = TensorDataset(ids, (ids[:, 0] < 25).long())
    for make, starts in ((AutoDiagonalNormal, False), (AutoNormal, True)):
        pyro.clear_param_store()
        model = bayesianize(foreign.hf_bert_logits(), example_input=ids[:2])
        guide = make(model)
        if not starts:  # init_to_median: every gate at e^-10
            with pytest.raises(ValueError, match=r"starts the noise of 'gates\..*_gate' at E\[theta\]"):
                fit(model, data, epochs=1, batch_size=32, guide=guide, progress=False)
            continue
        result = fit(model, data, epochs=2, batch_size=32, guide=guide, progress=False)
        assert attached_guide(model) is guide
        assert all(math.isfinite(row["loss"]) for row in result.history)


def _plain_cnn() -> torch.nn.Module:
    from torch import nn

    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))


def _hf_vit() -> torch.nn.Module:
    import foreign_networks as foreign

    return foreign.hf_vit(intermediate=64, labels=10)  # the digits' 8x8 images, 10 classes


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:pruning would empty")
@pytest.mark.parametrize(("make", "conv"), [(_plain_cnn, True), (_hf_vit, False)], ids=["plain_cnn", "hf_vit"])
def test_networks_the_project_did_not_write_prune_under_an_autoguide_on_the_defaults(make, conv: bool, digits) -> None:
    """A CNN as its author writes it and a tiny Hugging Face ViT, bayesianized, fitted under
    AutoNormal with nothing but ContinuousPruning(): the default criterion under the guide
    (bmrs_u4) removes structures of the guide's tempered posterior, the accuracy holds and
    the converted network predicts as the model does."""
    from torch import nn

    from pyro_prune import compression
    from pyro_prune.convert import to_deterministic
    from pyro_prune.models import bayesianize

    (train, test) = digits
    x, y = train.tensors[0].reshape(-1, 1, 8, 8), train.tensors[1]
    xt, yt = test.tensors[0].reshape(-1, 1, 8, 8), test.tensors[1]
    torch.manual_seed(0)
    pyro.clear_param_store()
    options = {"noise_on": (nn.Linear, nn.Conv2d)} if conv else {}  # the ViT: neurons and heads
    model = bayesianize(make(), example_input=x[:2], **options)
    guide = AutoNormal(model, init_loc_fn=init_to_model(model))
    result = fit(model, (x, y), epochs=20, lr=1e-2, batch_size=64, guide=guide, progress=False, seed=0,
                 schedule=ContinuousPruning())
    assert result.report.criterion == "bmrs_u4" and result.report.removed > 0
    assert compression(model) > 0.2
    assert evaluate(model, (xt, yt))["accuracy"] > 0.93
    with torch.no_grad():
        assert torch.equal(to_deterministic(model)(xt).argmax(-1), model.predict(xt).argmax(-1))
