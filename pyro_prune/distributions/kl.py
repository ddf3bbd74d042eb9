r"""Closed-form KL divergences between the noise distributions, registered with torch."""

from __future__ import annotations

import math

import torch
from torch.distributions.kl import register_kl

from pyro_prune.distributions.special import to_float64
from pyro_prune.distributions.truncated_lognormal import TruncatedLogNormal, entropy_log
from pyro_prune.distributions.truncated_loguniform import TruncatedLogUniform

__all__ = ["kl_truncated_lognormal_loguniform"]


@register_kl(TruncatedLogNormal, TruncatedLogUniform)
def kl_truncated_lognormal_loguniform(q: TruncatedLogNormal, p: TruncatedLogUniform) -> torch.Tensor:
    r"""Closed-form :math:`\mathrm{KL}(\mathrm{LogN}_{[A,B]}(\mu,\sigma^2) \,\|\, \mathrm{LogU}_{[A',B']})`.

    :math:`\log(B'-A') - H[\log\theta]` (the KL is invariant under :math:`x = \log\theta`),
    which for equal bounds is Neklyudov et al. (2017), Eq. 11:
    :math:`\log(B-A) - \log Z - \log\sigma - \tfrac12\log(2\pi e) - (\alpha\phi(\alpha) -
    \beta\phi(\beta))/(2Z)`, evaluated without cancellation. ``+inf`` where the support of
    ``q`` is not inside that of ``p``.
    """
    loc, scale, low, high = q._params64()
    p_low, p_high = to_float64(p.log_low, p.log_high)
    kl = torch.log(p_high - p_low) - entropy_log(loc, scale, low, high)
    outside = (low < p_low) | (high > p_high)
    return q._out(torch.where(outside, torch.full_like(kl, math.inf), kl))
