"""Which tied channel groups a set of kept masks removes (forward and backward passes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor

from pyro_prune.graph.analysis import DependencyAnalysis, call_node
from pyro_prune.graph.layers import layer_slicer
from pyro_prune.graph.ops import Op, OpKind, is_linear
from pyro_prune.graph.ties import _reduce_to
from pyro_prune.models.base import PrunableNet


# ====================================================================== kept-dependent passes
def _gate_kept(an: DependencyAnalysis, model: PrunableNet) -> dict[fx.Node, Tensor]:
    out = {}
    for name, node in an.gates.items():
        g: Any = model.net.get_submodule(name)
        out[node] = g.kept.reshape(an.ops[node].gate_view).cpu()
    return out



def pool_any(x: Tensor, shape: Sequence[int]) -> Tensor:
    """Boolean map through a pooling op: a channel is set anywhere if it was set anywhere."""
    per_c = x.reshape(x.shape[0], x.shape[1], -1).any(-1)
    return per_c.reshape(per_c.shape + (1,) * (len(shape) - 2)).expand(shape)


def reduce_any(x: Tensor, dims: Any, shape: Sequence[int]) -> Tensor:
    """Boolean map through a reduction over ``dims``."""
    return (x.any(dim=dims, keepdim=True) if dims else x).reshape(shape)

def _nonzero_pass(an: DependencyAnalysis, kept: dict[fx.Node, Tensor]) -> dict[fx.Node, Tensor]:
    """Forward: bool per position, False where the value is exactly zero for every input."""
    nz: dict[fx.Node, Tensor] = {}
    true = torch.ones((), dtype=torch.bool)
    for node, op in an.ops.items():
        if not op.is_tensor or op.kind is OpKind.SHAPE:
            continue
        kind = op.kind
        shape = op.shape
        if kind is OpKind.GATE:
            nz[node] = nz[op.inputs[0]] & kept[node]
        elif kind is OpKind.ELEMENTWISE and op.elem.zero_preserving and op.inputs:
            nz[node] = nz[op.inputs[0]].expand(shape)
        elif kind is OpKind.INDEX:
            flat = torch.cat([nz[n].expand(an.ops[n].shape).reshape(-1) for n in op.inputs])
            nz[node] = flat[op.posmap]
        elif kind is OpKind.BINARY:
            a, b = (nz[n] for n in binary_operands(op))
            if op.binary in ("add", "sub"):
                nz[node] = (a | b).expand(shape)
            elif op.binary == "mul":
                nz[node] = (a & b).expand(shape)
            else:
                nz[node] = a.expand(shape)
        elif kind is OpKind.POOL:
            nz[node] = pool_any(nz[op.inputs[0]], shape)
        elif kind is OpKind.REDUCE:
            nz[node] = reduce_any(nz[op.inputs[0]], op.dims, shape)
        elif kind is OpKind.MATMUL:
            a, b = (nz[n] for n in binary_operands(op))
            nz[node] = (a.to(torch.float32) @ b.to(torch.float32)) > 0
        else:  # producers, norms, softmax, non-zero-preserving maps, inputs, unsupported
            nz[node] = true.expand(shape)
    return nz


#: op kinds whose values the constant pass follows (it runs them on the values it tracks)
_FOLLOWED = (OpKind.GATE, OpKind.ELEMENTWISE, OpKind.BINARY, OpKind.POOL, OpKind.INDEX)


def _constant_reach(an: DependencyAnalysis) -> dict[fx.Node, bool] | None:
    """The nodes a removed structure's zero reaches through the ops the constant pass follows
    (value ``True`` once past an elementwise map that does not keep 0 at 0, where the zero
    becomes another constant: ``sigmoid(0) = 0.5``, ``clamp(0, min=0.5) = 0.5``); ``None`` when
    no Linear layer reads such a value, so that nothing can be folded."""
    reach: dict[fx.Node, bool] = {}
    for node, op in an.ops.items():
        if not op.is_tensor or op.kind not in _FOLLOWED:
            continue
        if op.kind is OpKind.GATE:
            reach[node] = False
            continue
        seen = [reach[n] for n in op.inputs if n in reach]
        if seen:
            reach[node] = any(seen) or (op.kind is OpKind.ELEMENTWISE and not op.elem.zero_preserving)
    for op in an.ops.values():
        if op.kind is OpKind.PRODUCER and op.inputs and reach.get(op.inputs[0]) and is_linear(op.module):
            return reach
    return None


def _constant_pass(an: DependencyAnalysis, net: Any, kept: dict[fx.Node, Tensor]
                   ) -> dict[fx.Node, Tensor] | None:
    """Forward: per position, the value it takes whatever the input, NaN where it varies, for the
    floating-point tensors a removed structure's zero reaches (:func:`_constant_reach`).

    A removed structure is 0 after its gate; the ops on the way (activations, elementwise
    arithmetic, pooling, index ops, paddings) are run on these values themselves, so a map
    that does not keep 0 at 0 gives its true constant (``sigmoid`` 0.5, ``softplus`` log 2)
    and a zero border or a mean over a window with padding gives what it gives per position;
    NaN propagates through them where a value varies. A tensor not tracked (not floating
    point, not reached, or an op that failed on these values) is absent: its users vary.
    ``None`` when nothing can be folded."""
    reach = _constant_reach(an)
    if reach is None:
        return None
    cv: dict[fx.Node, Tensor] = {}
    nan = float("nan")

    def value(n: fx.Node) -> Any:
        if n in cv:
            return cv[n]
        if n.op == "get_attr":
            return an.attribute(net, str(n.target))
        return an.values[n]  # a non-tensor argument (KeyError: an untracked tensor)

    for node, op in an.ops.items():
        if node not in reach:
            continue
        if op.kind is OpKind.GATE:
            cv[node] = torch.full(op.shape, nan, dtype=an.dtype).masked_fill(~kept[node].expand(op.shape), 0.0)
            continue
        if any(n not in cv and n.op != "get_attr" for n in op.inputs):
            continue  # an operand whose values are not tracked: the result varies
        # a module runs in eval mode, as the converted network runs it (dropout: the identity)
        module = net.get_submodule(str(node.target)) if node.op == "call_module" else None
        training = module is not None and module.training
        try:
            if module is not None:
                module.training = False
            with torch.no_grad():
                out = call_node(node, net, fx.node.map_arg(node.args, value), fx.node.map_arg(node.kwargs, value))
        except Exception:  # noqa: BLE001 - an op these values do not suit: the result varies
            continue
        finally:
            if module is not None:
                module.training = training
        if isinstance(out, Tensor) and out.is_floating_point() and tuple(out.shape) == op.shape:
            cv[node] = out
    return cv


def constant_values(an: DependencyAnalysis, model: PrunableNet) -> dict[fx.Node, Tensor] | None:
    """The values a removed structure's zero becomes on its way to the next layers, for the
    gates' current ``kept`` masks (:func:`_constant_pass`; ``None``: nothing can be folded)."""
    return _constant_pass(an, model.net, _gate_kept(an, model))


