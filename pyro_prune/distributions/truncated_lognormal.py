r"""The truncated log-normal posterior :math:`\mathrm{LogN}_{[A,B]}(\mu, \sigma^2)` of the noise.

The distribution methods compute in float64 internally and cast back to the parameters'
dtype, so float32 parameters get float64-quality results (the training hot path evaluates
these on a few thousand structures, where the cost is negligible). Everything is finite and
NaN-free, values and gradients, for ``loc`` in ``[-30, 10]`` and ``log(scale)`` in
``[-20, 5]`` with the default bounds.

Sampling (:meth:`TruncatedLogNormal.rsample`, :meth:`~TruncatedLogNormal.icdf`) inverts the
CDF in log-probability space on whichever side (lower tail or upper tail) avoids
cancellation, using :func:`ndtri_exp`; the result is clamped into ``[log_low, log_high]`` (only
rounding can push it outside). Its gradient is the implicit reparameterisation gradient
(Figurnov et al., 2018, *Implicit Reparameterization Gradients*):
:math:`\partial x/\partial\mu = 1 - \rho_A - \rho_B`, :math:`\partial x / \partial\sigma = t -
\alpha\rho_A - \beta\rho_B`, :math:`\partial x/\partial A = \rho_A`, :math:`\partial
x/\partial B = \rho_B` with :math:`t = (x-\mu)/\sigma`, :math:`\rho_A = (1-F)\phi(\alpha)/\phi(t)`
and :math:`\rho_B = F\phi(\beta)/\phi(t)`; these first derivatives are exact, second derivatives
of samples are not provided.

The kernels (:func:`log_moment`, :func:`log_variance_ratio`, ...) take float64 tensors
``loc, scale, low, high`` and are shared with the dF operators of :mod:`pyro_prune.reduction`.
"""

from __future__ import annotations

import math

import torch
from torch.distributions import constraints
from torch.distributions.utils import broadcast_all

from pyro_prune.distributions.log_bounded import LogBoundedDistribution
from pyro_prune.distributions.special import (
    LOG_HALF,
    LOG_SQRT_2PI,
    log_diff_ndtr,
    log_mass,
    ndtri_exp,
    standardise,
    to_float64,
)

__all__ = [
    "TruncatedLogNormal",
    "entropy_log",
    "icdf_log",
    "log_moment",
    "log_variance_ratio",
    "mean_log",
]

#: Below this variance of ``log theta`` the variance of theta uses the cumulant expansion.
_SMALL_LOG_VARIANCE = 1e-6


def log_moment(loc, scale, low, high, k: float) -> torch.Tensor:
    r""":math:`\log E[\theta^k] = k r + M(\mu + k\sigma^2; r) - M(\mu; r)`, :math:`r = \mathrm{clamp}(\mu + k\sigma^2)`.

    Follows from :math:`e^{kx}\mathcal N(x;\mu,\sigma^2) = e^{k\mu + k^2\sigma^2/2}
    \mathcal N(x; \mu + k\sigma^2, \sigma^2)`; the reference point sits where the tilted
    density has its mass, so both :math:`M` terms stay moderate.
    """
    ref = torch.minimum(torch.maximum(loc + k * scale.square(), low), high)
    return k * ref + log_mass(loc, scale, low, high, ref, k * scale) - log_mass(loc, scale, low, high, ref)


def log_variance_ratio(loc, scale, low, high) -> torch.Tensor:
    r""":math:`\Delta = \log E[\theta^2] - 2\log E[\theta]`, so :math:`\mathrm{Var}\,\theta = E[\theta]^2\,\mathrm{expm1}(\Delta)`.

    :math:`\Delta = K(2\sigma) - 2K(\sigma) = \sum_{n\ge2} \sigma^n\kappa_n (2^n-2)/n!` with
    :math:`K` the cumulant generating function of the standardised truncated normal. Where
    :math:`\mathrm{Var}[\log\theta] = \sigma^2\kappa_2 < 10^{-6}` the series to
    :math:`\kappa_4` is used (relative error below ~1e-8); elsewhere the second difference
    :math:`M_2 - 2M_1 + M_0` at one common reference point.
    """
    s2 = scale.square()
    ref = torch.minimum(torch.maximum(loc + s2, low), high)
    m0 = log_mass(loc, scale, low, high, ref)
    m1 = log_mass(loc, scale, low, high, ref, scale)
    m2 = log_mass(loc, scale, low, high, ref, 2.0 * scale)
    direct = m2 - 2.0 * m1 + m0
    k2, k3, k4 = standardise(loc, scale, low, high).cumulants()
    var_x = s2 * k2
    series = var_x + scale * s2 * k3 + (7.0 / 12.0) * s2.square() * k4
    return torch.where(var_x < _SMALL_LOG_VARIANCE, series, direct)


