r"""Physically smaller networks from pruned Pyro models.

A pruned :class:`~pyro_prune.models.PrunableNet` only *masks*: a removed structure is
multiplied by zero and the dense compute stays, so it is neither faster nor smaller. This
module turns it into

* :func:`to_deterministic` — an ordinary ``torch.fx.GraphModule`` (no Pyro, no masks) whose
  layers really have fewer neurons, filters and attention heads, with ``E_q[theta]`` of the
  kept structures folded into the weights where that is exact;
* :func:`shrink` — a smaller :class:`~pyro_prune.models.PrunableNet` that keeps the
  variational posterior of what remains, so it can keep training and predicting with
  uncertainty;
* :func:`count_params`, :func:`count_macs` and :func:`compression` — the sizes.

How the dependencies are found
------------------------------
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

Folding ``E[theta]``
--------------------
In eval mode a gate multiplies structure ``i`` by ``s_i = E_q[theta_i] * kept_i``
(:meth:`~pyro_prune.models.MultiplicativeNoise.expected_theta`; ``kept_i`` for a
:class:`~pyro_prune.models.StructureMask`). The converter removes the gate and

1. folds ``s`` backwards into the nearest producer or BatchNorm when the path between them
   has no other user and commutes with a positive per-channel scale (positively homogeneous
   ops: ReLU, LeakyReLU, max/avg pooling, flatten and other index ops, dropout in eval):
   ``W' = diag(s) W, b' = s * b``; for BatchNorm ``gamma' = s * gamma, beta' = s * beta``
   (BN is affine per channel, so a gate *after* it folds into its affine parameters, never
   through it);
2. otherwise folds ``s`` forwards into the input columns of every consumer it reaches
   through such ops (``W' = W diag(s)``; exact for convolutions too, zero padding commutes
   with the scale) — this is how a gate over attention heads folds into the output
   projection;
3. otherwise keeps it as a fixed per-channel scale (:class:`ChannelScale`), e.g. when the
   gate's output feeds a residual add.

Supported ops (anything else applied to a tensor that carries gated structures raises a
``ValueError`` naming the op; on ungated tensors it is allowed and pins what it touches):

* producers / consumers: ``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d`` (``groups=1`` or
  depthwise), Bayesian layers with ``as_deterministic()`` (``BayesianLinear``,
  ``BayesianConv2d``);
* per-channel: ``nn.BatchNorm1d/2d`` (eval statistics), structure gates;
* elementwise: ReLU, LeakyReLU, GELU, SiLU, Tanh, ELU, Hardswish, ReLU6, Hardtanh, Mish,
  Sigmoid, Softplus (modules, ``torch.*`` / ``F.*`` functions, tensor methods), dropout,
  ``nn.Identity``, ``abs``/``neg``, arithmetic with a Python number, dtype casts;
* binary: ``+``, ``-``, ``*``, ``/`` of two tensors (with broadcasting; ties channels);
* index ops: ``reshape``, ``view``, ``flatten``/``nn.Flatten``, ``unflatten``/``nn.Unflatten``,
  ``permute``, ``transpose``, ``t``, ``movedim``, ``swapaxes``, ``contiguous``, ``unsqueeze``,
  ``squeeze``, ``expand``, ``repeat``, ``clone``, indexing ``x[...]``, ``torch.cat``/``stack``
  (along axes that carry no removed structure);
* pooling: max/avg pooling and adaptive pooling (1d and 2d), per channel;
* ``mean``/``sum``/``amax``/``amin`` over axes, ``softmax``/``log_softmax``, ``nn.LayerNorm``
  / ``F.layer_norm`` (over channels: pinned), ``matmul``/``@``/``bmm`` (attention);
* shape queries (``x.shape``, ``x.size()``, ``x.dim()``) and Python arithmetic on them.

References: Neklyudov et al., "Structured Bayesian Pruning via Log-Normal Multiplicative
Noise" (NeurIPS 2017); Wright, Igel & Selvan, "BMRS: Bayesian Model Reduction for
Structured Pruning" (NeurIPS 2024); Fang et al., "DepGraph: Towards Any Structural
Pruning" (CVPR 2023) for dependency groups.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import math
import operator
import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import Any, overload

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from pyro_prune.convert.layers import (
    LayerRole,
    counted_params,
    layer_slicer,
    plain_layer,
    registered_layers,
    slice_layer_,
)
from pyro_prune.models.base import PrunableNet
from pyro_prune.models.gate import StructureGate
from pyro_prune.models.noise import NoiseMode, StochasticModule, noise_mode

__all__ = [
    "ChannelScale",
    "OpKind",
    "UnsupportedOpError",
    "compression",
    "count_macs",
    "count_params",
    "shrink",
    "supported_ops",
    "to_deterministic",
]


class UnsupportedOpError(ValueError):
    """An op the converter cannot trace pruned structures through."""


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


# ====================================================================== op registry
class OpKind(enum.Enum):
    """How an op moves channels (structures) from its inputs to its output."""

    PRODUCER = "producer"  # Linear / Conv: new channels on the output, consumes input ones
    GATE = "gate"  # structure gate: per-channel multiplication
    BATCH_NORM = "batch_norm"  # per-channel affine on dim 1
    LAYER_NORM = "layer_norm"  # normalises over trailing (channel) dims: pins them
    ELEMENTWISE = "elementwise"  # per position: activations, scalar arithmetic, dropout
    BINARY = "binary"  # tensor (+-*/) tensor with broadcasting: ties channels
    INDEX = "index"  # pure index ops (reshape, flatten, permute, getitem, cat, ...)
    POOL = "pool"  # per-channel pooling over the trailing spatial dims
    REDUCE = "reduce"  # mean / sum / amax / amin over given dims
    SOFTMAX = "softmax"  # normalises along one dim
    MATMUL = "matmul"  # batched matrix product (attention)
    SHAPE = "shape"  # non-tensor results (x.shape, sizes)


@dataclasses.dataclass(frozen=True)
class _Elem:
    zero_preserving: bool  # f(0) = 0
    homogeneous: bool  # f(s x) = s f(x) for s > 0 (commutes with a positive scale)


_HOMOGENEOUS = _Elem(True, True)
_ZERO_PRESERVING = _Elem(True, False)
_GENERAL = _Elem(False, False)

_ELEMENTWISE_MODULES: dict[type, _Elem] = {
    nn.ReLU: _HOMOGENEOUS, nn.LeakyReLU: _HOMOGENEOUS, nn.Identity: _HOMOGENEOUS,
    nn.Dropout: _HOMOGENEOUS, nn.Dropout1d: _HOMOGENEOUS, nn.Dropout2d: _HOMOGENEOUS,
    nn.Dropout3d: _HOMOGENEOUS, nn.AlphaDropout: _HOMOGENEOUS,
    nn.GELU: _ZERO_PRESERVING, nn.SiLU: _ZERO_PRESERVING, nn.Tanh: _ZERO_PRESERVING,
    nn.ELU: _ZERO_PRESERVING, nn.Hardswish: _ZERO_PRESERVING, nn.Hardtanh: _ZERO_PRESERVING,
    nn.Mish: _ZERO_PRESERVING, nn.Softsign: _ZERO_PRESERVING,
    nn.Sigmoid: _GENERAL, nn.Softplus: _GENERAL, nn.Hardsigmoid: _GENERAL,
}
_ELEMENTWISE_FUNCTIONS: dict[Any, _Elem] = {
    torch.relu: _HOMOGENEOUS, F.relu: _HOMOGENEOUS, F.leaky_relu: _HOMOGENEOUS,
    F.dropout: _HOMOGENEOUS, F.dropout1d: _HOMOGENEOUS, F.dropout2d: _HOMOGENEOUS,
    torch.abs: _HOMOGENEOUS, torch.neg: _HOMOGENEOUS, operator.neg: _HOMOGENEOUS,
    F.gelu: _ZERO_PRESERVING, F.silu: _ZERO_PRESERVING, torch.tanh: _ZERO_PRESERVING,
    F.tanh: _ZERO_PRESERVING, F.elu: _ZERO_PRESERVING, F.hardswish: _ZERO_PRESERVING,
    F.relu6: _ZERO_PRESERVING, F.hardtanh: _ZERO_PRESERVING, F.mish: _ZERO_PRESERVING,
    torch.sigmoid: _GENERAL, F.sigmoid: _GENERAL, F.softplus: _GENERAL,
}
_ELEMENTWISE_METHODS: dict[str, _Elem] = {
    "relu": _HOMOGENEOUS, "abs": _HOMOGENEOUS, "neg": _HOMOGENEOUS,
    "float": _HOMOGENEOUS, "double": _HOMOGENEOUS, "to": _HOMOGENEOUS, "type_as": _HOMOGENEOUS,
    "tanh": _ZERO_PRESERVING, "sigmoid": _GENERAL,
}
# tensor (op) number, or number (op) tensor
_SCALAR_FUNCTIONS: dict[Any, str] = {
    operator.add: "add", torch.add: "add", operator.sub: "sub", torch.sub: "sub",
    operator.mul: "mul", torch.mul: "mul", operator.truediv: "div", torch.div: "div",
}
_SCALAR_METHODS: dict[str, str] = {"add": "add", "sub": "sub", "mul": "mul", "div": "div"}
_INDEX_MODULES = (nn.Flatten, nn.Unflatten)
_INDEX_FUNCTIONS = {
    torch.reshape, torch.flatten, torch.permute, torch.transpose, torch.swapaxes, torch.t,
    torch.unsqueeze, torch.squeeze, torch.cat, torch.concat, torch.stack, torch.movedim,
    torch.clone, operator.getitem,
}
_INDEX_METHODS = {
    "view", "reshape", "flatten", "unflatten", "permute", "transpose", "swapaxes", "t",
    "movedim", "contiguous", "unsqueeze", "squeeze", "expand", "repeat", "clone",
}
# index ops whose size arguments may need rewriting after slicing
_SIZED_METHODS = {"view", "reshape", "expand"}
_POOL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
)
_POOL_FUNCTIONS = {
    F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
}
_REDUCE_FUNCTIONS = {torch.mean: "mean", torch.sum: "sum", torch.amax: "amax", torch.amin: "amin"}
_REDUCE_METHODS = {"mean", "sum", "amax", "amin"}
_SOFTMAX_FUNCTIONS = {F.softmax, torch.softmax, F.log_softmax, torch.log_softmax}
_SOFTMAX_METHODS = {"softmax", "log_softmax"}
_MATMUL_FUNCTIONS = {torch.matmul, operator.matmul, torch.bmm}
_MATMUL_METHODS = {"matmul", "bmm", "__matmul__"}
_SHAPE_METHODS = {"size", "dim", "numel"}
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
_CONVS = (nn.Conv1d, nn.Conv2d)


def supported_ops() -> dict[str, list[str]]:
    """The modules, functions and tensor methods the converter can trace, by kind."""

    def fname(f: Any) -> str:
        mod = getattr(f, "__module__", None) or ""
        return f"{mod}.{getattr(f, '__name__', repr(f))}".lstrip(".")

    return {
        "modules": sorted(
            {t.__name__ for t in (*_ELEMENTWISE_MODULES, *_INDEX_MODULES, *_POOL_MODULES,
                                  *registered_layers(), nn.LayerNorm, nn.Softmax, nn.LogSoftmax)}
            | {"StructureGate", "their subclasses"}),
        "functions": sorted({fname(f) for f in (
            *_ELEMENTWISE_FUNCTIONS, *_SCALAR_FUNCTIONS, *_INDEX_FUNCTIONS, *_POOL_FUNCTIONS,
            *_REDUCE_FUNCTIONS, *_SOFTMAX_FUNCTIONS, *_MATMUL_FUNCTIONS, F.layer_norm)}),
        "methods": sorted(set(_ELEMENTWISE_METHODS) | set(_SCALAR_METHODS) | _INDEX_METHODS
                          | _REDUCE_METHODS | _SOFTMAX_METHODS | _MATMUL_METHODS
                          | _SHAPE_METHODS),
    }


def _is_producer(m: Any) -> bool:
    slicer = layer_slicer(m)
    return slicer is not None and slicer.role is LayerRole.PRODUCER


def _is_linear(m: Any) -> bool:
    """A registered producer whose structures are the last axis (features)."""
    slicer = layer_slicer(m)
    return slicer is not None and slicer.role is LayerRole.PRODUCER and slicer.out_axis == -1


def _is_conv(m: Any) -> bool:
    """A registered producer whose structures are axis 1 (channels)."""
    slicer = layer_slicer(m)
    return slicer is not None and slicer.role is LayerRole.PRODUCER and slicer.out_axis != -1


def _is_per_channel(m: Any) -> bool:
    slicer = layer_slicer(m)
    return slicer is not None and slicer.role is LayerRole.PER_CHANNEL


def _elementwise_module(m: nn.Module) -> _Elem | None:
    """The elementwise kind of ``m``'s type or its nearest listed base class."""
    for cls in type(m).__mro__:
        elem = _ELEMENTWISE_MODULES.get(cls)
        if elem is not None:
            return elem
    return None


