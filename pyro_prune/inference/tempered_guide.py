"""The KL weight (``kl_scale``) of a custom Pyro guide's sites.

A :class:`~pyro_prune.models.PrunableNet` weights the KL term of each stochastic module by the
module's ``kl_scale`` (a temperature of the posterior, see ``docs/defaults.md``); its own guide
and its model sample their sites under ``poutine.scale(kl_scale)``. An autoguide samples its
sites unscaled: ``AutoNormal`` returns each model site as a ``Delta`` (carrying the
log-Jacobian of the map from the unconstrained draw) next to an auxiliary
``<site>_unconstrained`` Normal, the ``AutoContinuous`` guides one auxiliary joint Normal over
all sites. With the guide's ``log q`` unweighted, the ELBO would weight ``log p`` and not
``log q`` (and Pyro's ``TraceMeanField_ELBO`` takes a site's whole KL weight from the guide's
site: every ``kl_scale`` trained the same untempered posterior).

:func:`tempered_guide` runs a guide with each site weighted as the model weights it:

* a site of the model (``fc1_gate.theta``, ``fc1.weight``) by its module's ``kl_scale``, and
  ``AutoNormal``'s ``<site>_unconstrained`` by the same;
* an auxiliary site over several model sites (the ``AutoContinuous`` guides'
  ``_<guide>_latent``) by their common weight. Its entropy does not split by site, so
  sites of different weights under one joint Normal (``kl_scale="auto"`` in a network with
  Gaussian weights: the noise at the paper's weight, the weights at the ELBO's) are refused
  with a ``ValueError`` that names the remedies.

The weighted ELBO is ``E_q[log p(y | theta)] - sum_s k_s KL(q_s || p_s)`` for a mean-field
guide, and ``E_q[log p(y | theta)] - k KL(q || p)`` for a joint one with one weight ``k``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pyro.poutine.messenger import Messenger

from pyro_prune.models.base import PrunableNet

__all__ = ["check_guide_kl_weights", "site_kl_weights", "tempered_guide"]

#: the suffix of ``AutoNormal``'s auxiliary site of a model site
UNCONSTRAINED = "_unconstrained"


def site_kl_weights(model: PrunableNet) -> dict[str, float]:
    """The KL weight of each stochastic module of ``model``, by the name of its Pyro site
    (a Bayesian layer's ``<site>.weight`` and ``<site>.bias`` share it)."""
    weights: dict[str, float] = {}
    for module in model.modules():
        site, weight = getattr(module, "site_name", None), getattr(module, "kl_scale", None)
        if isinstance(site, str) and isinstance(weight, (int, float)):
            weights[site] = float(weight)
    return weights


def _owner(name: str, weights: dict[str, float]) -> str | None:
    """The module site a sample site belongs to, or ``None``."""
    base = name.removesuffix(UNCONSTRAINED)
    for candidate in (base, base.rpartition(".")[0]):
        if candidate in weights:
            return candidate
    return None


class _SiteKLWeights(Messenger):
    """Multiply the scale of each sample site of a guide by its model site's KL weight."""

    def __init__(self, weights: dict[str, float], guide_name: str) -> None:
        super().__init__()
        self.weights = weights
        self.guide_name = guide_name

    def _pyro_sample(self, msg: dict[str, Any]) -> None:
        owner = _owner(msg["name"], self.weights)
        if owner is not None:
            weight = self.weights[owner]
        elif msg["infer"].get("is_auxiliary"):
            weight = _common_weight(self.weights, self.guide_name)
        else:
            return
        if weight != 1.0:
            msg["scale"] = weight * msg["scale"]


def _common_weight(weights: dict[str, float], guide_name: str) -> float:
    values = sorted(set(weights.values()))
    if len(values) == 1:
        return values[0]
    by_weight = {v: [n for n, w in weights.items() if w == v] for v in values}
    listed = "; ".join(f"{v:g} for {', '.join(repr(n) for n in names[:3])}{', ...' if len(names) > 3 else ''}"
                       for v, names in by_weight.items())
    raise ValueError(
        f"the KL weights differ between the model's sites ({listed}), but {guide_name} holds their "
        f"posterior in one joint Normal, whose KL does not split by site; use AutoNormal (one Normal "
        f"per site, each weighted as its site), or one weight for every site (a number: "
        f"kl_scale={values[-1]:g}, or kl_scale='elbo')")


def tempered_guide(model: PrunableNet, guide: Callable) -> Callable:
    """``guide`` with each of its sites weighted by the KL weight of the model site it stands
    for (see the module docstring); the weights are read at every call, so a schedule that
    changes ``kl_scale`` (warm-up, fine-tuning) is followed. While every weight is 1 the
    guide runs unchanged."""

    def weighted(*args: Any, **kwargs: Any) -> Any:
        weights = site_kl_weights(model)
        if all(w == 1.0 for w in weights.values()):
            return guide(*args, **kwargs)
        with _SiteKLWeights(weights, type(guide).__name__):
            return guide(*args, **kwargs)

    return weighted


def check_guide_kl_weights(model: PrunableNet, guide: Any, kl_scale: Any) -> None:
    """A ``ValueError`` (see :func:`tempered_guide`) when ``guide`` holds sites that
    ``kl_scale`` weights differently in one joint posterior; ``fit`` checks it before training."""
    from pyro.infer import autoguide

    if isinstance(guide, autoguide.AutoContinuous):
        _common_weight(model.kl_scales(kl_scale), type(guide).__name__)
