"""Op kinds: how each op of a traced network moves structures (channels).

Supported ops (anything else applied to a tensor that carries gated structures raises a
``ValueError`` naming the op; on ungated tensors it is allowed and pins what it touches):

* producers / consumers: ``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d`` (``groups=1`` or
  depthwise), ``nn.ConvTranspose1d/2d/3d`` (``groups=1``), Bayesian layers with
  ``as_deterministic()`` (``BayesianLinear``,
  ``BayesianConv2d``);
* per-channel: ``nn.BatchNorm1d/2d`` and ``F.batch_norm`` (eval statistics; the functional
  form's weight, bias and statistics are sliced with the channels), structure gates;
* elementwise: ReLU, LeakyReLU, GELU, SiLU, Tanh, ELU, Hardswish, ReLU6, Hardtanh, Mish,
  Sigmoid, Softplus (modules, ``torch.*`` / ``F.*`` functions, tensor methods), ``clamp`` /
  ``clip`` with numbers as bounds, dropout,
  ``nn.Identity``, ``abs``/``neg``, arithmetic with a Python number, dtype casts;
* binary: ``+``, ``-``, ``*``, ``/`` of two tensors (with broadcasting; ties channels);
* index ops: ``reshape``, ``view``, ``flatten``/``nn.Flatten``, ``unflatten``/``nn.Unflatten``,
  ``permute``, ``transpose``, ``t``, ``movedim``, ``swapaxes``, ``contiguous``, ``unsqueeze``,
  ``squeeze``, ``expand``, ``expand_as``, ``view_as``, ``reshape_as``, ``repeat``, ``clone``,
  ``roll``, ``flip``, indexing ``x[...]`` (also by index tensors), ``index_select``,
  ``torch.cat``/``stack`` (along axes that carry no removed structure);
* padding: ``F.pad`` and the padding modules (``nn.ZeroPad2d``, ``nn.ConstantPad*d``,
  ``nn.ReflectionPad*d``, ``nn.ReplicationPad*d``, ``nn.CircularPad*d``) along axes that carry
  no removed structure; a constant border must be 0 (a non-zero one belongs to no channel);
* pooling and resizing: max/avg pooling and adaptive pooling (1d and 2d), ``F.interpolate``
  / ``nn.Upsample``, per channel;
* ``mean``/``sum``/``amax``/``amin`` over axes, ``softmax``/``log_softmax``, ``nn.LayerNorm``
  / ``F.layer_norm`` (over channels: pinned), ``matmul``/``@``/``bmm`` (attention),
  ``einsum`` and ``baddbmm`` (written out by :mod:`pyro_prune.graph.trace` as sums, permutes
  and ``matmul``);
* shape queries (``x.shape``, ``x.size()``, ``x.dim()``) and Python arithmetic on them.
"""

from __future__ import annotations

import dataclasses
import enum
import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from pyro_prune.graph.layers import LayerRole, layer_slicer, registered_layers
from pyro_prune.models.gate import StructureGate
from pyro_prune.models.noise import StochasticModule


