r"""Wasserstein-2 distances between empirical distributions, per input and over a data set.

Between two empirical distributions of equal weight per sample, per input:

* 1-D outputs: exact, from the quantile functions, ``W2^2 = int_0^1 (F_p^-1(u) - F_q^-1(u))^2 du``
  (sorted samples when the counts are equal);
* multivariate outputs: the exact optimal transport cost with squared Euclidean ground cost
  (POT's network simplex, ``ot.emd2``), ``O(S^3 log S)`` per input; the predictive functions
  use ``draws=32`` by default (``S x S = 1024`` costs per input), which with common random
  numbers resolves shifts well below the spread of the predictive;
* :func:`wasserstein2_gaussian`: the closed form between Gaussians (a test oracle).

Over a data set the per-input distances are aggregated by the root mean square,
``W2_data = sqrt(mean_n W2(p(.|x_n), q(.|x_n))^2)``: the W2 between the joint distributions of
``(x, f(x))`` under couplings that keep the input fixed.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = ["aggregate_w2", "predictive_w2", "wasserstein2", "wasserstein2_1d", "wasserstein2_gaussian"]


def _check_samples(p: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
    for arg, t in (("samples_p", p), ("samples_q", q)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{arg} must be a Tensor, got {type(t).__name__}")
        if t.dim() < 2:
            raise ValueError(f"{arg} must be [draws, ..., event] (at least 2-D), got shape {tuple(t.shape)}")
        if t.shape[0] < 1:
            raise ValueError(f"{arg} has no draws")
        if not t.is_floating_point():
            raise TypeError(f"{arg} must be a floating point tensor, got {t.dtype}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{arg} contains NaN or infinite values")
    if p.shape[-1] != q.shape[-1]:
        raise ValueError(f"event sizes differ: samples_p {p.shape[-1]} vs samples_q {q.shape[-1]}")
    try:
        batch = torch.broadcast_shapes(p.shape[1:-1], q.shape[1:-1])
    except RuntimeError:
        raise ValueError(
            f"batch shapes {tuple(p.shape[1:-1])} and {tuple(q.shape[1:-1])} do not broadcast") from None
    p = p.expand(p.shape[0], *batch, p.shape[-1])
    q = q.expand(q.shape[0], *batch, q.shape[-1])
    return p, q


def wasserstein2_1d(samples_p: Tensor, samples_q: Tensor) -> Tensor:
    r"""Exact W2 between 1-D empirical distributions, along dim 0 (any batch dims after).

    Equal counts: ``sqrt(mean_i (p_(i) - q_(i))^2)`` of the sorted samples. Unequal counts:
    ``W2^2 = int_0^1 (F_p^-1(u) - F_q^-1(u))^2 du`` integrated exactly over the intervals
    between the jumps ``i / S_p`` and ``j / S_q`` of the two quantile step functions.
    """
    p, q = _check_samples(samples_p.unsqueeze(-1), samples_q.unsqueeze(-1))
    p, _ = torch.sort(p[..., 0], dim=0)
    q, _ = torch.sort(q[..., 0], dim=0)
    sp, sq = p.shape[0], q.shape[0]
    if sp == sq:
        return ((p - q) ** 2).mean(0).sqrt()
    # breakpoints as exact fractions k / lcm to avoid rounding
    lcm = sp * sq // math.gcd(sp, sq)
    cuts = sorted(set(range(0, lcm + 1, lcm // sp)) | set(range(0, lcm + 1, lcm // sq)))
    lo = torch.tensor(cuts[:-1], dtype=torch.long)
    hi = torch.tensor(cuts[1:], dtype=torch.long)
    widths = ((hi - lo).double() / lcm).to(p.dtype)
    ip = lo // (lcm // sp)  # index of the quantile on (lo, hi]
    iq = lo // (lcm // sq)
    diff = p.index_select(0, ip) - q.index_select(0, iq)
    w = widths.reshape(-1, *([1] * (p.dim() - 1)))
    return (w * diff**2).sum(0).sqrt()


def wasserstein2(samples_p: Tensor, samples_q: Tensor) -> Tensor:
    r"""W2 between two empirical distributions given as samples ``[draws, *batch, event]``.

    Each sample has equal weight (``1 / S_p`` and ``1 / S_q``). The batch dims (between the
    draws and the event) broadcast; the result has the batch shape. One-dimensional events
    use the exact quantile formula (:func:`wasserstein2_1d`); larger events the exact optimal
    transport cost with squared Euclidean ground cost (``ot.emd2``), ``O(S^3 log S)`` each.
    """
    p, q = _check_samples(samples_p, samples_q)
    if p.shape[-1] == 1:
        return wasserstein2_1d(p[..., 0], q[..., 0]).to(samples_p.dtype)
    import ot

    batch = p.shape[1:-1]
    pf = p.reshape(p.shape[0], -1, p.shape[-1]).detach().double().cpu()
    qf = q.reshape(q.shape[0], -1, q.shape[-1]).detach().double().cpu()
    a = np.full(p.shape[0], 1.0 / p.shape[0])
    b = np.full(q.shape[0], 1.0 / q.shape[0])
    costs = torch.cdist(pf.transpose(0, 1), qf.transpose(0, 1)) ** 2  # [B, S_p, S_q]
    out = np.empty(costs.shape[0])
    for i, m in enumerate(costs.numpy()):
        out[i] = ot.emd2(a, b, m, numItermax=1_000_000)
    w2 = torch.from_numpy(np.sqrt(np.maximum(out, 0.0))).to(samples_p.dtype)
    return w2.reshape(batch)


def _sqrtm_psd(c: Tensor) -> Tensor:
    evals, evecs = torch.linalg.eigh(c)
    return (evecs * evals.clamp_min(0).sqrt().unsqueeze(-2)) @ evecs.transpose(-1, -2)


def wasserstein2_gaussian(m1: Tensor, c1: Tensor, m2: Tensor, c2: Tensor) -> Tensor:
    r"""Closed-form W2 between ``N(m1, C1)`` and ``N(m2, C2)`` (batched over leading dims).

    ``W2^2 = ||m1 - m2||^2 + tr(C1 + C2 - 2 (C2^{1/2} C1 C2^{1/2})^{1/2})``, computed in
    float64 with symmetric eigendecompositions.
    """
    m1, c1, m2, c2 = (torch.as_tensor(t).double() for t in (m1, c1, m2, c2))
    for arg, c in (("C1", c1), ("C2", c2)):
        if c.dim() < 2 or c.shape[-1] != c.shape[-2]:
            raise ValueError(f"{arg} must be a square matrix [..., d, d], got shape {tuple(c.shape)}")
    if m1.shape[-1] != c1.shape[-1] or m2.shape[-1] != c2.shape[-1] or m1.shape[-1] != m2.shape[-1]:
        raise ValueError("means and covariances must have the same dimension d")
    s2 = _sqrtm_psd(c2)
    cross = _sqrtm_psd(s2 @ c1 @ s2)
    trace = (torch.diagonal(c1, dim1=-2, dim2=-1).sum(-1) + torch.diagonal(c2, dim1=-2, dim2=-1).sum(-1)
             - 2 * torch.diagonal(cross, dim1=-2, dim2=-1).sum(-1))
    w2sq = ((m1 - m2) ** 2).sum(-1) + trace
    return w2sq.clamp_min(0).sqrt()


def aggregate_w2(per_input: Tensor) -> float:
    """Root mean square of per-input W2 distances: ``sqrt(mean_n W2_n^2)``."""
    return float((per_input.double() ** 2).mean().sqrt())


def _as_event(samples: Tensor) -> Tensor:
    """``[draws, N]`` -> ``[draws, N, 1]``; ``[draws, N, ...]`` -> ``[draws, N, prod(...)]``."""
    if samples.dim() == 2:
        return samples.unsqueeze(-1)
    return samples.reshape(samples.shape[0], samples.shape[1], -1)


def predictive_w2(p: Tensor, q: Tensor) -> float:
    """W2 between two sets of predictive draws ``[draws, N, ...]``, aggregated over the inputs."""
    if not p.is_floating_point():
        raise ValueError("W2 needs real-valued draws; output='obs' of a categorical model gives labels")
    return aggregate_w2(wasserstein2(_as_event(p), _as_event(q)))