def constant_columns(cv: dict[fx.Node, Tensor] | None, op: Op) -> Tensor | None:
    """Per input column of a Linear-like producer ``op``: the value the column holds at every
    position whatever the input, NaN where it varies or differs between positions (``None``:
    no column is known)."""
    x = None if cv is None or not op.inputs else cv.get(op.inputs[0])
    if x is None or op.cols is None or not is_linear(op.module):
        return None
    slicer = layer_slicer(op.module)
    if slicer is None or (slicer.plain is None and "bias" not in slicer.tensors):
        return None  # a layer with no bias to fold a constant into
    per = x.movedim(x.dim() - 1, 0).reshape(len(op.cols), -1)
    same = (per == per[:, :1]).all(-1) & per[:, 0].isfinite()  # log(0) = -inf folds nothing
    return torch.where(same, per[:, 0], torch.full_like(per[:, 0], float("nan")))


def folded_constants(cv: dict[fx.Node, Tensor] | None, op: Op, gone: Tensor) -> Tensor | None:
    """Per input column of a Linear-like producer ``op``: the constant its bias absorbs where
    the column goes (``gone``), 0 elsewhere and where the constant is unknown (a dead column:
    nothing it reaches is used); ``None`` when the bias absorbs nothing."""
    c = constant_columns(cv, op)
    if c is None:
        return None
    c = torch.where(gone, c.nan_to_num(0.0), torch.zeros_like(c))
    return c if bool((c != 0).any()) else None


def binary_operands(op: Op) -> tuple[fx.Node, fx.Node]:
    """The two operand nodes of a ``BINARY`` or ``MATMUL`` op, in argument order."""
    node = op.node
    a = node.args[0]
    b = node.args[1] if len(node.args) > 1 else node.kwargs["other"]
    return a, b  # type: ignore[return-value]


