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
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from pyro_prune.models import noise_kernels_jit

__all__ = [
    "kl_truncated_lognormal_loguniform",
    "log_theta_and_kl",
    "network_theta_and_kl",
    "rsample_log_theta",
]

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


#: below this probability :func:`_ndtri_no_grad` uses ``ndtri``; above, ``erfinv`` is as exact
_ERFINV_FLOOR = 0.02
#: tensors smaller than this take ``ndtri`` throughout (no gain from the split)
_ERFINV_MIN_NUMEL = 4096


def _ndtri_no_grad(p: Tensor) -> Tensor:
    """``Phi^-1(p)`` for the graph-free kernels, fast on large tensors.

    ``torch.special.ndtri`` is evaluated element by element on the CPU, about 8x slower than
    the vectorised ``erfinv``. ``sqrt(2) erfinv(2p - 1)`` is as accurate as ``ndtri`` for
    ``p >= 0.02`` (measured: within 5e-7 in float32, 3e-15 in float64, up to ``p = 1 - eps``);
    below, where ``2p - 1`` cancels, the few tail elements take ``ndtri``.
    """
    if p.numel() < _ERFINV_MIN_NUMEL:
        return torch.special.ndtri(p)
    t = torch.erfinv(2.0 * p - 1.0) * math.sqrt(2.0)
    tail = p < _ERFINV_FLOOR
    t[tail] = torch.special.ndtri(p[tail])
    return t


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


