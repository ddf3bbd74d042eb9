"""Read the noise posterior of a fitted Pyro autoguide, for every criterion and predictive.

:func:`~pyro_prune.inference.fit.fit` trains any guide with ``engine="pyro"``
(``fit(model, data, guide=AutoNormal(model))``). The reduction criteria, the posterior mean
the network predicts with, the fast predictive draws and the ArviZ export must then read the
posterior of *that* guide, not the built-in variational parameters of the noise layers (which
the autoguide never trains). :func:`attach_guide` (called by ``fit``) connects a fitted
guide to the model's :class:`~pyro_prune.models.noise.MultiplicativeNoise` layers; each layer
then reads its posterior from the guide, live, as a :class:`NoisePosterior`.

The family. An autoguide draws every site in the unconstrained space of the site's support.
The noise prior's support is the interval ``[a, b] = [e^A, e^B]``, for which
``biject_to`` is a sigmoid followed by an affine map: ``theta = a + (b - a) sigmoid(u)``. A
Gaussian autoguide (``AutoNormal``, ``AutoDiagonalNormal``, ``AutoMultivariateNormal``,
``AutoLowRankMultivariateNormal``) gives every structure a Normal marginal
``u ~ N(m, s^2)``: ``theta`` is logit-normal on ``[a, b]``, not log-normal (``log theta`` is
no affine function of ``u``). Since one structure's Bayesian model reduction depends only on
that structure's marginal (``dF = log E_q[p~(theta)/p(theta)]`` integrates out every other
coordinate), the marginals are all the criteria need, also for the low-rank guides.

What each criterion becomes under that family (:func:`guide_delta_f`):

* BMRS_U (reduced prior ``LogU[A', B']``): closed form,
  ``dF = log(B - A) - log(B' - A') + log q(A' <= log theta <= B')`` and, ``u`` being monotone
  in ``log theta``, ``q(A' <= log theta <= B') = Phi((u(B') - m)/s) - Phi((u(A') - m)/s)``
  (:func:`~pyro_prune.distributions.log_diff_ndtr`, exact in the tails).
* BMRS_N (reduced prior ``LogN[A,B](mu_r, s_r^2)``, a near-point mass at ``A``): no closed
  form; ``dF = log(B - A) + log E_q[p~(log theta)]`` by quadrature in ``u`` over the region
  where both ``q`` and ``p~`` have mass (trapezoid on a fine grid, summed with logsumexp).
  For a point reduced prior this tends to ``log q(theta_r) - log p(theta_r)``; at the edge
  ``A`` a logit-normal density vanishes, which is why BMRS_N keeps far more under these
  guides than BMRS_U.
* ``AutoDelta`` (a point posterior ``theta*``, a MAP fit): the BMR criteria are refused
  (:func:`check_point_guide_criterion`). A point posterior carries no evidence: the limit
  ``dF = log p~(theta*) - log p(theta*)`` is ``-inf`` outside the reduced prior's support
  and a constant inside it, a fixed threshold in disguise that keeps the structures MAP
  drove furthest down (to ``A``, below BMRS_U's interval). ``e_theta`` reads ``theta*``.
* ``e_theta`` and ``snr``: the moments of ``theta`` by Gauss-Hermite quadrature.

:func:`monte_carlo_delta_f` estimates any of them from draws of the guide, with a standard
error (in log space), as an independent check. A guide the reduction cannot read (a flow, a
custom callable, an autoguide of another model) gets a ``TypeError``/``ValueError`` naming
the supported guides, never a silent fall-back to the built-in parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

import numpy as np
import torch
from pyro.infer import autoguide
from torch import Tensor

from pyro_prune.distributions import log_diff_ndtr
from pyro_prune.models.base import PrunableNet
from pyro_prune.models.noise import MultiplicativeNoise
from pyro_prune.reduction import Criterion

__all__ = [
    "SUPPORTED_GUIDES",
    "LogitNormalNoise",
    "NoisePosterior",
    "PointNoise",
    "attach_guide",
    "attached_guide",
    "check_guide_start",
    "check_point_guide_criterion",
    "check_readable_guide",
    "copy_weight_posterior",
    "init_to_model",
    "detach_guide",
    "guide_delta_f",
    "guide_noise_posterior",
    "monte_carlo_delta_f",
]

_LN2 = math.log(2.0)
_LOG_2PI = math.log(2.0 * math.pi)
#: the guides whose noise posterior the reduction reads (besides the model's own guide)
SUPPORTED_GUIDES: tuple[type, ...] = (
    autoguide.AutoNormal,
    autoguide.AutoDiagonalNormal,
    autoguide.AutoLowRankMultivariateNormal,
    autoguide.AutoMultivariateNormal,
    autoguide.AutoDelta,
)
_SUPPORTED_NAMES = ", ".join(["the model's own guide"] + [g.__name__ for g in SUPPORTED_GUIDES])
#: quadrature sizes: grid points of the BMR integral, Gauss-Hermite nodes of the moments
_GRID = 4097
_HERMITE = 96
#: half-width (in standard deviations) of the region a Gaussian is integrated over
_WIDTH = 40.0


class NoisePosterior:
    """The posterior of one noise layer's ``theta`` (all structures), as a guide defines it.

    Attributes:
        family: a short name of the family (``"logit-normal"``, ``"point"``).
        log_low, log_high: the bounds ``A < B`` of ``log theta``.
    """

    family = ""

    def __init__(self, log_low: float, log_high: float) -> None:
        self.log_low = float(log_low)
        self.log_high = float(log_high)

    def log_mass(self, lo: float, hi: float) -> Tensor:
        """``log q(lo <= log theta <= hi)`` per structure."""
        raise NotImplementedError

    def log_expect_density(self, log_density: Callable[[Tensor], Tensor],
                           lo: Tensor, hi: Tensor) -> Tensor:
        """``log E_q[f(log theta)]`` for a density ``f`` (given by its log) with most of its
        mass in ``[lo, hi]`` (per structure)."""
        raise NotImplementedError

    def moments(self) -> tuple[Tensor, Tensor]:
        """``E[theta]`` and ``Var[theta]`` per structure (float64)."""
        raise NotImplementedError

    def rsample(self, shape: tuple[int, ...] = ()) -> Tensor:
        """Draws of ``theta``, shape ``shape + [n]``, differentiable in the guide's parameters."""
        raise NotImplementedError

    def parameters(self) -> dict[str, Tensor]:
        """The family's parameters, per structure (for the ArviZ export)."""
        raise NotImplementedError


