r"""BMRS\ :sub:`U`: the reduced prior is log-uniform below the quantisation step.

Wright, Igel & Selvan (2024), *BMRS: Bayesian Model Reduction for Structured Pruning*
(NeurIPS), Eq. 10: the reduced prior :math:`\mathrm{LogU}[-p_2\ln 2, -p_1\ln 2]`, or the
whole off range :math:`[A, -p_1\ln 2]`.
"""

from __future__ import annotations

import math

import torch

from pyro_prune.distributions.special import log_mass_std
from pyro_prune.reduction._elementwise import LN2, blocked, clamp_, noise_params

__all__ = ["delta_f_loguniform"]


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
    loc, scale, low, high = noise_params(loc, scale, log_low, log_high)
    for name, p in (("p1", p1), ("p2", p2)):
        if name == "p2" and p is None:
            continue
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p):
            raise TypeError(f"{name} must be a finite real number, got {p!r}")
    r_high_f = -float(p1) * LN2
    r_high = torch.tensor(r_high_f, dtype=loc.dtype, device=loc.device)
    if p2 is None:  # the whole off range [A, -p1 ln 2]
        r_low = low
        if not bool((low < r_high).all()):
            raise ValueError(f"log_low must lie below the reduced prior's upper end -p1 ln2 = {r_high_f:.4g}")
    else:
        r_low_f = -float(p2) * LN2
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
    return blocked(_bmrs_u_kernel, loc, scale, low, high, r_low, r_high)


def _bmrs_u_kernel(loc, scale, low, high, r_low, r_high) -> torch.Tensor:
    loc, scale = torch.broadcast_tensors(loc, scale)  # results below are fresh and full-size
    inv = scale.reciprocal()
    ref = clamp_(loc.clone(), r_low, r_high)
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
