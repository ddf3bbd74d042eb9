"""The Laplace log evidence of a network (optionally pruned) and its maximisation over the scales."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from pyro_prune._enums import parse_enum
from pyro_prune.laplace.curvature import (
    _LOG_2PI,
    HessianStructure,
    _batches,
    _compute_curvature,
    _Curvature,
    _eigenvalues,
    _KronRemoval,
    _likelihood,
    _masks,
    _positive,
    _tensors,
)
from pyro_prune.models.base import Likelihood, categorical_nll, correct_and_counted

__all__ = ["LaplaceEvidence", "fit_evidence", "log_evidence"]

# --------------------------------------------------------------------------- evidence
@dataclass(frozen=True)
class LaplaceEvidence:
    """The Laplace log evidence of a network and its terms (natural logs).

    ``log_evidence = log_likelihood + log_occam``, where ``log_occam = log_prior +
    (num_params / 2) log 2 pi - log_det_precision / 2``. ``float(ev)`` is the log evidence.

    Attributes:
        log_likelihood: ``log p(D | w*)``.
        log_prior: ``log N(w*_kept; 0, s^2 I)`` over the kept parameters.
        log_det_precision: ``log det P`` of the kept parameters.
        num_params: number of kept (free) parameters ``d``.
        num_data: number of examples.
        prior_scale: ``s``.
        obs_scale: ``sigma`` (``None`` for the categorical likelihood).
        hessian: the curvature structure used.
        accuracy: training accuracy at ``w*`` (categorical), else ``None``.
    """

    log_likelihood: float
    log_prior: float
    log_det_precision: float
    num_params: int
    num_data: int
    prior_scale: float
    obs_scale: float | None
    hessian: HessianStructure
    accuracy: float | None = None

    @property
    def log_occam(self) -> float:
        """``log p(D) - log p(D | w*)``: prior density times posterior volume (<= 0 in practice)."""
        return self.log_prior + 0.5 * self.num_params * _LOG_2PI - 0.5 * self.log_det_precision

    @property
    def log_evidence(self) -> float:
        """The Laplace approximation of ``log p(D)``."""
        return self.log_likelihood + self.log_occam

    def __float__(self) -> float:
        return self.log_evidence


def _evaluate(c: _Curvature, eig: Tensor, sq_norm: float, num_params: int, kind: Likelihood,
              log_s: Tensor, log_sigma: Tensor, corrections: Sequence[_KronRemoval] = ()
              ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(log evidence, log likelihood, log prior, log det P) as differentiable functions of the scales."""
    prior_prec = torch.exp(-2.0 * log_s)
    if kind is Likelihood.GAUSSIAN:
        obs_prec = torch.exp(-2.0 * log_sigma)
        ll = -0.5 * c.rss * obs_prec - c.num_obs * (log_sigma + 0.5 * _LOG_2PI)
    else:
        obs_prec = torch.ones((), dtype=torch.float64)
        ll = torch.tensor(c.log_likelihood, dtype=torch.float64)
    terms = eig * obs_prec + prior_prec
    log_det = torch.log(terms).sum()
    for corr in corrections:
        log_det = log_det + corr.log_variances(obs_prec, prior_prec).sum()
    log_prior = -0.5 * sq_norm * prior_prec - num_params * (log_s + 0.5 * _LOG_2PI)
    log_ev = ll + log_prior + 0.5 * num_params * _LOG_2PI - 0.5 * log_det
    return log_ev, ll, log_prior, log_det


def _check_precision(c: _Curvature, eig: Tensor, s: float, sigma: float) -> None:
    terms = eig / sigma**2 + 1.0 / s**2
    if not bool(torch.isfinite(terms).all()) or not bool((terms > 0).all()):
        n = int((~(terms > 0)).sum())
        raise FloatingPointError(
            f"the posterior precision H + I/s^2 has {n} non-positive or non-finite eigenvalues "
            f"(smallest curvature eigenvalue {float(eig.min()):.3g}, 1/s^2 = {1.0 / s**2:.3g})"
        )


@dataclass
class _Prepared:
    curvature: _Curvature
    keep: dict[str, Tensor]
    eig: Tensor
    sq_norm: float
    num_params: int
    kind: Likelihood
    corrections: list[_KronRemoval]


