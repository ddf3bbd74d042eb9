r"""Reduction operators: which structures to remove, decided from the posterior.

Bayesian model reduction (BMR; Friston & Penny 2011, *Post hoc Bayesian model selection*,
NeuroImage; Friston et al. 2018) scores a *reduced* prior :math:`\tilde p` against the prior
:math:`p` used in training, using only the fitted posterior :math:`q`. The change in log
evidence is

.. math::

    \Delta F = \log \int q(\theta)\, \frac{\tilde p(\theta)}{p(\theta)}\, d\theta,

and a structure is removed when :math:`\Delta F \ge 0` (the reduced model, in which the
structure is switched off, is at least as probable): no threshold to tune. This module
provides

* :func:`delta_f_lognormal` — BMRS\ :sub:`N` of Wright, Igel & Selvan (2024), *BMRS: Bayesian
  Model Reduction for Structured Pruning* (NeurIPS), for log-normal multiplicative noise
  (Neklyudov et al., 2017) with a reduced prior concentrated at the lower bound;
* :func:`delta_f_loguniform` — BMRS\ :sub:`U` (same paper), reduced prior
  :math:`\mathrm{LogU}[-p_2\ln 2, -p_1\ln 2]`;
* :func:`delta_f_gaussian` — BMR of Gaussian weights towards a spike at zero (Friston & Penny
  2011; Beckers et al. 2024, *Principled pruning of Bayesian neural networks through
  variational free energy minimization*, IEEE OJSP), summed over a structure's weights;
* baseline scores: :func:`expected_theta` and :func:`snr` of the noise (Neklyudov et al.
  2017), :func:`l2_norm` of the incoming weights and :func:`gradient_score`;
* a registry of named pruning criteria, :func:`get_criterion` / :data:`CRITERIA`.

All functions act elementwise on tensors of any (broadcast) batch shape. The
:math:`\Delta F` operators evaluate in the dtype of their inputs (they are the hot path),
using the cancellation-free log-mass primitive of :mod:`pyro_prune.distributions`;
:func:`expected_theta` and :func:`snr` compute in float64 and cast back. Accuracy (tested):
float64 relative error below 1e-10 against quadrature of the BMR identity and against the
closed forms at 80 digits, over ``loc`` in [-30, 10] and ``log(scale)`` in [-20, 5];
float32 absolute error below ~5e-6 * max(1, |dF|). Large inputs without gradients are
evaluated in cache-sized blocks (``benchmarks/reduction_speed.py`` measures the throughput:
about 1.7e7 structures/s for BMRS_N in float32 on one core of a 2-core Xeon).

Criteria (:data:`CRITERIA`): ``bmrs`` (the library's default: BMRS_N with prior odds
:math:`\sqrt{2\pi}:1` for removal, ``log_prior_odds`` = :data:`BMRS_LOG_PRIOR_ODDS`),
``bmrs_n`` (plain BMR, ``log_prior_odds = 0``), ``bmrs_n_code`` (the authors' code, which
drops the :math:`-\frac12\log 2\pi`: the same preset as ``bmrs``), ``bmrs_u`` (= ``bmrs_u8``),
``bmrs_u4``, ``bmrs_u_off`` (a reduced prior over the whole off range :math:`[A, -8\ln 2]`),
``bmrs_joint`` (:func:`delta_f_joint`: noise and Gaussian incoming weights together) and
``gaussian_bmr`` are threshold-free (remove where the log posterior odds
:math:`\Delta F + \texttt{log\_prior\_odds} \ge 0`, score = minus them; every one takes
``log_prior_odds``, see :func:`log_posterior_odds`); ``snr`` (remove below 1) and
``e_theta`` (below 0.1) are the thresholded baselines of Neklyudov et al. (2017); ``l2``
and ``grad`` only rank (prune them to a target with ``fraction=``). Why ``bmrs`` is the
default, with measurements: ``docs/defaults.md``.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import torch

from pyro_prune._checks import check_number
from pyro_prune.distributions.special import log_mass_std
from pyro_prune.distributions.truncated_lognormal import log_moment, log_variance_ratio

__all__ = [
    "BMRS_LOG_PRIOR_ODDS",
    "CRITERIA",
    "Criterion",
    "CriterionInput",
    "delta_f_gaussian",
    "delta_f_joint",
    "delta_f_lognormal",
    "delta_f_lognormal_released_code",
    "delta_f_loguniform",
    "expected_theta",
    "get_criterion",
    "gradient_score",
    "l2_norm",
    "log_posterior_odds",
    "register_criterion",
    "snr",
]

_LOG_2PI = math.log(2.0 * math.pi)
_LN2 = math.log(2.0)

Dim = int | tuple[int, ...] | None


# --------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------


def _float_tensor(value: Any, name: str, like: torch.Tensor | None = None) -> torch.Tensor:
    """``value`` as a floating tensor; numbers are created directly in ``like``'s dtype."""
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
        return value if like is None else value.to(dtype=like.dtype, device=like.device)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a tensor or a real number, got {type(value).__name__}")
    if like is None:
        return torch.tensor(float(value), dtype=torch.get_default_dtype())
    return torch.tensor(float(value), dtype=like.dtype, device=like.device)


def _check_finite(x: torch.Tensor, name: str, *, positive: bool = False) -> None:
    """One pass: min and max are NaN if any element is, and bound all others."""
    if x.numel() == 0:
        return
    lo, hi = torch.aminmax(x.detach())
    lo_f, hi_f = float(lo), float(hi)
    if not (math.isfinite(lo_f) and math.isfinite(hi_f)):
        raise ValueError(f"{name} must be finite")
    if positive and not lo_f > 0:
        raise ValueError(f"{name} must be positive")