def _is_leaf(m: nn.Module) -> bool:
    """Modules the converter keeps as one node: gates, stochastic modules, registered layers."""
    return isinstance(m, (StructureGate, StochasticModule)) or layer_slicer(m) is not None \
        or isinstance(m, (nn.LayerNorm, *_POOL_MODULES, *_INDEX_MODULES))


def _is_opaque(m: nn.Module) -> bool:
    """A module with weights the converter cannot see into (traced with torch.export instead)."""
    if _is_leaf(m) or _elementwise_module(m) is not None:
        return False
    return any(True for _ in m.parameters())


def _op_name(node: fx.Node) -> str:
    if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
        stack = node.meta.get("nn_module_stack") or {}
        where = ""
        if stack:
            path, cls = list(stack.values())[-1]
            cls_name = cls if isinstance(cls, str) else getattr(cls, "__name__", str(cls))
            where = f" in {path or 'the top module'} ({cls_name.rsplit('.', 1)[-1]})"
        return f"torch.ops.{node.target} (ATen op{where})"
    if node.op == "call_function":
        t = node.target
        mod = getattr(t, "__module__", None) or ""
        return f"{mod}.{getattr(t, '__name__', repr(t))}".lstrip(".") + " (function)"
    if node.op == "call_method":
        return f"Tensor.{node.target} (method)"
    if node.op == "call_module":
        return f"{node.target} (module)"
    return f"{node.op} {node.target}"


# ====================================================================== analysis
@dataclasses.dataclass(eq=False)
class _Op:
    node: fx.Node
    kind: OpKind | None  # None: unsupported op
    name: str
    is_tensor: bool = False  # whether the output is a tensor
    shape: tuple[int, ...] = ()  # its shape
    inputs: tuple[fx.Node, ...] = ()  # tensor-valued inputs (order of first use)
    elem: _Elem = _GENERAL
    module: nn.Module | None = None
    binary: str = ""  # BINARY / scalar ELEMENTWISE: add | sub | mul | div
    dims: tuple[int, ...] = ()  # REDUCE / SOFTMAX / LAYER_NORM dims (non-negative)
    keepdim: bool = False
    posmap: Tensor | None = None  # INDEX: flat position (in the concatenated inputs) per output
    in_numels: tuple[int, ...] = ()
    offset: int = -1  # PRODUCER: first channel id of its output rows
    channels: int = 0  # PRODUCER: number of output rows; BN / POOL: channels
    cols: Tensor | None = None  # PRODUCER / BN: channel tag of each input column (or -1)
    depthwise: bool = False
    gate_view: tuple[int, ...] = ()  # GATE: shape to broadcast kept over the input
    contract_a: Tensor | None = None  # MATMUL: channel tags of a along the contracted axis
    contract_b: Tensor | None = None


@dataclasses.dataclass(eq=False)
class _Analysis:
    graph: fx.Graph
    tracer: str  # "fx" | "export"
    constants: dict[str, Tensor]  # tensors export lifted out of the code
    ops: dict[fx.Node, _Op]
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
    full_params: int = 0
    signature: tuple = ()
    # (channel tags, axes): channels combined with a tensor that spans those axes (and has
    # no structures): removable only while no index along those axes disappears
    conditional: list[tuple[Tensor, tuple[int, ...]]] = dataclasses.field(default_factory=list)
    last_kept: Tensor | None = None  # memo of the last _removed_ids call
    last_removed: Tensor | None = None


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _signature(model: PrunableNet) -> tuple:
    items = []
    for name, m in model.net.named_modules():
        shapes = tuple((k, tuple(v.shape)) for k, v in m._parameters.items() if v is not None)
        bufs = tuple((k, tuple(v.shape)) for k, v in m._buffers.items() if v is not None)
        items.append((name, id(m), shapes, bufs))
    return (id(model.net), _net_dtype(model.net), _net_device(model.net), tuple(items))


def _net_dtype(net: nn.Module) -> torch.dtype:
    for p in net.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.get_default_dtype()


def _net_device(net: nn.Module) -> torch.device:
    for p in net.parameters():
        return p.device
    return torch.device("cpu")


def _resolve_input_shape(model: PrunableNet, example_input: Any) -> tuple[int, ...] | None:
    """Shape of one input (without the batch axis), or None when it must be searched."""
    if example_input is not None:
        if isinstance(example_input, Tensor):
            if example_input.dim() < 2:
                raise ValueError(
                    f"example_input must be a batch [N, ...], got shape {tuple(example_input.shape)}")
            return tuple(example_input.shape[1:])
        if isinstance(example_input, (tuple, list, torch.Size)) and all(
                isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in example_input):
            return tuple(example_input)
        raise TypeError(
            "example_input must be a batch tensor or the shape of one input (ints), "
            f"got {type(example_input).__name__}")
    shape = getattr(model, "input_shape", None)
    if isinstance(shape, (tuple, list, torch.Size)) and all(isinstance(s, int) for s in shape):
        return tuple(shape)
    config = getattr(model, "config", None)
    if isinstance(config, dict) and isinstance(config.get("in_features"), int):
        return (int(config["in_features"]),)
    return None


