"""What every gate of a model selects, read from its structure graph.

:func:`structure_graph` answers, for every gate of a :class:`~pyro_prune.models.PrunableNet`
(any network, traced by :mod:`pyro_prune.graph.trace`):

* ``kind`` — ``"neuron"`` (features of a Linear-like layer), ``"channel"`` (channels of a
  convolution), ``"head"`` (a block of channels per structure: attention heads, key/value
  groups);
* ``producer`` — the layer whose output rows the structures are (through BatchNorm, index ops
  and positively homogeneous activations), or ``None`` (a head gate: its rows are spread over
  q, k and v);
* ``per_channel`` — the per-channel layers (BatchNorm modules) between the producer and the
  gate, whose entries go with the structures;
* ``consumers`` — the layers reading the gated output (through activations, pooling, index ops);
* ``direct_consumers`` — the layers reading it through per-position ops only (activations,
  dropout, pooling, index ops), when every path from the gate ends at one of them; ``None``
  when some path meets anything else first (a residual add, a normalisation, a reduction,
  another gate, the output). Their input columns of a structure carry nothing else;
* ``activation`` — the elementwise activation applied right after the gate, as a callable;
* ``rows`` — the layers whose output rows its structures own (removed with them: the
  producer; for an attention head the rows of its q, k and v projections);
* ``can_shrink`` — whether any of its structures can ever be removed physically, i.e. goes
  when every gate removes everything (a residual stream is removed only with all its members;
  one pinned by LayerNorm, or next to a grouped convolution, never is).

:func:`producer_module` names the layer (or a rows view such as the ViT's per-head rows, a
module with ``row_sources``) that holds one row of incoming weights per structure: what
:attr:`StructureGate.producer_name <pyro_prune.models.StructureGate.producer_name>` reads.

The answers come from the dependency analysis the converter uses (channel tags, union-find
ties, pinned groups), so "which rows belong to this gate" is answered in one place.
"""

from __future__ import annotations

import dataclasses
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from pyro_prune.graph.analysis import _signature, dependency_analysis
from pyro_prune.graph.ops import OpKind, commutes_with_scale, is_linear
from pyro_prune.graph.paths import chain_before, producers_after
from pyro_prune.graph.removal import _gate_kept, _removed_from_kept

__all__ = ["GateInfo", "StructureGraph", "head_rows", "producer_module", "shrinkable_gates",
           "structure_graph", "structure_rows", "warn_cannot_shrink"]


@dataclasses.dataclass(frozen=True)
class GateInfo:
    """The structures one gate selects (see the module docstring)."""

    name: str
    kind: str
    dim: int
    num_structures: int
    producer: str | None
    per_channel: tuple[str, ...]
    consumers: tuple[str, ...]
    direct_consumers: tuple[str, ...] | None
    activation: Callable[[Tensor], Tensor] | None
    rows: tuple[str, ...]
    can_shrink: bool


@dataclasses.dataclass(frozen=True)
class StructureGraph:
    """Every gate's :class:`GateInfo`, and how the network was traced."""

    gates: dict[str, GateInfo]
    tracer: str

    def cannot_shrink(self) -> list[str]:
        """Gates none of whose structures could ever be removed physically."""
        return [n for n, g in self.gates.items() if not g.can_shrink]


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
#: models whose architecture (signature, input shape and dtype) could not be traced
_UNTRACEABLE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def structure_graph(model: Any, example_input: Any = None) -> StructureGraph:
    """The :class:`StructureGraph` of ``model`` (cached with its dependency analysis)."""

    an = dependency_analysis(model, example_input)
    entry = _CACHE.get(model)
    if entry is not None and entry[0] is an:
        return entry[1]
    every_gone = _removed_from_kept(an, {n: torch.zeros_like(k) for n, k in _gate_kept(an, model).items()},
                                    model.net)
    graph = StructureGraph(gates={name: _gate_info(an, model, name, node, every_gone)
                                  for name, node in an.gates.items()}, tracer=an.tracer)
    _CACHE[model] = (an, graph, {})
    return graph