class UnsupportedOpError(ValueError):
    """An op the converter cannot trace pruned structures through."""



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
    torch.special.expit: _GENERAL, F.hardsigmoid: _GENERAL, F.logsigmoid: _GENERAL,
    torch.exp: _GENERAL, torch.cos: _GENERAL, torch.erfc: _GENERAL,
    torch.sin: _ZERO_PRESERVING, torch.erf: _ZERO_PRESERVING, torch.expm1: _ZERO_PRESERVING,
    torch.log1p: _ZERO_PRESERVING, torch.square: _ZERO_PRESERVING, torch.atan: _ZERO_PRESERVING,
    # in place: fx keeps using the input's node after an in-place op whose result is not
    # assigned, so only ops for which that node's channels and zeros are the result's
    torch.relu_: _HOMOGENEOUS, F.relu_: _HOMOGENEOUS,
}
_ELEMENTWISE_METHODS: dict[str, _Elem] = {
    "relu": _HOMOGENEOUS, "abs": _HOMOGENEOUS, "neg": _HOMOGENEOUS,
    "float": _HOMOGENEOUS, "double": _HOMOGENEOUS, "to": _HOMOGENEOUS, "type_as": _HOMOGENEOUS,
    "tanh": _ZERO_PRESERVING, "sigmoid": _GENERAL, "relu_": _HOMOGENEOUS,
    "exp": _GENERAL, "cos": _GENERAL, "sin": _ZERO_PRESERVING, "erf": _ZERO_PRESERVING,
    "expm1": _ZERO_PRESERVING, "log1p": _ZERO_PRESERVING, "square": _ZERO_PRESERVING,
}
#: clamping to bounds given as numbers: an elementwise op whose kind depends on the bounds
_CLAMP_FUNCTIONS = {torch.clamp, torch.clip, torch.clamp_min, torch.clamp_max}
_CLAMP_METHODS = {"clamp", "clip", "clamp_min", "clamp_max", "clamp_", "clip_", "clamp_min_"}
# tensor (op) number, or number (op) tensor
_SCALAR_FUNCTIONS: dict[Any, str] = {
    operator.add: "add", torch.add: "add", operator.sub: "sub", torch.sub: "sub",
    operator.mul: "mul", torch.mul: "mul", operator.truediv: "div", torch.div: "div",
}
_SCALAR_METHODS: dict[str, str] = {"add": "add", "sub": "sub", "mul": "mul", "div": "div"}
_INDEX_MODULES = (nn.Flatten, nn.Unflatten)
#: padding modules by their mode (``.padding``, and ``.value`` for a constant border)
_PAD_MODULES: tuple[tuple[type, str], ...] = (
    (nn.modules.padding._ConstantPadNd, "constant"), (nn.modules.padding._ReflectionPadNd, "reflect"),
    (nn.modules.padding._ReplicationPadNd, "replicate"), (nn.modules.padding._CircularPadNd, "circular"),
)
_INDEX_FUNCTIONS = {
    torch.reshape, torch.flatten, torch.permute, torch.transpose, torch.swapaxes, torch.t,
    torch.unsqueeze, torch.squeeze, torch.cat, torch.concat, torch.stack, torch.movedim,
    torch.clone, operator.getitem, torch.index_select, torch.roll, torch.flip,
}
_INDEX_METHODS = {
    "view", "reshape", "flatten", "unflatten", "permute", "transpose", "swapaxes", "t",
    "movedim", "contiguous", "unsqueeze", "squeeze", "expand", "repeat", "clone",
    "expand_as", "view_as", "reshape_as", "index_select", "roll", "flip",
}
#: tensor methods whose size arguments a conversion rewrites after slicing (see ``SIZED_ATEN_OPS``)
SIZED_METHODS = {"view", "reshape", "expand"}
_POOL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
    nn.Upsample,  # resizing is per channel too (a linear map of each channel's map, 0 to 0)
)
_POOL_FUNCTIONS = {
    F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d, F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.interpolate, F.upsample,
}
_REDUCE_FUNCTIONS = {torch.mean: "mean", torch.sum: "sum", torch.amax: "amax", torch.amin: "amin"}
_REDUCE_METHODS = {"mean", "sum", "amax", "amin"}
_SOFTMAX_FUNCTIONS = {F.softmax, torch.softmax, F.log_softmax, torch.log_softmax}
_SOFTMAX_METHODS = {"softmax", "log_softmax"}
_MATMUL_FUNCTIONS = {torch.matmul, operator.matmul, torch.bmm}
_MATMUL_METHODS = {"matmul", "bmm", "__matmul__"}
_SHAPE_METHODS = {"size", "dim", "numel"}


def supported_ops() -> dict[str, list[str]]:
    """The modules, functions and tensor methods the converter can trace, by kind."""

    def fname(f: Any) -> str:
        mod = getattr(f, "__module__", None) or ""
        return f"{mod}.{getattr(f, '__name__', repr(f))}".lstrip(".")

    return {
        "modules": sorted(
            {t.__name__ for t in (*_ELEMENTWISE_MODULES, *_INDEX_MODULES, *_POOL_MODULES,
                                  *registered_layers(), nn.LayerNorm, nn.Softmax, nn.LogSoftmax)}
            | {t.__name__ for t in vars(nn.modules.padding).values() if isinstance(t, type)
               and issubclass(t, tuple(c for c, _ in _PAD_MODULES)) and not t.__name__.startswith("_")}
            | {"StructureGate", "their subclasses"}),
        "functions": sorted({fname(f) for f in (
            *_ELEMENTWISE_FUNCTIONS, *_CLAMP_FUNCTIONS, *_SCALAR_FUNCTIONS, *_INDEX_FUNCTIONS, *_POOL_FUNCTIONS,
            *_REDUCE_FUNCTIONS, *_SOFTMAX_FUNCTIONS, *_MATMUL_FUNCTIONS, F.layer_norm, F.batch_norm,
            F.pad, torch.einsum, torch.baddbmm, F.scaled_dot_product_attention)}),  # the last three written out
        "methods": sorted(set(_ELEMENTWISE_METHODS) | _CLAMP_METHODS | set(_SCALAR_METHODS) | _INDEX_METHODS
                          | _REDUCE_METHODS | _SOFTMAX_METHODS | _MATMUL_METHODS
                          | _SHAPE_METHODS),
    }


