"""The layer registry: one slicer per layer type, and :func:`register_layer` for new ones.

Everything in the package that needs to know what a layer *is* asks this registry: the
structure graph (which modules make structures), :func:`~pyro_prune.models.bayesianize`
(which layers get gates), the converter (how to slice rows and columns) and the counters.
A layer is recognised by ``isinstance`` through its class hierarchy, so subclasses of
``nn.Linear`` / ``nn.Conv2d`` / ``nn.BatchNorm2d`` and Pyro wrappers such as
``PyroModule[nn.Linear]`` are found without registering them again.

A slicer says, for one layer type,

* its role: a :attr:`LayerRole.PRODUCER` makes new structures (rows of its weight) from the
  channels of its input (columns); a :attr:`LayerRole.PER_CHANNEL` layer (BatchNorm) scales
  the channels it is given, one entry per channel;
* ``out_axis`` / ``in_axis``: the axis of its output (input) activation holding those
  structures (``-1`` for features, ``1`` for the channels of ``N x C x ...``);
* ``tensors``: for every parameter or buffer, which of its dims runs over the output
  structures and which over the input channels (``None``: neither);
* ``scaled``: the tensors a folded per-structure scale multiplies (``weight`` and ``bias``);
* ``counted``: the tensors that count as parameters of the converted network;
* ``out_size`` / ``in_size`` / ``groups``: the attributes that hold the sizes;
* ``plain``: how to turn the layer into the deterministic layer the converted network
  holds (``as_deterministic()`` of a Bayesian layer; a fresh ``nn.Linear`` for a Pyro
  wrapper); by default a deep copy.

Slicing is then one generic operation (:func:`pyro_prune.convert.layers.slice_layer_`) for
every registered type.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["LayerRole", "LayerSlicer", "layer_slicer", "register_layer", "registered_layers"]


class LayerRole(enum.Enum):
    """What a registered layer does to structures."""

    PRODUCER = "producer"  # new structures on its output from the channels of its input
    PER_CHANNEL = "per_channel"  # one entry per channel it is given (BatchNorm)


@dataclasses.dataclass(frozen=True)
class LayerSlicer:
    """How to slice one layer type (see the module docstring)."""

    role: LayerRole
    out_axis: int
    in_axis: int
    tensors: Mapping[str, tuple[int | None, int | None]]
    out_size: str
    in_size: str | None = None
    scaled: tuple[str, ...] = ("weight", "bias")
    counted: tuple[str, ...] = ("weight", "bias")
    groups: str | None = None
    plain: Callable[[nn.Module], nn.Module] | None = None

    def num_out(self, m: nn.Module) -> int:
        return int(getattr(m, self.out_size))

    def num_in(self, m: nn.Module) -> int:
        if self.in_size is None:
            return self.num_out(m)
        return int(getattr(m, self.in_size))

    def num_groups(self, m: nn.Module) -> int:
        return int(getattr(m, self.groups)) if self.groups is not None else 1

    def is_depthwise(self, m: nn.Module) -> bool:
        g = self.num_groups(m)
        return g > 1 and g == self.num_in(m) == self.num_out(m)


_REGISTRY: dict[type, LayerSlicer] = {}


def register_layer(layer_type: type, *, out_axis: int, in_axis: int | None = None,
                   tensors: Mapping[str, tuple[int | None, int | None]] | None = None,
                   out_size: str, in_size: str | None = None,
                   role: LayerRole | str = LayerRole.PRODUCER,
                   scaled: tuple[str, ...] = ("weight", "bias"),
                   counted: tuple[str, ...] | None = None, groups: str | None = None,
                   plain: Callable[[nn.Module], nn.Module] | None = None) -> LayerSlicer:
    """Teach the package a layer type (and its subclasses).

    Args:
        layer_type: an ``nn.Module`` subclass.
        out_axis: the axis of the layer's output holding its structures (``-1`` for
            features, ``1`` for channels).
        in_axis: the axis of its input holding the channels it reads (default ``out_axis``).
        tensors: parameter/buffer name -> ``(out dim, in dim)`` of that tensor (``None``
            where the tensor has no such dim). Default: ``weight`` ``(0, 1)`` and
            ``bias`` ``(0, None)``.
        out_size, in_size: attribute names of the output/input sizes (updated by slicing).
        role: ``"producer"`` (new structures) or ``"per_channel"`` (BatchNorm-like).
        scaled: tensors a folded per-structure scale multiplies.
        counted: tensors counted as parameters of the converted network (default: every
            name in ``tensors`` that is an ``nn.Parameter`` of the layer).
        groups: attribute name of the group count (grouped convolutions), if any.
        plain: turns the layer into the deterministic module the converted network holds
            (default: a deep copy).

    Returns:
        the registered :class:`LayerSlicer`.

    Example::

        class Scaled(nn.Linear): ...          # a subclass needs nothing: it is an nn.Linear
        class MyDense(nn.Module):             # weight [out, in], bias [out]
            ...
        register_layer(MyDense, out_axis=-1, out_size="n_out", in_size="n_in")
    """
    if not (isinstance(layer_type, type) and issubclass(layer_type, nn.Module)):
        raise TypeError(f"layer_type must be an nn.Module subclass, got {layer_type!r}")
    role = LayerRole(role)
    for name, value in (("out_axis", out_axis), ("in_axis", in_axis)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise TypeError(f"{name} must be an int, got {value!r}")
    if tensors is None:
        tensors = {"weight": (0, 1), "bias": (0, None)} if role is LayerRole.PRODUCER \
            else {"weight": (0, None), "bias": (0, None)}
    tensors = dict(tensors)
    for name, dims in tensors.items():
        if not (isinstance(dims, tuple) and len(dims) == 2
                and all(d is None or (isinstance(d, int) and not isinstance(d, bool)) for d in dims)):
            raise ValueError(f"tensors[{name!r}] must be a pair (out dim or None, in dim or None), got {dims!r}")
    if not isinstance(out_size, str):
        raise TypeError(f"out_size must be an attribute name, got {out_size!r}")
    slicer = LayerSlicer(role=role, out_axis=int(out_axis),
                         in_axis=int(out_axis if in_axis is None else in_axis),
                         tensors=tensors, out_size=out_size, in_size=in_size, scaled=tuple(scaled),
                         counted=tuple(tensors) if counted is None else tuple(counted),
                         groups=groups, plain=plain)
    _REGISTRY[layer_type] = slicer
    return slicer


def registered_layers() -> dict[type, LayerSlicer]:
    """The registered layer types and their slicers (a copy)."""
    return dict(_REGISTRY)


#: layers of other libraries, registered the first time one is seen (no import needed):
#: Hugging Face's ``Conv1D`` (GPT-2) is a Linear layer with its weight stored ``[in, out]``
_KNOWN_ELSEWHERE: dict[str, dict[str, Any]] = {
    "transformers.pytorch_utils.Conv1D": dict(
        out_axis=-1, tensors={"weight": (1, 0), "bias": (0, None)}, out_size="nf", in_size="nx"),
}


def layer_slicer(module: Any) -> LayerSlicer | None:
    """The slicer of ``module``'s type or of its nearest registered base class."""
    if not isinstance(module, nn.Module):
        return None
    for cls in type(module).__mro__:
        slicer = _REGISTRY.get(cls)
        if slicer is not None:
            return slicer
        spec = _KNOWN_ELSEWHERE.get(f"{cls.__module__}.{cls.__qualname__}")
        if spec is not None:
            return register_layer(cls, **spec)
    return None


