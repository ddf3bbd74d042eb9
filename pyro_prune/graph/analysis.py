r"""The dependency analysis of a traced network: channel tags and tied groups.

The backbone is traced with ``torch.fx`` (gates, stochastic modules and the built-in
``torch.nn`` layers are leaves) and run once on an example input of batch one. Every tensor
of the graph carries, position by position,

* a *channel tag*: which output row of which *producer* (``nn.Linear``, ``nn.Conv1d/2d``,
  a Bayesian layer with ``as_deterministic()``) the position belongs to, carried through
  the supported ops (index ops such as ``reshape``/``flatten``/``transpose`` are run on
  position ids, so any combination of them is followed exactly);
* whether it may be non-zero (forward pass): a removed structure is exactly 0 after its gate
  and stays 0 through zero-preserving ops (ReLU, GELU, pooling, flatten, dropout, ...);
* whether it is live (backward pass): positions a gate multiplies by zero are dead, and so
  is everything that only feeds them (e.g. the ``q``/``k``/``v`` rows of a removed head).

Channels that must be sliced together are *tied* (union-find): the positions on both sides
of an elementwise ``add``/``mul`` (residual connections), and the two operands of a matmul
that contracts over a channel axis (``q @ k^T``). A tied group is **removed** when every
producer row in it is dead and every consumer input carrying it (Linear / Conv input
columns, a matmul contraction) is zero or dead. For a residual add this is the union rule:
a channel stays while any member keeps it, and a member whose own gate removed it keeps the
row with ``E[theta] * kept = 0`` folded in, so the outputs stay exactly equal. Groups are
*pinned* (never sliced) when they reach the network output, a normalisation over channels
(LayerNorm; softmax or a reduction along a channel axis), or an elementwise op with an
untagged tensor (a positional embedding, the raw input).

Removing a group slices the producer rows (weight rows, bias entries), the BatchNorm entries
on the way (weight, bias, running statistics), and the consumer input columns (for
``flatten -> Linear`` the columns of a channel are its ``H*W`` block; for attention heads
the ``head_dim`` block of the output projection). ``reshape``/``view``/``expand`` size
arguments given as constants are rewritten to the new sizes (``-1`` needs no rewrite).

References: Fang et al., "DepGraph: Towards Any Structural Pruning" (CVPR 2023) for
dependency groups.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from pyro_prune.graph.inputs import (
    _resolve_input_dtype,
    _resolve_input_shape,
    net_device,
    net_dtype,
    search_input_shape,
)
from pyro_prune.graph.layers import layer_slicer
from pyro_prune.graph.ops import (
    _GENERAL,
    Op,
    OpKind,
    UnsupportedOpError,
    _classify,
    _is_leaf,
    _is_opaque,
    indexed_axes,
    indexes_by_tensor,
    is_linear,
    pad_positions,
)
from pyro_prune.graph.ties import _channel_cols, _const_along, _rows_along, _UnionFind
from pyro_prune.models.base import PrunableNet
from pyro_prune.models.gate import StructureGate
from pyro_prune.models.noise import NoiseMode, noise_mode


@dataclasses.dataclass(eq=False)
class DependencyAnalysis:
    """The dependency analysis of one traced network (see the module docstring).

    What the converter, the counters and :func:`~pyro_prune.models.bayesianize` read:

    * ``graph``: the module graph (:func:`~pyro_prune.graph.module_graph`), ``tracer``
      ``"fx"`` or ``"export"``, and ``constants`` (tensors export lifted out of the code;
      read any ``get_attr`` target with :meth:`attribute`);
    * ``ops``: the :class:`~pyro_prune.graph.Op` of every node (kind, shape, inputs, and
      per kind: producer rows ``offset``/``channels``, input column tags ``cols``, index
      maps ``posmap``, ...);
    * ``tags``: per tensor node, the channel id of every position (``-1``: none);
    * ``root``: the tied group of every channel id, ``pinned_root``: the groups that can
      never be removed; ``n_ids`` channel ids in all;
    * ``gates`` (gate path -> node), ``producers`` (layer path -> its call nodes),
      ``outputs``; ``input_shape``/``input_dtype`` of one example, the network's
      ``dtype``/``device``.
    """

    graph: fx.Graph
    tracer: str  # "fx" | "export"
    constants: dict[str, Tensor]  # tensors export lifted out of the code
    ops: dict[fx.Node, Op]
    tags: dict[fx.Node, Tensor]
    values: dict[fx.Node, Any]  # non-tensor values (for rewriting args)
    input_shape: tuple[int, ...]
    input_dtype: torch.dtype
    dtype: torch.dtype
    device: torch.device
    n_ids: int
    root: Tensor  # [n_ids] group (root id) of every channel id
    pinned_root: Tensor  # [n_ids] bool, indexed by root
    gates: dict[str, fx.Node]  # gate module path -> its node
    producers: dict[str, list[fx.Node]]  # module path -> call nodes
    outputs: tuple[fx.Node, ...]
    full_params: int = -1  # parameters of the unpruned network (counted when first needed)
    signature: tuple = ()
    # (channel tags, axes): channels combined with a tensor that spans those axes (and has
    # no structures): removable only while no index along those axes disappears
    conditional: list[tuple[Tensor, tuple[int, ...]]] = dataclasses.field(default_factory=list)
    # (op name, root ids it reaches) of each op the converter cannot trace: a gate on any of
    # those channels would make the analysis of the gated network fail
    untraceable: list[tuple[str, Tensor]] = dataclasses.field(default_factory=list)
    last_kept: Tensor | None = None  # memo of the last removed_channels call
    last_removed: Tensor | None = None


    def attribute(self, net: nn.Module, target: str) -> Any:
        """The tensor (or module) a ``get_attr`` node of ``graph`` reads from ``net``."""
        return _fetch_attr(net, target, self.constants)


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def cached_analysis(model: PrunableNet) -> DependencyAnalysis | None:
    """The analysis :func:`dependency_analysis` last built for ``model`` (``None``: none yet)."""
    return _CACHE.get(model)


def _signature(model: PrunableNet) -> tuple:
    items = []
    for name, m in model.net.named_modules():
        shapes = tuple((k, tuple(v.shape)) for k, v in m._parameters.items() if v is not None)
        bufs = tuple((k, tuple(v.shape)) for k, v in m._buffers.items() if v is not None)
        items.append((name, id(m), shapes, bufs))
    return (id(model.net), net_dtype(model.net), net_device(model.net), tuple(items))



def _fetch_attr(root: nn.Module, target: str, constants: dict[str, Tensor] | None = None) -> Any:
    """The attribute at dotted path ``target`` of ``root`` (or the lifted constant of that name)."""
    if constants and target in constants:
        return constants[target]
    obj: Any = root
    for atom in target.split("."):
        obj = getattr(obj, atom)
    return obj


def _build_analysis(model: PrunableNet, input_shape: tuple[int, ...] | None,
                    input_dtype: torch.dtype | None) -> DependencyAnalysis:
    from pyro_prune.graph.trace import modes_restored, module_graph

    net = model.net
    with modes_restored(net):
        net.eval()
        dtype, device = net_dtype(net), net_device(net)
        input_dtype = input_dtype or dtype
        if input_shape is None:
            input_shape = search_input_shape(net, dtype, device)
        with torch.no_grad(), noise_mode(net, NoiseMode.MEAN):
            example = torch.zeros((2, *input_shape), dtype=input_dtype, device=device)
            traced = module_graph(net, example, _is_leaf, opaque=_is_opaque)
            return _analyse_graph(model, traced.graph, input_shape, dtype, device, input_dtype,
                                  traced.tracer, traced.constants)


def _analyse_graph(model: PrunableNet, graph: fx.Graph, input_shape: tuple[int, ...],
                   dtype: torch.dtype, device: torch.device, input_dtype: torch.dtype,
                   tracer: str, constants: dict[str, Tensor]) -> DependencyAnalysis:
    net = model.net
    env: dict[fx.Node, Any] = {}
    ops: dict[fx.Node, Op] = {}
    tags: dict[fx.Node, Tensor] = {}
    uf = _UnionFind()
    pinned: list[Tensor] = []
    gated: list[Tensor] = []
    conditional: list[tuple[Tensor, tuple[int, ...]]] = []
    unsupported: list[tuple[Op, Tensor]] = []
    offsets: dict[str, tuple[int, int]] = {}
    producers: dict[str, list[fx.Node]] = {}
    gates: dict[str, fx.Node] = {}
    outputs: tuple[fx.Node, ...] = ()
    first_placeholder = True
    neg = torch.tensor(-1, dtype=torch.long)

    def ids_of(t: Tensor) -> Tensor:
        return torch.unique(t[t >= 0])

    def channel_cols(t: Tensor) -> Tensor:
        """The structure id of each channel of ``t``; a channel mixing ids pins them (-1)."""
        cols, ok = _channel_cols(t.reshape(t.shape[0], t.shape[1], -1), 1)
        if not ok:
            pinned.append(ids_of(t))
            cols = torch.full_like(cols, -1)
        return cols

    for node in graph.nodes:
        args = fx.node.map_arg(node.args, lambda n: env[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
        if node.op == "placeholder":
            if first_placeholder:
                value: Any = torch.zeros((1, *input_shape), dtype=input_dtype, device=device)
                first_placeholder = False
            elif node.args:
                value = node.args[0]
            else:
                raise ValueError(f"the backbone takes a second required input {node.target!r}; "
                                 "only single-input backbones can be converted")
        elif node.op == "get_attr":
            value = _fetch_attr(net, str(node.target), constants)
        elif node.op in ("call_function", "call_method", "call_module"):
            value = call_node(node, net, args, kwargs)
        elif node.op == "output":
            outputs = tuple(n for n in node.all_input_nodes if n.meta.get("_pp_tensor", False))
            for n in outputs:
                pinned.append(ids_of(tags[n]))
            continue
        else:  # pragma: no cover - fx has no other ops
            raise ValueError(f"unknown fx op {node.op}")
        env[node] = value
        is_tensor = isinstance(value, Tensor)
        node.meta["_pp_tensor"] = is_tensor
        if node.op in ("placeholder", "get_attr"):
            op = Op(node=node, kind=OpKind.SHAPE if not is_tensor else OpKind.ELEMENTWISE,
                     name=f"{node.op} {node.target}")
            op.is_tensor, op.shape = is_tensor, tuple(value.shape) if is_tensor else ()
            op.elem = _GENERAL
            ops[node] = op
            if is_tensor:
                tags[node] = neg.expand(value.shape)
            continue
        op = _classify(node, net, args, kwargs, value)
        if op.kind is OpKind.ELEMENTWISE and len(op.inputs) > 1:  # main operand first
            # the operand of most dims that the output has room for: an input with more dims
            # than the output (type_as's dtype source, Funnel's ``ones.type_as(hidden)``)
            # gives no values to it
            out_dim = value.dim() if is_tensor else 0
            op.inputs = tuple(sorted(op.inputs, key=lambda n: (env[n].dim() > out_dim, -env[n].dim())))
        ops[node] = op
        kind = op.kind
        in_tags = [tags[n] for n in op.inputs]
        if kind is OpKind.SHAPE:
            continue
        if kind is None:
            ids = torch.cat([ids_of(t) for t in in_tags]) if in_tags else neg.new_empty(0)
            unsupported.append((op, ids))
            if is_tensor:
                tags[node] = neg.expand(value.shape)
            continue
        t_in = in_tags[0] if in_tags else None
        shape = op.shape
        if kind is OpKind.PRODUCER:
            m: Any = op.module
            assert m is not None and t_in is not None
            target = str(node.target)
            slicer = layer_slicer(m)
            assert slicer is not None
            linear = is_linear(m)
            n_out = slicer.num_out(m)
            if target not in offsets:
                offsets[target] = (uf.add(n_out), n_out)
            op.offset, op.channels = offsets[target]
            axis = t_in.dim() - 1 if slicer.in_axis == -1 else slicer.in_axis % t_in.dim()
            cols, ok = _channel_cols(t_in, axis)
            if not ok:
                pinned.append(ids_of(t_in))
                cols = torch.full_like(cols, -1)
            if producers.get(target):  # a module called twice: its columns are shared
                prev = ops[producers[target][0]].cols
                assert prev is not None
                both = (prev >= 0) & (cols >= 0)
                uf.union_pairs(prev[both], cols[both])
                pinned.append(prev[(prev >= 0) & (cols < 0)])
                pinned.append(cols[(cols >= 0) & (prev < 0)])
            producers.setdefault(target, []).append(node)
            op.cols = cols
            own = torch.arange(op.offset, op.offset + n_out)
            if not linear:
                groups = slicer.num_groups(m)
                if groups > 1:
                    if slicer.is_depthwise(m):
                        op.depthwise = True
                        has = cols >= 0
                        uf.union_pairs(own[has], cols[has])
                        pinned.append(own[~has])
                    else:
                        pinned.append(own)
                        pinned.append(cols[cols >= 0])
            view = [1] * len(shape)
            view[-1 if linear else slicer.out_axis] = n_out
            tags[node] = own.reshape(view).expand(shape)
        elif kind is OpKind.GATE:
            assert t_in is not None
            g = op.module
            assert isinstance(g, StructureGate)
            target = str(node.target)
            if target in gates:
                raise UnsupportedOpError(f"gate {target!r} is called twice; each gate must be used once")
            gates[target] = node
            d = g.dim % len(shape)
            if shape[d] != g.num_structures:
                raise ValueError(f"gate {target!r}: input has {shape[d]} entries along dim {g.dim}, "
                                 f"expected {g.num_structures}")
            op.gate_view = (g.num_structures,) + (1,) * (len(shape) - d - 1)
            gated.append(ids_of(t_in))
            tags[node] = t_in
        elif kind is OpKind.BATCH_NORM:
            assert t_in is not None
            op.cols, op.channels = channel_cols(t_in), int(shape[1])
            tags[node] = t_in
            if op.module is None:  # F.batch_norm: its per-channel tensors go with the channels
                for n in op.inputs[1:]:
                    if n.op == "get_attr" and tuple(env[n].shape) == (op.channels,) and len(n.users) == 1:
                        tags[n] = op.cols
                    else:
                        pinned.append(ids_of(tags[n]))
                        pinned.append(op.cols[op.cols >= 0])
        elif kind is OpKind.LAYER_NORM:
            assert t_in is not None
            pinned.append(ids_of(t_in))
            tags[node] = t_in
        elif kind is OpKind.ELEMENTWISE:
            if t_in is None:  # a fresh tensor (arange, zeros, full, ...)
                tags[node] = neg.expand(shape)
            else:
                tags[node] = t_in.expand(shape) if tuple(t_in.shape) != shape else t_in
        elif kind is OpKind.SOFTMAX or kind is OpKind.REDUCE:
            assert t_in is not None
            if not _const_along(t_in, op.dims):
                pinned.append(ids_of(t_in))
            if kind is OpKind.SOFTMAX:
                tags[node] = t_in
            else:
                red = t_in.amax(dim=op.dims, keepdim=True) if op.dims else t_in
                same = (red == t_in.amin(dim=op.dims, keepdim=True)) if op.dims else torch.ones_like(red, dtype=torch.bool)
                red = torch.where(same, red, neg)
                tags[node] = red.reshape(shape)
        elif kind is OpKind.BINARY:
            a_node, b_node = node.args[0], node.args[1] if len(node.args) > 1 else node.kwargs["other"]
            ta = tags[a_node].expand(shape)  # type: ignore[index]
            tb = tags[b_node].expand(shape)  # type: ignore[index]
            both = (ta >= 0) & (tb >= 0)
            uf.union_pairs(ta[both], tb[both])
            for mine, other, other_node in ((ta, tb, b_node), (tb, ta, a_node)):
                if bool((other < 0).all()) and bool((mine >= 0).any()):
                    # a tensor without structures (rotary cos/sin, a mask, a positional
                    # embedding): fine while nothing is removed along the axes it spans
                    other_shape = (1,) * (len(shape) - tags[other_node].dim()) + tuple(tags[other_node].shape)  # type: ignore[index]
                    spans = tuple(d for d, s_ in enumerate(other_shape) if s_ > 1)
                    conditional.append((mine, spans))
                else:
                    pinned.append(mine[(mine >= 0) & (other < 0)])
            tags[node] = torch.where(ta >= 0, ta, tb)
        elif kind is OpKind.INDEX:
            numels = [int(env[n].numel()) for n in op.inputs]
            starts = [0]
            for k in numels[:-1]:
                starts.append(starts[-1] + k)
            pos = {n: torch.arange(s, s + k).reshape(env[n].shape) for n, s, k in zip(op.inputs, starts, numels)}
            if indexes_by_tensor(node):  # the other tensors are indices: read as they are
                op.index_values = {n: env[n] for n in op.inputs[1:]}
                pos = {op.inputs[0]: pos[op.inputs[0]]}
                source = tags[op.inputs[0]]
                axes = indexed_axes(node, env[op.inputs[0]], *_env_args(node, env))
                if axes is None or not _const_along(source, axes):  # channels along an indexed
                    pinned.append(ids_of(source))  # axis: the indices would need rewriting
            pmap = run_index_op(op, net, node.args, node.kwargs,
                                lambda n, pos=pos: pos[n] if n in pos else env[n])  # type: ignore[misc]
            op.posmap, op.in_numels = pmap.contiguous(), tuple(numels)
            flat = torch.cat([tags[n].reshape(-1) for n in op.inputs])
            tags[node] = flat[op.posmap]
        elif kind is OpKind.POOL:
            assert t_in is not None
            cols = channel_cols(t_in)
            op.cols, op.channels = cols, int(shape[1])
            view = [1] * len(shape)
            view[1] = len(cols)
            tags[node] = cols.reshape(view).expand(shape)
        elif kind is OpKind.MATMUL:
            a_node, b_node = node.args[0], node.args[1]
            ta, tb = tags[a_node], tags[b_node]  # type: ignore[index]
            a_var = not _const_along(ta, (ta.dim() - 1,))
            b_var = not _const_along(tb, (tb.dim() - 2,))
            if a_var or b_var:
                ca, oka = _rows_along(ta, -2)  # a[..., 0, j]
                cb, okb = _rows_along(tb, -1)  # b[..., j, 0]
                if not (oka and okb):
                    raise UnsupportedOpError(
                        f"{op.name}: matmul of operands whose channels vary along both axes")
                if a_var and b_var:
                    bshape = torch.broadcast_shapes(ca.shape, cb.shape)
                    ca_b, cb_b = ca.expand(bshape), cb.expand(bshape)
                    both = (ca_b >= 0) & (cb_b >= 0)
                    uf.union_pairs(ca_b[both], cb_b[both])
                    pinned.append(ca_b[(ca_b >= 0) & (cb_b < 0)])
                    pinned.append(cb_b[(cb_b >= 0) & (ca_b < 0)])
                    op.contract_a, op.contract_b = ca, cb
                else:
                    pinned.append(ids_of(ta if a_var else tb))
            fa = neg.expand(ta[..., :, :1].shape) if a_var else ta[..., :, :1]
            fb = neg.expand(tb[..., :1, :].shape) if b_var else tb[..., :1, :]
            fa, fb = fa.expand(shape), fb.expand(shape)
            clash = (fa >= 0) & (fb >= 0)
            if bool(clash.any()):
                pinned.append(fa[clash])
                pinned.append(fb[clash])
            tags[node] = torch.where(fa >= 0, fa, torch.where(clash, neg, fb))
        else:  # pragma: no cover
            raise AssertionError(kind)

    n_ids = len(uf.parent)
    root = torch.tensor([uf.find(i) for i in range(n_ids)], dtype=torch.long)
    gated_root = torch.zeros(n_ids, dtype=torch.bool)
    for ids in gated:
        gated_root[root[ids]] = True
    for op, ids in unsupported:
        if ids.numel() and bool(gated_root[root[ids]].any()):
            gate_names = [g for g, gn in gates.items()
                          if bool(gated_root[root[ids_of(tags[gn.args[0]])]].any())]  # type: ignore[index]
            raise UnsupportedOpError(
                f"cannot trace pruned structures through {op.name} (node {op.node.name!r}): it is "
                f"applied to a tensor carrying structures of gate(s) {gate_names}. Supported ops "
                f"are listed in pyro_prune.convert.supported_ops(); write the network with them, "
                f"or move the gate so that this op does not see gated channels.")
        pinned.append(ids)
    pinned_root = torch.zeros(n_ids, dtype=torch.bool)
    for ids in pinned:
        if ids.numel():
            pinned_root[root[ids.reshape(-1)]] = True
    untraceable = [(op.name, torch.unique(root[ids.reshape(-1)])) for op, ids in unsupported if ids.numel()]
    values = {n: v for n, v in env.items() if not isinstance(v, Tensor)}
    an = DependencyAnalysis(graph=graph, tracer=tracer, constants=constants, input_dtype=input_dtype, ops=ops, tags=tags, values=values, input_shape=tuple(input_shape),
                   dtype=dtype, device=device, n_ids=n_ids, root=root, pinned_root=pinned_root, conditional=conditional, gates=gates,
                   producers=producers, outputs=outputs, untraceable=untraceable)
    return an



def _env_args(node: fx.Node, env: dict) -> tuple[tuple, dict]:
    """The node's arguments as the example run gave them."""
    return fx.node.map_arg(node.args, lambda n: env[n]), dict(fx.node.map_arg(node.kwargs, lambda n: env[n]))


