"""The KL weight of a custom guide's sites (``pyro_prune.inference.tempered_guide``).

Pyro's ``TraceMeanField_ELBO`` weights a latent site's KL by the guide site's scale, and an
autoguide samples unscaled: before the weighting, every ``kl_scale`` trained the same
untempered posterior under an autoguide. Checked here against an independent computation of
the same draws' ``log q - log p`` from Pyro traces: the loss must be
``-E[log lik] + sum_s k_s (log q_s - log p_s)``, linear in each weight.
"""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer.autoguide import (
    AutoDelta,
    AutoDiagonalNormal,
    AutoLowRankMultivariateNormal,
    AutoNormal,
)
from torch.utils.data import TensorDataset

from pyro_prune.inference import fit, init_to_model
from pyro_prune.inference.elbo import pyro_elbo_loss
from pyro_prune.inference.tempered_guide import site_kl_weights
from pyro_prune.models import MLP
from pyro_prune.models.noise import NoiseMode, noise_mode

GUIDES = [AutoNormal, AutoDiagonalNormal, AutoLowRankMultivariateNormal, AutoDelta]


def _net(weights: str, dtype: torch.dtype) -> MLP:
    torch.manual_seed(0)
    pyro.clear_param_store()
    net = MLP(6, [5, 4], 3, weights=weights).to(dtype)
    net.num_data = 40
    return net


def _loss(net: MLP, guide, x, y, seed: int = 1) -> float:
    torch.manual_seed(seed)
    return float(pyro_elbo_loss(net, x, y, guide=guide).detach())


def _log_q_minus_log_p(net: MLP, guide, x, y, sites: set[str], seed: int = 1) -> float:
    """``sum over sites of log q(value) - log p(value)`` for the draws of ``seed``, unweighted,
    from the guide's trace (auxiliary sites and the Delta sites' Jacobians included) and the
    model replayed on it."""
    torch.manual_seed(seed)
    guide_trace = poutine.trace(guide).get_trace(x, y)
    with noise_mode(net.net, NoiseMode.SAMPLE):
        model_trace = poutine.trace(poutine.replay(net, trace=guide_trace)).get_trace(x, y)
    total = 0.0
    for name, site in guide_trace.nodes.items():
        if site["type"] != "sample":
            continue
        owner = name.removesuffix("_unconstrained")
        joint = site["infer"].get("is_auxiliary") and owner == name
        if joint or owner in sites or owner.rpartition(".")[0] in sites:
            total += float(site["fn"].log_prob(site["value"]).sum())
    for name, site in model_trace.nodes.items():
        if site["type"] == "sample" and not site["is_observed"] and (name in sites or name.rpartition(".")[0] in sites):
            total -= float(site["fn"].log_prob(site["value"]).sum())
    return total


@pytest.mark.parametrize("make", GUIDES, ids=lambda g: g.__name__)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_one_kl_weight_weights_the_guides_kl(make, dtype: torch.dtype) -> None:
    net = _net("point", dtype)
    x, y = torch.randn(8, 6, dtype=dtype), torch.arange(8) % 3
    guide = make(net, init_loc_fn=init_to_model(net))
    guide(x, y)
    losses = {}
    for k in (1.0, 2.0, 7.5):
        net.set_kl_scale(k)
        losses[k] = _loss(net, guide, x, y)
    kl = losses[2.0] - losses[1.0]
    assert abs(kl) > 1e-3  # the weight moves the loss: before, every weight gave losses[1.0]
    tol = 1e-4 * (1 + abs(losses[7.5])) if dtype == torch.float32 else 1e-9 * (1 + abs(losses[7.5]))
    assert losses[7.5] - losses[1.0] == pytest.approx(6.5 * kl, abs=tol)
    if make is not AutoDelta:  # a MAP fit's "KL" is -log p(theta*) alone
        net.set_kl_scale(1.0)
        sites = set(site_kl_weights(net))
        expected = _log_q_minus_log_p(net, guide, x, y, sites)
        assert kl == pytest.approx(expected, abs=tol * 10)


def test_a_weight_per_site_under_autonormal() -> None:
    """kl_scale "auto" in a network with Gaussian weights: the noise at the paper's weight,
    the weights at the ELBO's; the loss moves by (k - 1) times the noise sites' log q - log p."""
    net = _net("gaussian", torch.float64)
    x, y = torch.randn(8, 6, dtype=torch.float64), torch.arange(8) % 3
    guide = AutoNormal(net, init_loc_fn=init_to_model(net))
    guide(x, y)
    net.set_kl_scale("elbo")
    base = _loss(net, guide, x, y)
    net.set_kl_scale("auto")
    weights = site_kl_weights(net)
    noise = {name for name, w in weights.items() if w != 1.0}
    assert noise == {"fc1_gate.theta", "fc2_gate.theta"} and len(weights) == 5
    k = weights["fc1_gate.theta"]
    assert k == pytest.approx(40 / 9)  # num_data / structures
    net.set_kl_scale("elbo")
    expected = (k - 1) * _log_q_minus_log_p(net, guide, x, y, noise)
    net.set_kl_scale("auto")
    assert _loss(net, guide, x, y) - base == pytest.approx(expected, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("make", [AutoDiagonalNormal, AutoLowRankMultivariateNormal], ids=lambda g: g.__name__)
def test_a_joint_guide_over_sites_of_different_weights_is_refused_before_training(make) -> None:
    net = _net("gaussian", torch.float32)
    data = TensorDataset(torch.randn(40, 6), torch.arange(40) % 3)
    guide = make(net, init_loc_fn=init_to_model(net))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match=rf"the KL weights differ .*4.44444 for 'fc1_gate'.*{make.__name__} holds their "
                                         r"posterior in one joint Normal.*use AutoNormal.*kl_scale='elbo'"):
        fit(net, data, epochs=1, batch_size=8, guide=guide, progress=False)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # nothing trained
    # one weight for every site is a tempered joint posterior
    result = fit(net, data, epochs=1, batch_size=8, guide=guide, progress=False, kl_scale=4.0)
    assert result.config["kl_scale"] == 4.0