def _is_producer(m: Any) -> bool:
    slicer = layer_slicer(m)
    return slicer is not None and slicer.role is LayerRole.PRODUCER


def is_linear(m: Any) -> bool:
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
class Op:
    """One node of an analysed graph: its :class:`OpKind` (``None``: unsupported) and what
    the passes over the graph need of it (fields by kind, see the comments)."""

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
    pad: tuple[tuple[int, ...], str] | None = None  # INDEX, a padding: its widths and mode
    # INDEX by tensors (``x[:, idx]``, ``index_select``): the index tensors' values, which the
    # op reads as they are (only ``inputs[0]`` carries positions)
    index_values: dict[fx.Node, Tensor] | None = None
    in_numels: tuple[int, ...] = ()
    offset: int = -1  # PRODUCER: first channel id of its output rows
    channels: int = 0  # PRODUCER: number of output rows; BN / POOL: channels
    cols: Tensor | None = None  # PRODUCER / BN: channel tag of each input column (or -1)
    depthwise: bool = False
    gate_view: tuple[int, ...] = ()  # GATE: shape to broadcast kept over the input
    contract_a: Tensor | None = None  # MATMUL: channel tags of a along the contracted axis
    contract_b: Tensor | None = None



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


def _classify(node: fx.Node, net: nn.Module, args: tuple, kwargs: dict, value: Any) -> Op:
    name = _op_name(node)
    tensor_inputs = tuple(n for n in node.all_input_nodes if n.meta.get("_pp_tensor", False))
    op = Op(node=node, kind=None, name=name, inputs=tensor_inputs)
    if isinstance(value, Tensor):
        op.is_tensor, op.shape = True, tuple(value.shape)
    is_tensor_out = isinstance(value, Tensor)
    if node.op == "call_module":
        m = net.get_submodule(str(node.target))
        op.module = m
        if isinstance(m, StructureGate):
            op.kind = OpKind.GATE
        elif isinstance(m, nn.modules.conv._ConvTransposeNd) and m.groups != 1:
            pass  # a grouped transposed convolution: its [in, out / groups] weight is not sliced
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
        elif isinstance(m, tuple(c for c, _ in _PAD_MODULES)) and is_tensor_out:
            mode = next(mode for c, mode in _PAD_MODULES if isinstance(m, c))
            _classify_pad(op, args[0], m.padding, mode, getattr(m, "value", 0.0))
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
        elif t is F.pad and is_tensor_out:
            _classify_pad(op, args[0], _arg(node, args, kwargs, 1, "pad", ()),
                          _arg(node, args, kwargs, 2, "mode", "constant"), _arg(node, args, kwargs, 3, "value", None))
        elif t in _CLAMP_FUNCTIONS and is_tensor_out:
            _classify_clamp(op, str(getattr(t, "__name__", "")), args, kwargs)
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
        elif t is F.batch_norm and is_tensor_out:
            if not _arg(node, args, kwargs, 5, "training", False):
                op.kind = OpKind.BATCH_NORM  # eval statistics: a per-channel affine map
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
        elif t in _CLAMP_METHODS and is_tensor_out:
            _classify_clamp(op, t, args, kwargs)
            if t.endswith("_") and not op.elem.zero_preserving:  # fx reads the input's node after
                op.kind = None  # it: its zeros would be taken for the result's
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
# their in-place forms (``nn.ReLU(inplace=True)``, ``out += identity``): torch.export's graph
# chains every later use of a tensor to the op that last wrote it, so they read as the others
_ATEN_ELEMENTWISE.update({getattr(_A, f"{p.__name__}_"): e for p, e in list(_ATEN_ELEMENTWISE.items())
                          if hasattr(_A, f"{p.__name__}_") and p is not _A.detach})