def structure_rows(model: Any, name: str, example_input: Any = None) -> dict[str, Tensor]:
    """Which output rows each structure of gate ``name`` owns, per layer (its ``rows``).

    Returns ``{layer path: long [out]}``, the structure of the gate each output row of that
    layer belongs to (``-1``: none): ``arange`` for a gate with a producer; for an attention
    head the ``head_dim`` rows of its q, k and v (also in a fused qkv layer; with
    grouped-query attention a key/value group's query heads too), read as the rows that
    removing that structure alone removes physically. The answer describes the current
    layout: after :func:`~pyro_prune.convert.shrink` the shrunk model's own graph answers.
    """
    graph = structure_graph(model, example_input)
    an, _graph, rows_cache = _CACHE[model]
    if name in rows_cache:
        return {path: idx.clone() for path, idx in rows_cache[name].items()}
    info = graph.gates.get(name)
    if info is None:
        raise ValueError(f"{name!r} is not a gate of this model; its gates are {list(graph.gates)}")
    if info.producer is not None:
        out = {info.producer: torch.arange(info.num_structures)}
    else:
        node = an.gates[name]
        ones = {n: torch.ones_like(k) for n, k in _gate_kept(an, model).items()}
        out = {}
        for path in info.rows:
            op = an.ops[an.producers[path][0]]
            out[path] = torch.full((op.channels,), -1, dtype=torch.long)
        for s in range(info.num_structures):
            off = torch.ones(info.num_structures, dtype=torch.bool)
            off[s] = False
            removed = _removed_from_kept(an, {**ones, node: off.reshape(an.ops[node].gate_view)}, model.net)
            for path, idx in out.items():
                op = an.ops[an.producers[path][0]]
                idx[removed[op.offset: op.offset + op.channels]] = s
    rows_cache[name] = out
    return {path: idx.clone() for path, idx in out.items()}


def head_rows(model: Any, name: str) -> dict[str, Tensor]:
    """:func:`structure_rows` of gate ``name`` when it is a gate over attention heads (whose
    rows are spread over q, k and v, or a fused qkv layer); ``{}`` for any other gate and for a
    network that cannot be traced (its gates name no rows)."""
    try:
        info = structure_graph(model).gates.get(name)
        if info is None or info.kind != "head":
            return {}
        return structure_rows(model, name)
    except (ValueError, TypeError, RuntimeError):
        return {}


def warn_cannot_shrink(model: Any, example_input: Any = None, *, stacklevel: int = 3) -> list[str]:
    """Warn (once per model and set of gates) about gates that cannot shrink anything."""
    graph = structure_graph(model, example_input)
    names = graph.cannot_shrink()
    key = tuple(names)
    if names and getattr(model, "_warned_cannot_shrink", None) != key:
        model.__dict__["_warned_cannot_shrink"] = key
        warnings.warn(
            f"{len(names)} gate(s) cannot shrink the network whatever they remove (their structures "
            f"are tied to ones that must stay: a residual stream pinned by LayerNorm, a grouped "
            f"convolution, the output, or a map that moves zero, such as sigmoid, into a layer "
            f"that cannot fold its constant, such as a convolution); they are left out of "
            f"structure counts: {names}",
            RuntimeWarning, stacklevel=stacklevel)
    return names


def shrinkable_gates(model: Any, example_input: Any = None) -> dict[str, Any]:
    """The gates of ``model`` that can shrink the network, by path: what structure counts
    count. The others are reported once (:func:`warn_cannot_shrink`); a network that cannot
    be traced keeps every gate."""
    gates = model.gates()
    try:
        names = set(warn_cannot_shrink(model, example_input, stacklevel=4))
    except (ValueError, TypeError, RuntimeError):
        return gates
    return {n: g for n, g in gates.items() if n not in names}


# ---------------------------------------------------------------------- answers
def _gate_info(an: Any, model: Any, name: str, node: fx.Node, every_gone: Tensor) -> GateInfo:

    gate = model.net.get_submodule(name)
    producer, per_channel = _producer(an, node)
    rows = (producer,) if producer is not None else _rows_of(an, _removed_if_all_go(an, model, name))
    tags = an.tags[an.ops[node].inputs[0]]
    ids = torch.unique(tags[tags >= 0])
    kind = "head" if _spans_blocks(an, node, gate) else (
        "neuron" if producer is None or is_linear(model.net.get_submodule(producer)) else "channel")
    if producer is None and kind != "head":
        kind = "neuron" if gate.dim % len(an.ops[node].shape) == len(an.ops[node].shape) - 1 else "channel"
    return GateInfo(name=name, kind=kind, dim=int(gate.dim), num_structures=int(gate.num_structures),
                    producer=producer, per_channel=per_channel, consumers=_consumers(an, node),
                    direct_consumers=_direct_consumers(an, node), activation=_activation(an, model, node),
                    rows=rows, can_shrink=bool(every_gone[ids].any()))


def _passes(op: Any) -> bool:
    """Ops between a producer and its gate: per-channel scales, index ops, pooling."""

    return commutes_with_scale(op) or op.kind is OpKind.BATCH_NORM


def _producer(an: Any, gate_node: fx.Node) -> tuple[str | None, tuple[str, ...]]:
    """The producer of a gate's structures and the BatchNorm modules on the way to it."""
    chain = chain_before(an, gate_node, _passes)
    op = an.ops[chain[-1]]
    if op.kind is not OpKind.PRODUCER or op.channels != int(an.ops[gate_node].module.num_structures):
        return None, ()
    norms = [str(n.target) for n in chain if an.ops[n].kind is OpKind.BATCH_NORM and n.op == "call_module"]
    return str(chain[-1].target), tuple(reversed(norms))