# ---------------------------------------------------------------------- built-in layers
def _fresh_linear(m: nn.Module) -> nn.Module:
    w: Tensor = m.weight  # type: ignore[assignment]
    b: Tensor | None = m.bias  # type: ignore[assignment]
    new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
    return new


def _fresh_conv(m: Any) -> nn.Module:
    w: Tensor = m.weight
    cls = {3: nn.Conv1d, 4: nn.Conv2d, 5: nn.Conv3d}[w.dim()]
    new = cls(m.in_channels, m.out_channels, m.kernel_size, stride=m.stride, padding=m.padding,
              dilation=m.dilation, groups=m.groups, bias=m.bias is not None,
              padding_mode=m.padding_mode, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if m.bias is not None:
            new.bias.copy_(m.bias)  # type: ignore[union-attr]
    return new


def _fresh_batch_norm(m: Any) -> nn.Module:
    from pyro.nn import PyroModule

    if not isinstance(m, PyroModule):
        return copy.deepcopy(m)
    cls = next(c for c in type(m).__mro__ if c in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d))
    new = cls(m.num_features, eps=m.eps, momentum=m.momentum, affine=m.affine,
              track_running_stats=m.track_running_stats)
    ref: Tensor = [*m.parameters(), *m.buffers()][0]
    new = new.to(device=ref.device, dtype=ref.dtype)
    new.load_state_dict(m.state_dict())
    new.train(m.training)
    return new


def _as_deterministic(m: Any) -> nn.Module:
    return m.as_deterministic()


_LINEAR_TENSORS = {"weight": (0, 1), "bias": (0, None)}
_BN_TENSORS = {"weight": (0, None), "bias": (0, None), "running_mean": (0, None), "running_var": (0, None)}
_BAYES_TENSORS = {"weight_loc": (0, 1), "weight_log_scale": (0, 1), "bias_loc": (0, None),
                  "bias_log_scale": (0, None)}

register_layer(nn.Linear, out_axis=-1, tensors=_LINEAR_TENSORS, out_size="out_features",
               in_size="in_features", plain=_fresh_linear)
for _conv in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
    register_layer(_conv, out_axis=1, tensors=_LINEAR_TENSORS, out_size="out_channels",
                   in_size="in_channels", groups="groups", plain=_fresh_conv)
# a transposed convolution stores its weight [in, out / groups, *kernel]; a grouped one is
# left unsupported by the analysis (graph/ops.py), its groups would have to go together
for _conv_t in (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d):
    register_layer(_conv_t, out_axis=1, tensors={"weight": (1, 0), "bias": (0, None)},
                   out_size="out_channels", in_size="in_channels")
for _bn in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
    register_layer(_bn, out_axis=1, role=LayerRole.PER_CHANNEL, tensors=_BN_TENSORS,
                   out_size="num_features", counted=("weight", "bias"), plain=_fresh_batch_norm)


def _register_bayesian() -> None:
    from pyro_prune.models.bayesian import BayesianConv, BayesianLinear

    register_layer(BayesianLinear, out_axis=-1, tensors=_BAYES_TENSORS, out_size="out_features",
                   in_size="in_features", scaled=("weight_loc", "bias_loc"),
                   counted=("weight_loc", "bias_loc"), plain=_as_deterministic)
    register_layer(BayesianConv, out_axis=1, tensors=_BAYES_TENSORS, out_size="out_channels",
                   in_size="in_channels", groups="groups", scaled=("weight_loc", "bias_loc"),
                   counted=("weight_loc", "bias_loc"), plain=_as_deterministic)


_register_bayesian()