class LogitNormalNoise(NoisePosterior):
    """``theta = a + (b - a) sigmoid(u)``, ``u ~ N(loc, scale^2)``: a Gaussian autoguide's marginal."""

    family = "logit-normal"

    def __init__(self, loc: Tensor, scale: Tensor, log_low: float, log_high: float) -> None:
        super().__init__(log_low, log_high)
        self.loc, self.scale = loc, scale

    # the map between u and l = log theta, in float64 and in log space
    def log_theta(self, u: Tensor) -> Tensor:
        """``log(a + (b - a) sigmoid(u))``."""
        log_width = self.log_high + math.log(-math.expm1(self.log_low - self.log_high))
        return torch.logaddexp(torch.full_like(u, self.log_low),
                               log_width + torch.nn.functional.logsigmoid(u))

    def unconstrained(self, log_theta: Tensor) -> Tensor:
        """The inverse: ``u = log(theta - a) - log(b - theta)`` (``-inf`` at ``A``, ``+inf`` at ``B``)."""
        lt = log_theta.to(torch.float64)
        lo = lt + torch.log(-torch.expm1(self.log_low - lt))
        hi = self.log_high + torch.log(-torch.expm1(lt - self.log_high))
        return lo - hi

    def _standard(self) -> tuple[Tensor, Tensor]:
        return self.loc.detach().double(), self.scale.detach().double()

    def log_mass(self, lo: float, hi: float) -> Tensor:
        m, s = self._standard()
        u = self.unconstrained(torch.tensor([lo, hi], dtype=torch.float64))
        return log_diff_ndtr((u[0] - m) / s, (u[1] - m) / s)

    def log_expect_density(self, log_density: Callable[[Tensor], Tensor],
                           lo: Tensor, hi: Tensor) -> Tensor:
        m, s = self._standard()
        # the u-region where q has mass and the one where f has mass; the integrand lives in
        # their overlap (or, when they are disjoint, in the gap between them)
        u_lo = torch.maximum(m - _WIDTH * s, self.unconstrained(lo.double()))
        u_hi = torch.minimum(m + _WIDTH * s, self.unconstrained(hi.double()))
        start, stop = torch.minimum(u_lo, u_hi), torch.maximum(u_lo, u_hi)
        t = torch.linspace(0.0, 1.0, _GRID, dtype=torch.float64)
        u = start.unsqueeze(-1) + (stop - start).unsqueeze(-1) * t  # [n, G]
        h = (stop - start) / (_GRID - 1)
        log_q = (-0.5 * ((u - m.unsqueeze(-1)) / s.unsqueeze(-1)).square()
                 - torch.log(s).unsqueeze(-1) - 0.5 * _LOG_2PI)
        log_f = log_q + log_density(self.log_theta(u))
        ends = torch.zeros(_GRID, dtype=torch.float64)
        ends[0] = ends[-1] = -_LN2  # trapezoid weights 1/2 at the ends
        return torch.logsumexp(log_f + ends, dim=-1) + torch.log(h.clamp_min(1e-300))

    def _hermite(self) -> tuple[Tensor, Tensor]:
        """Draw-free ``sigmoid(u) - sigmoid(m)`` at the Gauss-Hermite nodes, and the weights."""
        x, w = np.polynomial.hermite_e.hermegauss(_HERMITE)
        nodes = torch.as_tensor(x, dtype=torch.float64)
        weights = torch.as_tensor(w / math.sqrt(2 * math.pi), dtype=torch.float64)
        m, s = self._standard()
        u = m.unsqueeze(-1) + s.unsqueeze(-1) * nodes
        return torch.sigmoid(u) - torch.sigmoid(m).unsqueeze(-1), weights

    def moments(self) -> tuple[Tensor, Tensor]:
        a, b = math.exp(self.log_low), math.exp(self.log_high)
        m, _ = self._standard()
        d, w = self._hermite()  # centred at sigmoid(m): the variance keeps its digits
        mean_d = (d * w).sum(-1)
        var = ((d - mean_d.unsqueeze(-1)).square() * w).sum(-1)
        return a + (b - a) * (torch.sigmoid(m) + mean_d), (b - a) ** 2 * var

    def rsample(self, shape: tuple[int, ...] = ()) -> Tensor:
        eps = torch.randn(tuple(shape) + tuple(self.loc.shape), dtype=self.loc.dtype,
                          device=self.loc.device)
        u = self.loc + self.scale * eps
        a, b = math.exp(self.log_low), math.exp(self.log_high)
        return a + (b - a) * torch.sigmoid(u)

    def parameters(self) -> dict[str, Tensor]:
        return {"guide_loc": self.loc.detach(), "guide_scale": self.scale.detach()}


