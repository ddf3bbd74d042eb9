"""What every reduction operator shares: argument checks and the blocked evaluation.

The dF operators and the baseline scores act elementwise on tensors of any broadcast shape.
Their arguments are turned into floating tensors of one dtype and checked here (finite,
positive where a scale is meant, ordered bounds), and :func:`blocked` evaluates an
elementwise kernel over a large input block by block, in cache.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["BLOCK_BYTES", "LN2", "LOG_2PI", "Dim", "blocked", "check_finite", "clamp_", "float_tensor",
           "loc_scale", "noise_params"]

LOG_2PI = math.log(2.0 * math.pi)
LN2 = math.log(2.0)

Dim = int | tuple[int, ...] | None


def float_tensor(value: Any, name: str, like: torch.Tensor | None = None) -> torch.Tensor:
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


def check_finite(x: torch.Tensor, name: str, *, positive: bool = False) -> None:
    """One pass: min and max are NaN if any element is, and bound all others."""
    if x.numel() == 0:
        return
    lo, hi = torch.aminmax(x.detach())
    lo_f, hi_f = float(lo), float(hi)
    if not (math.isfinite(lo_f) and math.isfinite(hi_f)):
        raise ValueError(f"{name} must be finite")
    if positive and not lo_f > 0:
        raise ValueError(f"{name} must be positive")


def loc_scale(loc: Any, scale: Any) -> tuple[torch.Tensor, torch.Tensor]:
    loc = float_tensor(loc, "loc")
    scale = float_tensor(scale, "scale")
    dtype = torch.promote_types(loc.dtype, scale.dtype)
    loc, scale = loc.to(dtype), scale.to(dtype=dtype, device=loc.device)
    check_finite(loc, "loc")
    check_finite(scale, "scale", positive=True)
    return loc, scale


def noise_params(loc: Any, scale: Any, log_low: Any, log_high: Any) -> tuple[torch.Tensor, ...]:
    """Validated ``loc, scale, low, high`` in one floating dtype (that of loc/scale)."""
    loc, scale = loc_scale(loc, scale)
    low = float_tensor(log_low, "log_low", like=loc)
    high = float_tensor(log_high, "log_high", like=loc)
    check_finite(low, "log_low")
    check_finite(high, "log_high")
    if not bool((low < high).all()):
        raise ValueError("log_low must be smaller than log_high")
    return loc, scale, low, high


def clamp_(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Clamp the fresh temporary ``x`` into ``[low, high]`` (in place for scalar bounds)."""
    if low.numel() == 1 and high.numel() == 1:
        return x.clamp_(float(low), float(high))  # the tensor-bound kernel is ~8x slower
    return torch.minimum(torch.maximum(x, low), high)


#: Bytes per operand in a block of :func:`blocked`: below glibc's default 128 KiB ``mmap``
#: threshold, so the temporaries of a block are recycled from the allocator's free lists
#: instead of being mapped afresh (page faults otherwise dominate), and below ATen's
#: 32768-element grain size, so no operation of a block starts a parallel region.
BLOCK_BYTES = 96 * 1024


def blocked(kernel: Callable[..., torch.Tensor], *args: torch.Tensor) -> torch.Tensor:
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
    block = BLOCK_BYTES // ref.element_size()
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
