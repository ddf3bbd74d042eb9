"""The slicing plan: kept indices per axis of every tensor, rewritten size arguments.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from typing import Any, overload

import torch
import torch.fx as fx
from torch import Tensor, nn

from pyro_prune.graph import (
    SIZED_ATEN_OPS,
    SIZED_METHODS,
    DependencyAnalysis,
    Op,
    OpKind,
    UnsupportedOpError,
    binary_operands,
    is_linear,
    layer_slicer,
    pool_any,
    reduce_any,
    removed_channels,
    run_index_op,
)
from pyro_prune.models.base import PrunableNet

_ATEN = torch.ops.aten


# ====================================================================== slicing
@dataclasses.dataclass(eq=False)
class _Plan:
    """Everything a conversion needs: removals, kept indices per axis, new shapes."""

    an: DependencyAnalysis
    removed: Tensor
    exists: dict[fx.Node, Tensor]
    keep: dict[fx.Node, list[Tensor]]  # kept indices per axis of every tensor node
    new_shape: dict[fx.Node, tuple[int, ...]]
    arg_rewrites: dict[fx.Node, tuple[tuple, dict]]
    #: operands an elementwise op reads along axes its output lost: ``(operand, its axis,
    #: kept indices)`` per op, selected before it (a per-head bias table's heads, below); on
    #: the batch axis the kept indices of one example, the axis ``[batch * k]``
    selections: dict[fx.Node, list[tuple[fx.Node, int, Tensor]]] = dataclasses.field(default_factory=dict)


def _existence_pass(an: DependencyAnalysis, removed: Tensor) -> dict[fx.Node, Tensor]:
    """Forward: bool per position, True where the position exists after slicing."""
    ex: dict[fx.Node, Tensor] = {}
    true = torch.ones((), dtype=torch.bool)
    for node, op in an.ops.items():
        if not op.is_tensor or op.kind is OpKind.SHAPE:
            continue
        kind, shape = op.kind, op.shape
        if node.op == "get_attr" and bool((an.tags[node] >= 0).any()):
            t = an.tags[node]  # a per-channel tensor of F.batch_norm
            ex[node] = (t < 0) | ~removed[t.clamp_min(0)]
        elif node.op in ("placeholder", "get_attr") or not op.inputs:
            ex[node] = true.expand(shape)
        elif kind is OpKind.PRODUCER:
            x = ex[op.inputs[0]]
            rows = ~removed[op.offset: op.offset + op.channels]
            if is_linear(op.module):  # type: ignore[arg-type]
                ex[node] = rows.expand(shape) & x.any(-1, keepdim=True)
            else:
                per_b = x.reshape(x.shape[0], -1).any(-1)
                view = [1] * len(shape)
                view[1] = op.channels
                ex[node] = (rows.reshape(view) & per_b.reshape((-1,) + (1,) * (len(shape) - 1))).expand(shape)
        elif kind is OpKind.INDEX:
            flat = torch.cat([ex[n].expand(an.ops[n].shape).reshape(-1) for n in op.inputs])
            ex[node] = flat[op.posmap]
        elif kind is OpKind.BINARY:
            a, b = binary_operands(op)
            ex[node] = (ex[a] & ex[b]).expand(shape)
        elif kind is OpKind.POOL:
            ex[node] = pool_any(ex[op.inputs[0]], shape)
        elif kind is OpKind.REDUCE:
            ex[node] = reduce_any(ex[op.inputs[0]], op.dims, shape)
        elif kind is OpKind.MATMUL:
            a, b = binary_operands(op)
            ex[node] = (ex[a].to(torch.float32) @ ex[b].to(torch.float32)) > 0
        elif kind is None:
            for n in op.inputs:
                if not bool(ex[n].all()):
                    raise UnsupportedOpError(f"cannot slice the inputs of {op.name}")
            ex[node] = true.expand(shape)
        else:  # gate, BN, LN, softmax, elementwise: same positions as the input
            ex[node] = ex[op.inputs[0]].expand(shape)
    return ex


def _product_keep(ex: Tensor, node: fx.Node, name: str) -> list[Tensor]:
    keeps = []
    for axis in range(ex.dim()):
        others = tuple(d for d in range(ex.dim()) if d != axis)
        keeps.append(ex.any(dim=others) if others else ex.clone())
    recon = torch.ones((), dtype=torch.bool)
    for axis, k in enumerate(keeps):
        view = [1] * ex.dim()
        view[axis] = -1
        recon = recon & k.reshape(view)
    if not torch.equal(recon.expand(ex.shape), ex):
        raise UnsupportedOpError(
            f"the structures removed at {name} (node {node.name!r}) do not form a rectangular "
            f"block of its output, so it cannot be sliced (e.g. only some channels of a head)")
    return [torch.nonzero(k).reshape(-1) for k in keeps]


def _select(t: Tensor, keep: Sequence[Tensor]) -> Tensor:
    for axis, idx in enumerate(keep):
        if idx.numel() != t.shape[axis]:
            t = t.index_select(axis, idx)
    return t


def _round_channels(an: DependencyAnalysis, removed: Tensor, multiple: int) -> Tensor:
    """Keep (as exact zeros) enough removed groups that every producer's width is a multiple.

    A restored group stays physically with its gates' ``E[theta] * kept = 0`` folded in,
    so outputs do not change; only the layer widths round up to ``multiple``.
    """
    removed = removed.clone()
    changed = True
    while changed:
        changed = False
        for nodes in an.producers.values():
            op = an.ops[nodes[0]]
            ids = torch.arange(op.offset, op.offset + op.channels)
            rem = removed[ids]
            kept = op.channels - int(rem.sum())
            if kept == op.channels or kept % multiple == 0:
                continue
            need = min(multiple - kept % multiple, int(rem.sum()))
            restore = torch.isin(an.root, an.root[ids[rem][:need]])
            removed[restore] = False
            changed = True
    return removed


def _plan(an: DependencyAnalysis, model: PrunableNet, channel_multiple: int = 1) -> _Plan:
    removed = removed_channels(an, model)
    if channel_multiple > 1:
        rounded = _round_channels(an, removed, channel_multiple)
        try:
            return _plan_from(an, model, rounded)
        except UnsupportedOpError as err:
            warnings.warn(f"channel_multiple={channel_multiple} ignored: {err}", RuntimeWarning,
                          stacklevel=3)
    return _plan_from(an, model, removed)


def _plan_from(an: DependencyAnalysis, model: PrunableNet, removed: Tensor) -> _Plan:
    ex = _existence_pass(an, removed)
    keep: dict[fx.Node, list[Tensor]] = {}
    new_shape: dict[fx.Node, tuple[int, ...]] = {}
    rewrites: dict[fx.Node, tuple[tuple, dict]] = {}
    for node, e in ex.items():
        op = an.ops[node]
        keep[node] = _product_keep(e, node, op.name)
        new_shape[node] = tuple(len(k) for k in keep[node])
        if 0 in new_shape[node] and 0 not in op.shape:  # type: ignore[operator]
            raise UnsupportedOpError(f"slicing would empty the output of {op.name}")
    after = _ValuesAfterSlicing(an, new_shape)
    for node, op in an.ops.items():
        if op.kind is not OpKind.INDEX or new_shape[node] == op.shape and all(
                new_shape[n] == an.ops[n].shape for n in op.inputs):
            continue
        rewrites[node] = _rewrite_index_args(an, node, op, new_shape, keep, after)
        # check that the op maps the kept positions of its inputs to its kept outputs
        pos = {}
        start = 0
        for n, k in zip(op.inputs, op.in_numels):
            full = torch.arange(start, start + k).reshape(an.ops[n].shape)
            pos[n] = _select(full, keep[n])
            start += k
        args, kwargs = rewrites[node]
        try:
            got = _call_with(node, model.net, after, args, kwargs, pos)
        except Exception as err:  # noqa: BLE001
            raise UnsupportedOpError(
                f"cannot slice through {op.name} (node {node.name!r}): {err}") from err
        expected = _select(op.posmap, keep[node])  # type: ignore[arg-type]
        if tuple(got.shape) != tuple(expected.shape) or not torch.equal(got, expected):
            raise UnsupportedOpError(
                f"cannot slice through {op.name} (node {node.name!r}): after removing structures "
                f"it no longer maps its input positions to the same outputs; write sizes that "
                f"change with pruning as -1")
    return _Plan(an=an, removed=removed, exists=ex, keep=keep, new_shape=new_shape, arg_rewrites=rewrites,
                 selections=_operand_selections(an, keep))


def _operand_selections(an: DependencyAnalysis, keep: dict[fx.Node, list[Tensor]]
                        ) -> dict[fx.Node, list[tuple[fx.Node, int, Tensor]]]:
    """Where an elementwise op of several tensors (``+``, ``*``, ``masked_fill``) loses
    positions along an axis that an operand spans in full, the operand's kept positions:
    ``scores + bias`` after heads were removed from the scores (through q and k), with the
    bias a per-head table indexed by relative position (Swin), an embedding of relative
    positions (T5, MPNet) or a constant. Each op's output position reads only the operands'
    positions at the same index, so selecting them is exact. Along the batch axis, where the
    analysis's one example has ``k > 1`` entries, the axis is ``[batch * k]`` with the batch
    outermost (heads folded into the batch for a 3-d ``bmm``, BLOOM's ALiBi bias
    ``[batch * heads, 1, keys]``): the kept entries of each example are selected."""
    selections: dict[fx.Node, list[tuple[fx.Node, int, Tensor]]] = {}
    for node, op in an.ops.items():
        if not op.is_tensor or not (op.kind is OpKind.BINARY or (op.kind is OpKind.ELEMENTWISE and len(op.inputs) > 1)):
            continue
        operands = binary_operands(op) if op.kind is OpKind.BINARY else op.inputs
        for operand in dict.fromkeys(operands):
            shape = an.ops[operand].shape
            lead = len(op.shape) - len(shape)
            if lead < 0:
                continue  # not a value of the output (``type_as``'s dtype source)
            for axis, size in enumerate(shape):
                kept = keep[node][axis + lead]
                if size != op.shape[axis + lead] or kept.numel() == size or keep[operand][axis].numel() != size:
                    continue  # broadcast, nothing lost, or the operand sliced itself
                selections.setdefault(node, []).append((operand, axis, kept))
    return selections


class _ValuesAfterSlicing:
    """The values the network's shape computations (``x.size(1)``, ``x.shape[:2]``,
    ``c // 4``, ...) take in the converted network: each re-evaluated on tensors of the new
    shapes, so that a size the network reads from a sliced tensor at run time is known to
    follow the slicing (``None`` where one cannot be re-evaluated)."""

    def __init__(self, an: DependencyAnalysis, new_shape: dict[fx.Node, tuple[int, ...]]) -> None:
        self.an, self.new_shape = an, new_shape
        self._memo: dict[fx.Node, Any] = {}

    def __call__(self, node: fx.Node) -> Any:
        if node not in self._memo:
            self._memo[node] = self._evaluate(node)
        return self._memo[node]

    def _evaluate(self, node: fx.Node) -> Any:
        if node in self.new_shape:  # a tensor: only its shape matters to a shape computation
            return torch.empty(self.new_shape[node], device="meta")
        op = self.an.ops.get(node)
        if op is None or op.kind is not OpKind.SHAPE or node.op not in ("call_function", "call_method"):
            return self.an.values.get(node)
        try:
            args = fx.node.map_arg(node.args, self)
            kwargs = fx.node.map_arg(node.kwargs, self)
            if node.op == "call_method":
                return getattr(args[0], str(node.target))(*args[1:], **kwargs)
            return node.target(*args, **kwargs)  # type: ignore[operator]
        except Exception:  # noqa: BLE001 - not a computation on shapes alone
            return None


def _call_with(node: fx.Node, net: nn.Module, after: _ValuesAfterSlicing, args: tuple, kwargs: dict,
               pos: dict[fx.Node, Tensor]) -> Tensor:
    """The index op at ``node`` run on the kept positions ``pos``, with the converted network's
    arguments: sizes from shape computations as they come out after slicing."""
    an = after.an

    def value(n: fx.Node) -> Any:
        if n in pos:
            return pos[n]
        op = an.ops.get(n)
        if op is not None and op.kind is OpKind.SHAPE:
            return after(n)  # as the converted network computes it
        return an.values[n]

    module = None
    if node.op == "call_module" and isinstance(m := net.get_submodule(str(node.target)), nn.Unflatten):
        module = nn.Unflatten(m.dim, _new_unflatten_sizes(an, node, m, after.new_shape))
    return run_index_op(an.ops[node], net, args, kwargs, value, module)


def _fix_sizes(sizes: Sequence[Any], old: Sequence[int], new: Sequence[int], axes: Sequence[int],
               op: Op, node: fx.Node, after: _ValuesAfterSlicing, *, infer: bool = True) -> list[Any]:
    """``sizes`` (of the axes ``axes``) for the new shape: a number is replaced by the new size,
    a size read at run time stays where it follows the slicing. One computed from something
    not sliced with it (``reshape(b, n, C)`` with ``C`` read from the block's input,
    ``reshape(batch * num_heads, ...)``) becomes ``-1`` when ``infer`` (not for ``expand``)
    and it is the only such size and no other is ``-1``: the others then fix it."""
    out = list(sizes)
    stale: list[tuple[int, int]] = []
    for i, axis in zip(range(len(out)), axes):
        s = out[i]
        if old[axis] == new[axis]:
            continue
        if isinstance(s, fx.Node):
            if after(s) != new[axis]:  # else read at run time from a tensor that is sliced alike
                stale.append((i, axis))
            continue
        if isinstance(s, int) and s != -1:
            out[i] = new[axis]
    if stale:
        i, axis = stale[0]
        if not infer or len(stale) > 1 or any(isinstance(v, int) and v == -1 for v in out):
            raise UnsupportedOpError(
                f"{op.name} (node {node.name!r}): the size of axis {axis} changes from "
                f"{old[axis]} to {new[axis]} but is computed at run time from something that is "
                f"not sliced with it; use -1 there")
        out[i] = -1
    return out


def _new_unflatten_sizes(an: DependencyAnalysis, node: fx.Node, m: nn.Unflatten,
                         new_shape: dict[fx.Node, tuple[int, ...]]) -> tuple[int, ...]:
    """The sizes of an ``nn.Unflatten`` after slicing: its output's new sizes along the axes it
    makes (its ``dim`` counts in its input), ``-1`` where it had ``-1``."""
    d = m.dim % len(an.ops[an.ops[node].inputs[0]].shape)
    new = new_shape[node][d: d + len(m.unflattened_size)]
    return tuple(-1 if int(old) == -1 else int(size) for old, size in zip(m.unflattened_size, new))


def _rewrite_index_args(an: DependencyAnalysis, node: fx.Node, op: Op,
                        new_shape: dict[fx.Node, tuple[int, ...]],
                        keep: dict[fx.Node, list[Tensor]], after: _ValuesAfterSlicing) -> tuple[tuple, dict]:
    """Size arguments of reshape/view/expand/unflatten given as constants -> new sizes;
    ``slice``/``select`` positions -> their positions among the kept entries."""
    args: Any = node.args
    kwargs: dict[str, Any] = dict(node.kwargs)
    old, new = op.shape, new_shape[node]
    infer = node.target not in (_ATEN.expand.default, "expand")  # -1 keeps a size in expand
    if node.op == "call_function" and node.target in (_ATEN.slice.Tensor, _ATEN.select.int):
        src = args[0]
        ndim = len(an.ops[src].shape)
        dim = int(args[1] if len(args) > 1 else kwargs.get("dim", 0)) % ndim
        kept = keep[src][dim]
        full = an.ops[src].shape[dim]
        if dim == 0 or kept.numel() == full:
            return args, kwargs  # nothing removed along this axis (or the batch axis)

        def position(i: Any) -> Any:
            if i is None or isinstance(i, fx.Node):
                return i
            i = int(i)
            i = max(0, min(full, i + full if i < 0 else i))
            return int((kept < i).sum())

        if node.target is _ATEN.select.int:
            return (src, dim, position(args[2] if len(args) > 2 else kwargs["index"])), {}
        rest = list(args[2:]) + [None] * (3 - len(args[2:]))
        start, end, step = rest[:3]
        if step not in (None, 1):
            return args, kwargs  # checked by position below
        return (src, dim, position(start if start is not None else 0),
                position(end) if end is not None else None), {}
    if node.op == "call_function" and node.target in SIZED_ATEN_OPS:
        sizes = args[1] if len(args) > 1 else kwargs["size"]
        fixed_sizes = _fix_sizes(sizes, old, new, range(len(old)), op, node, after, infer=infer)
        return (args[0], fixed_sizes, *args[2:]), {k: v for k, v in kwargs.items() if k != "size"}
    if node.op == "call_function" and node.target is _ATEN.unflatten.int:
        d = int(args[1]) % len(an.ops[args[0]].shape)
        sizes = args[2]
        return (args[0], args[1], _fix_sizes(sizes, old, new, range(d, d + len(sizes)), op, node, after)), {}

    def fix(sizes: Sequence[Any], axes: Sequence[int]) -> list[Any]:
        return _fix_sizes(sizes, old, new, axes, op, node, after, infer=infer)

    name = str(node.target)
    if node.op == "call_method" and name in SIZED_METHODS:
        sizes = args[1:]
        if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
            return (args[0], tuple(fix(sizes[0], range(len(old))))), kwargs
        if "size" in kwargs:
            kwargs["size"] = tuple(fix(kwargs["size"], range(len(old))))
            return args, kwargs
        return (args[0], *fix(sizes, range(len(old)))), kwargs
    if node.op == "call_function" and node.target is torch.reshape:
        shape_arg = args[1] if len(args) > 1 else kwargs["shape"]
        fixed = tuple(fix(shape_arg, range(len(old))))
        if len(args) > 1:
            return (args[0], fixed), kwargs
        kwargs["shape"] = fixed
        return args, kwargs
    if node.op == "call_method" and name == "unflatten":
        dim = args[1] if len(args) > 1 else kwargs["dim"]
        sizes = args[2] if len(args) > 2 else kwargs["sizes"]
        d = int(dim) % len(an.ops[args[0]].shape)  # an axis of the input
        fixed = tuple(fix(sizes, range(d, d + len(sizes))))
        if len(args) > 2:
            return (args[0], args[1], fixed), kwargs
        kwargs["sizes"] = fixed
        return args, kwargs
    return args, kwargs  # other index ops (permute, flatten, getitem, ...): checked by position


# ---------------------------------------------------------------------- module slicing
def _idx(keep: Tensor, n: int) -> Tensor | None:
    return None if keep.numel() == n else keep


@overload
def _take(t: Tensor, dim: int, idx: Tensor | None) -> Tensor: ...
@overload
def _take(t: None, dim: int, idx: Tensor | None) -> None: ...
def _take(t: Tensor | None, dim: int, idx: Tensor | None) -> Tensor | None:
    if t is None or idx is None:
        return t
    return t.index_select(dim, idx.to(t.device))


def _producer_indices(an: DependencyAnalysis, plan: _Plan, node: fx.Node, op: Op
                      ) -> tuple[Tensor | None, Tensor | None]:
    """Kept input channels and output rows of a producer (``None``: all of them)."""
    m: Any = op.module
    slicer = layer_slicer(m)
    assert slicer is not None
    out_keep = plan.keep[node][slicer.out_axis % len(op.shape)]
    in_node = op.inputs[0]
    in_keep = plan.keep[in_node][slicer.in_axis % len(an.ops[in_node].shape)]
    return _idx(in_keep, slicer.num_in(m)), _idx(out_keep, op.channels)


def _slice_gate_inplace(g: Any, idx: Tensor | None) -> None:
    if idx is None:
        return
    n = g.num_structures
    if hasattr(g, "own_storage"):  # a noise layer sharing its network's flat storage
        g.own_storage()
    with torch.no_grad():
        for name, p in list(g._parameters.items()):
            if p is not None and p.dim() >= 1 and p.shape[0] == n:
                setattr(g, name, nn.Parameter(_take(p.detach(), 0, idx).clone(),
                                              requires_grad=p.requires_grad))
        for name, b in list(g._buffers.items()):
            if b is not None and b.dim() >= 1 and b.shape[0] == n:
                g._buffers[name] = _take(b, 0, idx).clone()
    g.num_structures = int(idx.numel())