_ATEN_ARITH.update({getattr(_A, f"{p.__name__}_"): k for p, k in list(_ATEN_ARITH.items()) if k != "rsub"})
_ATEN_CLAMP = {getattr(_A, n) for n in ("clamp", "clip", "clamp_min", "clamp_max", "clamp_", "clip_",
                                         "clamp_min_", "clamp_max_") if hasattr(_A, n)}
_ATEN_INDEX = {
    _A.view, _A.reshape, _A._unsafe_view, _A.permute, _A.transpose, _A.t, _A.unsqueeze,
    _A.squeeze, _A.expand, _A.flatten, _A.unflatten, _A.slice, _A.select, _A.cat, _A.concat,
    _A.stack, _A.movedim, _A.repeat, _A.narrow, _A.swapaxes, _A.expand_as, _A.view_as,
    _A.repeat_interleave, _A.reshape_as, _A.index, _A.index_select, _A.roll, _A.flip,
}
#: ATen index ops whose size arguments a conversion rewrites after slicing
SIZED_ATEN_OPS = {_A.view.default, _A.reshape.default, _A._unsafe_view.default, _A.expand.default}
_ATEN_POOL = {_A.max_pool1d, _A.max_pool2d, _A.avg_pool1d, _A.avg_pool2d, _A.adaptive_avg_pool1d,
              _A.adaptive_avg_pool2d, _A._adaptive_avg_pool2d, _A.adaptive_max_pool1d, _A.adaptive_max_pool2d,
              *(getattr(_A, name) for name in (
                  "upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d", "upsample_linear1d",
                  "upsample_bilinear2d", "upsample_bicubic2d", "upsample_trilinear3d",
                  "_upsample_nearest_exact1d", "_upsample_nearest_exact2d", "_upsample_nearest_exact3d",
                  "_upsample_bilinear2d_aa", "_upsample_bicubic2d_aa") if hasattr(_A, name))}
_ATEN_REDUCE = {_A.mean: "mean", _A.sum: "sum", _A.amax: "amax", _A.amin: "amin"}
_ATEN_SOFTMAX = {_A.softmax, _A._softmax, _A.log_softmax, _A._log_softmax}
_ATEN_MATMUL = {_A.matmul, _A.bmm, _A.mm}