class _DrawAndKL(torch.autograd.Function):
    r"""``(log theta, KL)`` of the lean kernels with hand-written gradients.

    The same values as :func:`_draw` and :func:`_kl`, but the forward runs without
    recording a graph and the backward is one node of about twenty operations (per-example
    draws summed over the batch first) instead of the thirty-odd nodes autograd records
    for the composition. With ``phi`` and ``Phi`` the standard normal density
    and CDF, ``alpha = (A - mu) / sigma``, ``beta = (B - mu) / sigma``,
    ``Z = Phi(beta) - Phi(alpha)`` and the draw ``Phi(t) = Phi(alpha) + v Z`` (``v = u``, or
    ``1 - u`` where the interval was turned),

    .. math::

        \frac{\partial t}{\partial \alpha} = (1 - v) \frac{\phi(\alpha)}{\phi(t)}, \quad
        \frac{\partial t}{\partial \beta} = v \frac{\phi(\beta)}{\phi(t)}, \quad
        \frac{\partial\,\mathrm{KL}}{\partial \alpha} = \frac{r_\alpha}{2} (1 + \alpha^2 - G), \quad
        \frac{\partial\,\mathrm{KL}}{\partial \beta} = -\frac{r_\beta}{2} (1 + \beta^2 - G),

    with ``r_alpha = phi(alpha) / Z``, ``r_beta = phi(beta) / Z`` and
    ``G = alpha r_alpha - beta r_beta`` (so ``KL = ... - G / 2``); then
    ``d alpha / d mu = -1 / sigma`` and ``d alpha / d sigma = -alpha / sigma`` (the same for
    beta), and ``x = mu + sigma t`` clipped to ``[A, B]``. Bounds clipped at +-50 and draws
    clipped to ``[A, B]`` pass no gradient, as under autograd. Tested against autograd of
    the composition.
    """

    @staticmethod
    def forward(ctx: Any, loc: Tensor, scale: Tensor, u: Tensor, low: float, high: float,
                prep: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        x, kl, saved = _draw_and_kl_forward(loc, scale, u, low, high, prep)
        ctx.save_for_backward(*saved)
        return x, kl

    @staticmethod
    def backward(ctx: Any, grad_x: Tensor | None, grad_kl: Tensor | None) -> tuple[Tensor | None, ...]:
        grad_loc, grad_scale = _draw_and_kl_backward(ctx.saved_tensors, grad_x, grad_kl)
        return grad_loc, grad_scale, None, None, None, None


def _draw_and_kl_forward(
    loc: Tensor, scale: Tensor, u: Tensor, low: float, high: float, prep: tuple[Tensor, ...]
) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
    """``(x, kl, saved)``: the draw, the KL and what :func:`_draw_and_kl_backward` needs."""
    alpha, beta, flipped, pa, z = prep
    p = pa + u * z
    tiny = torch.finfo(loc.dtype).tiny
    t = _ndtri_no_grad(p.clamp(min=tiny))
    t = torch.where(flipped, -t, t)
    x = loc + scale * t
    phi_a = torch.exp(-0.5 * alpha.square()) * _INV_SQRT_2PI
    phi_b = torch.exp(-0.5 * beta.square()) * _INV_SQRT_2PI
    r_a = phi_a / z
    r_b = phi_b / z
    g = alpha * r_a - beta * r_b
    kl = math.log(high - low) - torch.log(z) - torch.log(scale) - _HALF_LOG_2PI_E - 0.5 * g
    clamped = x.clamp(low, high)
    passes = clamped == x  # draws clipped to [A, B] (rounding) pass no gradient
    return clamped, kl, (scale, alpha, beta, flipped, u, t, r_a, r_b, g, passes)


def _draw_and_kl_backward(
    saved: tuple[Tensor, ...], grad_x: Tensor | None, grad_kl: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Gradients of ``(x, kl)`` with respect to ``(loc, scale)`` (see :class:`_DrawAndKL`)."""
    scale, alpha, beta, flipped, u, t, r_a, r_b, g, passes = saved
    inside_a = (alpha.abs() <= _CLIP).to(scale.dtype)
    inside_b = (beta.abs() <= _CLIP).to(scale.dtype)
    grad_loc = torch.zeros_like(scale)
    grad_scale = torch.zeros_like(scale)
    if grad_x is not None:
        # d x / d loc = 1 - dt/dalpha - dt/dbeta and d x / d sigma = t - alpha dt/dalpha
        # - beta dt/dbeta, with dt/dalpha = (1 - v) phi(alpha) / phi(t) and dt/dbeta =
        # v phi(beta) / phi(t). The factors of phi(alpha), phi(beta) are per structure, so the
        # batch is summed first: S_w = sum_batch g e^(t^2/2 - m), S_wu = sum_batch g u
        # e^(t^2/2 - m), with m the batch maximum of t^2/2 keeping the exponentials <= 1.
        gx = torch.where(passes, grad_x, 0.0)
        batch_dims = tuple(range(gx.dim() - scale.dim()))
        half_t2 = 0.5 * t.square()
        if batch_dims:
            m = half_t2.amax(batch_dims)
            w = gx * torch.exp(half_t2 - m)
            s_w, s_wu = w.sum(batch_dims), (w * u).sum(batch_dims)
            s_g, s_gt = gx.sum(batch_dims), (gx * t).sum(batch_dims)
        else:  # one draw per structure: m = t^2 / 2
            m, s_w, s_wu, s_g, s_gt = half_t2, gx, gx * u, gx, gx * t
        s_v = torch.where(flipped, s_w - s_wu, s_wu)  # sum_batch g v e^(t^2/2 - m)
        # exponents cut to [-80, 80]: below, exp would underflow through the slow denormal
        # path for no change in value; above is out of reach (a uniform of at least 2^-53
        # puts t within sqrt(2 * 37) of the bound that phi is taken at, so the exponent
        # stays under 40)
        dt_da = (s_w - s_v) * torch.exp((m - 0.5 * alpha.square()).clamp(-80.0, 80.0)) * inside_a
        dt_db = s_v * torch.exp((m - 0.5 * beta.square()).clamp(-80.0, 80.0)) * inside_b
        grad_loc = s_g - dt_da - dt_db
        grad_scale = s_gt - alpha * dt_da - beta * dt_db
    if grad_kl is not None:
        dkl_da = 0.5 * r_a * (1.0 + alpha.square() - g) * inside_a
        dkl_db = -0.5 * r_b * (1.0 + beta.square() - g) * inside_b
        inv = scale.reciprocal()
        grad_loc = grad_loc - grad_kl * (dkl_da + dkl_db) * inv
        grad_scale = grad_scale - grad_kl * (1.0 + alpha * dkl_da + beta * dkl_db) * inv
    return grad_loc, grad_scale


class _NetworkNoise(torch.autograd.Function):
    """Every noise layer's ``theta`` and the weighted KL sum of a network, as one graph node.

    Inputs: the tensors whose concatenations are the layers' ``loc`` and ``log_scale``
    (differentiable: the network's shared storage, or each layer's own Parameters), their
    concatenation and its preparation (computed by the caller, which checks the reach), the
    uniforms, the per-structure ``kept`` mask and KL weights. Outputs: one
    ``theta = exp(x) * kept`` per layer and ``sum(kl * weight)``. Concatenating,
    exponentiating, splitting and weighting inside one node keeps the graph of a training
    step down to this node and the network's own layers.
    """

    @staticmethod
    def forward(ctx: Any, cat: tuple[Tensor, Tensor, tuple[Tensor, ...]], u: Tensor, kept: Tensor,
                weight: Tensor, low: float, high: float, sizes: list[int], *params: Tensor
                ) -> tuple[Tensor, ...]:
        loc, scale, prep = cat
        x, kl, saved = _draw_and_kl_forward(loc, scale, u, low, high, prep)
        theta = x.exp() * kept
        ctx.save_for_backward(theta, weight, *saved)
        ctx.sizes = sizes
        ctx.input_sizes = [q.shape[-1] for q in params[: len(params) // 2]]
        return (*theta.split(sizes, dim=-1), (kl * weight).sum())

    @staticmethod
    def backward(ctx: Any, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
        theta, weight, *saved = ctx.saved_tensors
        grad_thetas, grad_kl_sum = grads[:-1], grads[-1]
        grad_x = None
        if any(gt is not None for gt in grad_thetas):
            grad_x = torch.cat([torch.zeros_like(th) if gt is None else gt
                                for gt, th in zip(grad_thetas, theta.split(ctx.sizes, dim=-1))],
                               dim=-1) * theta
        grad_kl = None if grad_kl_sum is None else grad_kl_sum * weight
        grad_loc, grad_scale = _draw_and_kl_backward(tuple(saved), grad_x, grad_kl)
        grad_log_scale = grad_scale * saved[0]
        return (None, None, None, None, None, None, None,
                *grad_loc.split(ctx.input_sizes), *grad_log_scale.split(ctx.input_sizes))


def network_theta_and_kl(
    locs: list[Tensor], log_scales: list[Tensor], low: float, high: float,
    u: Tensor | noise_kernels_jit.CounterUniforms, kept: Tensor, weight: Tensor,
    sizes: list[int] | None = None,
) -> tuple[list[Tensor], Tensor] | None:
    """``theta`` of several noise layers (sharing bounds) and ``sum_j weight_j KL_j``, fused.

    ``locs``, ``log_scales``: tensors whose concatenations are the layers' parameters in layer
    order (one flat storage for a network whose layers share it, or one tensor per layer);
    ``sizes``: the layers' numbers of structures (default: the sizes of ``locs``), which split
    ``theta`` into the layers' draws.

    ``u``: uniforms ``[..., sum n_i]`` in layer order, or
    :class:`~pyro_prune.models.noise_kernels_jit.CounterUniforms` that the compiled kernel
    draws itself (the caller checks that the compiled kernel is usable); ``kept``, ``weight``: per structure
    ``[sum n_i]``. Returns the per-layer ``theta = exp(log theta) * kept`` (``[..., n_i]``)
    and the weighted KL sum, with the values of :func:`log_theta_and_kl`, as one autograd
    node (:class:`_NetworkNoise`); ``None`` when a structure is out of the kernel's reach.
    On the CPU, with Numba installed, the node is the compiled kernel of
    :mod:`~pyro_prune.models.noise_kernels_jit` (same values, a fraction of the cost).
    """
    from pyro_prune.models import noise_kernels_jit

    if isinstance(u, noise_kernels_jit.CounterUniforms) or noise_kernels_jit.usable(locs, u, kept, weight):
        return noise_kernels_jit.network_theta_and_kl(locs, log_scales, low, high, u, kept, weight, sizes)
    sizes = [q.shape[-1] for q in locs] if sizes is None else sizes
    with torch.no_grad():
        loc = torch.cat(locs)
        scale = torch.cat(log_scales).exp()
        prep = _prepared(loc, scale, low, high)
    if prep is None:
        return None
    *thetas, kl_sum = _NetworkNoise.apply((loc, scale, prep), u, kept, weight, low, high, sizes,
                                          *locs, *log_scales)
    return list(thetas), kl_sum


def log_theta_and_kl(
    loc: Tensor, scale: Tensor, low: float, high: float, u: Tensor
) -> tuple[Tensor, Tensor] | None:
    """Draws of ``log theta`` for given uniforms ``u`` (``[..., n]``) and the KL per structure.

    The sampler of :func:`rsample_log_theta` and the KL of
    :func:`kl_truncated_lognormal_loguniform` sharing one evaluation of the standardised
    bounds and of ``Phi``, with hand-written gradients (:class:`_DrawAndKL`): what one
    training step needs for all the structures of a network at once. Same values as the two
    separate kernels for the same ``u``; ``None`` out of reach.
    """
    with torch.no_grad():
        prep = _prepared(loc, scale, low, high)
    if prep is None:
        return None
    return _DrawAndKL.apply(loc, scale, u, low, high, prep)