class PointNoise(NoisePosterior):
    """A point posterior ``theta*`` (``AutoDelta``)."""

    family = "point"

    def __init__(self, theta: Tensor, log_low: float, log_high: float) -> None:
        super().__init__(log_low, log_high)
        self.theta = theta

    def _log_theta(self) -> Tensor:
        return torch.log(self.theta.detach().double())

    def log_mass(self, lo: float, hi: float) -> Tensor:
        lt = self._log_theta()
        inside = (lt >= lo) & (lt <= hi)
        return torch.where(inside, torch.zeros_like(lt), torch.full_like(lt, -math.inf))

    def log_expect_density(self, log_density: Callable[[Tensor], Tensor],
                           lo: Tensor, hi: Tensor) -> Tensor:
        lt = self._log_theta()
        return log_density(lt.unsqueeze(-1)).squeeze(-1)

    def moments(self) -> tuple[Tensor, Tensor]:
        t = self.theta.detach().double()
        return t, torch.zeros_like(t)

    def rsample(self, shape: tuple[int, ...] = ()) -> Tensor:
        return self.theta.expand(tuple(shape) + tuple(self.theta.shape))

    def parameters(self) -> dict[str, Tensor]:
        return {"guide_theta": self.theta.detach()}


# ------------------------------------------------------------------------------ guides
def _wraps(fn: Any, model: PrunableNet, depth: int = 0) -> bool:
    """Whether callable ``fn`` is ``model`` (or a Pyro handler / partial around it)."""
    if fn is model:
        return True
    if depth > 8:
        return False
    if getattr(fn, "__self__", None) is model:  # a bound method of the model
        return True
    inner = getattr(fn, "func", None)
    if isinstance(fn, partial) or inner is not None:
        args = list(getattr(fn, "args", ())) + ([inner] if inner is not None else [])
        return any(_wraps(a, model, depth + 1) for a in args if callable(a))
    return False