@torch.no_grad()
def _likelihood_pass(net: nn.Module, x: Tensor, y: Tensor, kind: Likelihood, batch_size: int
                     ) -> tuple[float, float, int, float | None]:
    """(log likelihood at unit noise, rss, number of observations, accuracy) over all of the data."""
    was_training = net.training
    net.eval()
    ll = rss = 0.0
    correct = num_obs = 0
    try:
        for xb, yb in _batches(x, y, batch_size):
            out = net(xb).double()
            if kind is Likelihood.CATEGORICAL:
                ll -= float(categorical_nll(out, yb).sum())  # token labels: their -100 ignored
                right, counted = correct_and_counted(out, yb)
                correct, num_obs = correct + int(right.sum()), num_obs + int(counted.sum())
            else:
                rss += float((out - yb.double()).square().sum())
                num_obs += yb.numel()
    finally:
        net.train(was_training)
    return ll, rss, num_obs, (correct / max(num_obs, 1) if kind is Likelihood.CATEGORICAL else None)


def _scale_curvature(c: _Curvature, factor: float) -> None:
    """Multiply the curvature by ``factor`` (a subset's sum scaled up to the whole data)."""
    if c.full is not None:
        c.full = c.full * factor
    for b in c.blocks:
        if b.kind == "diag":
            b.diag = b.diag * factor
        elif b.kind == "outer":
            b.matrix = b.matrix * factor
        elif b.kind == "kron":
            b.kron_b = b.kron_b * factor


def _subset(n: int, curvature_subset: int | None) -> Tensor | None:
    if curvature_subset is None:
        return None
    if isinstance(curvature_subset, bool) or not isinstance(curvature_subset, int) or curvature_subset < 1:
        raise ValueError(f"curvature_subset must be a positive int or None, got {curvature_subset!r}")
    if curvature_subset >= n:
        return None
    return torch.randperm(n, generator=torch.Generator().manual_seed(0))[:curvature_subset]


def _prepare(net: nn.Module, data: Any, kind: Likelihood, structure: HessianStructure,
             mask: Mapping[str, Tensor] | None, batch_size: int,
             curvature_subset: int | None = None) -> _Prepared:
    x, y = _tensors(data)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    index = _subset(len(x), curvature_subset)
    keep = _masks(net, mask)
    params = dict(net.named_parameters())
    saved: dict[str, Tensor] = {}
    try:
        with torch.no_grad():
            for name, m in keep.items():
                saved[name] = params[name].detach().clone()
                params[name].mul_(m)
        if index is None:
            curvature = _compute_curvature(net, x, y, kind, structure, batch_size)
        else:
            idx = index.to(x.device)
            curvature = _compute_curvature(net, x[idx], y[idx], kind, structure, batch_size)
            _scale_curvature(curvature, len(x) / len(idx))
            ll, rss, num_obs, acc = _likelihood_pass(net, x, y, kind, batch_size)
            if not (math.isfinite(ll) and math.isfinite(rss)):
                raise FloatingPointError("the log likelihood of the data is not finite")
            curvature.log_likelihood, curvature.rss, curvature.num_obs = ll, rss, num_obs
            curvature.num_data, curvature.accuracy = len(x), acc
        sq = 0.0
        count = 0
        with torch.no_grad():
            for b in curvature.blocks:
                w = b.param.detach().double()
                k = keep.get(b.name)
                if k is not None:
                    w = w[k]
                sq += float(w.square().sum())
                count += w.numel()
    finally:
        with torch.no_grad():
            for name, value in saved.items():
                params[name].copy_(value)
    eig, corrections = _eigenvalues(curvature, keep)
    return _Prepared(curvature, keep, eig, sq, count, kind, corrections)


def _result(p: _Prepared, s: float, sigma: float, structure: HessianStructure) -> LaplaceEvidence:
    _check_precision(p.curvature, p.eig, s, sigma)
    log_s = torch.tensor(math.log(s), dtype=torch.float64)
    log_sigma = torch.tensor(math.log(sigma), dtype=torch.float64)
    _, ll, lp, ld = _evaluate(p.curvature, p.eig, p.sq_norm, p.num_params, p.kind, log_s, log_sigma,
                              p.corrections)
    return LaplaceEvidence(
        log_likelihood=float(ll), log_prior=float(lp), log_det_precision=float(ld),
        num_params=p.num_params, num_data=p.curvature.num_data, prior_scale=s,
        obs_scale=sigma if p.kind is Likelihood.GAUSSIAN else None, hessian=structure,
        accuracy=p.curvature.accuracy,
    )


