r"""The truncated log-uniform prior :math:`\mathrm{LogU}_{[A,B]}` of the noise."""

from __future__ import annotations

import math

import torch
from torch.distributions import constraints

from pyro_prune.distributions.log_bounded import LogBoundedDistribution

__all__ = ["TruncatedLogUniform"]


class TruncatedLogUniform(LogBoundedDistribution):
    r"""Log-uniform prior :math:`\mathrm{LogU}_{[A,B]}`: :math:`\log\theta \sim \mathcal U(A, B)`.

    The prior of Neklyudov et al. (2017) and Wright, Igel & Selvan (2024); density
    :math:`p(\theta) = 1/(\theta (B - A))` on :math:`[e^A, e^B]`. Parameters broadcast to the
    batch shape; use :meth:`expand` for a batch of identical priors.
    """

    arg_constraints = {"log_low": constraints.real, "log_high": constraints.real}
    has_rsample = True

    def __init__(self, log_low=-20.0, log_high=0.0, validate_args=None):
        self._set_params(validate_args, log_low=log_low, log_high=log_high)

    @property
    def _width(self) -> torch.Tensor:
        return self.log_high - self.log_low

    def rsample(self, sample_shape=()):
        shape = self._extended_shape(sample_shape)
        u = torch.rand(shape, dtype=self.log_low.dtype, device=self.log_low.device)
        x = self.log_low + u * self._width
        return torch.minimum(x, self.log_high).exp()

    def log_prob(self, value):
        r""":math:`-\log(B-A) - \log\theta` on the support."""
        if self._validate_args:
            self._validate_sample(value)
        x = torch.log(value)
        lp = -torch.log(self._width) - x
        inside = (x >= self.log_low) & (x <= self.log_high)
        return torch.where(inside, lp, torch.full_like(lp, -math.inf))

    def cdf(self, value):
        if self._validate_args:
            self._validate_sample(value)
        return ((torch.log(value) - self.log_low) / self._width).clamp(0.0, 1.0)

    def icdf(self, value):
        value = torch.as_tensor(value, dtype=self.log_low.dtype, device=self.log_low.device)
        return (self.log_low + value * self._width).exp()

    @property
    def mean(self):
        r""":math:`(e^B - e^A)/(B - A) = e^A\,\mathrm{expm1}(B-A)/(B-A)`."""
        w = self._width
        return self.log_low.exp() * torch.expm1(w) / w

    @property
    def variance(self):
        r""":math:`e^{2A}\,[\mathrm{expm1}(2w)/(2w) - (\mathrm{expm1}(w)/w)^2]`, :math:`w = B - A`."""
        w = self._width
        m1 = torch.expm1(w) / w
        m2 = torch.expm1(2.0 * w) / (2.0 * w)
        return (2.0 * self.log_low).exp() * (m2 - m1.square()).clamp(min=0.0)

    def entropy(self):
        r""":math:`\log(B-A) + (A+B)/2` (entropy of :math:`\theta`)."""
        return torch.log(self._width) + 0.5 * (self.log_low + self.log_high)
