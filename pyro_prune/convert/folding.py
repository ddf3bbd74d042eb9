"""Folding each gate's E[theta] * kept into neighbouring weights, or keeping it as a scale.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from pyro_prune.graph import (
    DependencyAnalysis,
    OpKind,
    chain_before,
    commutes_with_scale,
    producers_after,
)


class ChannelScale(nn.Module):
    """Multiplies axis ``dim`` of its input by a fixed per-structure scale.

    What remains of a gate whose ``E[theta] * kept`` cannot be folded exactly into a
    neighbouring layer (e.g. a gate whose output feeds a residual add).
    """

    def __init__(self, scale: Tensor, dim: int, ndim: int) -> None:
        super().__init__()
        d = dim % ndim
        if d == 0:
            raise ValueError("a ChannelScale cannot act on the batch axis (dim 0)")
        shape = [int(scale.numel())] + [1] * (ndim - d - 1)
        self.register_buffer("scale", scale.detach().clone().reshape(shape))
        self.dim = d

    scale: Tensor

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale

    def extra_repr(self) -> str:
        return f"num_structures={self.scale.shape[0]}, dim={self.dim}"


# ---------------------------------------------------------------------- folding
def _gate_scale(g: Any) -> Tensor:
    """What the gate multiplies its structures by in eval mode: ``E[theta] * kept`` (times
    the noise layer's constant ``1 / theta_ref``: ``output_scale``)."""
    fn = getattr(g, "output_scale", None) or getattr(g, "expected_theta", None)
    with torch.no_grad():
        if callable(fn):
            return fn().detach()
        return g.kept.to(torch.get_default_dtype())


def _per_id_scale(an: DependencyAnalysis, gate_node: fx.Node, scale: Tensor) -> tuple[Tensor, Tensor]:
    """Scale of every channel id under the gate and whether it is one value per id."""
    op = an.ops[gate_node]
    t = an.tags[gate_node]
    s = scale.to(torch.float64).reshape(op.gate_view).expand(t.shape)
    sel = t >= 0
    ids, vals = t[sel], s[sel]
    lo = torch.full((an.n_ids,), math.inf, dtype=torch.float64).scatter_reduce(0, ids, vals, "amin")
    hi = torch.full((an.n_ids,), -math.inf, dtype=torch.float64).scatter_reduce(0, ids, vals, "amax")
    ok = lo == hi
    return lo, ok




def _fold_backward(an: DependencyAnalysis, gate_node: fx.Node, lo: Tensor, ok: Tensor
                   ) -> tuple[str, str, Tensor] | None:
    """(module path, 'rows' | 'bn', per-row scale) when the gate folds into an earlier layer."""
    chain = chain_before(an, gate_node, commutes_with_scale)
    if any(len(n.users) != 1 for n in chain):
        return None
    cur = chain[-1]
    op = an.ops[cur]
    if op.kind is OpKind.PRODUCER:
        target = str(cur.target)
        if len(an.producers[target]) != 1:
            return None
        ids = torch.arange(op.offset, op.offset + op.channels)
        return _scale_rows(target, "rows", ids, lo, ok)
    if op.kind is OpKind.BATCH_NORM:
        m = op.module
        if m is None or m.weight is None or m.bias is None or op.cols is None or bool((op.cols < 0).any()):
            return None
        if sum(1 for o in an.ops.values() if o.node.op == "call_module" and o.node.target == cur.target) != 1:
            return None
        return _scale_rows(str(cur.target), "bn", op.cols, lo, ok)
    return None


def _scale_rows(target: str, how: str, ids: Tensor, lo: Tensor, ok: Tensor) -> tuple[str, str, Tensor] | None:
    covered = torch.isfinite(lo[ids])
    if not bool(ok[ids][covered].all()):
        return None
    rows = torch.where(covered, lo[ids], torch.ones_like(lo[ids]))
    return target, how, rows


def _fold_forward(an: DependencyAnalysis, gate_node: fx.Node, lo: Tensor, ok: Tensor
                  ) -> list[tuple[str, Tensor]] | None:
    """[(consumer path, per-input-column scale)] when the gate folds into later layers."""
    reached, blocked = producers_after(an, gate_node, commutes_with_scale)
    if blocked or not reached:
        return None
    found: list[tuple[str, Tensor]] = []
    for node in reached:
        op = an.ops[node]
        target = str(node.target)
        cols = op.cols
        if len(an.producers[target]) != 1 or cols is None or op.depthwise or bool((cols < 0).any()):
            return None
        if not (bool(torch.isfinite(lo[cols]).all()) and bool(ok[cols].all())):
            return None
        found.append((target, lo[cols]))
    return found