def run_index_op(op: Op, net: nn.Module, args: Any, kwargs: Any, value: Callable[[fx.Node], Any],
                 module: nn.Module | None = None) -> Tensor:
    """Run the index op ``op`` on position ids: where each of its outputs reads its inputs.

    ``args``/``kwargs``: the node's arguments (or the converter's rewritten ones), each node in
    them replaced by ``value(node)`` (positions for the tensors that carry them, values for the
    rest); index tensors are read as the example run gave them (:attr:`Op.index_values`), a
    padding maps its border as :func:`~pyro_prune.graph.ops.pad_positions` does; ``module``
    replaces the node's own module (a rebuilt ``nn.Unflatten``). The analysis and the
    converter's check both map positions with it, so they agree by construction.
    """
    node = op.node
    index_values = op.index_values or {}

    def lookup(n: fx.Node) -> Any:
        return index_values[n] if n in index_values else value(n)

    if op.pad is not None:
        return pad_positions(lookup(op.inputs[0]), op.pad)
    return call_node(node, net, fx.node.map_arg(args, lookup), fx.node.map_arg(kwargs, lookup), module)


def call_node(node: fx.Node, net: nn.Module, args: Any, kwargs: Any, module: nn.Module | None = None) -> Any:
    """Run the call node ``node`` of ``net``'s traced graph on ``args``/``kwargs`` (its arguments
    with every node replaced by a value): a function, a tensor method, or ``net``'s submodule
    (``module`` in its place)."""
    if node.op == "call_function":
        return node.target(*args, **kwargs)  # type: ignore[operator]
    if node.op == "call_method":
        return getattr(args[0], str(node.target))(*args[1:], **kwargs)
    return (module or net.get_submodule(str(node.target)))(*args, **kwargs)


