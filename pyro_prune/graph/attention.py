"""Attention heads in a traced network: where a gate over heads goes.

An attention output is ``softmax(q k^T) @ v`` followed, through index ops, by an output
projection: the value operand carries channels (the heads' rows of ``v``), the
probabilities none. The product is ``[batch, heads, queries, head_dim]``, or
``[batch * heads, queries, head_dim]`` where the heads are folded into the batch for ``bmm``
(DeBERTa): the analysis runs one example, so the leading axis is then the heads'. Heads are
the blocks of ``head_dim`` channels along the head axis; query heads that read the same value
channels form one group (grouped-query attention), and one
gate structure covers one group. The q and k rows of a head are tied by the contraction
``q @ k^T``; they go when the head goes (nothing reads them any more).
"""

from __future__ import annotations

from collections.abc import Set

import torch
import torch.fx as fx
from torch import Tensor

from pyro_prune.graph.analysis import DependencyAnalysis
from pyro_prune.graph.layers import layer_slicer
from pyro_prune.graph.ops import OpKind
from pyro_prune.graph.paths import sole_reader

__all__ = ["attention_heads"]


def attention_heads(an: DependencyAnalysis, exclude: Set[str] = frozenset()
                    ) -> tuple[list[tuple[fx.Node, int, str]], set[int]]:
    """Every attention output a head gate can go on, and the tied groups inside attention.

    Returns:
        ``[(output projection node, number of head groups, its module path)]`` (projections
        in ``exclude`` left out), and the root ids of every channel group inside attention
        (the value rows of those heads, and q and k, tied by their contraction).
    """
    head_sites: list[tuple[fx.Node, int, str]] = []
    in_attention: set[int] = set()
    for node, op in an.ops.items():
        if op.kind is not OpKind.MATMUL or len(op.shape) < 3 or op.contract_a is not None:
            continue
        if len(op.shape) == 3 and op.shape[0] == 1:
            continue  # [batch * heads, ...] of one example with one head: no heads to tell apart
        a, b = node.args[0], node.args[1]
        ta, tb = an.tags[a], an.tags[b]  # type: ignore[index]
        if bool((ta >= 0).any()) or not bool((tb >= 0).any()):
            continue  # not softmax(q k^T) @ v
        proj = _projection_after(an, node)
        if proj is None:
            continue
        n_heads = _head_groups(tb, int(op.shape[-3]))
        if n_heads is None:
            continue
        proj_op = an.ops[proj]
        path = str(proj.target)
        ids = torch.unique(tb[tb >= 0])
        if bool(an.pinned_root[an.root[ids]].all()) or path in exclude:
            continue
        slicer = layer_slicer(proj_op.module)
        if slicer is None or slicer.num_in(proj_op.module) != int(op.shape[-3]) * int(op.shape[-1]):  # type: ignore[arg-type]
            continue
        head_sites.append((proj, n_heads, path))
        in_attention.update(an.root[ids].tolist())
    for op in an.ops.values():  # q and k: the contraction of q @ k^T
        if op.kind is OpKind.MATMUL and op.contract_a is not None and head_sites:
            for c in (op.contract_a, op.contract_b):
                assert c is not None
                in_attention.update(an.root[c[c >= 0]].tolist())

    return head_sites, in_attention


def _head_groups(v_tags: Tensor, heads: int) -> int | None:
    """Number of key/value heads behind ``heads`` query heads (grouped-query attention).

    ``v_tags`` are the channel tags of the value operand ``[..., heads, keys, head_dim]``;
    query heads reading the same value channels form one group (consecutive heads, as
    ``repeat_interleave`` makes them). A gate over groups keeps every group whole.
    """
    if v_tags.dim() < 3 or v_tags.shape[-3] not in (1, heads):
        return None
    if v_tags.shape[-3] == 1:  # one value head broadcast to every query head (multi-query)
        v_tags = v_tags.expand(*v_tags.shape[:-3], heads, *v_tags.shape[-2:])
    per_head = v_tags.select(-2, 0).reshape(-1, heads, v_tags.shape[-1])[0]  # [heads, head_dim]
    groups = 1
    for h in range(1, heads):
        if not torch.equal(per_head[h], per_head[h - 1]):
            groups += 1
    if heads % groups:
        return None
    size = heads // groups
    blocks = per_head.reshape(groups, size, -1)
    if not bool((blocks == blocks[:, :1]).all()):
        return None  # heads of one value head are not consecutive
    return groups


def _projection_after(an: DependencyAnalysis, node: fx.Node) -> fx.Node | None:
    """The producer reading ``node`` through single-use index ops (the output projection)."""
    return sole_reader(an, node, lambda op: op.kind is OpKind.INDEX
                       or (op.kind is OpKind.ELEMENTWISE and op.elem.homogeneous))
