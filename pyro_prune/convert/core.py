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

The dependency analysis (which channels are tied, which groups a set of kept masks
removes) is :mod:`pyro_prune.graph`; this package slices (:mod:`.plan`), folds
(:mod:`.folding`) and counts (:mod:`.counting`).

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

The supported ops are listed in :mod:`pyro_prune.graph.ops` (:func:`supported_ops`).

References: Neklyudov et al., "Structured Bayesian Pruning via Log-Normal Multiplicative
Noise" (NeurIPS 2017); Wright, Igel & Selvan, "BMRS: Bayesian Model Reduction for
Structured Pruning" (NeurIPS 2024); Fang et al., "DepGraph: Towards Any Structural
Pruning" (CVPR 2023) for dependency groups.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from pyro_prune.convert.folding import (
    ChannelScale,
    _fold_backward,
    _fold_forward,
    _gate_scale,
    _per_id_scale,
)
from pyro_prune.convert.layers import (
    plain_layer,
    slice_layer_,
)
from pyro_prune.convert.plan import (
    _idx,
    _new_unflatten_sizes,
    _plan,
    _producer_indices,
    _slice_gate_inplace,
)
from pyro_prune.graph import (
    DependencyAnalysis,
    OpKind,
    UnsupportedOpError,
    constant_values,
    dependency_analysis,
    folded_constants,
    modes_restored,
)
from pyro_prune.graph.layers import layer_slicer
from pyro_prune.models.base import PrunableNet
from pyro_prune.models.bayesian import BayesianLayer, link_output_gates
from pyro_prune.models.gate import StructureGate
from pyro_prune.models.noise import StochasticModule

__all__ = ["shrink", "to_deterministic"]

#: layers whose eval-mode BatchNorm folds into the convolution before it
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
_CONVS = (nn.Conv1d, nn.Conv2d)


# ---------------------------------------------------------------------- assembly
def _check_guide(model: PrunableNet, guide: Any) -> None:
    if guide is None or guide == model.guide:
        return
    raise ValueError(
        "guide must be None or model.guide: the converter reads the variational parameters "
        "stored in the model's modules (gate loc/log_scale, Bayesian layers' weight_loc/"
        f"weight_log_scale); got {type(guide).__name__}")


