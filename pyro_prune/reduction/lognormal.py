r"""BMRS\ :sub:`N`: the reduced prior is a truncated log-normal spike at the lower bound.

For log-normal multiplicative noise (Neklyudov et al., 2017) with a log-uniform prior, Wright,
Igel & Selvan (2024), *BMRS: Bayesian Model Reduction for Structured Pruning* (NeurIPS), Eq. 8.
"""

from __future__ import annotations

from typing import Any

import torch

from pyro_prune.distributions.special import log_mass_std
from pyro_prune.reduction._elementwise import (
    LOG_2PI,
    blocked,
    check_finite,
    clamp_,
    float_tensor,
    noise_params,
)

__all__ = ["delta_f_lognormal", "delta_f_lognormal_released_code"]


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
    loc, scale, low, high = noise_params(loc, scale, log_low, log_high)
    mu_r = low if reduced_loc is None else float_tensor(reduced_loc, "reduced_loc", like=loc)
    var_r = float_tensor(reduced_var, "reduced_var", like=loc)
    check_finite(var_r, "reduced_var", positive=True)
    check_finite(mu_r, "reduced_loc")
    return blocked(_bmrs_n_kernel, loc, scale, low, high, mu_r, var_r)



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
    return delta_f_lognormal(loc, scale, **options) + 0.5 * LOG_2PI


def _bmrs_n_kernel(loc, scale, low, high, mu_r, var_r) -> torch.Tensor:
    loc, scale = torch.broadcast_tensors(loc, scale)  # results below are fresh and full-size
    s2 = scale.square()
    var = s2 + var_r
    w_r = s2 / var  # mu_q = w_r mu_r + w_p loc
    w_p = var_r / var
    inv = scale.reciprocal()
    inv_q = inv / torch.sqrt(w_p)  # 1 / s_q
    a_r, a_p = w_r * inv_q, w_p * inv_q
    ref = clamp_(torch.addcmul(loc, w_r, mu_r - loc), low, high)
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
    return (m_q - m_p - m_r).sub_(torch.log(var).mul_(0.5)).add_(torch.log(width) - 0.5 * LOG_2PI)