def _resolve_input_dtype(model: PrunableNet, example_input: Any) -> torch.dtype | None:
    """The dtype of integer inputs (token ids), or None for floating inputs."""
    if isinstance(example_input, Tensor):
        return None if example_input.is_floating_point() else example_input.dtype
    dtype = getattr(model, "input_dtype", None)
    return dtype if isinstance(dtype, torch.dtype) and not dtype.is_floating_point else None


def _search_input_shape(net: nn.Module, dtype: torch.dtype,
                        device: torch.device) -> tuple[int, ...]:
    """Find an input shape the backbone accepts from its first Linear / Conv layer."""
    first: Any = next((m for m in net.modules() if _is_producer(m)), None)
    candidates: list[tuple[int, ...]] = []
    first_slicer = layer_slicer(first)
    if first_slicer is not None and _is_linear(first):
        candidates.append((first_slicer.num_in(first),))
    elif first_slicer is not None and _is_conv(first):
        ks = getattr(first, "kernel_size", (1, 1))
        ndim = len(ks) if isinstance(ks, tuple) else 2
        c = first_slicer.num_in(first)
        candidates += [(c,) + (s,) * ndim for s in (*range(1, 65), 96, 128, 224)]
    with torch.no_grad(), noise_mode(net, NoiseMode.MEAN):
        for shape in candidates:
            try:
                net(torch.zeros((1, *shape), dtype=dtype, device=device))
                return shape
            except Exception:  # noqa: BLE001 - trying sizes until one runs
                continue
    raise ValueError(
        "cannot infer the input shape of the network; pass example_input= (a batch tensor or "
        "the shape of one input), or give the model an `input_shape` attribute")


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


def _dims_arg(value: Any, ndim: int) -> tuple[int, ...]:
    if value is None:
        return tuple(range(ndim))
    if isinstance(value, int):
        value = (value,)
    return tuple(sorted(int(d) % ndim for d in value))


def _arg(node: fx.Node, env_args: tuple, env_kwargs: dict, index: int, name: str, default: Any) -> Any:
    if len(env_args) > index:
        return env_args[index]
    return env_kwargs.get(name, default)


def _classify(node: fx.Node, net: nn.Module, args: tuple, kwargs: dict, value: Any) -> _Op:
    name = _op_name(node)
    tensor_inputs = tuple(n for n in node.all_input_nodes if n.meta.get("_pp_tensor", False))
    op = _Op(node=node, kind=None, name=name, inputs=tensor_inputs)
    if isinstance(value, Tensor):
        op.is_tensor, op.shape = True, tuple(value.shape)
    is_tensor_out = isinstance(value, Tensor)
    if node.op == "call_module":
        m = net.get_submodule(str(node.target))
        op.module = m
        if isinstance(m, StructureGate):
            op.kind = OpKind.GATE
        elif _is_producer(m):
            op.kind = OpKind.PRODUCER
        elif _is_per_channel(m):
            op.kind = OpKind.BATCH_NORM
        elif isinstance(m, nn.LayerNorm):
            op.kind = OpKind.LAYER_NORM
            k = len(m.normalized_shape)
            op.dims = tuple(range(len(op.shape) - k, len(op.shape))) if op.shape else ()
        elif _elementwise_module(m) is not None:
            op.kind, op.elem = OpKind.ELEMENTWISE, _elementwise_module(m)  # type: ignore[assignment]
        elif isinstance(m, _INDEX_MODULES):
            op.kind = OpKind.INDEX
        elif isinstance(m, _POOL_MODULES) and is_tensor_out:
            op.kind = OpKind.POOL
        elif isinstance(m, (nn.Softmax, nn.LogSoftmax)) and is_tensor_out:
            op.kind = OpKind.SOFTMAX
            op.dims = _dims_arg(m.dim if m.dim is not None else -1, len(op.shape))
        return op
    if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
        _classify_aten(op, node.target, args, kwargs, is_tensor_out, bool(tensor_inputs))
        return op
    if node.op == "call_function":
        t = node.target
        if t is getattr or (not is_tensor_out and not tensor_inputs):
            op.kind = OpKind.SHAPE
        elif t is operator.getitem and not isinstance(args[0], Tensor):
            op.kind = OpKind.SHAPE if not is_tensor_out else None
        elif t in _INDEX_FUNCTIONS and is_tensor_out:
            op.kind = OpKind.INDEX
        elif t in _ELEMENTWISE_FUNCTIONS and is_tensor_out:
            op.kind, op.elem = OpKind.ELEMENTWISE, _ELEMENTWISE_FUNCTIONS[t]
            if t in (F.dropout, F.dropout1d, F.dropout2d) and _arg(node, args, kwargs, 2, "training", True):
                op.kind = None  # dropout in training mode is random
        elif t in _SCALAR_FUNCTIONS and is_tensor_out:
            _classify_arith(op, _SCALAR_FUNCTIONS[t], args[0], args[1] if len(args) > 1 else kwargs.get("other"))
        elif t in _POOL_FUNCTIONS and is_tensor_out:
            op.kind = OpKind.POOL
        elif t in _REDUCE_FUNCTIONS and is_tensor_out:
            op.kind = OpKind.REDUCE
            ndim = args[0].dim()
            op.dims = _dims_arg(_arg(node, args, kwargs, 1, "dim", None), ndim)
            op.keepdim = bool(_arg(node, args, kwargs, 2, "keepdim", False))
        elif t in _SOFTMAX_FUNCTIONS and is_tensor_out:
            op.kind = OpKind.SOFTMAX
            op.dims = _dims_arg(_arg(node, args, kwargs, 1, "dim", -1), args[0].dim())
        elif t is F.layer_norm and is_tensor_out:
            op.kind = OpKind.LAYER_NORM
            k = len(tuple(_arg(node, args, kwargs, 1, "normalized_shape", ())))
            op.dims = tuple(range(len(op.shape) - k, len(op.shape)))
        elif t in _MATMUL_FUNCTIONS and is_tensor_out and args[0].dim() >= 2 and args[1].dim() >= 2:
            op.kind = OpKind.MATMUL
        return op
    if node.op == "call_method":
        t = str(node.target)
        if t in _SHAPE_METHODS and not is_tensor_out:
            op.kind = OpKind.SHAPE
        elif not isinstance(args[0], Tensor):
            op.kind = OpKind.SHAPE if not is_tensor_out else None
        elif t in _INDEX_METHODS and is_tensor_out:
            op.kind = OpKind.INDEX
        elif t in _ELEMENTWISE_METHODS and is_tensor_out:
            op.kind, op.elem = OpKind.ELEMENTWISE, _ELEMENTWISE_METHODS[t]
        elif t in _SCALAR_METHODS and is_tensor_out:
            _classify_arith(op, _SCALAR_METHODS[t], args[0], args[1] if len(args) > 1 else kwargs.get("other"))
        elif t in _REDUCE_METHODS and is_tensor_out:
            op.kind = OpKind.REDUCE
            op.dims = _dims_arg(_arg(node, args, kwargs, 1, "dim", None), args[0].dim())
            op.keepdim = bool(_arg(node, args, kwargs, 2, "keepdim", False))
        elif t in _SOFTMAX_METHODS and is_tensor_out:
            op.kind = OpKind.SOFTMAX
            op.dims = _dims_arg(_arg(node, args, kwargs, 1, "dim", -1), args[0].dim())
        elif t in _MATMUL_METHODS and is_tensor_out and args[0].dim() >= 2 and args[1].dim() >= 2:
            op.kind = OpKind.MATMUL
        return op
    return op


_A = torch.ops.aten
# ATen ops (the torch.export path), by overload packet
_ATEN_ELEMENTWISE: dict[Any, _Elem] = {
    _A.relu: _HOMOGENEOUS, _A.leaky_relu: _HOMOGENEOUS, _A.alias: _HOMOGENEOUS,
    _A.detach: _HOMOGENEOUS, _A.clone: _HOMOGENEOUS, _A.contiguous: _HOMOGENEOUS,
    _A.abs: _HOMOGENEOUS, _A.neg: _HOMOGENEOUS, _A._to_copy: _HOMOGENEOUS, _A.to: _HOMOGENEOUS,
    _A.type_as: _HOMOGENEOUS, _A.dropout: _HOMOGENEOUS, _A.feature_dropout: _HOMOGENEOUS,
    _A.lift_fresh_copy: _HOMOGENEOUS,
    _A.gelu: _ZERO_PRESERVING, _A.silu: _ZERO_PRESERVING, _A.tanh: _ZERO_PRESERVING,
    _A.elu: _ZERO_PRESERVING, _A.hardswish: _ZERO_PRESERVING, _A.hardtanh: _ZERO_PRESERVING,
    _A.mish: _ZERO_PRESERVING, _A.relu6: _ZERO_PRESERVING, _A.erf: _ZERO_PRESERVING,
    _A.sqrt: _ZERO_PRESERVING, _A.sin: _ZERO_PRESERVING,
    _A.sigmoid: _GENERAL, _A.softplus: _GENERAL, _A.hardsigmoid: _GENERAL, _A.exp: _GENERAL,
    _A.pow: _GENERAL, _A.rsqrt: _GENERAL, _A.cos: _GENERAL, _A.log: _GENERAL,
    _A.reciprocal: _GENERAL, _A.square: _ZERO_PRESERVING,
    _A.masked_fill: _GENERAL,  # masked_fill(x, mask, value): per position of x
}
_ATEN_ARITH = {_A.add: "add", _A.sub: "sub", _A.mul: "mul", _A.div: "div", _A.rsub: "rsub"}
_ATEN_INDEX = {
    _A.view, _A.reshape, _A._unsafe_view, _A.permute, _A.transpose, _A.t, _A.unsqueeze,
    _A.squeeze, _A.expand, _A.flatten, _A.unflatten, _A.slice, _A.select, _A.cat, _A.concat,
    _A.stack, _A.movedim, _A.repeat, _A.narrow, _A.swapaxes, _A.expand_as, _A.view_as,
    _A.repeat_interleave,
}
_ATEN_SIZED = {_A.view.default, _A.reshape.default, _A._unsafe_view.default, _A.expand.default}
_ATEN_POOL = {_A.max_pool1d, _A.max_pool2d, _A.avg_pool1d, _A.avg_pool2d, _A.adaptive_avg_pool1d,
              _A.adaptive_avg_pool2d, _A._adaptive_avg_pool2d}