def _live_pass(an: DependencyAnalysis, kept: dict[fx.Node, Tensor], nz: dict[fx.Node, Tensor]
               ) -> tuple[dict[fx.Node, Tensor], dict[fx.Node, list[Tensor]]]:
    """Backward: bool per position, True where the value can reach the output.

    Also returns, per node, the liveness each of its tensor inputs receives from it.
    """
    live: dict[fx.Node, Tensor] = {}
    contrib: dict[fx.Node, list[Tensor]] = {}

    def add(n: fx.Node, t: Tensor) -> None:
        prev = live.get(n)
        live[n] = t if prev is None else (prev | t)

    for n in an.outputs:
        add(n, torch.ones(an.ops[n].shape, dtype=torch.bool))
    for node in reversed(list(an.ops)):
        op = an.ops[node]
        lo = live.get(node)
        if lo is None or op.kind is OpKind.SHAPE or not op.inputs:
            continue
        kind = op.kind
        ins = op.inputs
        in_shapes = [an.ops[n].shape for n in ins]
        out: list[Tensor]
        if kind is OpKind.GATE:
            out = [lo & kept[node]]
        elif kind in (OpKind.ELEMENTWISE, OpKind.BATCH_NORM):
            out = [_reduce_to(lo, in_shapes[0])] + [_any_live(lo, s) for s in in_shapes[1:]]
        elif kind is OpKind.PRODUCER:
            m = op.module
            if is_linear(m):  # type: ignore[arg-type]
                out = [lo.any(-1, keepdim=True).expand(in_shapes[0])]
            elif op.depthwise:
                per_c = lo.reshape(lo.shape[0], lo.shape[1], -1).any(-1)
                out = [per_c.reshape(per_c.shape + (1,) * (len(in_shapes[0]) - 2)).expand(in_shapes[0])]
            else:
                per_b = lo.reshape(lo.shape[0], -1).any(-1)
                out = [per_b.reshape((-1,) + (1,) * (len(in_shapes[0]) - 1)).expand(in_shapes[0])]
        elif kind is OpKind.INDEX:
            buf = torch.zeros(sum(op.in_numels), dtype=torch.bool)
            assert op.posmap is not None
            buf[op.posmap[lo]] = True
            out = [c.reshape(s) for c, s in zip(torch.split(buf, list(op.in_numels)), in_shapes)]
        elif kind is OpKind.BINARY:
            a, b = binary_operands(op)
            la = lo & nz[b] if op.binary == "mul" else lo
            lb = lo & nz[a] if op.binary == "mul" else lo
            per = {a: _reduce_to(la, an.ops[a].shape), b: _reduce_to(lb, an.ops[b].shape)}
            if a is b:
                per = {a: per[a] | per[b]}
            out = [per[n] for n in ins]
        elif kind is OpKind.POOL:
            per_c = lo.reshape(lo.shape[0], lo.shape[1], -1).any(-1)
            out = [per_c.reshape(per_c.shape + (1,) * (len(in_shapes[0]) - 2)).expand(in_shapes[0])]
        elif kind is OpKind.REDUCE:
            x = lo
            if not op.keepdim and op.dims:
                x = x.reshape([1 if i in op.dims else s for i, s in enumerate(in_shapes[0])])
            out = [x.expand(in_shapes[0])]
        elif kind in (OpKind.SOFTMAX, OpKind.LAYER_NORM):
            out = [lo.any(dim=op.dims, keepdim=True).expand(in_shapes[0])]
        elif kind is OpKind.MATMUL:
            a, b = binary_operands(op)
            lf = lo.to(torch.float32)
            la = (lf @ nz[b].to(torch.float32).transpose(-1, -2)) > 0
            lb = (nz[a].to(torch.float32).transpose(-1, -2) @ lf) > 0
            per = {a: _reduce_to(la, an.ops[a].shape), b: _reduce_to(lb, an.ops[b].shape)}
            if a is b:
                per = {a: per[a] | per[b]}
            out = [per[n] for n in ins]
        else:  # unsupported (ungated): everything feeding a live output is live
            out = [_any_live(lo, s) for s in in_shapes]
        contrib[node] = out
        for n, t in zip(ins, out):
            add(n, t)
    return live, contrib


def _any_live(lo: Tensor, shape: Sequence[int]) -> Tensor:
    return (lo.any() if lo.numel() else torch.zeros((), dtype=torch.bool)).expand(tuple(shape))


