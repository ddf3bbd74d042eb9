"""The names ArviZ shows: one dimension per gate named after its layer and the kind of its
structures (``fc1_neuron``, ``conv2_channel``, ``attn_head``), a variable per latent site, and
the observation."""

from __future__ import annotations

import enum
import re

from torch import Tensor, nn

from pyro_prune.models.base import PrunableNet
from pyro_prune.models.gate import StructureGate
from pyro_prune.models.noise import MultiplicativeNoise

__all__ = ["OBS", "OBS_DIM", "STRUCTURE_KINDS", "StructureKind", "dim_name", "safe_name", "site_layout",
           "structure_dims", "structure_kind", "var_base"]

#: the observed site and its variable in the data groups
OBS = "obs"
#: the dimension of the observations
OBS_DIM = "obs_id"


class StructureKind(enum.Enum):
    """What one index along a gate's axis selects (the suffix of the dimension name)."""

    NEURON = "neuron"
    CHANNEL = "channel"
    HEAD = "head"
    STRUCTURE = "structure"


#: layer type -> kind of its output structures; subclasses match too (checked in order)
STRUCTURE_KINDS: dict[type[nn.Module], StructureKind] = {
    nn.Linear: StructureKind.NEURON,
    nn.Conv1d: StructureKind.CHANNEL,
    nn.Conv2d: StructureKind.CHANNEL,
    nn.Conv3d: StructureKind.CHANNEL,
    nn.BatchNorm1d: StructureKind.CHANNEL,
    nn.BatchNorm2d: StructureKind.CHANNEL,
    nn.BatchNorm3d: StructureKind.CHANNEL,
    nn.GroupNorm: StructureKind.CHANNEL,
    nn.MultiheadAttention: StructureKind.HEAD,
}

#: duck-typed fallbacks (e.g. Bayesian layers, custom attention): attribute -> kind
_KIND_BY_ATTRIBUTE: tuple[tuple[str, StructureKind], ...] = (
    ("num_heads", StructureKind.HEAD),
    ("head_dim", StructureKind.HEAD),
    ("out_channels", StructureKind.CHANNEL),
    ("out_features", StructureKind.NEURON),
    ("num_features", StructureKind.CHANNEL),
)

_UNSAFE = re.compile(r"[^0-9A-Za-z_]+")


def safe_name(name: str) -> str:
    """A module path as an identifier: ``layer1.0.conv1`` -> ``layer1_0_conv1``."""
    return _UNSAFE.sub("_", name).strip("_") or "net"


def structure_kind(module: nn.Module | None, gate_dim: int | None = None) -> StructureKind:
    """The kind of the output structures of ``module`` (see :data:`STRUCTURE_KINDS`).

    Unknown modules are recognised by their attributes (``num_heads``, ``out_channels``,
    ``out_features``); failing that a gate over the last axis selects neurons and one over
    axis 1 channels.
    """
    if module is not None:
        for kind_type, kind in STRUCTURE_KINDS.items():
            if isinstance(module, kind_type):
                return kind
        for attr, kind in _KIND_BY_ATTRIBUTE:
            if hasattr(module, attr):
                return kind
    if gate_dim == -1:
        return StructureKind.NEURON
    if gate_dim == 1:
        return StructureKind.CHANNEL
    return StructureKind.STRUCTURE


def _gate_base(name: str, gate: StructureGate) -> str:
    """The identifier of a gate's layer: its producer, else the gate path without ``_gate``."""
    if gate.producer_name:
        return safe_name(gate.producer_name)
    return safe_name(name[: -len("_gate")] if name.endswith("_gate") else name)


def dim_name(model: PrunableNet, gate_name: str) -> str:
    """The dimension name of gate ``gate_name``'s structures, e.g. ``"fc1_neuron"``.

    ``blocks.0.attn.heads`` (a module holding the rows of each head) gives
    ``blocks_0_attn_head``: a plural that repeats the kind is dropped.
    """
    gate = model.gates()[gate_name]
    kind = _gate_kind(model, gate_name, gate).value
    base = _gate_base(gate_name, gate)
    if base.endswith(f"_{kind}s"):
        base = base[: -len(kind) - 2]
    elif base.endswith(f"_{kind}"):
        base = base[: -len(kind) - 1]
    return f"{base}_{kind}"


def _gate_kind(model: PrunableNet, gate_name: str, gate: StructureGate) -> StructureKind:
    """The kind of a gate's structures, from the structure graph (by the gate's axis when
    the network cannot be traced)."""
    from pyro_prune.graph import structure_graph

    try:
        info = structure_graph(model).gates.get(gate_name)
    except (ValueError, TypeError, RuntimeError):
        info = None
    if info is None:
        return structure_kind(None, gate.dim)
    return StructureKind(info.kind)


def var_base(dim: str) -> str:
    """The variable prefix of a structure dimension: ``fc1_neuron`` -> ``fc1``."""
    return dim.rsplit("_", 1)[0]


def structure_dims(model: PrunableNet) -> dict[str, str]:
    """Gate path -> dimension name of its structures, for every gate of ``model``."""
    dims = {name: dim_name(model, name) for name in model.gates()}
    seen: dict[str, str] = {}
    for gate_name, dim in dims.items():
        if dim in seen:
            raise ValueError(
                f"gates {seen[dim]!r} and {gate_name!r} would share the dimension {dim!r}"
            )
        seen[dim] = gate_name
    return dims


def site_layout(model: PrunableNet) -> dict[str, tuple[str, list[str]]]:
    """Pyro site -> (variable name, dims after chain/draw) for every known latent site."""
    layout: dict[str, tuple[str, list[str]]] = {}
    dims = structure_dims(model)
    for gate_name, gate in model.gates().items():
        if isinstance(gate, MultiplicativeNoise):
            layout[gate.site_name] = (f"{var_base(dims[gate_name])}_theta", [dims[gate_name]])
    producer_dims = {
        g.producer_name: dims[n] for n, g in model.gates().items() if g.producer_name
    }
    for path, module in model.stochastic_modules().items():
        if isinstance(module, MultiplicativeNoise):
            continue
        weight = getattr(module, "weight_loc", None)
        if not isinstance(weight, Tensor):
            continue
        base = safe_name(path)
        out_dim = producer_dims.get(path, f"{base}_{structure_kind(module).value}")
        if weight.dim() == 2:
            in_dims = [f"{base}_input"]
        else:
            in_dims = [f"{base}_in_channel"] + [f"{base}_k{i}" for i in range(weight.dim() - 2)]
        layout[f"{module.site_name}.weight"] = (f"{base}_weight", [out_dim, *in_dims])
        layout[f"{module.site_name}.bias"] = (f"{base}_bias", [out_dim])
    return layout