def check_readable_guide(model: PrunableNet, guide: Any) -> None:
    """Refuse a guide whose noise posterior the reduction cannot read for ``model``.

    ``TypeError`` for a guide of a kind it cannot evaluate (:data:`SUPPORTED_GUIDES`),
    ``ValueError`` for one built for another model, not run yet, or missing a noise site.
    """
    if isinstance(guide, autoguide.AutoGuideList):
        raise TypeError(
            f"guide {type(guide).__name__} cannot be read by the reduction; supported guides: "
            f"{_SUPPORTED_NAMES}"
        )
    if not isinstance(guide, SUPPORTED_GUIDES):
        name = getattr(guide, "__name__", None) or type(guide).__name__
        raise TypeError(
            f"guide {name} cannot be read by the reduction (no noise posterior it can "
            f"evaluate); supported guides: {_SUPPORTED_NAMES}"
        )
    guide = cast(Any, guide)
    if not _wraps(guide.model, model):
        raise ValueError(
            f"guide {type(guide).__name__} was built for another model; build it with "
            f"{type(guide).__name__}(model) for this {type(model).__name__}"
        )
    if guide.prototype_trace is None:
        raise ValueError(
            f"guide {type(guide).__name__} has not been run yet (fit it first: "
            "fit(model, data, guide=guide))"
        )
    sites = set(guide.prototype_trace.nodes)
    missing = [m.site_name for m in model.noise_layers().values() if m.site_name not in sites]
    if missing:
        raise ValueError(
            f"guide {type(guide).__name__} has no sample site for the noise of {missing}; "
            "it must cover every noise site of the model"
        )


#: the smallest starting multiplier ``E_q[theta] / theta_ref`` (median over a layer's kept
#: structures) :func:`check_guide_start` accepts: below it a gated layer passes less than a
#: thousandth of its signal, and two such layers in a chain a millionth
MIN_START_MULTIPLIER = 1e-3


def init_to_model(model: PrunableNet) -> Callable[..., Tensor]:
    """An ``init_loc_fn`` for an autoguide that starts it where the model stands.

    Gaussian weights (``weights="gaussian"``, or a network given to
    :func:`~pyro_prune.models.bayesianize` with ``weights="gaussian"``) start at their current
    posterior means, which are the trained weights of a wrapped network; the noise starts at
    ``theta ~ 0.5`` (``init_to_feasible``: the interior point ``u = 0``, since the layers' own
    start ``theta = e^B`` is the edge of the support), every other site as
    ``init_to_feasible`` puts it. ``AutoNormal(model, init_loc_fn=init_to_model(model))``.
    Pyro's own defaults start Normal weights at 0 (``init_to_feasible``, and ``init_to_median``
    at the prior's median, 0 as well) and the noise at the prior's median
    (``init_to_median``); :func:`check_guide_start` refuses both.
    """
    from pyro.infer.autoguide.initialization import init_to_feasible, init_to_value

    from pyro_prune.models.bayesian import BayesianLayer

    values: dict[str, Tensor] = {}
    for layer in model.stochastic_modules().values():
        if isinstance(layer, BayesianLayer):
            values[f"{layer.site_name}.weight"] = layer.weight_loc.detach().clone()
            if layer.bias_loc is not None:
                values[f"{layer.site_name}.bias"] = layer.bias_loc.detach().clone()
    return cast(Callable[..., Tensor], init_to_value(values=values, fallback=init_to_feasible))


