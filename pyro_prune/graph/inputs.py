"""The input a network takes: shape and dtype, given, recorded or searched.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from pyro_prune.graph.layers import layer_slicer
from pyro_prune.graph.ops import _is_conv, _is_producer, is_linear
from pyro_prune.models.base import PrunableNet
from pyro_prune.models.noise import NoiseMode, noise_mode


def net_dtype(net: nn.Module) -> torch.dtype:
    """The dtype of the network's first floating parameter (else torch's default dtype)."""
    for p in net.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.get_default_dtype()


def net_device(net: nn.Module) -> torch.device:
    """The device of the network's first parameter (else the CPU)."""
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


def search_input_shape(net: nn.Module, dtype: torch.dtype,
                        device: torch.device) -> tuple[int, ...]:
    """Find an input shape the backbone accepts from its first Linear / Conv layer."""
    first: Any = next((m for m in net.modules() if _is_producer(m)), None)
    candidates: list[tuple[int, ...]] = []
    first_slicer = layer_slicer(first)
    if first_slicer is not None and is_linear(first):
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


