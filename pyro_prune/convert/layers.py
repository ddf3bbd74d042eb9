"""Slicing registered layers (see :mod:`pyro_prune.graph.layers` for the registry).

:func:`register_layer` (re-exported here) teaches the package a layer type; this module
does what the converter does with one: :func:`slice_layer_` keeps rows and input channels,
:func:`plain_layer` gives the deterministic layer a converted network holds,
:func:`counted_params` counts what is left, and :func:`layer_widths` / :func:`resize_layers`
record and rebuild the widths of a pruned network.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from pyro_prune.graph import (
    LayerRole,
    LayerSlicer,
    layer_slicer,
    register_layer,
    registered_layers,
)

__all__ = ["LayerRole", "LayerSlicer", "counted_params", "layer_slicer", "layer_widths", "plain_layer",
           "register_layer", "registered_layers", "resize_layers", "slice_layer_"]


def plain_layer(module: nn.Module) -> nn.Module:
    """The deterministic layer ``module`` becomes in a converted network (a new object)."""
    slicer = layer_slicer(module)
    if slicer is not None and slicer.plain is not None:
        return slicer.plain(module)
    return copy.deepcopy(module)


def _take(t: Tensor, dim: int | None, idx: Tensor | None) -> Tensor:
    if dim is None or idx is None:
        return t
    return t.index_select(dim, idx.to(t.device))


def _along(scale: Tensor, t: Tensor, dim: int) -> Tensor:
    shape = [1] * t.dim()
    shape[dim] = -1
    return scale.to(t).reshape(shape)


def slice_layer_(module: nn.Module, in_idx: Tensor | None, out_idx: Tensor | None, *,
                 row_scale: Tensor | None = None, col_scale: Tensor | None = None) -> nn.Module:
    """Slice a registered layer in place: rows ``out_idx``, input channels ``in_idx``.

    ``row_scale`` (per output structure) multiplies the ``scaled`` tensors along their out
    dim; ``col_scale`` (per input channel) multiplies the tensors with an in dim (for a
    depthwise convolution, whose input channels are its output channels, along the out
    dim). ``None`` indices keep everything. Returns ``module``.
    """
    slicer = layer_slicer(module)
    if slicer is None:
        raise TypeError(f"{type(module).__name__} is not a registered layer (see register_layer)")
    depthwise = slicer.is_depthwise(module)
    if row_scale is not None and any(getattr(module, n, None) is None for n in slicer.scaled):
        missing = [n for n in slicer.scaled if getattr(module, n, None) is None]
        if slicer.role is LayerRole.PER_CHANNEL or "weight" in missing:
            raise ValueError(
                f"cannot fold a scale into {type(module).__name__} without its {missing}")
    n_in_before = slicer.num_in(module)
    with torch.no_grad():
        for name, (od, idim) in slicer.tensors.items():
            t = getattr(module, name, None)
            if t is None:
                continue
            v = t.detach()
            if row_scale is not None and name in slicer.scaled and od is not None:
                v = v * _along(row_scale, v, od)
            if col_scale is not None and idim is not None:
                v = v * _along(col_scale, v, od if depthwise and od is not None else idim)
            v = _take(v, od, out_idx)
            if not depthwise:
                v = _take(v, idim, in_idx)
            v = v.clone()
            if isinstance(t, nn.Parameter):
                setattr(module, name, nn.Parameter(v, requires_grad=t.requires_grad))
            else:
                module._buffers[name] = v  # type: ignore[index]
    n_out = slicer.num_out(module) if out_idx is None else int(out_idx.numel())
    setattr(module, slicer.out_size, n_out)
    if slicer.in_size is not None:
        if depthwise:
            setattr(module, slicer.in_size, n_out)
            if slicer.groups is not None:
                setattr(module, slicer.groups, n_out)
        elif in_idx is not None:
            setattr(module, slicer.in_size, int(in_idx.numel()) if n_in_before else 0)
    return module


def layer_widths(module: nn.Module) -> dict[str, list[int]]:
    """``[out, in]`` sizes of every registered layer of ``module``, by module path.

    Stored with a pruned network (e.g. in a Hugging Face ``config.json``), they let
    :func:`resize_layers` rebuild the smaller architecture before loading its weights.
    """
    out: dict[str, list[int]] = {}
    for name, m in module.named_modules():
        slicer = layer_slicer(m)
        if slicer is not None and name:
            out[name] = [slicer.num_out(m), slicer.num_in(m)]
    return out


def resize_layers(module: nn.Module, widths: Mapping[str, Any]) -> nn.Module:
    """Shrink the registered layers of a freshly built ``module`` to ``widths`` in place.

    ``widths`` is what :func:`layer_widths` returned for the pruned network; each layer keeps
    its first ``out`` rows and ``in`` input channels (their values do not matter: the pruned
    weights are loaded next, e.g. with ``load_state_dict``). Returns ``module``.
    """
    for name, size in widths.items():
        m = module.get_submodule(name)
        slicer = layer_slicer(m)
        if slicer is None:
            raise TypeError(f"{name!r} is a {type(m).__name__}, not a registered layer")
        n_out, n_in = int(size[0]), int(size[1])
        if n_out > slicer.num_out(m) or n_in > slicer.num_in(m):
            raise ValueError(f"{name!r}: cannot grow {slicer.num_out(m)}x{slicer.num_in(m)} to {n_out}x{n_in}")
        in_idx = None if slicer.is_depthwise(m) or n_in == slicer.num_in(m) else torch.arange(n_in)
        out_idx = None if n_out == slicer.num_out(m) else torch.arange(n_out)
        slice_layer_(m, in_idx, out_idx)
    return module


def counted_params(module: nn.Module, out_kept: int, in_kept: int) -> int:
    """Parameters of ``module`` after keeping ``out_kept`` rows and ``in_kept`` input channels."""
    slicer = layer_slicer(module)
    assert slicer is not None
    n_out, n_in = slicer.num_out(module), slicer.num_in(module)
    depthwise = slicer.is_depthwise(module)
    total = 0
    for name in slicer.counted:
        t = getattr(module, name, None)
        if not isinstance(t, Tensor):
            continue
        od, idim = slicer.tensors.get(name, (None, None))
        shape = list(t.shape)
        if od is not None:
            shape[od] = shape[od] * out_kept // max(n_out, 1)
        if idim is not None and not depthwise:
            shape[idim] = shape[idim] * in_kept // max(n_in, 1)
        total += int(torch.Size(shape).numel())
    return total