def check_guide_start(model: PrunableNet, guide: Any) -> None:
    """Refuse a freshly initialised guide that starts the network where it cannot train.

    The model's own guide starts every structure at ``theta = theta_ref`` (multiplier 1) and
    the Gaussian weights at their initial (or a wrapped network's trained) values. An
    autoguide starts where its ``init_loc_fn`` puts it:

    * the noise: the default of ``AutoDiagonalNormal``, the multivariate guides and
      ``AutoDelta`` (``init_to_median``) is the prior's median, ``theta = e^((A + B) / 2)``
      (``e^-10`` for ``LogU[-20, 0]``), which multiplies every gated layer's output by about
      ``5e-5``: the network predicts from its biases alone, its gradients vanish and it does
      not train, and the criteria then remove nearly every structure or, with a point guide,
      none: a result that says nothing about the data;
    * Gaussian weights: every default puts all of a layer's weights at the prior's centre 0,
      where the layer's units are identical and stay so.

    ``fit`` calls this on a guide it runs for the first time; :func:`init_to_model` is a
    start it accepts.

    Raises:
        ValueError: a layer's median starting multiplier ``E_q[theta] / theta_ref`` is below
            :data:`MIN_START_MULTIPLIER`, or a Bayesian layer's weights all start at one
            value; the message names the layer and the fix.
    """
    from pyro_prune.models.bayesian import BayesianLayer

    fix = (f"start it where the model stands: {type(guide).__name__}(model, "
           "init_loc_fn=pyro_prune.inference.init_to_model(model))")
    for name, layer in model.noise_layers().items():
        kept = layer.kept.detach().cpu()
        if not bool(kept.any()):
            continue
        mean, _ = guide_noise_posterior(guide, layer).moments()
        multiplier = float((mean.cpu()[kept] * layer.signal_scale).median())
        if not multiplier >= MIN_START_MULTIPLIER:
            raise ValueError(
                f"guide {type(guide).__name__} starts the noise of {name!r} at E[theta] / theta_ref = "
                f"{multiplier:.2g} (median over its structures): the layer passes almost none of "
                f"its signal, so the network cannot train and the criteria would decide on noise; {fix} "
                "(or init_loc_fn=init_to_feasible, theta ~ 0.5)"
            )
    medians = None
    for name, module in model.stochastic_modules().items():
        if not isinstance(module, BayesianLayer):
            continue
        if medians is None:
            medians = guide.median()
        weight = medians.get(f"{module.site_name}.weight")
        if weight is not None and weight.numel() > 1 and bool((weight == weight.reshape(-1)[0]).all()):
            raise ValueError(
                f"guide {type(guide).__name__} starts every weight of {name!r} at "
                f"{float(weight.reshape(-1)[0]):.3g}: the layer's units start identical and get the "
                f"same updates, so the network cannot train; {fix}"
            )


def _continuous_site(guide: autoguide.AutoContinuous, site_name: str) -> tuple[Tensor, Tensor]:
    """The Normal marginal ``(loc, scale)`` of one site of an ``AutoContinuous`` guide."""
    if isinstance(guide, autoguide.AutoMultivariateNormal):
        loc, tril = guide.loc, guide.scale_tril
        scale = tril.square().sum(-1).sqrt()
    elif isinstance(guide, autoguide.AutoLowRankMultivariateNormal):
        post = guide.get_posterior()
        loc, scale = post.loc, post.variance.sqrt()
    else:  # AutoDiagonalNormal
        loc, scale = guide.loc, guide.scale
    for (site, lo), (_, sc) in zip(guide._unpack_latent(loc), guide._unpack_latent(scale)):
        if site["name"] == site_name:
            return lo, sc
    raise ValueError(f"guide {type(guide).__name__} has no site {site_name!r}")


def _site_marginal(guide: Any, site: str) -> tuple[Tensor, Tensor]:
    """The Normal marginal ``(loc, scale)`` a supported autoguide holds for a real-valued site
    (scale 0 for ``AutoDelta``)."""
    if isinstance(guide, autoguide.AutoNormal):
        return guide._get_loc_and_scale(site)
    if isinstance(guide, autoguide.AutoDelta):
        value = guide.median()[site]
        return value, torch.zeros_like(value)
    return _continuous_site(guide, site)