def dependency_analysis(model: PrunableNet, example_input: Any = None) -> DependencyAnalysis:
    """The dependency analysis of ``model``'s backbone, cached per model and rebuilt when its
    architecture (modules, parameter shapes), input shape or input dtype changes.

    Args:
        model: a :class:`~pyro_prune.models.PrunableNet` (any backbone ``torch.fx`` or
            ``torch.export`` can trace).
        example_input: a batch, or the shape of one input; default: the model's
            ``input_shape`` (or ``config["in_features"]``), else searched from its first layer.

    Raises:
        TypeError: ``model`` is not a ``PrunableNet``.
        ValueError: the network cannot be traced, or a gated structure meets an unsupported
            op (:class:`~pyro_prune.graph.UnsupportedOpError`, naming the op and the gates).
    """
    if not isinstance(model, PrunableNet):
        raise TypeError(f"model must be a PrunableNet, got {type(model).__name__}")
    sig = _signature(model)
    requested = _resolve_input_shape(model, example_input)
    dtype = _resolve_input_dtype(model, example_input)
    entry = _CACHE.get(model)
    if entry is not None and entry.signature[0] == sig[0]:  # same backbone object
        if dtype is None and not entry.input_dtype.is_floating_point:
            dtype = entry.input_dtype  # token ids stay token ids
        if requested is None:
            requested = entry.input_shape  # its input shape still fits
        if entry.signature == sig and requested == entry.input_shape \
                and (dtype or entry.dtype) == entry.input_dtype:
            return entry
    an = _build_analysis(model, requested, dtype)
    an.signature = sig
    _CACHE[model] = an
    return an