def log_evidence(
    net: nn.Module,
    data: TensorDataset | Sequence[Tensor],
    *,
    prior_scale: float,
    likelihood: Likelihood | str = Likelihood.CATEGORICAL,
    obs_scale: float | None = None,
    hessian: HessianStructure | str = HessianStructure.DIAG,
    mask: Mapping[str, Tensor] | None = None,
    batch_size: int = 512,
    curvature_subset: int | None = None,
) -> LaplaceEvidence:
    """The Laplace log marginal likelihood of ``net`` at its current weights (taken as the MAP).

    Args:
        net: a deterministic network (any ``nn.Module`` whose trainable parameters live in
            :data:`SUPPORTED_LAYERS`; frozen parameters are constants). It outputs logits
            (categorical) or the means (gaussian).
        data: ``TensorDataset(inputs, targets)`` or an ``(inputs, targets)`` pair.
        prior_scale: ``s`` of the isotropic prior ``N(0, s^2 I)`` on every trainable parameter.
        likelihood: ``"categorical"`` or ``"gaussian"``.
        obs_scale: ``sigma`` of the Gaussian likelihood (required for it, else ``None``).
        hessian: ``"diag"``, ``"kron"`` or ``"full"`` (:class:`HessianStructure`).
        mask: the pruned model: parameter name (as in ``net.named_parameters()``) to a bool
            tensor of its shape, True = kept; the rest are fixed at 0 (the network is
            evaluated with them zeroed and restored afterwards). Parameters not named are
            kept whole. With ``"kron"`` a mask that removes whole rows / input columns is
            exact for the K-FAC precision; one that removes single weights takes the
            removed weights' posterior mean field (see :class:`_KronRemoval`).
        batch_size: examples per curvature pass.
        curvature_subset: compute the curvature on this many examples (a seeded random
            subset) and scale it by ``N / subset``, an unbiased estimate of the GGN's sum
            over the data; the likelihood is always over all of ``data``. ``None``: all.

    Returns:
        :class:`LaplaceEvidence` (``float()`` of it is the log evidence).

    Raises:
        ValueError: a module kind the backend cannot handle (named), a bad mask, bad data.
        FloatingPointError: non-finite curvature or likelihood, or a precision that is
            not positive definite (reported, never clamped).
    """
    kind, sigma = _likelihood(likelihood, obs_scale)
    s = _positive(prior_scale, "prior_scale")
    structure = parse_enum(HessianStructure, hessian.value if isinstance(hessian, HessianStructure) else hessian,
                           "hessian")
    prepared = _prepare(net, data, kind, structure, mask, batch_size, curvature_subset)
    return _result(prepared, s, sigma, structure)


def _maximise(p: _Prepared, s0: float, sigma0: float, fit_obs: bool, fit_prior: bool = True) -> tuple[float, float]:
    log_s = torch.tensor(math.log(s0), dtype=torch.float64, requires_grad=fit_prior)
    log_sigma = torch.tensor(math.log(sigma0), dtype=torch.float64, requires_grad=fit_obs)
    variables = ([log_s] if fit_prior else []) + ([log_sigma] if fit_obs else [])
    if not variables:
        return s0, sigma0
    opt = torch.optim.LBFGS(variables, lr=1.0, max_iter=200, tolerance_grad=1e-10,
                            tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        value = -_evaluate(p.curvature, p.eig, p.sq_norm, p.num_params, p.kind, log_s, log_sigma,
                           p.corrections)[0]
        value.backward()
        return value

    opt.step(closure)
    s, sigma = math.exp(float(log_s.detach())), math.exp(float(log_sigma.detach()))
    if not (math.isfinite(s) and math.isfinite(sigma)):
        raise FloatingPointError("maximising the evidence over the prior scale diverged")
    return s, sigma


def fit_evidence(
    net: nn.Module,
    data: TensorDataset | Sequence[Tensor],
    *,
    prior_scale: float = 1.0,
    likelihood: Likelihood | str = Likelihood.CATEGORICAL,
    obs_scale: float | None = None,
    hessian: HessianStructure | str = HessianStructure.DIAG,
    mask: Mapping[str, Tensor] | None = None,
    fit_obs_scale: bool = True,
    batch_size: int = 512,
    curvature_subset: int | None = None,
) -> LaplaceEvidence:
    """:func:`log_evidence` maximised over the prior scale (and the Gaussian noise).

    The curvature is computed once at the current weights; the evidence is then a closed
    form in ``(log s, log sigma)`` (see the module docstring), maximised with L-BFGS from
    ``prior_scale`` / ``obs_scale``. The weights are not refitted (as laplace-torch's
    post-hoc ``optimize_prior_precision``). The result's ``prior_scale`` / ``obs_scale``
    are the maximisers.
    """
    kind, sigma = _likelihood(likelihood, obs_scale)
    s = _positive(prior_scale, "prior_scale")
    structure = parse_enum(HessianStructure, hessian.value if isinstance(hessian, HessianStructure) else hessian,
                           "hessian")
    prepared = _prepare(net, data, kind, structure, mask, batch_size, curvature_subset)
    s, sigma = _maximise(prepared, s, sigma, fit_obs_scale and kind is Likelihood.GAUSSIAN)
    return _result(prepared, s, sigma, structure)


