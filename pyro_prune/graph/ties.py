"""Tied channels: union-find over channel ids, and tag helpers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def add(self, n: int) -> int:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return start

    def find(self, i: int) -> int:
        parent = self.parent
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    def union_pairs(self, a: Tensor, b: Tensor) -> None:
        if a.numel() == 0:
            return
        pairs = torch.unique(torch.stack([a.reshape(-1), b.reshape(-1)], dim=1), dim=0)
        for x, y in pairs.tolist():
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[max(rx, ry)] = min(rx, ry)


def _const_along(t: Tensor, dims: Sequence[int]) -> bool:
    if not dims:
        return True
    return bool((t.amax(dim=tuple(dims)) == t.amin(dim=tuple(dims))).all())


def _channel_cols(tag: Tensor, axis: int) -> tuple[Tensor, bool]:
    """Tag of each index along ``axis`` (constant over the other axes), and whether it is."""
    moved = tag.movedim(axis, -1).reshape(-1, tag.shape[axis])
    ok = bool((moved == moved[:1]).all())
    return moved[0].clone(), ok


def _reduce_to(t: Tensor, shape: Sequence[int]) -> Tensor:
    """``any`` over the axes along which ``shape`` was broadcast to ``t``'s shape."""
    shape = tuple(shape)
    lead = t.dim() - len(shape)
    if lead:
        t = t.reshape(-1, *t.shape[lead:]).any(0) if t.numel() else t.reshape(t.shape[lead:])
    dims = tuple(i for i, (s, o) in enumerate(zip(shape, t.shape)) if s == 1 and o != 1)
    if dims:
        t = t.any(dim=dims, keepdim=True)
    return t.expand(shape)



def _rows_along(t: Tensor, axis: int) -> tuple[Tensor, bool]:
    """``t`` with ``axis`` (-1 or -2) collapsed, if ``t`` is constant along it."""
    ok = _const_along(t, (t.dim() + axis,))
    return t.select(axis, 0), ok