_ATEN_REDUCE = {_A.mean: "mean", _A.sum: "sum", _A.amax: "amax", _A.amin: "amin"}
_ATEN_SOFTMAX = {_A.softmax, _A._softmax, _A.log_softmax, _A._log_softmax}
_ATEN_MATMUL = {_A.matmul, _A.bmm, _A.mm}


def _classify_aten(op: _Op, target: Any, args: tuple, kwargs: dict, is_tensor_out: bool,
                   has_tensor_inputs: bool) -> None:
    """The kind of an ATen op of a graph traced with torch.export."""
    packet = target.overloadpacket
    if not is_tensor_out:
        if not isinstance(args[0] if args else None, Tensor) or packet is _A.sym_size:
            op.kind = OpKind.SHAPE
        return
    if not has_tensor_inputs:
        op.kind = OpKind.ELEMENTWISE  # a fresh tensor (arange, zeros, ...): carries nothing
        op.elem = _GENERAL
        return
    if packet in _ATEN_ELEMENTWISE:
        op.kind, op.elem = OpKind.ELEMENTWISE, _ATEN_ELEMENTWISE[packet]
        if packet in (_A.dropout, _A.feature_dropout) and bool(
                args[2] if len(args) > 2 else kwargs.get("train", False)):
            op.kind = None  # dropout in training mode is random
        if packet is _A.pow and len(args) > 1 and isinstance(args[1], (int, float)) and args[1] > 0:
            op.elem = _ZERO_PRESERVING
    elif packet in _ATEN_ARITH and len(args) >= 2:
        kind = _ATEN_ARITH[packet]
        if kind == "rsub":  # rsub(x, s) = s - x
            _classify_arith(op, "sub", args[1], args[0])
        else:
            _classify_arith(op, kind, args[0], args[1])
    elif packet in _ATEN_INDEX:
        op.kind = OpKind.INDEX
    elif packet in _ATEN_POOL:
        op.kind = OpKind.POOL
    elif packet in _ATEN_REDUCE:
        op.kind = OpKind.REDUCE
        ndim = args[0].dim()
        dim = args[1] if len(args) > 1 and not isinstance(args[1], torch.dtype) else kwargs.get("dim")
        op.dims = _dims_arg(dim if dim not in ([], ()) else None, ndim)
        op.keepdim = bool(args[2] if len(args) > 2 else kwargs.get("keepdim", False))
    elif packet in _ATEN_SOFTMAX:
        op.kind = OpKind.SOFTMAX
        op.dims = _dims_arg(args[1] if len(args) > 1 else kwargs.get("dim", -1), args[0].dim())
    elif packet is _A.layer_norm:
        op.kind = OpKind.LAYER_NORM
        k = len(tuple(args[1]))
        op.dims = tuple(range(len(op.shape) - k, len(op.shape)))
    elif packet is _A.group_norm:
        op.kind = OpKind.LAYER_NORM  # normalises over groups of channels: pins them
        op.dims = tuple(range(1, len(op.shape)))
    elif packet in _ATEN_MATMUL and args[0].dim() >= 2 and args[1].dim() >= 2:
        op.kind = OpKind.MATMUL


def _is_scalar(v: Any) -> bool:
    return isinstance(v, (int, float, bool)) or (isinstance(v, Tensor) and v.dim() == 0)


def _classify_arith(op: _Op, kind: str, a: Any, b: Any) -> None:
    if isinstance(a, Tensor) and isinstance(b, Tensor) and a.dim() > 0 and b.dim() > 0:
        op.kind, op.binary = OpKind.BINARY, kind
        return
    if isinstance(a, Tensor) and a.dim() > 0 and _is_scalar(b):
        tensor_first = True
    elif isinstance(b, Tensor) and b.dim() > 0 and _is_scalar(a):
        tensor_first = False
    else:
        return
    op.kind, op.binary = OpKind.ELEMENTWISE, kind
    if kind == "mul" or (kind == "div" and tensor_first):
        op.elem = _HOMOGENEOUS
    else:
        op.elem = _GENERAL


def _fetch_attr(root: nn.Module, target: str, constants: dict[str, Tensor] | None = None) -> Any:
    if constants and target in constants:
        return constants[target]
    obj: Any = root
    for atom in target.split("."):
        obj = getattr(obj, atom)
    return obj


def _build_analysis(model: PrunableNet, input_shape: tuple[int, ...] | None,
                    input_dtype: torch.dtype | None) -> _Analysis:
    from pyro_prune.graph.trace import modes_restored, module_graph

    net = model.net
    with modes_restored(net):
        net.eval()
        dtype, device = _net_dtype(net), _net_device(net)
        input_dtype = input_dtype or dtype
        if input_shape is None:
            input_shape = _search_input_shape(net, dtype, device)
        with torch.no_grad(), noise_mode(net, NoiseMode.MEAN):
            example = torch.zeros((2, *input_shape), dtype=input_dtype, device=device)
            traced = module_graph(net, example, _is_leaf, opaque=_is_opaque)
            return _analyse_graph(model, traced.graph, input_shape, dtype, device, input_dtype,
                                  traced.tracer, traced.constants)


def _analyse_graph(model: PrunableNet, graph: fx.Graph, input_shape: tuple[int, ...],
                   dtype: torch.dtype, device: torch.device, input_dtype: torch.dtype,
                   tracer: str, constants: dict[str, Tensor]) -> _Analysis:
    net = model.net
    env: dict[fx.Node, Any] = {}
    ops: dict[fx.Node, _Op] = {}
    tags: dict[fx.Node, Tensor] = {}
    uf = _UnionFind()
    pinned: list[Tensor] = []
    gated: list[Tensor] = []
    conditional: list[tuple[Tensor, tuple[int, ...]]] = []
    unsupported: list[tuple[_Op, Tensor]] = []
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
        elif node.op == "call_function":
            fn: Any = node.target
            value = fn(*args, **kwargs)
        elif node.op == "call_method":
            value = getattr(args[0], str(node.target))(*args[1:], **kwargs)
        elif node.op == "call_module":
            value = net.get_submodule(str(node.target))(*args, **kwargs)
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
            op = _Op(node=node, kind=OpKind.SHAPE if not is_tensor else OpKind.ELEMENTWISE,
                     name=f"{node.op} {node.target}")
            op.is_tensor, op.shape = is_tensor, tuple(value.shape) if is_tensor else ()
            op.elem = _GENERAL
            ops[node] = op
            if is_tensor:
                tags[node] = neg.expand(value.shape)
            continue
        op = _classify(node, net, args, kwargs, value)
        if op.kind is OpKind.ELEMENTWISE and len(op.inputs) > 1:  # main operand first
            op.inputs = tuple(sorted(op.inputs, key=lambda n: -env[n].dim()))
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
            linear = _is_linear(m)
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
            pmap = _run_index_op(node, net, env, pos)
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
    values = {n: v for n, v in env.items() if not isinstance(v, Tensor)}
    an = _Analysis(graph=graph, tracer=tracer, constants=constants, input_dtype=input_dtype, ops=ops, tags=tags, values=values, input_shape=tuple(input_shape),
                   dtype=dtype, device=device, n_ids=n_ids, root=root, pinned_root=pinned_root, conditional=conditional, gates=gates,
                   producers=producers, outputs=outputs)
    an.full_params = _count_from_removed(an, model, torch.zeros(n_ids, dtype=torch.bool))
    return an


def _rows_along(t: Tensor, axis: int) -> tuple[Tensor, bool]:
    """``t`` with ``axis`` (-1 or -2) collapsed, if ``t`` is constant along it."""
    ok = _const_along(t, (t.dim() + axis,))
    return t.select(axis, 0), ok