def copy_weight_posterior(model: PrunableNet, guide: Any) -> list[str]:
    """Copy the posterior an autoguide holds for Gaussian weights into the layers' own
    parameters (``weight_loc``, ``weight_log_scale``, and the bias's).

    An autoguide over a network with Gaussian weights (``weights="gaussian"``) holds their
    posterior itself, and the layers' own parameters, which SVI then leaves untouched, would
    keep their initial values: predictions at the posterior mean (``evaluate``,
    ``model.predict``), the fast predictive draws, the ArviZ export and
    :func:`~pyro_prune.convert.to_deterministic` read those. ``fit`` copies the guide's
    per-site Normal marginals (a low-rank or full-covariance guide's marginals; ``AutoDelta``'s
    point, with the smallest positive scale) after every epoch, so that every reader sees the
    fitted posterior. Returns the names of the layers copied.
    """
    from pyro_prune.models.bayesian import BayesianLayer

    sites = set(guide.prototype_trace.nodes) if getattr(guide, "prototype_trace", None) else set()
    copied = []
    with torch.no_grad():
        for name, layer in model.stochastic_modules().items():
            if not isinstance(layer, BayesianLayer) or f"{layer.site_name}.weight" not in sites:
                continue
            for part in ("weight", "bias"):
                loc_param, log_scale_param = getattr(layer, f"{part}_loc"), getattr(layer, f"{part}_log_scale")
                if loc_param is None or log_scale_param is None:
                    continue
                loc, scale = _site_marginal(guide, f"{layer.site_name}.{part}")
                tiny = torch.finfo(log_scale_param.dtype).tiny
                loc_param.copy_(loc.detach().reshape(loc_param.shape))
                log_scale_param.copy_(scale.detach().clamp_min(tiny).log().reshape(log_scale_param.shape))
            copied.append(name)
    return copied


def guide_noise_posterior(guide: Any, layer: MultiplicativeNoise) -> NoisePosterior:
    """The posterior of ``layer``'s ``theta`` that ``guide`` defines, read from its current parameters."""
    name = layer.site_name
    if isinstance(guide, autoguide.AutoNormal):
        loc, scale = guide._get_loc_and_scale(name)
    elif isinstance(guide, autoguide.AutoDelta):
        return PointNoise(guide.median()[name], layer.log_low, layer.log_high)
    elif isinstance(guide, autoguide.AutoContinuous):
        loc, scale = _continuous_site(guide, name)
    else:  # pragma: no cover - attach_guide checked the type
        raise TypeError(f"unsupported guide {type(guide).__name__}")
    return LogitNormalNoise(loc.reshape(-1), scale.reshape(-1), layer.log_low, layer.log_high)


def attach_guide(model: PrunableNet, guide: Any) -> None:
    """Make ``model`` read its noise posterior from the fitted ``guide`` (``fit`` does this).

    After it, every criterion (:func:`~pyro_prune.reduction.scoring.structure_removals` and
    friends), :class:`~pyro_prune.inference.schedules.ContinuousPruning`, the posterior mean
    the network predicts with (``model.predict``), the fast predictive draws and the ArviZ
    export read the guide's posterior. ``guide=model.guide`` (or ``None``) detaches. A guide
    holding the posterior of Gaussian weights has its marginals copied into the layers'
    own weight parameters (:func:`copy_weight_posterior`).

    Raises:
        TypeError: a guide the reduction cannot read (the message names the supported ones).
        ValueError: an autoguide of another model, one not run yet, or one without the
            model's noise sites.
    """
    if guide is None or guide == model.guide:
        detach_guide(model)
        return
    check_readable_guide(model, guide)
    for layer in model.noise_layers().values():
        # in __dict__: not a submodule of the layer (no parameters, no state_dict entries)
        layer.__dict__["_guide_posterior"] = partial(guide_noise_posterior, guide, layer)
    model.__dict__["_fitted_guide"] = guide
    copy_weight_posterior(model, guide)


def detach_guide(model: PrunableNet) -> None:
    """Back to the noise layers' own (built-in) posterior."""
    for layer in model.noise_layers().values():
        layer.__dict__.pop("_guide_posterior", None)
    model.__dict__.pop("_fitted_guide", None)


