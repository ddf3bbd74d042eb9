r"""Baseline scores with a threshold or a target fraction instead of BMR.

:func:`expected_theta` and :func:`snr` of the noise posterior (Neklyudov et al. 2017: remove
below 0.1 and below 1), the magnitude :func:`l2_norm` of a structure's incoming weights and
the :func:`gradient_score` (both rank only: prune them to a target fraction).
"""

from __future__ import annotations

import torch

from pyro_prune.distributions.truncated_lognormal import log_moment, log_variance_ratio
from pyro_prune.reduction._elementwise import Dim, blocked, float_tensor, noise_params

__all__ = ["expected_theta", "gradient_score", "l2_norm", "snr"]


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
    loc, scale, low, high = noise_params(loc, scale, log_low, log_high)
    loc64, scale64, low64, high64 = (t.to(torch.float64) for t in (loc, scale, low, high))
    return blocked(_expected_theta_kernel, loc64, scale64, low64, high64).to(loc.dtype)


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
    loc, scale, low, high = noise_params(loc, scale, log_low, log_high)
    loc64, scale64, low64, high64 = (t.to(torch.float64) for t in (loc, scale, low, high))
    return blocked(_snr_kernel, loc64, scale64, low64, high64).to(loc.dtype)


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
    weight = float_tensor(weight, "weight")
    return torch.linalg.vector_norm(weight, ord=2, dim=dim)


def gradient_score(grad: torch.Tensor, dim: Dim) -> torch.Tensor:
    r"""Gradient-based importance: L2 norm of the loss gradient w.r.t. a structure's weights.

    :math:`\|\partial \mathcal L/\partial w_i\|_2` over the axes ``dim`` (as in
    :func:`l2_norm`); pass a gradient accumulated over the data of interest. Higher means
    more important. No threshold: prune to a target fraction.
    """
    grad = float_tensor(grad, "grad")
    return torch.linalg.vector_norm(grad, ord=2, dim=dim)