def mean_log(loc, scale, low, high) -> torch.Tensor:
    r""":math:`E[\log\theta]`: measured from the nearer bound in a tail, from ``loc`` otherwise."""
    st = standardise(loc, scale, low, high)
    off = st.mean_offset()
    upper = st.tail & (st.sign > 0)
    lower = st.tail & (st.sign < 0)
    return torch.where(upper, low + scale * off, torch.where(lower, high - scale * off, loc + scale * off))


def entropy_log(loc, scale, low, high) -> torch.Tensor:
    """Entropy of ``log theta``: ``log(scale) + h_std(alpha, beta)``."""
    return torch.log(scale) + standardise(loc, scale, low, high).entropy()


def icdf_log(loc, scale, low, high, u: torch.Tensor) -> torch.Tensor:
    r"""``log theta`` at probability ``u`` (float64 in, float64 out), with implicit gradients.

    The detached value inverts on the side with probability below 1/2:
    :math:`\log p = \mathrm{logaddexp}(\log\Phi(\alpha), \log u + \log Z)` or
    :math:`\log(1-p) = \mathrm{logaddexp}(\log\Phi(-\beta), \log(1-u) + \log Z)`, then
    :func:`ndtri_exp`. Gradients w.r.t. ``loc``, ``scale``, ``low``, ``high`` and ``u`` are the
    exact first derivatives of the inverse CDF (module docstring), attached by a
    first-order surrogate.
    """
    with torch.no_grad():
        mu, s, lo_b, hi_b = (t.detach() for t in broadcast_all(loc, scale, low, high))
        uu = u.detach()
        # parameter-shaped pieces first, per-sample ones after
        alpha = (lo_b - mu) / s
        beta = (hi_b - mu) / s
        log_z = log_diff_ndtr(alpha, beta)
        log_p = torch.logaddexp(torch.special.log_ndtr(alpha), torch.log(uu) + log_z)
        log_q = torch.logaddexp(torch.special.log_ndtr(-beta), torch.log1p(-uu) + log_z)
        use_p = log_p <= LOG_HALF
        root = ndtri_exp(torch.where(use_p, log_p, log_q))
        x = torch.minimum(torch.maximum(mu + s * torch.where(use_p, root, -root), lo_b), hi_b)
        t = (x - mu) / s
        # log F(x) or log(1 - F(x)), whichever is smaller, from the side interval [low, x] or
        # [x, high] (evaluated at the rounded x, so that the Jacobian matches the returned
        # value deep in a tail), the other one by log1mexp
        lower_half = uu <= 0.5  # F(x) = u up to rounding
        side_lo = torch.where(lower_half, lo_b, x)
        side_hi = torch.where(lower_half, x, hi_b)
        ref = torch.minimum(torch.maximum(mu, side_lo), side_hi)
        log_small = log_mass(mu, s, side_lo, side_hi, ref) - log_mass(mu, s, lo_b, hi_b, ref)
        log_small = log_small.clamp(max=0.0)
        log_big = torch.log1p(-torch.exp(log_small))
        log_f = torch.where(lower_half, log_small, log_big)
        log_sf = torch.where(lower_half, log_big, log_small)
        d_lo = (x - lo_b) / s
        d_hi = (hi_b - x) / s
        rho_a = torch.exp(log_sf + 0.5 * d_lo * ((x + lo_b - 2.0 * mu) / s)).clamp(0.0, 1.0)
        rho_b = torch.exp(log_f - 0.5 * d_hi * ((hi_b + x - 2.0 * mu) / s)).clamp(0.0, 1.0)
        dx_dloc = 1.0 - rho_a - rho_b
        dx_dscale = t * dx_dloc + d_lo * rho_a - d_hi * rho_b
        # dx/du = 1 / q(x) = scale * sqrt(2 pi) * exp(M(loc, scale; low, high; x))
        dx_du = s * math.sqrt(2.0 * math.pi) * torch.exp(log_mass(mu, s, lo_b, hi_b, x))
    out = x
    for param, jac in (
        (loc, dx_dloc),
        (scale, dx_dscale),
        (low, rho_a),
        (high, rho_b),
        (u, dx_du),
    ):
        if isinstance(param, torch.Tensor) and param.requires_grad:
            out = out + jac * (param - param.detach())
    return out