def _loc_scale(loc: Any, scale: Any) -> tuple[torch.Tensor, torch.Tensor]:
    loc = _float_tensor(loc, "loc")
    scale = _float_tensor(scale, "scale")
    dtype = torch.promote_types(loc.dtype, scale.dtype)
    loc, scale = loc.to(dtype), scale.to(dtype=dtype, device=loc.device)
    _check_finite(loc, "loc")
    _check_finite(scale, "scale", positive=True)
    return loc, scale


def _noise_params(loc: Any, scale: Any, log_low: Any, log_high: Any) -> tuple[torch.Tensor, ...]:
    """Validated ``loc, scale, low, high`` in one floating dtype (that of loc/scale)."""
    loc, scale = _loc_scale(loc, scale)
    low = _float_tensor(log_low, "log_low", like=loc)
    high = _float_tensor(log_high, "log_high", like=loc)
    _check_finite(low, "log_low")
    _check_finite(high, "log_high")
    if not bool((low < high).all()):
        raise ValueError("log_low must be smaller than log_high")
    return loc, scale, low, high


def _clamp_(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Clamp the fresh temporary ``x`` into ``[low, high]`` (in place for scalar bounds)."""
    if low.numel() == 1 and high.numel() == 1:
        return x.clamp_(float(low), float(high))  # the tensor-bound kernel is ~8x slower
    return torch.minimum(torch.maximum(x, low), high)


#: Bytes per operand in a block of :func:`_blocked`: below glibc's default 128 KiB ``mmap``
#: threshold, so the temporaries of a block are recycled from the allocator's free lists
#: instead of being mapped afresh (page faults otherwise dominate), and below ATen's
#: 32768-element grain size, so no operation of a block starts a parallel region.
_BLOCK_BYTES = 96 * 1024


def _blocked(kernel: Callable[..., torch.Tensor], *args: torch.Tensor) -> torch.Tensor:
    """Evaluate an elementwise ``kernel(*args)`` over the broadcast shape, block by block.

    A dF operator is ~150 elementwise passes. On a million elements each pass would allocate
    fresh multi-megabyte temporaries (page faults then dominate the cost) and stream them
    through memory; blocks of 96 KiB per operand keep them in cache and in the allocator's
    free lists, which is about 3x faster. The blocks run one after the other in the calling
    thread: spreading them over Python threads was measured to be slower (the many short
    operations contend for the GIL). Used only when no gradient is being recorded and the
    input is large; otherwise ``kernel`` runs on the whole tensors.
    """
    shape = torch.broadcast_shapes(*(a.shape for a in args))
    numel = math.prod(shape)
    ref = max(args, key=lambda a: a.numel())
    block = _BLOCK_BYTES // ref.element_size()
    needs_grad = torch.is_grad_enabled() and any(a.requires_grad for a in args)
    if needs_grad or numel <= 2 * block:
        return kernel(*args)
    flat = [a.reshape(()) if a.numel() == 1 else a.expand(shape).reshape(-1) for a in args]
    out = torch.empty(numel, dtype=ref.dtype, device=ref.device)
    if ref.device.type != "cpu":
        out.copy_(kernel(*flat))
        return out.reshape(shape)
    for start in range(0, numel, block):
        stop = min(start + block, numel)
        out[start:stop] = kernel(*(a if a.dim() == 0 else a[start:stop] for a in flat))
    return out.reshape(shape)


# --------------------------------------------------------------------------------------
# Delta F operators
# --------------------------------------------------------------------------------------


def delta_f_lognormal(
    loc: torch.Tensor,
    scale: torch.Tensor,
    *,
    log_low: float | torch.Tensor = -20.0,
    log_high: float | torch.Tensor = 0.0,
    reduced_loc: float | torch.Tensor | None = None,
    reduced_var: float | torch.Tensor = 1e-12,
) -> torch.Tensor:
    r"""BMRS\ :sub:`N`: :math:`\Delta F` for a truncated log-normal reduced prior.

    Posterior :math:`q = \mathrm{LogN}_{[A,B]}(\mu, \sigma^2)`, prior
    :math:`\mathrm{LogU}_{[A,B]}`, reduced prior :math:`\mathrm{LogN}_{[A,B]}(\mu_r, s_r^2)`
    (Wright, Igel & Selvan 2024, Eq. 8; defaults :math:`\mu_r = A`, :math:`s_r^2 = 10^{-12}`).
    With :math:`V = \sigma^2 + s_r^2`, :math:`s_q^2 = \sigma^2 s_r^2 / V`,
    :math:`\mu_q = (\mu s_r^2 + \mu_r\sigma^2)/V`,

    .. math::

        \Delta F = \log Z(\mu_q, s_q) + \log(B-A) - \log Z(\mu,\sigma) - \log Z(\mu_r, s_r)
            - \tfrac12\log(2\pi V) - \frac{(\mu-\mu_r)^2}{2V}.

    (The authors' code drops the :math:`-\frac12\log 2\pi`; we keep it.) Evaluation: with
    :math:`M_i(r) = \log Z_i + (r - m_i)^2/(2 s_i^2)` (see
    :mod:`pyro_prune.distributions`), the Gaussian product identity
    :math:`\frac{(r-\mu)^2}{\sigma^2} + \frac{(r-\mu_r)^2}{s_r^2} = \frac{(r-\mu_q)^2}{s_q^2}
    + \frac{(\mu-\mu_r)^2}{V}` gives, for any :math:`r`,

    .. math::

        \Delta F = \log(B-A) - \tfrac12\log(2\pi V) + M_q(r) - M(r) - M_r(r),

    and :math:`r = \mathrm{clamp}(\mu_q, A, B)` (where the integrand :math:`q\tilde p` lives)
    leaves no large term that could cancel: the quadratic term, of size :math:`10^{14}` and
    more, never appears on its own.

    Args:
        loc, scale: posterior :math:`\mu`, :math:`\sigma` (any broadcastable shapes).
        log_low, log_high: bounds :math:`A < B`.
        reduced_loc: :math:`\mu_r` (default ``log_low``).
        reduced_var: :math:`s_r^2 > 0`.

    Returns:
        :math:`\Delta F` with the broadcast shape; remove where ``>= 0``.
    """
    loc, scale, low, high = _noise_params(loc, scale, log_low, log_high)
    mu_r = low if reduced_loc is None else _float_tensor(reduced_loc, "reduced_loc", like=loc)
    var_r = _float_tensor(reduced_var, "reduced_var", like=loc)
    _check_finite(var_r, "reduced_var", positive=True)
    _check_finite(mu_r, "reduced_loc")
    return _blocked(_bmrs_n_kernel, loc, scale, low, high, mu_r, var_r)



def delta_f_lognormal_released_code(loc: torch.Tensor, scale: torch.Tensor, **options: Any) -> torch.Tensor:
    r"""BMRS\ :sub:`N` as the authors' released code evaluates it: :func:`delta_f_lognormal`
    without the :math:`-\tfrac12\log 2\pi` term, i.e. :math:`\Delta F + 0.919`.

    Not a different model reduction but a looser decision rule: it removes a structure
    when the Bayes factor for the reduced model is at least :math:`1/\sqrt{2\pi} = 0.40`
    instead of 1. It matters for structures whose posterior has gone back to the prior
    (:math:`\mu \approx -0.8`, :math:`\log\sigma \approx 4`): the truncated log-normal
    family can only approach the log-uniform prior as :math:`\sigma \to \infty`, so their
    exact :math:`\Delta F` tends to 0 from below (about :math:`-0.06`) and the exact rule
    keeps them, while this variant removes them. Offered so that the paper's Table 1 can
    be reproduced; ``bmrs_n`` stays the exact operator. ``options`` are those of
    :func:`delta_f_lognormal` (``log_low``, ``log_high``, ``reduced_loc``, ``reduced_var``).
    """
    return delta_f_lognormal(loc, scale, **options) + 0.5 * _LOG_2PI


def _bmrs_n_kernel(loc, scale, low, high, mu_r, var_r) -> torch.Tensor:
    loc, scale = torch.broadcast_tensors(loc, scale)  # results below are fresh and full-size
    s2 = scale.square()
    var = s2 + var_r
    w_r = s2 / var  # mu_q = w_r mu_r + w_p loc
    w_p = var_r / var
    inv = scale.reciprocal()
    inv_q = inv / torch.sqrt(w_p)  # 1 / s_q
    a_r, a_p = w_r * inv_q, w_p * inv_q
    ref = _clamp_(torch.addcmul(loc, w_r, mu_r - loc), low, high)
    # shared differences; for the reduced posterior P - mu_q = w_r (P - mu_r) + w_p (P - loc)
    # keeps offsets that lie far below the resolution of mu_q itself
    low_p, high_p, ref_p, ref_r = low - loc, high - loc, ref - loc, ref - mu_r
    ref_low, high_ref = ref - low, high - ref
    width = high - low
    m_p = log_mass_std(
        low_p * inv,
        high_p * inv,
        width * inv,
        lambda: ref_low * inv,
        lambda: high_ref * inv,
        lambda: ref_p * inv,
    )
    m_q = log_mass_std(
        torch.addcmul(a_r * (low - mu_r), a_p, low_p),
        torch.addcmul(a_r * (high - mu_r), a_p, high_p),
        width * inv_q,
        lambda: ref_low * inv_q,
        lambda: high_ref * inv_q,
        lambda: torch.addcmul(a_r * ref_r, a_p, ref_p),
    )
    inv_r = torch.rsqrt(var_r)
    m_r = log_mass_std(
        (low - mu_r) * inv_r,
        (high - mu_r) * inv_r,
        width * inv_r,
        lambda: ref_low * inv_r,
        lambda: high_ref * inv_r,
        lambda: ref_r * inv_r,
    )
    return (m_q - m_p - m_r).sub_(torch.log(var).mul_(0.5)).add_(torch.log(width) - 0.5 * _LOG_2PI)


def delta_f_loguniform(
    loc: torch.Tensor,
    scale: torch.Tensor,
    *,
    log_low: float | torch.Tensor = -20.0,
    log_high: float | torch.Tensor = 0.0,
    p1: float = 8,
    p2: float | None = 23,
) -> torch.Tensor:
    r"""BMRS\ :sub:`U`: :math:`\Delta F` for the reduced prior :math:`\mathrm{LogU}[A', B']`.

    :math:`A' = -p_2\ln 2`, :math:`B' = -p_1\ln 2` (Wright, Igel & Selvan 2024, Eq. 10; the
    paper uses :math:`p_2 = 23` and :math:`p_1 \in \{4, 8\}`, i.e. noise below the resolution of
    a float32 mantissa / of 8-bit or 4-bit quantisation):

    .. math::

        \Delta F = \log(B-A) - \log(B'-A') + \log q(A' \le \log\theta \le B').

    The log-probability is a difference of log-masses taken at the common reference point
    :math:`\mathrm{clamp}(\mu, A', B')`, accurate deep in the tails.

    ``p2=None`` puts :math:`A' = A`: the reduced prior covers the whole "off" range
    :math:`[A, -p_1\ln 2]` (every noise level below the quantisation step), not only the
    interval above float32 resolution (criterion ``bmrs_u_off``).

    Raises:
        ValueError: unless ``log_low <= A' < B' <= log_high`` (BMR needs the reduced prior's
            support inside the prior's).
    """
    loc, scale, low, high = _noise_params(loc, scale, log_low, log_high)
    for name, p in (("p1", p1), ("p2", p2)):
        if name == "p2" and p is None:
            continue
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p):
            raise TypeError(f"{name} must be a finite real number, got {p!r}")
    r_high_f = -float(p1) * _LN2
    r_high = torch.tensor(r_high_f, dtype=loc.dtype, device=loc.device)
    if p2 is None:  # the whole off range [A, -p1 ln 2]
        r_low = low
        if not bool((low < r_high).all()):
            raise ValueError(f"log_low must lie below the reduced prior's upper end -p1 ln2 = {r_high_f:.4g}")
    else:
        r_low_f = -float(p2) * _LN2
        if not r_low_f < r_high_f:
            raise ValueError(f"need p2 > p1 (reduced prior [-p2 ln2, -p1 ln2]); got p1={p1}, p2={p2}")
        r_low = torch.tensor(r_low_f, dtype=loc.dtype, device=loc.device)
        if not bool((low <= r_low).all()):
            raise ValueError(
                f"reduced prior [{r_low_f:.4g}, {r_high_f:.4g}] (from p1={p1}, p2={p2}) must lie "
                "inside [log_low, log_high]"
            )
    if not bool((r_high <= high).all()):
        raise ValueError(
            f"reduced prior's upper end {r_high_f:.4g} (from p1={p1}) must lie inside [log_low, log_high]"
        )
    return _blocked(_bmrs_u_kernel, loc, scale, low, high, r_low, r_high)


def _bmrs_u_kernel(loc, scale, low, high, r_low, r_high) -> torch.Tensor:
    loc, scale = torch.broadcast_tensors(loc, scale)  # results below are fresh and full-size
    inv = scale.reciprocal()
    ref = _clamp_(loc.clone(), r_low, r_high)
    c = (ref - loc).mul_(inv)  # shared, read-only
    m_reduced = log_mass_std(
        (r_low - loc).mul_(inv),
        (r_high - loc).mul_(inv),
        (r_high - r_low) * inv,
        lambda: (ref - r_low).mul_(inv),
        lambda: torch.rsub(ref, r_high).mul_(inv),
        c,
    )
    m_full = log_mass_std(
        (low - loc).mul_(inv),
        (high - loc).mul_(inv),
        (high - low) * inv,
        lambda: (ref - low).mul_(inv),
        lambda: torch.rsub(ref, high).mul_(inv),
        c,
    )
    return m_reduced.sub_(m_full).add_(torch.log(high - low) - torch.log(r_high - r_low))


def delta_f_gaussian(
    loc: torch.Tensor,
    scale: torch.Tensor,
    *,
    prior_scale: float | torch.Tensor = 1.0,
    reduced_scale: float | torch.Tensor = 1e-8,
    dim: Dim = None,
) -> torch.Tensor:
    r"""Gaussian BMR: :math:`\Delta F` of replacing the prior :math:`\mathcal N(0, s^2)` by :math:`\mathcal N(0, r^2)`.

    For a weight with posterior :math:`\mathcal N(m, v)` (Friston & Penny 2011; Beckers et
    al. 2024 use :math:`r^2 = 10^{-16}`), with :math:`P = 1/v`,
    :math:`\tilde P = P + 1/r^2 - 1/s^2`, :math:`\tilde m = P m/\tilde P`,

    .. math::

        \Delta F = \tfrac12[\log P - \log\tilde P + \log s^2 - \log r^2]
            - \tfrac12(P m^2 - \tilde P\tilde m^2).

    Evaluated as :math:`\tfrac12[\log(s^2/r^2) - \mathrm{log1p}(v k)] - \tfrac12 m^2/(v + 1/k)`
    with :math:`k = 1/r^2 - 1/s^2`, which has no cancellation (the second bracket above is
    :math:`P m^2 k/\tilde P`). Under a mean-field posterior a structure's :math:`\Delta F` is
    the sum over its weights: pass ``dim`` (the axes summed over, as in :func:`torch.sum`;
    e.g. ``dim=1`` for a ``Linear`` weight ``[out, in]`` scored per output neuron). ``+inf``
    where :math:`\tilde P \le 0` (a reduced prior wider than the prior can make the BMR
    integral diverge).

    Args:
        loc, scale: posterior mean :math:`m` and standard deviation :math:`\sqrt v`.
        prior_scale: :math:`s > 0`.
        reduced_scale: :math:`r > 0`.
        dim: axes to sum over (``None``: no sum, per weight).
    """
    loc, scale = _loc_scale(loc, scale)
    s = _float_tensor(prior_scale, "prior_scale", like=loc)
    r = _float_tensor(reduced_scale, "reduced_scale", like=loc)
    _check_finite(s, "prior_scale", positive=True)
    _check_finite(r, "reduced_scale", positive=True)
    s2, r2 = s.square(), r.square()
    _check_finite(s2, "prior_scale", positive=True)  # the squares must be representable
    _check_finite(r2, "reduced_scale", positive=True)
    df = _blocked(_gaussian_bmr_kernel, loc, scale, s2, r2)
    return df if dim is None else df.sum(dim=dim)


def _gaussian_bmr_kernel(loc, scale, s2, r2) -> torch.Tensor:
    loc, scale = torch.broadcast_tensors(loc, scale)  # results below are fresh and full-size
    v = scale.square()
    k = (s2 - r2) / (r2 * s2)  # 1/r^2 - 1/s^2
    inv_k = (r2 * s2) / (s2 - r2)
    vk = v * k
    valid = vk > -1.0
    log_ratio = torch.log(s2) - torch.log(r2)
    vk_safe = torch.where(valid, vk, 0.0)
    df = torch.log1p(vk_safe).sub_(log_ratio).add_(loc.square() / v.add_(inv_k)).mul_(-0.5)
    return torch.where(valid, df, math.inf)


def delta_f_joint(
    loc: torch.Tensor,
    scale: torch.Tensor,
    weight_loc: torch.Tensor,
    weight_scale: torch.Tensor,
    *,
    log_low: float | torch.Tensor = -20.0,
    log_high: float | torch.Tensor = 0.0,
    reduced_var: float | torch.Tensor = 1e-12,
    prior_scale: float | torch.Tensor = 1.0,
    reduced_scale: float | torch.Tensor = 1e-8,
    dim: Dim = -1,
) -> torch.Tensor:
    r"""Joint BMR of a structure's noise and its Gaussian incoming weights.

    For a network with Gaussian weight priors and multiplicative noise, the model "structure
    :math:`i` is off" reduces both the prior of its noise :math:`\theta_i` (to the spike of
    BMRS\ :sub:`N` at :math:`A`) and the priors of its incoming weights :math:`w_i` (the row of
    the producing layer that :math:`\theta_i` multiplies, to :math:`\mathcal N(0, r^2)`).
    Under the mean-field posterior :math:`q(\theta_i)\prod_j q(w_{ij})` the BMR integral
    factorises, so

    .. math::

        \Delta F_i = \Delta F_\theta(\mu_i, \sigma_i) + \sum_j \Delta F_{\mathcal N}(m_{ij}, v_{ij}),

    with :func:`delta_f_lognormal` and :func:`delta_f_gaussian`: no threshold. The incoming
    row, not the outgoing column, belongs to the structure: :math:`\theta_i` scales exactly
    :math:`w_i\cdot h` (the two are one product in the likelihood, so the evidence for
    "off" is shared between them), while the outgoing column holds the incoming weights of
    the next layer's structures, whose own :math:`\Delta F` already counts them.

    Args:
        loc, scale: noise posterior, shape ``[..., n]``.
        weight_loc, weight_scale: Gaussian posterior of the incoming weights, the structures
            on the axes of ``loc`` and the weights of a structure on ``dim``.
        log_low, log_high, reduced_var: as in :func:`delta_f_lognormal`.
        prior_scale, reduced_scale: as in :func:`delta_f_gaussian`.
        dim: the axes of ``weight_loc`` summed over (default ``-1``: rows ``[n, fan_in]``).
    """
    df_noise = delta_f_lognormal(loc, scale, log_low=log_low, log_high=log_high,
                                 reduced_var=reduced_var)
    df_weights = delta_f_gaussian(weight_loc, weight_scale, prior_scale=prior_scale,
                                  reduced_scale=reduced_scale, dim=dim)
    if df_weights.shape != df_noise.shape:
        raise ValueError(
            f"the weights give {tuple(df_weights.shape)} structures after summing over dim={dim}, "
            f"the noise {tuple(df_noise.shape)}"
        )
    return df_noise + df_weights.to(df_noise.dtype)


# --------------------------------------------------------------------------------------
# baseline scores
# --------------------------------------------------------------------------------------


def expected_theta(
    loc: torch.Tensor,
    scale: torch.Tensor,
    *,
    log_low: float | torch.Tensor = -20.0,
    log_high: float | torch.Tensor = 0.0,
) -> torch.Tensor:
    r""":math:`E[\theta]` under :math:`\mathrm{LogN}_{[A,B]}(\mu,\sigma^2)`.

    :math:`E[\theta] = \exp(\mu + \sigma^2/2)\,(\Phi(\beta-\sigma) - \Phi(\alpha-\sigma))/Z`
    (Neklyudov et al. 2017), evaluated as :math:`\exp(r + M(\mu+\sigma^2; r) - M(\mu; r))` with
    :math:`r = \mathrm{clamp}(\mu + \sigma^2, A, B)`: finite and accurate even for
    :math:`\sigma = e^{-20}`. The paper's baseline removes structures with
    :math:`E[\theta] < 0.1`. Computed in float64, returned in the input dtype.
    """
    loc, scale, low, high = _noise_params(loc, scale, log_low, log_high)
    loc64, scale64, low64, high64 = (t.to(torch.float64) for t in (loc, scale, low, high))
    return _blocked(_expected_theta_kernel, loc64, scale64, low64, high64).to(loc.dtype)


def _expected_theta_kernel(loc, scale, low, high) -> torch.Tensor:
    return log_moment(loc, scale, low, high, 1.0).exp()


def snr(
    loc: torch.Tensor,
    scale: torch.Tensor,
    *,
    log_low: float | torch.Tensor = -20.0,
    log_high: float | torch.Tensor = 0.0,
) -> torch.Tensor:
    r"""Signal-to-noise ratio :math:`E[\theta]/\sqrt{\mathrm{Var}[\theta]}` of the noise.

    Neklyudov et al. (2017) remove structures with SNR below 1. Since
    :math:`\mathrm{Var}\,\theta = E[\theta]^2\,\mathrm{expm1}(\Delta)` with
    :math:`\Delta = \log E[\theta^2] - 2\log E[\theta]`, the ratio is
    :math:`1/\sqrt{\mathrm{expm1}(\Delta)}`; :math:`\Delta` comes from a cumulant series when
    :math:`\mathrm{Var}[\log\theta] < 10^{-6}` (where it is too small to be formed as a
    difference), so the SNR stays finite and accurate (about :math:`1/\sigma` for small
    :math:`\sigma`) where the variance itself underflows. Computed in float64.
    """
    loc, scale, low, high = _noise_params(loc, scale, log_low, log_high)
    loc64, scale64, low64, high64 = (t.to(torch.float64) for t in (loc, scale, low, high))
    return _blocked(_snr_kernel, loc64, scale64, low64, high64).to(loc.dtype)


def _snr_kernel(loc, scale, low, high) -> torch.Tensor:
    delta = log_variance_ratio(loc, scale, low, high)
    return torch.rsqrt(torch.expm1(delta).clamp(min=torch.finfo(delta.dtype).tiny))


def l2_norm(weight: torch.Tensor, dim: Dim) -> torch.Tensor:
    r"""L2 norm of each structure's incoming weights, :math:`\|w_i\|_2`.

    ``dim`` names the axes reduced over, as in :func:`torch.linalg.vector_norm`: ``dim=1``
    for a ``Linear`` weight ``[out, in]`` gives one norm per output neuron, ``dim=(1, 2, 3)``
    for a ``Conv2d`` weight ``[out, in, kh, kw]`` one per filter. A magnitude baseline with
    no threshold: prune to a target fraction (``Criterion.remove(..., fraction=...)``).
    """
    weight = _float_tensor(weight, "weight")
    return torch.linalg.vector_norm(weight, ord=2, dim=dim)


def gradient_score(grad: torch.Tensor, dim: Dim) -> torch.Tensor:
    r"""Gradient-based importance: L2 norm of the loss gradient w.r.t. a structure's weights.

    :math:`\|\partial \mathcal L/\partial w_i\|_2` over the axes ``dim`` (as in
    :func:`l2_norm`); pass a gradient accumulated over the data of interest. Higher means
    more important. No threshold: prune to a target fraction.
    """
    grad = _float_tensor(grad, "grad")
    return torch.linalg.vector_norm(grad, ord=2, dim=dim)


# --------------------------------------------------------------------------------------
# criteria registry
# --------------------------------------------------------------------------------------


class CriterionInput(enum.Enum):
    """The kinds of input a pruning criterion needs, with their keyword names."""

    NOISE_POSTERIOR = ("loc", "scale")  #: posterior of log-noise, per structure
    INCOMING_WEIGHTS = ("weight",)  #: a layer's weight tensor
    WEIGHT_GRADIENTS = ("grad",)  #: gradient of the loss w.r.t. that weight
    GAUSSIAN_WEIGHTS = ("weight_loc", "weight_scale")  #: mean-field Gaussian weight posterior

    @property
    def fields(self) -> tuple[str, ...]:
        return self.value

    @property
    def settings(self) -> tuple[str, ...]:
        """Optional keywords that describe this input (bounds, prior, structure axes)."""
        return _INPUT_SETTINGS[self]


_INPUT_SETTINGS = {
    CriterionInput.NOISE_POSTERIOR: ("log_low", "log_high"),
    CriterionInput.INCOMING_WEIGHTS: ("dim",),
    CriterionInput.WEIGHT_GRADIENTS: ("dim",),
    CriterionInput.GAUSSIAN_WEIGHTS: ("dim", "prior_scale"),
}

_ALL_INPUT_KEYWORDS = frozenset(
    name for member in CriterionInput for name in member.fields + member.settings
)


@dataclass(frozen=True)
class Criterion:
    """A named pruning criterion.

    Attributes:
        name: registry name.
        threshold_free: removal needs no tuned threshold (the BMR criteria: ``dF >= 0``).
        score_fn: keyword function returning a per-structure score; HIGHER = more important,
            so ``argsort`` ascending lists structures in removal order (for dF criteria the
            score is ``-dF``).
        remove_fn: keyword function returning the threshold-free removal mask, or ``None``.
        needs: the inputs the criterion takes (:class:`CriterionInput`).
        options: keyword options bound to this criterion (e.g. ``{"p1": 4}``).
        accepts: option names the criterion understands besides its inputs.
        default_threshold: for thresholded criteria, remove where ``score < threshold``.
        description: one line for listings and the CLI.

    :meth:`score`, :meth:`rank` and :meth:`remove` take the inputs as keywords: ``loc``,
    ``scale`` (and ``log_low``, ``log_high``) of the noise posterior, one value per structure;
    ``weight`` / ``grad`` / ``weight_loc``, ``weight_scale`` (and ``prior_scale``) with the
    structures on axis 0 and their incoming weights on the other axes (``dim`` overrides the
    reduced axes). Inputs of kinds the criterion does not need are ignored, so a caller may
    pass everything it has; an unknown keyword is a ``TypeError``.
    """

    name: str
    threshold_free: bool
    score_fn: Callable[..., torch.Tensor]
    remove_fn: Callable[..., torch.Tensor] | None
    needs: frozenset[CriterionInput]
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    accepts: frozenset[str] = frozenset()
    default_threshold: float | None = None
    description: str = ""

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(sorted({f for need in self.needs for f in need.fields}))

    def _arguments(self, params: Mapping[str, Any]) -> dict[str, Any]:
        unknown = set(params) - _ALL_INPUT_KEYWORDS - self.accepts
        if unknown:
            raise TypeError(
                f"criterion {self.name!r} got unexpected keyword(s) {sorted(unknown)}; "
                f"it takes inputs {list(self.input_names)} and options {sorted(self.accepts)}"
            )
        wanted = set(self.accepts)
        for need in self.needs:
            wanted.update(need.fields + need.settings)
        missing = [f for f in self.input_names if params.get(f) is None]
        if missing:
            raise TypeError(f"criterion {self.name!r} needs input(s) {missing}")
        args = {k: v for k, v in self.options.items()}
        args.update({k: v for k, v in params.items() if k in wanted and v is not None})
        return args

    def score(self, **params: Any) -> torch.Tensor:
        """Per-structure score, higher = keep. Inputs of other kinds are ignored."""
        return self.score_fn(**self._arguments(params))

    def rank(self, **params: Any) -> torch.Tensor:
        """Indices along the last axis in removal order (lowest score first, stable)."""
        return torch.argsort(self.score(**params), dim=-1, stable=True)

    def remove(
        self, *, threshold: float | None = None, fraction: float | None = None, **params: Any
    ) -> torch.Tensor:
        """Boolean removal mask.

        * threshold-free criteria: ``dF >= 0`` (``threshold`` is rejected);
        * thresholded ones: ``score < threshold`` (default :attr:`default_threshold`);
        * ``fraction=f``: for any criterion, the ``round(f * n)`` lowest-scored structures
          along the last axis; this is the only way for ``l2`` and ``grad``.
        """
        if fraction is not None:
            if threshold is not None:
                raise ValueError("pass either threshold or fraction, not both")
            if isinstance(fraction, bool) or not 0.0 <= float(fraction) <= 1.0:
                raise ValueError(f"fraction must lie in [0, 1], got {fraction!r}")
            score = self.score(**params)
            n = score.shape[-1] if score.dim() else 1
            k = int(round(float(fraction) * n))
            order = torch.argsort(score.reshape(score.shape or (1,)), dim=-1, stable=True)
            mask = torch.zeros(order.shape, dtype=torch.bool, device=score.device)
            mask.scatter_(-1, order[..., :k], True)
            return mask.reshape(score.shape)
        if self.threshold_free:
            if threshold is not None:
                raise ValueError(f"criterion {self.name!r} is threshold-free (removes where dF >= 0)")
            assert self.remove_fn is not None
            return self.remove_fn(**self._arguments(params))
        thr = self.default_threshold if threshold is None else check_number(threshold, "threshold")
        if thr is None:
            raise ValueError(
                f"criterion {self.name!r} has no threshold: prune to a target with "
                "remove(..., fraction=...) or use rank(...)"
            )
        return self.score(**params) < thr


def _neg(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def score(**kwargs: Any) -> torch.Tensor:
        return -fn(**kwargs)

    score.__name__ = f"neg_{fn.__name__}"
    return score


def _nonneg(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def remove(**kwargs: Any) -> torch.Tensor:
        return fn(**kwargs) >= 0

    remove.__name__ = f"{fn.__name__}_nonneg"
    return remove


#: ``log_prior_odds`` of the default criterion ``bmrs`` (and of ``bmrs_n_code``):
#: prior odds of :math:`\sqrt{2\pi}:1` for removing a structure.
BMRS_LOG_PRIOR_ODDS = 0.5 * _LOG_2PI


def _check_log_prior_odds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"log_prior_odds must be a finite real number, got {value!r}")
    return float(value)


def log_posterior_odds(delta_f: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    r"""``delta_f`` plus a model prior: the log posterior odds of removing a structure.

    BMR gives the change in log evidence :math:`\Delta F = \log p(D\mid m_0) - \log p(D\mid m_1)`
    of the reduced model :math:`m_0` (structure off) against the full one. With prior odds
    :math:`p(m_0)/p(m_1)` the posterior odds are
    :math:`\log\frac{p(m_0\mid D)}{p(m_1\mid D)} = \Delta F + \texttt{log\_prior\_odds}`, and a
    structure is removed when they are :math:`\ge 0`. ``log_prior_odds = 0`` (the default of
    every BMR criterion but ``bmrs`` and ``bmrs_n_code``) is plain BMR; a positive value says
    that, when the data cannot tell the two models apart (:math:`\Delta F \approx 0`, the
    posterior has returned to the prior), the smaller model wins. Returns a keyword function
    of ``delta_f``'s arguments and ``log_prior_odds``.
    """

    def odds(*, log_prior_odds: float = 0.0, **kwargs: Any) -> torch.Tensor:
        prior = _check_log_prior_odds(log_prior_odds)
        df = delta_f(**kwargs)
        return df + prior if prior else df

    odds.__name__ = f"log_posterior_odds_{delta_f.__name__}"
    return odds


def _structure_dims(t: torch.Tensor, dim: Dim) -> Dim:
    """Criterion default for weight inputs: structures on axis 0, reduce all other axes."""
    if dim is not None:
        return dim
    if t.dim() < 2:
        raise ValueError(
            f"weight inputs need a structure axis 0 and at least one more axis, got shape "
            f"{tuple(t.shape)}; pass dim= explicitly"
        )
    return tuple(range(1, t.dim()))


def _gaussian_bmr(*, weight_loc, weight_scale, dim=None, prior_scale=1.0, reduced_scale=1e-8):
    dim = _structure_dims(_float_tensor(weight_loc, "weight_loc"), dim)
    return delta_f_gaussian(
        weight_loc, weight_scale, prior_scale=prior_scale, reduced_scale=reduced_scale, dim=dim
    )


def _bmrs_joint(*, loc, scale, weight_loc, weight_scale, dim=None, log_low=-20.0, log_high=0.0,
                prior_scale=1.0, reduced_var=1e-12, reduced_scale=1e-8):
    dim = _structure_dims(_float_tensor(weight_loc, "weight_loc"), dim)
    return delta_f_joint(loc, scale, weight_loc, weight_scale, log_low=log_low, log_high=log_high,
                         reduced_var=reduced_var, prior_scale=prior_scale,
                         reduced_scale=reduced_scale, dim=dim)


def _l2(*, weight, dim=None):
    return l2_norm(weight, _structure_dims(_float_tensor(weight, "weight"), dim))


def _grad(*, grad, dim=None):
    return gradient_score(grad, _structure_dims(_float_tensor(grad, "grad"), dim))


def _make_registry() -> dict[str, Criterion]:
    noise = frozenset({CriterionInput.NOISE_POSTERIOR})
    odds = frozenset({"log_prior_odds"})
    u_score, u_remove = _neg(log_posterior_odds(delta_f_loguniform)), _nonneg(log_posterior_odds(delta_f_loguniform))
    bmrs_u = Criterion(
        "bmrs_u",
        True,
        u_score,
        u_remove,
        noise,
        MappingProxyType({"p1": 8, "p2": 23}),
        frozenset({"p1", "p2"}) | odds,
        description="BMRS_U: dF for reduced prior LogU[-p2 ln2, -p1 ln2] (p1=8, p2=23)",
    )
    n_odds = log_posterior_odds(delta_f_lognormal)
    bmrs_n = Criterion(
        "bmrs_n",
        True,
        _neg(n_odds),
        _nonneg(n_odds),
        noise,
        accepts=frozenset({"reduced_loc", "reduced_var"}) | odds,
        description="BMRS_N: dF for reduced prior LogN[A,B](A, 1e-12)",
    )
    preset = MappingProxyType({"log_prior_odds": BMRS_LOG_PRIOR_ODDS})
    joint = log_posterior_odds(_bmrs_joint)
    gaussian = log_posterior_odds(_gaussian_bmr)
    entries = [
        replace(bmrs_n, name="bmrs", options=preset,
                description="the default: BMRS_N with prior odds sqrt(2 pi):1 for removal "
                            "(log_prior_odds = 0.5 log 2pi)"),
        bmrs_n,
        replace(bmrs_n, name="bmrs_n_code", options=preset,
                description="BMRS_N as in the authors' code (no -0.5 log 2pi), i.e. "
                            "log_prior_odds = 0.5 log 2pi: removes at BF >= 0.40"),
        bmrs_u,
        replace(bmrs_u, name="bmrs_u8", description="BMRS_U with p1=8, p2=23"),
        replace(
            bmrs_u,
            name="bmrs_u4",
            options=MappingProxyType({"p1": 4, "p2": 23}),
            description="BMRS_U with p1=4, p2=23",
        ),
        replace(
            bmrs_u,
            name="bmrs_u_off",
            options=MappingProxyType({"p1": 8, "p2": None}),
            description="reduced prior LogU[A, -p1 ln2] over the whole off range (p1=8)",
        ),
        Criterion(
            "bmrs_joint",
            True,
            _neg(joint),
            _nonneg(joint),
            frozenset({CriterionInput.NOISE_POSTERIOR, CriterionInput.GAUSSIAN_WEIGHTS}),
            accepts=frozenset({"reduced_var", "reduced_scale"}) | odds,
            description="joint BMR of a structure's noise (BMRS_N) and its Gaussian incoming "
                        "weights (to N(0, 1e-16))",
        ),
        Criterion(
            "snr",
            False,
            snr,
            None,
            noise,
            default_threshold=1.0,
            description="signal-to-noise ratio E[theta]/std[theta]; remove below 1",
        ),
        Criterion(
            "e_theta",
            False,
            expected_theta,
            None,
            noise,
            default_threshold=0.1,
            description="expected noise E[theta]; remove below 0.1",
        ),
        Criterion(
            "l2",
            False,
            _l2,
            None,
            frozenset({CriterionInput.INCOMING_WEIGHTS}),
            description="L2 norm of incoming weights; prune to a target fraction",
        ),
        Criterion(
            "grad",
            False,
            _grad,
            None,
            frozenset({CriterionInput.WEIGHT_GRADIENTS}),
            description="norm of the weight gradient; prune to a target fraction",
        ),
        Criterion(
            "gaussian_bmr",
            True,
            _neg(gaussian),
            _nonneg(gaussian),
            frozenset({CriterionInput.GAUSSIAN_WEIGHTS}),
            accepts=frozenset({"reduced_scale"}) | odds,
            description="Gaussian BMR to N(0, 1e-16), dF summed over a structure's weights",
        ),
    ]
    return {c.name: c for c in entries}


_REGISTRY: dict[str, Criterion] = _make_registry()

#: Read-only view of the registered criteria, by name.
CRITERIA: Mapping[str, Criterion] = MappingProxyType(_REGISTRY)


def register_criterion(criterion: Criterion, *, overwrite: bool = False) -> None:
    """Add a criterion to :data:`CRITERIA` (``ValueError`` if the name is taken)."""
    if not isinstance(criterion, Criterion):
        raise TypeError(f"criterion must be a Criterion, got {type(criterion).__name__}")
    if criterion.name in _REGISTRY and not overwrite:
        raise ValueError(f"criterion {criterion.name!r} is already registered")
    _REGISTRY[criterion.name] = criterion


def get_criterion(name: str, **options: Any) -> Criterion:
    """Look a criterion up by name, optionally binding options.

    ``get_criterion("bmrs_u", p1=4)`` equals ``get_criterion("bmrs_u4")``;
    ``get_criterion("snr", threshold=2.0)`` changes the default threshold.

    Raises:
        ValueError: unknown name (the message lists the known ones), or ``threshold`` for a
            criterion without one.
        TypeError: an option the criterion does not take.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    key = name.strip().lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown criterion {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    crit = _REGISTRY[key]
    if "threshold" in options:
        thr = options.pop("threshold")
        if crit.threshold_free or crit.default_threshold is None:
            raise ValueError(f"criterion {crit.name!r} takes no threshold")
        crit = replace(crit, default_threshold=check_number(thr, "threshold"))
    unknown = set(options) - crit.accepts
    if unknown:
        raise TypeError(
            f"criterion {crit.name!r} got unexpected option(s) {sorted(unknown)}; "
            f"options: {sorted(crit.accepts)}"
        )
    if options:
        crit = replace(crit, options=MappingProxyType({**crit.options, **options}))
    return crit