def _run_index_op(node: fx.Node, net: nn.Module, env: dict, pos: dict[fx.Node, Tensor]) -> Tensor:
    args = fx.node.map_arg(node.args, lambda n: pos[n] if n in pos else env[n])
    kwargs = fx.node.map_arg(node.kwargs, lambda n: pos[n] if n in pos else env[n])
    target: Any = node.target
    if node.op == "call_function":
        return target(*args, **kwargs)
    if node.op == "call_method":
        return getattr(args[0], str(node.target))(*args[1:], **kwargs)
    return net.get_submodule(str(node.target))(*args, **kwargs)


def _analysis(model: PrunableNet, example_input: Any = None) -> _Analysis:
    """The cached dependency analysis of ``model`` (rebuilt when the architecture changes)."""
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


# ====================================================================== kept-dependent passes
def _gate_kept(an: _Analysis, model: PrunableNet) -> dict[fx.Node, Tensor]:
    out = {}
    for name, node in an.gates.items():
        g: Any = model.net.get_submodule(name)
        out[node] = g.kept.reshape(an.ops[node].gate_view).cpu()
    return out



def _pool_any(x: Tensor, shape: Sequence[int]) -> Tensor:
    """Boolean map through a pooling op: a channel is set anywhere if it was set anywhere."""
    per_c = x.reshape(x.shape[0], x.shape[1], -1).any(-1)
    return per_c.reshape(per_c.shape + (1,) * (len(shape) - 2)).expand(shape)


def _reduce_any(x: Tensor, dims: Any, shape: Sequence[int]) -> Tensor:
    """Boolean map through a reduction over ``dims``."""
    return (x.any(dim=dims, keepdim=True) if dims else x).reshape(shape)

def _nonzero_pass(an: _Analysis, kept: dict[fx.Node, Tensor]) -> dict[fx.Node, Tensor]:
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
            a, b = (nz[n] for n in _binary_operands(op))
            if op.binary in ("add", "sub"):
                nz[node] = (a | b).expand(shape)
            elif op.binary == "mul":
                nz[node] = (a & b).expand(shape)
            else:
                nz[node] = a.expand(shape)
        elif kind is OpKind.POOL:
            nz[node] = _pool_any(nz[op.inputs[0]], shape)
        elif kind is OpKind.REDUCE:
            nz[node] = _reduce_any(nz[op.inputs[0]], op.dims, shape)
        elif kind is OpKind.MATMUL:
            a, b = (nz[n] for n in _binary_operands(op))
            nz[node] = (a.to(torch.float32) @ b.to(torch.float32)) > 0
        else:  # producers, norms, softmax, non-zero-preserving maps, inputs, unsupported
            nz[node] = true.expand(shape)
    return nz


def _binary_operands(op: _Op) -> tuple[fx.Node, fx.Node]:
    node = op.node
    a = node.args[0]
    b = node.args[1] if len(node.args) > 1 else node.kwargs["other"]
    return a, b  # type: ignore[return-value]


