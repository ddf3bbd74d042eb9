r"""Gaussian BMR: Gaussian weights reduced towards a spike at zero.

Friston & Penny (2011), *Post hoc Bayesian model selection* (NeuroImage); Beckers et al.
(2024), *Principled pruning of Bayesian neural networks through variational free energy
minimization* (IEEE OJSP). A structure's dF is the sum over its weights.
"""

from __future__ import annotations

import math

import torch

from pyro_prune.reduction._elementwise import Dim, blocked, check_finite, float_tensor, loc_scale

__all__ = ["delta_f_gaussian"]


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
    loc, scale = loc_scale(loc, scale)
    s = float_tensor(prior_scale, "prior_scale", like=loc)
    r = float_tensor(reduced_scale, "reduced_scale", like=loc)
    check_finite(s, "prior_scale", positive=True)
    check_finite(r, "reduced_scale", positive=True)
    s2, r2 = s.square(), r.square()
    check_finite(s2, "prior_scale", positive=True)  # the squares must be representable
    check_finite(r2, "reduced_scale", positive=True)
    df = blocked(_gaussian_bmr_kernel, loc, scale, s2, r2)
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