def attached_guide(model: PrunableNet) -> Any:
    """The guide :func:`attach_guide` connected to ``model``, or ``None`` (built-in posterior)."""
    return model.__dict__.get("_fitted_guide")


# -------------------------------------------------------------------------- criteria
@dataclass(frozen=True)
class _ReducedPrior:
    """A reduced prior on ``log theta``: its log density and where its mass lies."""

    log_density: Callable[[Tensor], Tensor]
    lo: float
    hi: float
    #: ``(A', B')`` when it is log-uniform (closed form via the interval's mass)
    interval: tuple[float, float] | None = None


def _log_uniform(lo: float, hi: float) -> _ReducedPrior:
    def log_density(lt: Tensor) -> Tensor:
        inside = (lt >= lo) & (lt <= hi)
        return torch.where(inside, torch.full_like(lt, -math.log(hi - lo)), torch.full_like(lt, -math.inf))

    return _ReducedPrior(log_density, lo, hi, (lo, hi))


def _log_normal(mu_r: float, var_r: float, low: float, high: float) -> _ReducedPrior:
    sd = math.sqrt(var_r)
    log_z = float(log_diff_ndtr(torch.tensor((low - mu_r) / sd, dtype=torch.float64),
                                torch.tensor((high - mu_r) / sd, dtype=torch.float64)))

    def log_density(lt: Tensor) -> Tensor:
        lp = -0.5 * ((lt - mu_r) / sd).square() - math.log(sd) - 0.5 * _LOG_2PI - log_z
        inside = (lt >= low) & (lt <= high)
        return torch.where(inside, lp, torch.full_like(lp, -math.inf))

    return _ReducedPrior(log_density, max(low, mu_r - _WIDTH * sd), min(high, mu_r + _WIDTH * sd))


def _reduced_prior(crit: Criterion, args: dict[str, Any], low: float, high: float) -> tuple[_ReducedPrior, float]:
    """The reduced prior a BMR criterion compares against, and a constant added to its dF."""
    name = crit.name
    if name.startswith("bmrs_u"):
        p1, p2 = float(args.get("p1", 8)), args.get("p2", 23)
        r_low = low if p2 is None else -float(p2) * _LN2  # p2=None: the whole off range
        return _log_uniform(r_low, -p1 * _LN2), 0.0
    if name in ("bmrs", "bmrs_n", "bmrs_n_code"):  # bmrs, bmrs_n_code: log_prior_odds in args
        mu_r = args.get("reduced_loc")
        mu = low if mu_r is None else float(mu_r)
        return _log_normal(mu, float(args.get("reduced_var", 1e-12)), low, high), 0.0
    raise ValueError(
        f"criterion {name!r} cannot read a fitted guide's posterior; with an autoguide use "
        f"one of {', '.join(GUIDE_CRITERIA)}"
    )


#: the noise criteria that read a fitted guide's posterior
GUIDE_CRITERIA = ("bmrs", "bmrs_n", "bmrs_n_code", "bmrs_u", "bmrs_u8", "bmrs_u4", "bmrs_u_off", "snr",
                  "e_theta")


def check_point_guide_criterion(guide: Any, crit: Criterion) -> None:
    """Refuse a Bayesian-model-reduction criterion on a point-posterior guide (``AutoDelta``).

    BMR compares the evidence of the full and the reduced model, which a MAP fit does not
    carry: as the posterior collapses to ``theta*``, ``dF`` tends to
    ``log p~(theta*) - log p(theta*)``, ``-inf`` wherever the reduced prior has no mass (BMRS_N's
    spike at ``A`` almost everywhere; below BMRS_U's interval, where MAP drives the structures
    the data do not need) and a constant inside it. ``fit`` calls this before training.

    Raises:
        TypeError: ``guide`` is an ``AutoDelta`` and ``crit`` decides by ``dF``; the message
            names the guides and the criterion that can be used instead.
    """
    if isinstance(guide, autoguide.AutoDelta) and crit.threshold_free:
        raise _point_posterior_error(type(guide).__name__, crit)