def _fold_constant_columns(layer: nn.Module, constants: Tensor | None) -> None:
    """Add to the bias of the Linear-like ``layer`` what the input columns it loses hold
    whatever the input (``constants``, per column, from
    :func:`~pyro_prune.graph.folded_constants`; a removed structure after a map such as
    ``sigmoid``): ``b += W c``, in place (a bias is added where the layer has none)."""
    if constants is None:
        return
    slicer = layer_slicer(layer)
    assert slicer is not None and "bias" in slicer.tensors
    out_dim, in_dim = slicer.tensors["weight"]
    assert out_dim is not None and in_dim is not None
    weight: Tensor = layer.weight  # type: ignore[assignment]
    shape = [1] * weight.dim()
    shape[in_dim] = -1
    with torch.no_grad():
        shift = (weight.detach() * constants.to(weight).reshape(shape)).sum(dim=in_dim)
        bias = getattr(layer, "bias", None)
        if bias is None:
            layer.bias = nn.Parameter(shift.clone())  # type: ignore[assignment]
        else:
            bias.add_(shift.to(bias))


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
    an = dependency_analysis(model, example_input)
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

    constants: dict[fx.Node, Tensor] | None = None  # the constant pass, run on first use
    for node, op in an.ops.items():
        if node.op == "get_attr":
            t = an.attribute(net, str(node.target))
            if isinstance(t, Tensor) and not bool(plan.exists[node].all()):
                t = _sliced_attribute(an, plan, node, t)
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
            layer = plain_layer(m)
            if in_idx is not None and op.cols is not None:
                if constants is None:
                    constants = constant_values(an, model)
                gone = torch.ones(len(op.cols), dtype=torch.bool)
                gone[in_idx.to(torch.long)] = False
                _fold_constant_columns(layer, folded_constants(constants, op, gone))
            try:
                root[target] = slice_layer_(layer, in_idx, out_idx, row_scale=rows,
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
            root[target] = nn.Unflatten(m.dim, _new_unflatten_sizes(an, node, m, plan.new_shape))
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

    def kept_positions(name: str, idx: Tensor) -> fx.Node:
        root[name] = idx.to(an.device)
        return graph.get_attr(name)

    for node in an.graph.nodes:
        node_op = an.ops.get(node)
        if node_op is not None and node_op.kind is OpKind.GATE and node not in scale_modules:
            env[node] = env[node.args[0]]  # type: ignore[index]
            continue
        env[node] = _copy_node(graph, node, plan, env, kept_positions)
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


def _copy_node(graph: fx.Graph, node: fx.Node, plan: Any, env: dict[fx.Node, fx.Node],
               kept_positions: Callable[[str, Tensor], fx.Node]) -> fx.Node:
    """``node`` copied into the converted ``graph``: its size arguments rewritten, and each
    operand it reads along an axis its output lost selected first (``index_select`` of the
    kept positions, a tensor ``kept_positions(name, indices)`` stores and reads)."""
    selected: dict[fx.Node, fx.Node] = {}
    for k, (operand, axis, idx) in enumerate(plan.selections.get(node, ())):
        source = selected.get(operand, env[operand])
        positions = kept_positions(f"_kept_{node.name}_{k}", idx)
        if axis + len(plan.an.ops[node].shape) - len(plan.an.ops[operand].shape) == 0:
            # the batch axis, [batch * k] with the batch outermost: select within each example
            per_example = plan.an.ops[operand].shape[axis]
            source = graph.call_function(torch.unflatten, (source, axis, (-1, per_example)))
            picked = graph.call_function(torch.index_select, (source, axis + 1, positions))
            selected[operand] = graph.call_function(torch.flatten, (picked, axis, axis + 1))
            continue
        selected[operand] = graph.call_function(torch.index_select, (source, axis, positions))
    new = graph.node_copy(node, lambda n: selected.get(n, env[n]))
    if node in plan.arg_rewrites:
        args, kwargs = plan.arg_rewrites[node]
        new.args = fx.node.map_arg(args, lambda n: selected.get(n, env[n]))
        new.kwargs = fx.node.map_arg(kwargs, lambda n: selected.get(n, env[n]))
    new.meta = {}
    new.type = None  # annotations of the traced code (scriptability)
    return new


def _sliced_attribute(an: DependencyAnalysis, plan: Any, node: fx.Node, t: Tensor) -> Tensor:
    """A tensor attribute keeping its entries that exist after slicing (the per-channel
    tensors of ``F.batch_norm``); any other attribute cannot be sliced."""
    if not bool((an.tags[node] >= 0).any()) or t.dim() != 1:
        raise UnsupportedOpError(f"cannot slice the tensor attribute {node.target!r}")
    kept = t.detach().index_select(0, plan.keep[node][0].to(t.device)).clone()
    return nn.Parameter(kept, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else kept


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


#: the end of both conversion-check failures: what it means for the model and the user
_CHECK_FAILED_NOTE = ("The model itself (model.predict, the predictive, the export of its posterior) is "
                      "unaffected, but this network cannot yet be converted with these structures removed; "
                      "please report this")


def _check_equal(model: PrunableNet, module: Callable[[Tensor], Tensor], an: DependencyAnalysis) -> None:
    gen = torch.Generator().manual_seed(0)
    if an.input_dtype.is_floating_point:
        x = torch.randn((2, *an.input_shape), generator=gen, dtype=torch.float64).to(an.input_dtype)
    else:  # token ids: 0 and 1 exist in every vocabulary
        x = torch.randint(0, 2, (2, *an.input_shape), generator=gen).to(an.input_dtype)
    x = x.to(an.device)

    def removed() -> dict[str, int]:
        return {name: int((~g.kept).sum()) for name, g in model.gates().items() if not bool(g.kept.all())}

    with modes_restored(model):
        model.eval()
        with torch.no_grad():
            want = model.predict(x)
            try:
                got = module(x)
            except RuntimeError as err:
                raise RuntimeError(
                    f"conversion check failed: the converted network does not run ({err}). The removed "
                    f"structures ({removed()}) were sliced out of some tensors but not out of others they "
                    f"meet, e.g. a bias the analysis of one example could not place. {_CHECK_FAILED_NOTE}") from err
    tol = 1e-4 if an.dtype in (torch.float32, torch.float16, torch.bfloat16) else 1e-9
    scale = max(1.0, float(want.abs().max()))
    if got.shape != want.shape or not torch.allclose(got, want, rtol=tol, atol=tol * scale):
        diff = float((got - want).abs().max()) if got.shape == want.shape else float("nan")
        raise RuntimeError(
            f"conversion check failed: the converted network differs from model.predict by "
            f"{diff:.3g} (shapes {tuple(got.shape)} vs {tuple(want.shape)}) with the removed structures "
            f"{removed()}, e.g. attention heads folded into the batch axis whose scores take a per-head "
            f"bias laid out heads-outermost along it. {_CHECK_FAILED_NOTE}")


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
    an = dependency_analysis(model, example_input)
    plan = _plan(an, model)
    new = copy.deepcopy(model)
    net = new.net
    done: set[str] = set()
    for node, op in an.ops.items():
        if node.op == "get_attr" and not bool(plan.exists[node].all()):
            owner_path, _, attr = str(node.target).rpartition(".")
            owner = net.get_submodule(owner_path) if owner_path else net
            t = _sliced_attribute(an, plan, node, getattr(owner, attr))
            if isinstance(t, nn.Parameter):
                setattr(owner, attr, t)
            else:
                owner._buffers[attr] = t
            continue
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
            m.unflattened_size = _new_unflatten_sizes(an, node, m, plan.new_shape)
        else:
            for n in [*op.inputs, node]:
                if an.ops[n].is_tensor and plan.new_shape.get(n) != an.ops[n].shape and \
                        any(True for _ in m.parameters()):
                    raise UnsupportedOpError(f"cannot slice the parameters of {op.name}")
    if any(n.op != "call_module" for n in plan.arg_rewrites) or plan.selections:
        # constant sizes in the backbone's code changed, or an operand is selected: run it as
        # the rewritten graph
        graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}

        def kept_positions(name: str, idx: Tensor) -> fx.Node:
            net.register_buffer(name, idx.to(an.device), persistent=False)
            return graph.get_attr(name)

        for node in an.graph.nodes:
            env[node] = _copy_node(graph, node, plan, env, kept_positions)
        for key, value in an.constants.items():  # tensors export lifted out of the code
            if not hasattr(net, key):
                net.register_buffer(key, value.detach().clone(), persistent=False)
        new.net = fx.GraphModule(net, graph, class_name=type(net).__name__ + "Shrunk")
        if an.tracer == "export":
            _strip_gate_hooks(new.net)  # the gates are nodes of the graph now
        new.name_sites()
    if any(isinstance(m, BayesianLayer) for m in new.net.modules()):
        link_output_gates(new)  # the gates' links to their rows describe the new layout
    new.share_noise_storage()  # the sliced noise layers own their Parameters: share them again
    if check:

        def predict(x: Tensor) -> Tensor:
            with modes_restored(new):
                new.eval()
                return new.predict(x)

        _check_equal(model, predict, an)
    return new, new.guide