def _consumers(an: Any, gate_node: fx.Node) -> tuple[str, ...]:

    kinds = (OpKind.ELEMENTWISE, OpKind.INDEX, OpKind.POOL, OpKind.REDUCE, OpKind.GATE, OpKind.BATCH_NORM)
    nodes, _ = producers_after(an, gate_node, lambda op: op.kind in kinds and len(op.inputs) == 1)
    return tuple(dict.fromkeys(str(n.target) for n in nodes))


def _direct_consumers(an: Any, gate_node: fx.Node) -> tuple[str, ...] | None:
    per_position = (OpKind.ELEMENTWISE, OpKind.INDEX, OpKind.POOL)
    nodes, blocked = producers_after(an, gate_node, lambda op: op.kind in per_position and len(op.inputs) == 1)
    return None if blocked else tuple(dict.fromkeys(str(n.target) for n in nodes))


#: elementwise modules that are no activation (identity in eval mode)
_NOT_ACTIVATIONS = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


def _activation(an: Any, model: Any, gate_node: fx.Node) -> Callable[[Tensor], Tensor] | None:

    users = list(gate_node.users)
    if len(users) != 1:
        return None
    user = users[0]
    op = an.ops.get(user)
    if op is None or op.kind is not OpKind.ELEMENTWISE or len(op.inputs) != 1 or user.args[:1] != (gate_node,):
        return None
    if any(isinstance(a, fx.Node) for a in user.args[1:]) or any(isinstance(v, fx.Node) for v in user.kwargs.values()):
        return None
    if user.op == "call_module":
        m = model.net.get_submodule(str(user.target))
        return None if isinstance(m, _NOT_ACTIVATIONS) else m  # type: ignore[no-any-return]
    kwargs = {k: v for k, v in user.kwargs.items() if k != "inplace"}
    args = tuple(user.args[1:])
    if user.op == "call_function":
        fn: Any = user.target
        if fn in (torch.ops.aten.dropout.default, torch.ops.aten.clone.default):
            return None
        return lambda z: fn(z, *args, **kwargs)
    if user.op == "call_method":
        method = str(user.target)
        if method in ("float", "double", "to", "type_as", "contiguous", "clone"):
            return None
        return lambda z: getattr(z, method)(*args, **kwargs)
    return None


def _spans_blocks(an: Any, gate_node: fx.Node, gate: Any) -> bool:
    """True when one structure covers several channels (an attention head)."""
    tags = an.tags[an.ops[gate_node].inputs[0]]
    d = gate.dim % tags.dim()
    moved = tags.movedim(d, 0).reshape(tags.shape[d], -1)
    for row in moved:
        ids = torch.unique(row[row >= 0])
        if ids.numel() > 1:
            return True
    return False


def _removed_if_all_go(an: Any, model: Any, name: str) -> Tensor:
    """The channel ids removed when every structure of this gate goes (and nothing else)."""

    kept = _gate_kept(an, model)
    node = an.gates[name]
    kept = {n: (torch.zeros_like(k) if n is node else torch.ones_like(k)) for n, k in kept.items()}
    return _removed_from_kept(an, kept, model.net)


def _rows_of(an: Any, removed: Tensor) -> tuple[str, ...]:
    """The producers with some output row among the ``removed`` channel ids."""
    rows = []
    for path, nodes in an.producers.items():
        op = an.ops[nodes[0]]
        if bool(removed[op.offset: op.offset + op.channels].any()):
            rows.append(path)
    return tuple(rows)


def producer_module(model: Any, name: str) -> str | None:
    """Module path of the layer holding one row of incoming weights per structure of gate
    ``name``: its producer, else (attention heads, whose rows are spread over q, k and v) a
    module of the network with ``row_sources`` naming exactly the gate's row layers.
    ``None`` when there is neither or the network cannot be traced."""
    key = (_signature(model), getattr(model, "input_shape", None), getattr(model, "input_dtype", None))
    if _UNTRACEABLE.get(model) == key:
        return None  # this architecture failed to trace: not again for every gate and epoch
    try:
        info = structure_graph(model).gates.get(name)
    except (ValueError, TypeError, RuntimeError):
        _UNTRACEABLE[model] = key
        return None
    if info is None:
        return None
    if info.producer is not None:
        return info.producer
    if not info.rows:
        return None
    wanted = {id(model.net.get_submodule(p)) for p in info.rows}
    for path, m in model.net.named_modules():
        sources = getattr(m, "row_sources", None)
        if isinstance(sources, tuple) and {id(s) for s in sources} == wanted:
            return path
    return None