def _point_posterior_error(guide_name: str, crit: Criterion) -> TypeError:
    return TypeError(
        f"criterion {crit.name!r} is Bayesian model reduction, which needs a posterior with a "
        f"spread; {guide_name} is a point posterior (a MAP fit), for which dF is -inf or a "
        "constant. Fit a Gaussian autoguide (AutoNormal, AutoDiagonalNormal, AutoMultivariateNormal, "
        "AutoLowRankMultivariateNormal) or the model's own guide, or rank the point posterior "
        "with criterion 'e_theta'"
    )


def guide_delta_f(posterior: NoisePosterior, crit: Criterion, args: dict[str, Any] | None = None) -> Tensor:
    """``dF`` of a BMR criterion (BMRS_U, BMRS_N) under a guide's posterior (float64).

    ``args`` are the criterion's options (``p1``, ``reduced_var``, ``log_prior_odds``, ...)
    beyond those bound to ``crit``.

    Raises:
        TypeError: a point posterior (``AutoDelta``, see :func:`check_point_guide_criterion`).
    """
    if isinstance(posterior, PointNoise):
        raise _point_posterior_error("AutoDelta", crit)
    options = {**crit.options, **(args or {})}
    low, high = posterior.log_low, posterior.log_high
    reduced, offset = _reduced_prior(crit, options, low, high)
    log_width = math.log(high - low)
    if reduced.interval is not None:
        a_r, b_r = reduced.interval
        if not low <= a_r < b_r <= high:
            raise ValueError(f"reduced prior [{a_r:.4g}, {b_r:.4g}] must lie inside [log_low, log_high]")
        df = log_width - math.log(b_r - a_r) + posterior.log_mass(a_r, b_r)
    else:
        n = posterior.moments()[0].shape
        lo = torch.full(n, reduced.lo, dtype=torch.float64)
        hi = torch.full(n, reduced.hi, dtype=torch.float64)
        df = log_width + posterior.log_expect_density(reduced.log_density, lo, hi)
    return df + offset + float(options.get("log_prior_odds", 0.0))


def guide_score(posterior: NoisePosterior, crit: Criterion, args: dict[str, Any] | None = None) -> Tensor:
    """A noise criterion's per-structure score (higher = keep) under a guide's posterior."""
    if crit.name in ("snr", "e_theta"):
        mean, var = posterior.moments()
        if crit.name == "e_theta":
            return mean
        return mean / var.sqrt().clamp_min(torch.finfo(torch.float64).tiny)
    return -guide_delta_f(posterior, crit, args)


def guide_removal(posterior: NoisePosterior, crit: Criterion, args: dict[str, Any] | None = None) -> Tensor:
    """The criterion's own removal rule (``dF >= 0``, or score below its threshold)."""
    if crit.threshold_free:
        return guide_delta_f(posterior, crit, args) >= 0
    if crit.default_threshold is None:
        raise ValueError(f"criterion {crit.name!r} has no removal rule of its own")
    return guide_score(posterior, crit, args) < crit.default_threshold


def monte_carlo_delta_f(posterior: NoisePosterior, crit: Criterion, draws: int = 100_000,
                        generator_seed: int = 0) -> tuple[Tensor, Tensor]:
    """Monte Carlo ``dF = log E_q[p~(theta)/p(theta)]`` from draws of the guide, and its SE.

    The mean of the weights ``p~/p`` is formed in log space (logsumexp); the standard error
    of the log estimate is the delta-method ``sd(w) / (sqrt(S) mean(w))`` (``inf`` when no
    draw lands where the reduced prior has mass). An independent check of
    :func:`guide_delta_f`.
    """
    low, high = posterior.log_low, posterior.log_high
    reduced, offset = _reduced_prior(crit, dict(crit.options), low, high)
    with torch.random.fork_rng():
        torch.manual_seed(generator_seed)
        theta = posterior.rsample((draws,)).detach().double()
    lt = torch.log(theta)
    log_w = reduced.log_density(lt) + math.log(high - low)  # p(log theta) = 1/(B - A)
    log_mean = torch.logsumexp(log_w, 0) - math.log(draws)
    w = torch.exp(log_w - log_mean)  # weights relative to their mean
    se = w.std(0) / math.sqrt(draws)
    se = torch.where(torch.isfinite(log_mean), se, torch.full_like(se, math.inf))
    return log_mean + offset, se