def removed_channels(an: DependencyAnalysis, model: PrunableNet) -> Tensor:
    """Bool ``[n_ids]``: the channel ids whose tied group the gates' current ``kept`` masks
    remove physically (memoised for the last set of masks)."""
    if an.n_ids == 0:
        return torch.zeros(0, dtype=torch.bool)
    kept = _gate_kept(an, model)
    key = torch.cat([k.reshape(-1) for k in kept.values()]) if kept else torch.zeros(0, dtype=torch.bool)
    if an.last_kept is not None and an.last_removed is not None and torch.equal(key, an.last_kept):
        return an.last_removed.clone()
    removed = _removed_from_kept(an, kept, model.net)
    an.last_kept, an.last_removed = key.clone(), removed.clone()
    return removed


def _removed_from_kept(an: DependencyAnalysis, kept: dict[fx.Node, Tensor], net: Any = None) -> Tensor:
    """The channel ids the masks ``kept`` remove. A Linear layer's input column that holds
    the same value at every position whatever the input (a removed structure after a map
    such as ``sigmoid``) is not needed: the converter folds it into the layer's bias (with
    ``net``, the backbone the constant pass runs; without, no column is folded)."""
    if all(bool(k.all()) for k in kept.values()):
        return torch.zeros(an.n_ids, dtype=torch.bool)
    nz = _nonzero_pass(an, kept)
    live, contrib = _live_pass(an, kept, nz)
    cv = _constant_pass(an, net, kept) if net is not None else None
    needed = torch.zeros(an.n_ids, dtype=torch.bool)  # live producer rows / needed columns
    for nodes in an.producers.values():
        for node in nodes:
            op = an.ops[node]
            lo = live.get(node)
            if lo is not None:
                axis = lo.dim() - 1 if is_linear(op.module) else 1  # type: ignore[arg-type]
                rows = lo.movedim(axis, 0).reshape(op.channels, -1).any(-1)
                needed[op.offset: op.offset + op.channels] |= rows
            li = contrib.get(node)
            if li is not None and op.cols is not None:
                x = nz[op.inputs[0]] & li[0]
                axis = x.dim() - 1 if is_linear(op.module) else 1  # type: ignore[arg-type]
                cols_needed = x.movedim(axis, 0).reshape(len(op.cols), -1).any(-1)
                constant = constant_columns(cv, op)
                if constant is not None:  # folded into the bias when its channel goes
                    cols_needed &= constant.isnan()
                sel = cols_needed & (op.cols >= 0)
                needed[op.cols[sel]] = True
    for node, op in an.ops.items():
        if op.kind is OpKind.MATMUL and op.contract_a is not None and node in contrib:
            a, b = binary_operands(op)
            per = dict(zip(op.inputs, contrib[node]))
            la, lb = per[a], per[b]
            xa = (nz[a] & la).any(-2)  # [..., J]
            xb = (nz[b] & lb).any(-1)  # [..., J]
            for x, c in ((xa, op.contract_a), (xb, op.contract_b)):
                assert c is not None
                sel = x & (c >= 0)
                needed[c[sel]] = True
    bad = an.pinned_root.clone()
    bad[an.root[needed]] = True
    removed = ~bad[an.root]
    changed = bool(an.conditional)
    while changed:
        changed = False
        for tags, axes in an.conditional:
            sel = tags >= 0
            gone = torch.zeros(tags.shape, dtype=torch.bool)
            gone[sel] = removed[tags[sel]]
            if not bool(gone.any()):
                continue
            for d in axes:
                stays = (~gone).movedim(d, 0).reshape(tags.shape[d], -1).any(-1)
                if not bool(stays.all()):
                    bad[an.root[torch.unique(tags[sel])]] = True
                    removed = ~bad[an.root]
                    changed = True
                    break
    return _keep_a_channel_of_every_layer(an, removed)


def _keep_a_channel_of_every_layer(an: DependencyAnalysis, removed: Tensor) -> Tensor:
    """Keep (as exact zeros) one channel group of a layer that would lose all its channels.

    A gate never empties itself, but gates tied through an elementwise product can: in a
    gated MLP ``down(act(gate(x)) * up(x))`` the gate over ``gate(x)`` keeping neuron 35 and
    the one over ``up(x)`` keeping neuron 56 leave no product that is not zero, so every
    neuron of both layers is dead. The layer is then an exact zero, not an absent one: its
    first channel group stays, its gates' ``E[theta] * kept = 0`` folded in, so the outputs
    do not change and the layers around it keep a width of at least one.
    """
    for nodes in an.producers.values():
        op = an.ops[nodes[0]]
        ids = torch.arange(op.offset, op.offset + op.channels)
        if op.channels and bool(removed[ids].all()):
            removed = removed & ~torch.isin(an.root, an.root[ids[:1]])
    return removed


