r"""Lean kernels for the training loop of the multiplicative-noise layers.

:class:`~pyro_prune.distributions.TruncatedLogNormal` is exact over the whole documented
parameter range, deep tails included, at the price of many small tensor operations. SVI
calls the sampler and the KL once per layer and step, where that price dominates the
step. These kernels compute the same quantities with a handful of float64 operations:

* :func:`rsample_log_theta` — inverse-CDF draws of ``log theta``,
  ``t = ndtri(Phi(a) + u (Phi(b) - Phi(a)))`` with the interval turned so that it never
  lies in the upper tail (``Phi`` of a large positive argument loses its precision, of a
  large negative one it does not), ``x = mu + sigma t`` clipped to ``[A, B]``;
* :func:`kl_truncated_lognormal_loguniform` — the closed form of DESIGN.md,
  ``KL = log(B - A) - log Z - log sigma - 0.5 log(2 pi e) - (alpha phi(alpha) - beta phi(beta)) / (2 Z)``.

They compute in the parameters' dtype and are accurate while the turned standardised
interval reaches within ``reach`` standard deviations of the mean: 12 in float32
(``Phi(-12) ~ 2e-33``, above the smallest normal float), 37 in float64
(``Phi(-37) ~ 6e-300``). Each kernel returns ``None`` when that does not hold for some
structure, and the layer then falls back to the exact distribution. The standardised
bounds are clipped to +-50, where ``phi`` is exactly 0, so values and gradients stay
finite for ``sigma`` down to ``e^-20`` and below. Tested against the exact distribution.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["kl_truncated_lognormal_loguniform", "log_theta_and_kl", "rsample_log_theta"]

_CLIP = 50.0
_REACH = {torch.float32: 12.0, torch.float64: 37.0}
_HALF_LOG_2PI_E = 0.5 * math.log(2.0 * math.pi * math.e)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)


def _standardised(loc: Tensor, scale: Tensor, low: float, high: float) -> tuple[Tensor, Tensor]:
    inv = scale.reciprocal()
    alpha = ((low - loc) * inv).clamp(-_CLIP, _CLIP)
    beta = ((high - loc) * inv).clamp(-_CLIP, _CLIP)
    return alpha, beta


def _turned(alpha: Tensor, beta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The interval mirrored out of the upper tail: ``(a, b, flipped)`` with ``a <= 0``."""
    flipped = alpha > 0
    a = torch.where(flipped, -beta, alpha)
    b = torch.where(flipped, -alpha, beta)
    return a, b, flipped


def _ndtr(x: Tensor) -> Tensor:
    """``Phi(x)`` through ``erfc``, accurate far into the lower tail (``torch.special.ndtr``
    cancels and underflows early there)."""
    return 0.5 * torch.special.erfc(x * -_INV_SQRT_2)


def _within_reach(b: Tensor) -> bool:
    return bool((b.detach() > -_REACH.get(b.dtype, 12.0)).all())


def _prepared(loc: Tensor, scale: Tensor, low: float, high: float) -> tuple[Tensor, ...] | None:
    """``(alpha, beta, flipped, Phi(a), Phi(b) - Phi(a))`` of the turned interval, or ``None``."""
    alpha, beta = _standardised(loc, scale, low, high)
    a, b, flipped = _turned(alpha, beta)
    if not _within_reach(b):
        return None
    pa = _ndtr(a)
    return alpha, beta, flipped, pa, _ndtr(b) - pa


def _draw(loc: Tensor, scale: Tensor, low: float, high: float, prep: tuple[Tensor, ...],
          u: Tensor) -> Tensor:
    _, _, flipped, pa, width = prep
    # a probability that underflows to 0 would give t = -inf and a NaN gradient
    t = torch.special.ndtri((pa + u * width).clamp(min=torch.finfo(loc.dtype).tiny))
    t = torch.where(flipped, -t, t)
    return (loc + scale * t).clamp(low, high)


def _kl(scale: Tensor, low: float, high: float, prep: tuple[Tensor, ...]) -> Tensor:
    alpha, beta, _, _, z = prep
    phi_a = torch.exp(-0.5 * alpha.square()) * _INV_SQRT_2PI
    phi_b = torch.exp(-0.5 * beta.square()) * _INV_SQRT_2PI
    return (
        math.log(high - low)
        - torch.log(z)
        - torch.log(scale)
        - _HALF_LOG_2PI_E
        - (alpha * phi_a - beta * phi_b) / (2.0 * z)
    )


def rsample_log_theta(loc: Tensor, scale: Tensor, low: float, high: float, batch: int) -> Tensor | None:
    """Reparameterised draws of ``log theta``, shape ``[batch, n]``; ``None`` out of reach."""
    prep = _prepared(loc, scale, low, high)
    if prep is None:
        return None
    u = torch.rand(batch, loc.shape[-1], dtype=loc.dtype, device=loc.device)
    return _draw(loc, scale, low, high, prep, u)


def kl_truncated_lognormal_loguniform(loc: Tensor, scale: Tensor, low: float, high: float) -> Tensor | None:
    """``KL(LogN[A,B](loc, scale^2) || LogU[A,B])`` per structure; ``None`` out of reach."""
    prep = _prepared(loc, scale, low, high)
    return None if prep is None else _kl(scale, low, high, prep)


def log_theta_and_kl(
    loc: Tensor, scale: Tensor, low: float, high: float, u: Tensor
) -> tuple[Tensor, Tensor] | None:
    """Draws of ``log theta`` for given uniforms ``u`` (``[..., n]``) and the KL per structure.

    The sampler of :func:`rsample_log_theta` and the KL of
    :func:`kl_truncated_lognormal_loguniform` sharing one evaluation of the standardised
    bounds and of ``Phi``: what one training step needs for all the structures of a
    network at once. Same values as the two separate kernels for the same ``u``;
    ``None`` out of reach.
    """
    prep = _prepared(loc, scale, low, high)
    if prep is None:
        return None
    return _draw(loc, scale, low, high, prep, u), _kl(scale, low, high, prep)