def _live_pass(an: _Analysis, kept: dict[fx.Node, Tensor], nz: dict[fx.Node, Tensor]
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
            if _is_linear(m):  # type: ignore[arg-type]
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
            a, b = _binary_operands(op)
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
            a, b = _binary_operands(op)
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


def _removed_ids(an: _Analysis, model: PrunableNet) -> Tensor:
    """Bool ``[n_ids]``: the channel ids whose tied group is physically removed."""
    if an.n_ids == 0:
        return torch.zeros(0, dtype=torch.bool)
    kept = _gate_kept(an, model)
    key = torch.cat([k.reshape(-1) for k in kept.values()]) if kept else torch.zeros(0, dtype=torch.bool)
    if an.last_kept is not None and an.last_removed is not None and torch.equal(key, an.last_kept):
        return an.last_removed.clone()
    removed = _removed_from_kept(an, kept)
    an.last_kept, an.last_removed = key.clone(), removed.clone()
    return removed


def _removed_from_kept(an: _Analysis, kept: dict[fx.Node, Tensor]) -> Tensor:
    if all(bool(k.all()) for k in kept.values()):
        return torch.zeros(an.n_ids, dtype=torch.bool)
    nz = _nonzero_pass(an, kept)
    live, contrib = _live_pass(an, kept, nz)
    needed = torch.zeros(an.n_ids, dtype=torch.bool)  # live producer rows / needed columns
    for nodes in an.producers.values():
        for node in nodes:
            op = an.ops[node]
            lo = live.get(node)
            if lo is not None:
                axis = lo.dim() - 1 if _is_linear(op.module) else 1  # type: ignore[arg-type]
                rows = lo.movedim(axis, 0).reshape(op.channels, -1).any(-1)
                needed[op.offset: op.offset + op.channels] |= rows
            li = contrib.get(node)
            if li is not None and op.cols is not None:
                x = nz[op.inputs[0]] & li[0]
                axis = x.dim() - 1 if _is_linear(op.module) else 1  # type: ignore[arg-type]
                cols_needed = x.movedim(axis, 0).reshape(len(op.cols), -1).any(-1)
                sel = cols_needed & (op.cols >= 0)
                needed[op.cols[sel]] = True
    for node, op in an.ops.items():
        if op.kind is OpKind.MATMUL and op.contract_a is not None and node in contrib:
            a, b = _binary_operands(op)
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
    return removed


# ====================================================================== counting
def _kept_count(removed: Tensor, cols: Tensor | None, n: int) -> int:
    if cols is None:
        return n
    keep = (cols < 0) | ~removed[cols.clamp_min(0)]
    return int(keep.sum())


def _count_from_removed(an: _Analysis, model: PrunableNet, removed: Tensor) -> int:
    """Parameters of the converted deterministic network (one number per weight)."""
    net = model.net
    total = 0
    seen_modules: set[str] = set()
    seen_attrs: set[int] = set()
    for node, op in an.ops.items():
        if node.op == "get_attr" and op.is_tensor:
            t = _fetch_attr(net, str(node.target), an.constants)
            if isinstance(t, nn.Parameter) and id(t) not in seen_attrs:
                seen_attrs.add(id(t))
                total += t.numel()
            continue
        if node.op != "call_module":
            continue
        target = str(node.target)
        if target in seen_modules:
            continue
        seen_modules.add(target)
        m: Any = op.module
        assert m is not None
        if op.kind is OpKind.GATE:
            continue
        if op.kind is OpKind.PRODUCER:
            out_kept = int((~removed[op.offset: op.offset + op.channels]).sum())
            slicer = layer_slicer(m)
            assert slicer is not None
            in_kept = _kept_count(removed, op.cols, slicer.num_in(m))
            total += counted_params(m, out_kept, in_kept)
        elif op.kind is OpKind.BATCH_NORM:
            c = _kept_count(removed, op.cols, op.channels)
            total += counted_params(m, c, c)
        else:
            total += sum(p.numel() for p in m.parameters())
    return total


def count_params(module: nn.Module, *, example_input: Any = None) -> int:
    """Number of parameters, counting biases and BatchNorm's affine weight and bias.

    For a plain ``nn.Module`` (e.g. the output of :func:`to_deterministic`) this is the
    number of elements of its distinct parameters (buffers such as BatchNorm running
    statistics and folded scales are not parameters). For a :class:`PrunableNet` it is the
    parameter count of the deterministic network the model converts to — one number per
    weight, computed from the kept masks without converting; variational parameters (noise
    ``loc``/``log_scale``, weight ``log_scale``) are not counted.
    """
    if isinstance(module, PrunableNet):
        an = _analysis(module, example_input)
        return _count_from_removed(an, module, _removed_ids(an, module))
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    seen: set[int] = set()
    total = 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def compression(model: PrunableNet, *, example_input: Any = None) -> float:
    """Fraction of parameters physically removed: ``1 - params(pruned) / params(unpruned)``.

    Both counts are of the deterministic network :func:`to_deterministic` returns
    (weights, biases and BatchNorm affine parameters; :func:`count_params`), computed from
    the gates' ``kept`` masks and the cached dependency analysis, so a structure counts as
    removed only when it can be sliced out (a residual channel removed in one branch but
    kept in another is not). A model without gates has nothing to remove and gives 0.

    The traced graph and dependency analysis are cached per model object and rebuilt when
    its architecture (module names, identities or parameter shapes) changes; a call then
    costs two passes over boolean masks (about a millisecond for the MLP and LeNet-5).
    """
    if not isinstance(model, PrunableNet):
        raise TypeError(f"model must be a PrunableNet, got {type(model).__name__}")
    if not model.gates():
        return 0.0
    an = _analysis(model, example_input)
    if an.full_params == 0:
        return 0.0
    kept = _count_from_removed(an, model, _removed_ids(an, model))
    return 1.0 - kept / an.full_params


class _MacCounter(TorchFunctionMode):
    """Counts multiply-accumulates of linear maps, convolutions and matmuls."""

    _CONV = {"conv1d", "conv2d", "conv3d"}
    _MATMUL = {"matmul", "__matmul__", "bmm", "mm"}
    _ADDMM = {"addmm", "baddbmm"}

    def __init__(self) -> None:
        super().__init__()
        self.macs = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if name == "linear":
            weight = args[1] if len(args) > 1 else kwargs["weight"]
            self.macs += out.numel() * weight.shape[-1]
        elif name in self._CONV:
            weight = args[1] if len(args) > 1 else kwargs["weight"]
            self.macs += out.numel() * weight[0].numel()
        elif name in self._MATMUL or name == "__rmatmul__":
            a = args[1] if name == "__rmatmul__" else args[0]
            self.macs += out.numel() * (a.shape[-1] if a.dim() else 1)
        elif name in self._ADDMM:
            self.macs += out.numel() * args[1].shape[-1]
        elif name == "scaled_dot_product_attention":
            q, k, v = args[:3]
            self.macs += q.shape[:-1].numel() * k.shape[-2] * (q.shape[-1] + v.shape[-1])
        return out


def count_macs(module: nn.Module, input_shape: Sequence[int], *, dtype: torch.dtype | None = None) -> int:
    """Multiply-accumulates for one input of shape ``input_shape`` (no batch axis).

    Counted from a real forward pass on a batch of one: every linear map (``F.linear``:
    ``out.numel() * in_features``), convolution (``out.numel() * in_channels / groups *
    prod(kernel)``, so stride, padding, dilation and groups enter through the real output
    shape), and matrix product (``matmul``/``@``/``bmm``/``mm``/``addmm``, e.g. attention's
    ``q @ k^T`` and ``attn @ v``: ``out.numel() * inner size``;
    ``scaled_dot_product_attention`` as its two products). Not counted: biases,
    elementwise ops, pooling, softmax, normalisation — BatchNorm in eval mode is an affine
    map that deployment folds into the preceding convolution, so it counts as 0.

    A :class:`PrunableNet` is counted as the deterministic network it converts to
    (:func:`to_deterministic`).
    """
    if isinstance(input_shape, int) or not all(isinstance(s, int) and s > 0 for s in input_shape):
        raise ValueError(f"input_shape must be a sequence of positive ints, got {input_shape!r}")
    if isinstance(module, PrunableNet):
        module = to_deterministic(module, example_input=tuple(input_shape))
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if dtype is None:
        dtype = _net_dtype(module)
    was_training = module.training
    module.eval()
    counter = _MacCounter()
    try:
        with torch.no_grad(), counter:
            module(torch.zeros((1, *input_shape), dtype=dtype, device=_net_device(module)))
    finally:
        module.train(was_training)
    return int(counter.macs)


# ====================================================================== slicing
@dataclasses.dataclass(eq=False)
class _Plan:
    """Everything a conversion needs: removals, kept indices per axis, new shapes."""

    an: _Analysis
    removed: Tensor
    exists: dict[fx.Node, Tensor]
    keep: dict[fx.Node, list[Tensor]]  # kept indices per axis of every tensor node
    new_shape: dict[fx.Node, tuple[int, ...]]
    arg_rewrites: dict[fx.Node, tuple[tuple, dict]]


def _existence_pass(an: _Analysis, removed: Tensor) -> dict[fx.Node, Tensor]:
    """Forward: bool per position, True where the position exists after slicing."""
    ex: dict[fx.Node, Tensor] = {}
    true = torch.ones((), dtype=torch.bool)
    for node, op in an.ops.items():
        if not op.is_tensor or op.kind is OpKind.SHAPE:
            continue
        kind, shape = op.kind, op.shape
        if node.op in ("placeholder", "get_attr") or not op.inputs:
            ex[node] = true.expand(shape)
        elif kind is OpKind.PRODUCER:
            x = ex[op.inputs[0]]
            rows = ~removed[op.offset: op.offset + op.channels]
            if _is_linear(op.module):  # type: ignore[arg-type]
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
            a, b = _binary_operands(op)
            ex[node] = (ex[a] & ex[b]).expand(shape)
        elif kind is OpKind.POOL:
            ex[node] = _pool_any(ex[op.inputs[0]], shape)
        elif kind is OpKind.REDUCE:
            ex[node] = _reduce_any(ex[op.inputs[0]], op.dims, shape)
        elif kind is OpKind.MATMUL:
            a, b = _binary_operands(op)
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


def _round_channels(an: _Analysis, removed: Tensor, multiple: int) -> Tensor:
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


def _plan(an: _Analysis, model: PrunableNet, channel_multiple: int = 1) -> _Plan:
    removed = _removed_ids(an, model)
    if channel_multiple > 1:
        rounded = _round_channels(an, removed, channel_multiple)
        try:
            return _plan_from(an, model, rounded)
        except UnsupportedOpError as err:
            warnings.warn(f"channel_multiple={channel_multiple} ignored: {err}", RuntimeWarning,
                          stacklevel=3)
    return _plan_from(an, model, removed)


def _plan_from(an: _Analysis, model: PrunableNet, removed: Tensor) -> _Plan:
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
    for node, op in an.ops.items():
        if op.kind is not OpKind.INDEX or new_shape[node] == op.shape and all(
                new_shape[n] == an.ops[n].shape for n in op.inputs):
            continue
        rewrites[node] = _rewrite_index_args(an, node, op, new_shape, keep)
        # check that the op maps the kept positions of its inputs to its kept outputs
        pos = {}
        start = 0
        for n, k in zip(op.inputs, op.in_numels):
            full = torch.arange(start, start + k).reshape(an.ops[n].shape)
            pos[n] = _select(full, keep[n])
            start += k
        args, kwargs = rewrites[node]
        try:
            got = _call_with(node, model.net, an, args, kwargs, pos)
        except Exception as err:  # noqa: BLE001
            raise UnsupportedOpError(
                f"cannot slice through {op.name} (node {node.name!r}): {err}") from err
        expected = _select(op.posmap, keep[node])  # type: ignore[arg-type]
        if tuple(got.shape) != tuple(expected.shape) or not torch.equal(got, expected):
            raise UnsupportedOpError(
                f"cannot slice through {op.name} (node {node.name!r}): after removing structures "
                f"it no longer maps its input positions to the same outputs; write sizes that "
                f"change with pruning as -1")
    return _Plan(an=an, removed=removed, exists=ex, keep=keep, new_shape=new_shape, arg_rewrites=rewrites)


def _call_with(node: fx.Node, net: nn.Module, an: _Analysis, args: tuple, kwargs: dict,
               pos: dict[fx.Node, Tensor]) -> Tensor:
    def value(n: fx.Node) -> Any:
        return pos[n] if n in pos else an.values[n]

    a = fx.node.map_arg(args, value)
    k = fx.node.map_arg(kwargs, value)
    target: Any = node.target
    if node.op == "call_function":
        return target(*a, **k)
    if node.op == "call_method":
        return getattr(a[0], str(node.target))(*a[1:], **k)
    m = net.get_submodule(str(node.target))
    if isinstance(m, nn.Unflatten):
        m = nn.Unflatten(m.dim, _new_unflatten_sizes(an, node, m))
    return m(*a, **k)


def _fix_sizes(sizes: Sequence[Any], old: Sequence[int], new: Sequence[int], axes: Sequence[int],
               op: _Op, node: fx.Node) -> list[Any]:
    out = list(sizes)
    for i, axis in zip(range(len(out)), axes):
        s = out[i]
        if old[axis] == new[axis]:
            continue
        if isinstance(s, fx.Node):
            raise UnsupportedOpError(
                f"{op.name} (node {node.name!r}): the size of axis {axis} changes from "
                f"{old[axis]} to {new[axis]} but is computed at run time; use -1 there")
        if isinstance(s, int) and s != -1:
            out[i] = new[axis]
    return out


def _new_unflatten_sizes(an: _Analysis, node: fx.Node, m: nn.Unflatten) -> tuple[int, ...]:
    return tuple(an.ops[node].shape[m.dim % len(an.ops[node].shape): m.dim % len(an.ops[node].shape)
                                    + len(m.unflattened_size)])  # type: ignore[index]


def _rewrite_index_args(an: _Analysis, node: fx.Node, op: _Op,
                        new_shape: dict[fx.Node, tuple[int, ...]],
                        keep: dict[fx.Node, list[Tensor]]) -> tuple[tuple, dict]:
    """Size arguments of reshape/view/expand/unflatten given as constants -> new sizes;
    ``slice``/``select`` positions -> their positions among the kept entries."""
    args: Any = node.args
    kwargs: dict[str, Any] = dict(node.kwargs)
    old, new = op.shape, new_shape[node]
    if node.op == "call_function" and node.target in (_A.slice.Tensor, _A.select.int):
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

        if node.target is _A.select.int:
            return (src, dim, position(args[2] if len(args) > 2 else kwargs["index"])), {}
        rest = list(args[2:]) + [None] * (3 - len(args[2:]))
        start, end, step = rest[:3]
        if step not in (None, 1):
            return args, kwargs  # checked by position below
        return (src, dim, position(start if start is not None else 0),
                position(end) if end is not None else None), {}
    if node.op == "call_function" and node.target in _ATEN_SIZED:
        sizes = args[1] if len(args) > 1 else kwargs["size"]
        fixed_sizes = _fix_sizes(sizes, old, new, range(len(old)), op, node)
        return (args[0], fixed_sizes, *args[2:]), {k: v for k, v in kwargs.items() if k != "size"}
    if node.op == "call_function" and node.target is _A.unflatten.int:
        d = int(args[1]) % len(an.ops[args[0]].shape)
        sizes = args[2]
        return (args[0], args[1], _fix_sizes(sizes, old, new, range(d, d + len(sizes)), op, node)), {}

    def fix(sizes: Sequence[Any], axes: Sequence[int]) -> list[Any]:
        return _fix_sizes(sizes, old, new, axes, op, node)

    name = str(node.target)
    if node.op == "call_method" and name in _SIZED_METHODS:
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
        d = int(dim) % len(old)
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


def _producer_indices(an: _Analysis, plan: _Plan, node: fx.Node, op: _Op
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
    with torch.no_grad():
        for name, p in list(g._parameters.items()):
            if p is not None and p.dim() >= 1 and p.shape[0] == n:
                setattr(g, name, nn.Parameter(_take(p.detach(), 0, idx).clone(),
                                              requires_grad=p.requires_grad))
        for name, b in list(g._buffers.items()):
            if b is not None and b.dim() >= 1 and b.shape[0] == n:
                g._buffers[name] = _take(b, 0, idx).clone()
    g.num_structures = int(idx.numel())


# ---------------------------------------------------------------------- folding
def _gate_scale(g: Any) -> Tensor:
    """What the gate multiplies its structures by in eval mode: ``E[theta] * kept``."""
    fn = getattr(g, "expected_theta", None)
    with torch.no_grad():
        if callable(fn):
            return fn().detach()
        return g.kept.to(torch.get_default_dtype())


def _per_id_scale(an: _Analysis, gate_node: fx.Node, scale: Tensor) -> tuple[Tensor, Tensor]:
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


def _commutes(op: _Op) -> bool:
    """Single-input op that commutes with a positive per-channel scale."""
    if op.kind is OpKind.ELEMENTWISE:
        return op.elem.homogeneous and len(op.inputs) == 1
    if op.kind is OpKind.INDEX:
        return len(op.inputs) == 1
    return op.kind in (OpKind.POOL, OpKind.GATE)


def _fold_backward(an: _Analysis, gate_node: fx.Node, lo: Tensor, ok: Tensor
                   ) -> tuple[str, str, Tensor] | None:
    """(module path, 'rows' | 'bn', per-row scale) when the gate folds into an earlier layer."""
    cur = an.ops[gate_node].inputs[0]
    while True:
        op = an.ops[cur]
        if len(cur.users) != 1:
            return None
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
        if not _commutes(op) or not op.inputs:
            return None
        cur = op.inputs[0]


def _scale_rows(target: str, how: str, ids: Tensor, lo: Tensor, ok: Tensor) -> tuple[str, str, Tensor] | None:
    covered = torch.isfinite(lo[ids])
    if not bool(ok[ids][covered].all()):
        return None
    rows = torch.where(covered, lo[ids], torch.ones_like(lo[ids]))
    return target, how, rows


def _fold_forward(an: _Analysis, gate_node: fx.Node, lo: Tensor, ok: Tensor
                  ) -> list[tuple[str, Tensor]] | None:
    """[(consumer path, per-input-column scale)] when the gate folds into later layers."""
    reached, blocked = _producers_after(an, gate_node, _commutes)
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


def _producers_after(an: _Analysis, node: fx.Node, passes: Callable[[_Op], bool]
                     ) -> tuple[list[fx.Node], bool]:
    """The producer nodes that read ``node`` through ops ``passes`` accepts, and whether some
    path met another op (or the output) first."""
    found: list[fx.Node] = []
    blocked = False
    stack, seen = list(node.users), set()
    while stack:
        user = stack.pop()
        if user in seen:
            continue
        seen.add(user)
        op = an.ops.get(user)
        if op is None:  # the output node
            blocked = True
        elif op.kind is OpKind.PRODUCER:
            found.append(user)
        elif passes(op):
            stack.extend(user.users)
        else:
            blocked = True
    return found, blocked


# ---------------------------------------------------------------------- assembly
def _check_guide(model: PrunableNet, guide: Any) -> None:
    if guide is None or guide == model.guide:
        return
    raise ValueError(
        "guide must be None or model.guide: the converter reads the variational parameters "
        "stored in the model's modules (gate loc/log_scale, Bayesian layers' weight_loc/"
        f"weight_log_scale); got {type(guide).__name__}")


def to_deterministic(model: PrunableNet, guide: Any = None, *, example_input: Any = None,
                     check: bool = True, fold_batchnorm: bool = False,
                     channel_multiple: int = 1, channels_last: bool = False) -> fx.GraphModule:
    """An ordinary, physically smaller ``torch.nn.Module`` computing ``model.predict``.

    Removed structures are sliced out of the weights (producer rows and biases, BatchNorm
    entries, consumer input columns/channels); ``E_q[theta]`` of the kept structures is
    folded into neighbouring weights where exact, else kept as a fixed
    :class:`ChannelScale`; Bayesian layers become their posterior-mean ``nn.Linear`` /
    ``nn.Conv2d``. The result is an ``fx.GraphModule`` in eval mode with no Pyro modules,
    that works with ``torch.jit.script``/``trace``, ``torch.export`` and ``state_dict``
    save/load. See the module docstring for the supported ops.

    Args:
        model: a fitted, pruned :class:`PrunableNet`.
        guide: ``None`` or ``model.guide`` (the variational parameters live in the model).
        example_input: a batch, or the shape of one input; defaults to
            ``model.input_shape``, the MLP's ``in_features``, or a search from the first layer.
        check: compare the result with ``model.predict`` on a random batch and raise if
            they differ (a guard against conversion bugs; cheap for small networks).
        fold_batchnorm: also fold every eval-mode BatchNorm that directly follows a
            convolution into it (``W' = W * gamma / sqrt(var + eps)``, ``b' = (b - mean) *
            gamma / sqrt(var + eps) + beta``), as deployment does. Off by default, so the
            result keeps the BatchNorm layers and :func:`count_params` of it equals
            ``count_params(model)``; with folding the BN parameters disappear and the
            convolutions gain biases.
        channel_multiple: round every sliced layer width up to a multiple of this, keeping
            some removed structures as exact zeros (their gate's ``E[theta] * kept = 0`` is
            folded in, so outputs are unchanged). CPU kernels (oneDNN) run much faster on
            channel counts that are multiples of 8 or 16; the default 1 slices exactly.
            Ignored, with a warning, where rounding would split a block that must go
            together (e.g. part of an attention head).
        channels_last: store the 4-d (convolution) weights in ``torch.channels_last``
            layout; oneDNN then keeps the activations channels-last. Outputs are the same
            for inputs in either layout. Whether it is faster depends on the CPU, the
            widths and the load (``benchmarks/inference_speed.py`` times both layouts).
            For conv nets whose forward uses no ``view`` of an activation (a view of a
            channels-last tensor fails; the check below then raises).

    Raises:
        UnsupportedOpError (a ValueError): an op the converter cannot trace is applied to a
            tensor carrying gated structures; the message names the op.
    """
    _check_guide(model, guide)
    if isinstance(channel_multiple, bool) or not isinstance(channel_multiple, int) or channel_multiple < 1:
        raise ValueError(f"channel_multiple must be a positive int, got {channel_multiple!r}")
    an = _analysis(model, example_input)
    plan = _plan(an, model, channel_multiple)
    net = model.net
    root: dict[str, Any] = {}
    row_scale: dict[str, tuple[str, Tensor]] = {}
    col_scale: dict[str, Tensor] = {}
    scale_modules: dict[fx.Node, ChannelScale] = {}
    for name, gnode in an.gates.items():
        g = net.get_submodule(name)
        s = _gate_scale(g)
        lo, ok = _per_id_scale(an, gnode, s.cpu())
        back = _fold_backward(an, gnode, lo, ok)
        if back is not None:
            target, how, fold = back
            prev = row_scale.get(target)
            row_scale[target] = (how, fold if prev is None else prev[1] * fold)
            continue
        fwd = _fold_forward(an, gnode, lo, ok)
        if fwd is not None:
            for target, cols in fwd:
                col_scale[target] = cols if target not in col_scale else col_scale[target] * cols
            continue
        op = an.ops[gnode]
        d = int(getattr(g, "dim", -1)) % len(op.shape)
        idx = plan.keep[gnode][d]
        scale_modules[gnode] = ChannelScale(s.to(an.dtype).index_select(0, idx.to(s.device)), d, len(op.shape))  # type: ignore[arg-type]

    for node, op in an.ops.items():
        if node.op == "get_attr":
            t = _fetch_attr(net, str(node.target), an.constants)
            if isinstance(t, Tensor) and not bool(plan.exists[node].all()):
                raise UnsupportedOpError(f"cannot slice the tensor attribute {node.target!r}")
            root[str(node.target)] = copy.deepcopy(t) if isinstance(t, (Tensor, nn.Module)) else t
            continue
        if node.op != "call_module":
            continue
        target = str(node.target)
        if target in root:
            continue
        m: Any = op.module
        assert m is not None
        if op.kind is OpKind.GATE:
            if node in scale_modules:
                root[target] = scale_modules[node]
            continue
        if op.kind is OpKind.PRODUCER:
            in_idx, out_idx = _producer_indices(an, plan, node, op)
            rs = row_scale.get(target)
            rows: Tensor | None = rs[1] if rs is not None else None
            try:
                root[target] = slice_layer_(plain_layer(m), in_idx, out_idx, row_scale=rows,
                                            col_scale=col_scale.get(target))
            except ValueError as err:
                raise UnsupportedOpError(f"{op.name}: {err}") from err
        elif op.kind is OpKind.BATCH_NORM:
            keep = plan.keep[op.inputs[0]][1]
            rs = row_scale.get(target)
            try:
                root[target] = slice_layer_(plain_layer(m), None, _idx(keep, op.channels),
                                            row_scale=rs[1] if rs is not None else None)
            except ValueError as err:
                raise UnsupportedOpError(f"{op.name}: {err}") from err
        elif isinstance(m, nn.Unflatten) and node in plan.arg_rewrites:
            root[target] = nn.Unflatten(m.dim, _new_unflatten_sizes(an, node, m))
        else:
            if isinstance(m, (StochasticModule, StructureGate)):
                raise UnsupportedOpError(
                    f"{op.name}: stochastic module {type(m).__name__} has no as_deterministic()")
            for n in [*op.inputs, node]:
                if an.ops[n].is_tensor and plan.new_shape.get(n) != an.ops[n].shape and \
                        any(True for _ in m.parameters()):
                    raise UnsupportedOpError(f"cannot slice the parameters of {op.name}")
            root[target] = copy.deepcopy(m)

    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in an.graph.nodes:
        node_op = an.ops.get(node)
        if node_op is not None and node_op.kind is OpKind.GATE and node not in scale_modules:
            env[node] = env[node.args[0]]  # type: ignore[index]
            continue
        new = graph.node_copy(node, lambda n: env[n])
        if node in plan.arg_rewrites:
            args, kwargs = plan.arg_rewrites[node]
            new.args = fx.node.map_arg(args, lambda n: env[n])
            new.kwargs = fx.node.map_arg(kwargs, lambda n: env[n])
        new.meta = {}
        new.type = None  # annotations of the traced code (scriptability)
        env[node] = new
    graph.lint()
    gm = fx.GraphModule(root, graph, class_name="PrunedNet")
    _strip_gate_hooks(gm)
    gm.eval()
    if fold_batchnorm:
        _fold_batch_norms(gm)
    if channels_last:
        with torch.no_grad():
            for param in gm.parameters():
                if param.dim() == 4:
                    param.data = param.data.contiguous(memory_format=torch.channels_last)
    if check:
        _check_equal(model, gm, an)
    return gm


def _strip_gate_hooks(module: nn.Module) -> None:
    """Remove the forward hooks through which bayesianize applies gates."""
    from pyro_prune.models.bayesianize import gate_hooks

    kinds = gate_hooks()
    for m in module.modules():
        for hooks in (m._forward_hooks, m._forward_pre_hooks):
            for key in [k for k, h in hooks.items() if isinstance(h, kinds)]:
                del hooks[key]


def _fold_batch_norms(gm: fx.GraphModule) -> int:
    """Fold eval-mode BatchNorms that directly follow a (single-use) convolution into it."""
    modules = dict(gm.named_modules())
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    folded = 0
    for node in list(gm.graph.nodes):
        bn: Any = modules.get(str(node.target)) if node.op == "call_module" else None
        if not isinstance(bn, _BATCH_NORMS) or bn.running_mean is None or bn.running_var is None:
            continue
        src = node.args[0]
        conv: Any = modules.get(str(src.target)) if isinstance(src, fx.Node) and src.op == "call_module" else None
        if not isinstance(conv, _CONVS) or len(src.users) != 1 or calls[str(src.target)] != 1:  # type: ignore[union-attr]
            continue
        with torch.no_grad():
            inv = torch.rsqrt(bn.running_var + bn.eps)
            scale = inv * bn.weight if bn.weight is not None else inv
            shift = -bn.running_mean * scale + (bn.bias if bn.bias is not None else 0.0)
            w = conv.weight * scale.reshape((-1,) + (1,) * (conv.weight.dim() - 1))
            b = (conv.bias * scale if conv.bias is not None else 0.0) + shift
            conv.weight = nn.Parameter(w.detach().clone())
            conv.bias = nn.Parameter(b.detach().clone())
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        gm.delete_submodule(str(node.target))
        folded += 1
    gm.graph.lint()
    gm.recompile()
    return folded


def _check_equal(model: PrunableNet, module: Callable[[Tensor], Tensor], an: _Analysis) -> None:
    gen = torch.Generator().manual_seed(0)
    if an.input_dtype.is_floating_point:
        x = torch.randn((2, *an.input_shape), generator=gen, dtype=torch.float64).to(an.input_dtype)
    else:  # token ids: 0 and 1 exist in every vocabulary
        x = torch.randint(0, 2, (2, *an.input_shape), generator=gen).to(an.input_dtype)
    x = x.to(an.device)
    from pyro_prune.graph.trace import modes_restored

    with modes_restored(model):
        model.eval()
        with torch.no_grad():
            want = model.predict(x)
            got = module(x)
    tol = 1e-4 if an.dtype in (torch.float32, torch.float16, torch.bfloat16) else 1e-9
    scale = max(1.0, float(want.abs().max()))
    if got.shape != want.shape or not torch.allclose(got, want, rtol=tol, atol=tol * scale):
        diff = float((got - want).abs().max()) if got.shape == want.shape else float("nan")
        raise RuntimeError(
            f"conversion check failed: the converted network differs from model.predict by "
            f"{diff:.3g} (shapes {tuple(got.shape)} vs {tuple(want.shape)}); please report this")


def shrink(model: PrunableNet, guide: Any = None, *, example_input: Any = None,
           check: bool = True) -> tuple[PrunableNet, Callable]:
    """A smaller copy of a pruned Pyro model that keeps the posterior of what remains.

    The same slicing as :func:`to_deterministic` is applied to a deep copy of ``model``:
    producers' rows and consumers' columns (``weight``/``bias``, or a Bayesian layer's
    ``weight_loc``/``weight_log_scale``/``bias_loc``/``bias_log_scale``), BatchNorm entries
    and the gates' ``loc``/``log_scale``/``kept``. Nothing is folded: the result is still a
    :class:`PrunableNet` with the same class, gates and Bayesian layers, so it can keep
    training with :func:`~pyro_prune.inference.fit` or predict with uncertainty. Its
    ``predict`` (MEAN mode) equals the original's. Structures a gate removed but that stay
    because a tied member keeps them (residual channels) keep ``kept=False``.

    Returns:
        ``(shrunk_model, shrunk_model.guide)``.
    """
    _check_guide(model, guide)
    an = _analysis(model, example_input)
    plan = _plan(an, model)
    new = copy.deepcopy(model)
    net = new.net
    done: set[str] = set()
    for node, op in an.ops.items():
        if node.op == "get_attr" and not bool(plan.exists[node].all()):
            raise UnsupportedOpError(f"cannot slice the tensor attribute {node.target!r}")
        if node.op != "call_module":
            continue
        target = str(node.target)
        if target in done:
            continue
        done.add(target)
        m: Any = net.get_submodule(target)
        if op.kind is OpKind.GATE:
            d = m.dim % len(op.shape)  # type: ignore[arg-type]
            _slice_gate_inplace(m, _idx(plan.keep[node][d], m.num_structures))
        elif op.kind is OpKind.PRODUCER:
            in_idx, out_idx = _producer_indices(an, plan, node, op)
            slice_layer_(m, in_idx, out_idx)
        elif op.kind is OpKind.BATCH_NORM:
            slice_layer_(m, None, _idx(plan.keep[op.inputs[0]][1], op.channels))
        elif isinstance(m, nn.Unflatten) and node in plan.arg_rewrites:
            m.unflattened_size = _new_unflatten_sizes(an, node, m)
        else:
            for n in [*op.inputs, node]:
                if an.ops[n].is_tensor and plan.new_shape.get(n) != an.ops[n].shape and \
                        any(True for _ in m.parameters()):
                    raise UnsupportedOpError(f"cannot slice the parameters of {op.name}")
    if any(n.op != "call_module" for n in plan.arg_rewrites):
        # constant sizes in the backbone's code changed: run it as the rewritten graph
        graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        for node in an.graph.nodes:
            nn_ = graph.node_copy(node, lambda n: env[n])
            if node in plan.arg_rewrites:
                args, kwargs = plan.arg_rewrites[node]
                nn_.args = fx.node.map_arg(args, lambda n: env[n])
                nn_.kwargs = fx.node.map_arg(kwargs, lambda n: env[n])
            nn_.meta = {}
            nn_.type = None
            env[node] = nn_
        new.net = fx.GraphModule(net, graph, class_name=type(net).__name__ + "Shrunk")
        if an.tracer == "export":
            _strip_gate_hooks(new.net)  # the gates are nodes of the graph now
        new.name_sites()
    if check:
        from pyro_prune.graph.trace import modes_restored

        def predict(x: Tensor) -> Tensor:
            with modes_restored(new):
                new.eval()
                return new.predict(x)

        _check_equal(model, predict, an)
    return new, new.guide
