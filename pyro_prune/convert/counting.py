"""Sizes: parameters and multiply-accumulates of a converted (or convertible) network.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from pyro_prune.convert.core import to_deterministic
from pyro_prune.convert.layers import counted_params
from pyro_prune.graph import (
    DependencyAnalysis,
    OpKind,
    constant_values,
    dependency_analysis,
    folded_constants,
    layer_slicer,
    net_device,
    net_dtype,
    removed_channels,
    warn_cannot_shrink,
)
from pyro_prune.models.base import PrunableNet


# ====================================================================== counting
def _kept_count(removed: Tensor, cols: Tensor | None, n: int) -> int:
    if cols is None:
        return n
    keep = (cols < 0) | ~removed[cols.clamp_min(0)]
    return int(keep.sum())


def _count_from_removed(an: DependencyAnalysis, model: PrunableNet, removed: Tensor) -> int:
    """Parameters of the converted deterministic network (one number per weight)."""
    net = model.net
    total = 0
    seen_modules: set[str] = set()
    seen_attrs: set[int] = set()
    constants: dict[Any, Tensor] | None = None  # the constant pass, run where a layer without bias may need one
    for node, op in an.ops.items():
        if node.op == "get_attr" and op.is_tensor:
            t = an.attribute(net, str(node.target))
            if isinstance(t, nn.Parameter) and id(t) not in seen_attrs:
                seen_attrs.add(id(t))
                tags = an.tags[node]  # F.batch_norm's per-channel tensors go with their channels
                total += int(((tags < 0) | ~removed[tags.clamp_min(0)]).sum()) if tags.numel() == t.numel() \
                    else t.numel()
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
            if all(getattr(m, n, None) is None for n in ("bias", "bias_loc")) and op.cols is not None:
                if constants is None:
                    constants = constant_values(an, model) or {}
                gone = (op.cols >= 0) & removed[op.cols.clamp_min(0)]
                if folded_constants(constants, op, gone) is not None:
                    total += out_kept  # the bias the converter adds to fold those columns into
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
        an = dependency_analysis(module, example_input)
        return _count_from_removed(an, module, removed_channels(an, module))
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
    Gates that cannot shrink anything are reported once
    (:func:`~pyro_prune.graph.warn_cannot_shrink`).
    """
    if not isinstance(model, PrunableNet):
        raise TypeError(f"model must be a PrunableNet, got {type(model).__name__}")
    if not model.gates():
        return 0.0
    an = dependency_analysis(model, example_input)
    warn_cannot_shrink(model, example_input, stacklevel=4)
    if an.full_params < 0:
        an.full_params = _count_from_removed(an, model, torch.zeros(an.n_ids, dtype=torch.bool))
    if an.full_params == 0:
        return 0.0
    kept = _count_from_removed(an, model, removed_channels(an, model))
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
        dtype = net_dtype(module)
    was_training = module.training
    module.eval()
    counter = _MacCounter()
    try:
        with torch.no_grad(), counter:
            module(torch.zeros((1, *input_shape), dtype=dtype, device=net_device(module)))
    finally:
        module.train(was_training)
    return int(counter.macs)