def _classify_aten(op: Op, target: Any, args: tuple, kwargs: dict, is_tensor_out: bool,
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
    if packet in _ATEN_CLAMP:
        _classify_clamp(op, packet.__name__, args, kwargs)
    elif packet in _ATEN_ELEMENTWISE:
        op.kind, op.elem = OpKind.ELEMENTWISE, _ATEN_ELEMENTWISE[packet]
        if packet in (_A.dropout, _A.feature_dropout, _A.dropout_, _A.feature_dropout_) and bool(
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
    elif packet is _A.pad:
        _classify_pad(op, args[0], args[1], args[2] if len(args) > 2 else kwargs.get("mode", "constant"),
                      args[3] if len(args) > 3 else kwargs.get("value"))
    elif packet is _A.constant_pad_nd:
        _classify_pad(op, args[0], args[1], "constant", args[2] if len(args) > 2 else kwargs.get("value", 0))
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
    elif packet is _A.batch_norm:
        if not (args[5] if len(args) > 5 else kwargs.get("training", False)):
            op.kind = OpKind.BATCH_NORM
    elif packet is _A.layer_norm:
        op.kind = OpKind.LAYER_NORM
        k = len(tuple(args[1]))
        op.dims = tuple(range(len(op.shape) - k, len(op.shape)))
    elif packet is _A.group_norm:
        op.kind = OpKind.LAYER_NORM  # normalises over groups of channels: pins them
        op.dims = tuple(range(1, len(op.shape)))
    elif packet in _ATEN_MATMUL and args[0].dim() >= 2 and args[1].dim() >= 2:
        op.kind = OpKind.MATMUL


def _classify_pad(op: Op, x: Any, widths: Any, mode: Any, value: Any) -> None:
    """A padding is an index op (each output reads one input position, or is a border) when
    its border is a copy of the input (reflect, replicate, circular) or the constant 0: a zero
    border is zero wherever its channel is, so it goes with the channel. Anything else
    (a non-zero constant, a negative width that crops, a layout the modes do not take) stays
    unsupported."""
    try:
        pad = tuple(int(w) for w in widths), str(mode)
        if not isinstance(x, Tensor) or min(pad[0], default=0) < 0 or (
                pad[1] == "constant" and value not in (None, 0, 0.0)):
            return
        pad_positions(torch.zeros(x.shape, dtype=torch.long), pad)  # a layout the map takes
    except (TypeError, ValueError, RuntimeError, NotImplementedError):
        return
    op.kind, op.pad = OpKind.INDEX, pad


def indexes_by_tensor(node: fx.Node) -> bool:
    """An index op whose tensor arguments after the first are indices (``x[:, idx]``,
    ``index_select``, ATen's ``index``), not tensors whose positions it moves."""
    if node.op == "call_method":
        return str(node.target) == "index_select"
    return node.op == "call_function" and (node.target in (operator.getitem, torch.index_select) or getattr(
        node.target, "overloadpacket", None) in (_A.index, _A.index_select))


def indexed_axes(node: fx.Node, x: Tensor, args: tuple, kwargs: dict) -> tuple[int, ...] | None:
    """The axes of ``x`` an index op of :func:`indexes_by_tensor` reads through index tensors
    (``None``: not known, e.g. a boolean mask). The converter keeps those axes whole: an
    index tensor refers to the positions before slicing."""
    packet = getattr(node.target, "overloadpacket", None)
    if packet is _A.index:
        return tuple(d for d, t in enumerate(args[1]) if t is not None)
    if packet is _A.index_select or node.target is torch.index_select or node.op == "call_method":
        return (int(_arg(node, args, kwargs, 1, "dim", 0)) % x.dim(),)
    index = args[1] if isinstance(args[1], tuple) else (args[1],)
    if any(isinstance(i, Tensor) and i.dtype == torch.bool for i in index):
        return None
    consumed = sum(1 for i in index if i is not None and i is not Ellipsis)
    axes, d = [], 0
    for i in index:
        if i is Ellipsis:
            d += x.dim() - consumed
        elif i is not None:
            if isinstance(i, Tensor):
                axes.append(d)
            d += 1
    return tuple(axes)


def pad_positions(positions: Tensor, pad: tuple[tuple[int, ...], str]) -> Tensor:
    """The input position each output of a padding reads (:attr:`Op.pad`): the padding
    applied to the positions, a zero border taking the position next to it (the same channel)."""
    widths, mode = pad
    return F.pad(positions.double(), widths, mode="replicate" if mode == "constant" else mode).long()


def _classify_clamp(op: Op, name: str, args: tuple, kwargs: dict) -> None:
    """``clamp(x, min, max)`` and its forms with numbers as bounds: elementwise, zero-preserving
    when the bounds hold 0, homogeneous when it is ``clamp(min=0)`` (a ReLU). Bounds given as
    tensors stay unsupported."""
    name = name.rstrip("_")
    if name == "clamp_min":
        low, high = (args[1] if len(args) > 1 else kwargs.get("min")), None
    elif name == "clamp_max":
        low, high = None, (args[1] if len(args) > 1 else kwargs.get("max"))
    else:
        low = args[1] if len(args) > 1 else kwargs.get("min")
        high = args[2] if len(args) > 2 else kwargs.get("max")
    if not all(b is None or isinstance(b, (int, float)) for b in (low, high)):
        return
    holds_zero = (low is None or low <= 0) and (high is None or high >= 0)
    op.kind = OpKind.ELEMENTWISE
    op.elem = _HOMOGENEOUS if low == 0 and high is None else _ZERO_PRESERVING if holds_zero else _GENERAL


def _is_scalar(v: Any) -> bool:
    return isinstance(v, (int, float, bool)) or (isinstance(v, Tensor) and v.dim() == 0)


def _classify_arith(op: Op, kind: str, a: Any, b: Any) -> None:
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



def commutes_with_scale(op: Op) -> bool:
    """Single-input op that commutes with a positive per-channel scale."""
    if op.kind is OpKind.ELEMENTWISE:
        return op.elem.homogeneous and len(op.inputs) == 1
    if op.kind is OpKind.INDEX:
        return len(op.inputs) == 1
    return op.kind in (OpKind.POOL, OpKind.GATE)