class TruncatedLogNormal(LogBoundedDistribution):
    r"""Noise :math:`\theta` with :math:`\log\theta \sim \mathcal N(\mu, \sigma^2)` truncated to ``[log_low, log_high]``.

    The variational posterior :math:`\mathrm{LogN}_{[A,B]}(\mu, \sigma^2)` of Neklyudov et
    al. (2017), used by BMRS (Wright, Igel & Selvan, 2024). The support is
    :math:`[e^A, e^B]`. See the module docstring for the numerics: all methods are accurate
    deep in the tails (e.g. :math:`\sigma = e^{-20}`) and compute in float64 internally.

    Args:
        loc: :math:`\mu`, location of ``log theta`` before truncation.
        scale: :math:`\sigma > 0`.
        log_low: :math:`A` (default -20).
        log_high: :math:`B > A` (default 0).
        validate_args: as in :class:`torch.distributions.Distribution`.

    Attributes ``loc``, ``scale``, ``log_low``, ``log_high`` are tensors broadcast to
    ``batch_shape``.
    """

    arg_constraints = {
        "loc": constraints.real,
        "scale": constraints.positive,
        "log_low": constraints.real,
        "log_high": constraints.real,
    }
    has_rsample = True

    def __init__(self, loc, scale, log_low=-20.0, log_high=0.0, validate_args=None):
        self._set_params(validate_args, loc=loc, scale=scale, log_low=log_low, log_high=log_high)

    def _params64(self) -> tuple[torch.Tensor, ...]:
        return to_float64(self.loc, self.scale, self.log_low, self.log_high)

    def _out(self, value: torch.Tensor) -> torch.Tensor:
        return value.to(self.loc.dtype)

    def rsample(self, sample_shape=()):
        """Reparameterised sample; see :meth:`icdf` (``u ~ U(0, 1)`` drawn in float64)."""
        shape = self._extended_shape(sample_shape)
        u = torch.rand(shape, dtype=torch.float64, device=self.loc.device)
        x = icdf_log(*self._params64(), u)
        return self._out(x).exp()

    def icdf(self, value):
        """Inverse CDF (differentiable in the parameters and in ``value``)."""
        value = torch.as_tensor(value, dtype=self.loc.dtype, device=self.loc.device)
        if self._validate_args and not bool(((value >= 0) & (value <= 1)).all()):
            raise ValueError("icdf: value must lie in [0, 1]")
        return self._out(icdf_log(*self._params64(), value.to(torch.float64))).exp()

    def log_prob(self, value):
        r""":math:`\log q(\theta) = -M(\mu,\sigma; A, B; \log\theta) - \log\sigma - \tfrac12\log 2\pi - \log\theta`."""
        if self._validate_args:
            self._validate_sample(value)
        value = torch.as_tensor(value, dtype=self.loc.dtype, device=self.loc.device)
        # membership is decided in the parameters' dtype, so that samples rounded onto
        # exp(log_low) in float32 stay inside after the float64 logarithm
        inside = (value >= self.log_low.exp()) & (value <= self.log_high.exp())
        loc, scale, low, high = self._params64()
        x = torch.log(value.to(torch.float64))
        xr = torch.minimum(torch.maximum(x, low), high)
        lp = -log_mass(loc, scale, low, high, xr) - torch.log(scale) - LOG_SQRT_2PI - x
        return self._out(torch.where(inside, lp, torch.full_like(lp, -math.inf)))

    def cdf(self, value):
        """CDF in ``theta``; the smaller of F and 1 - F is computed directly."""
        if self._validate_args:
            self._validate_sample(value)
        loc, scale, low, high = self._params64()
        x = torch.log(torch.as_tensor(value).to(torch.float64))
        below, above = x <= low, x >= high
        # safe stand-ins where F = 0 or F = 1 exactly, so that no empty interval (log 0) enters
        # the graph and gradients stay finite at the bounds
        x_f = torch.where(below, high, x).clamp(max=high)
        x_s = torch.where(above, low, x).clamp(min=low)
        ref_f = torch.minimum(torch.maximum(loc, low), x_f)
        ref_s = torch.minimum(torch.maximum(loc, x_s), high)
        log_f = log_mass(loc, scale, low, x_f, ref_f) - log_mass(loc, scale, low, high, ref_f)
        log_sf = log_mass(loc, scale, x_s, high, ref_s) - log_mass(loc, scale, low, high, ref_s)
        inner = torch.where(log_f < LOG_HALF, torch.exp(log_f), -torch.expm1(log_sf))
        zero, one = torch.zeros_like(inner), torch.ones_like(inner)
        return self._out(torch.where(below, zero, torch.where(above, one, inner)))

    @property
    def mean(self):
        r""":math:`E[\theta] = \exp(\mu + \sigma^2/2)\,(\Phi(\beta-\sigma) - \Phi(\alpha-\sigma))/Z`, in log space."""
        return self._out(log_moment(*self._params64(), 1.0).exp())

    @property
    def variance(self):
        r""":math:`E[\theta]^2\,\mathrm{expm1}(\log E[\theta^2] - 2\log E[\theta])` (see module docs)."""
        loc, scale, low, high = self._params64()
        log_m1 = log_moment(loc, scale, low, high, 1.0)
        delta = log_variance_ratio(loc, scale, low, high)
        return self._out(torch.exp(2.0 * log_m1) * torch.expm1(delta).clamp(min=0.0))

    def entropy(self):
        r"""Entropy of :math:`\theta`: :math:`H[\log\theta] + E[\log\theta]`."""
        loc, scale, low, high = self._params64()
        return self._out(entropy_log(loc, scale, low, high) + mean_log(loc, scale, low, high))
