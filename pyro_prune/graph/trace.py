"""The module graph of a network: its leaf layers as modules, everything else as ops.

:func:`module_graph` returns a ``torch.fx.Graph`` in one form whatever the network is:

* ``call_module`` nodes for the *leaves* — registered layers (:mod:`pyro_prune.convert.layers`),
  structure gates and stochastic modules — with their module path as target, whether the
  leaf is called from its parent's code or from a forward hook;
* ``call_function`` nodes for every other op, ``get_attr`` nodes for parameters, buffers
  and constants, one ``placeholder`` for the input and one ``output``.

Two tracers produce it. ``torch.fx`` symbolic tracing is tried first when the network has no
forward hooks (it is fast and its result stays scriptable); a network fx cannot trace
(data-dependent Python, shape asserts: every Hugging Face transformer), one whose gates sit
in forward hooks, or one that hides structures inside a ``torch.nn`` module fx keeps opaque
(``nn.MultiheadAttention``, ``nn.TransformerEncoderLayer``) is traced with ``torch.export``
(non-strict mode, ATen ops), and so is one whose fx graph holds an op that only the export
path writes out (below): otherwise a fused qkv layer ``split`` into q, k and v lost its heads
whenever fx could trace the network (fed float features, with no embedding layer that sends
it to export anyway). In
the export path each leaf is traced as one opaque custom op (so its weights stay one module
and its internals, e.g. Pyro sampling, are not traced) and turned back into a
``call_module`` node; ops that return several tensors (``split``/``chunk``/``unbind``) are
rewritten as the ``slice``/``select`` ops that read each part, so every node has one tensor
output; ``scaled_dot_product_attention`` becomes ``softmax(q k^T * scale + mask) @ v`` (the
structure analysis sees q and k tied by their contraction and the heads carried by v),
``einsum`` the sums, permutes and batched matrix products it stands for, ``baddbmm`` its
sum and product, and a
``view`` a ``reshape`` (the written-out ops' outputs need not have the strides of the fused
kernel's). Every module's train/eval mode is restored exactly afterwards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

__all__ = ["ModuleGraph", "module_graph", "modes_restored"]

_A = torch.ops.aten


@dataclasses.dataclass(eq=False)
class ModuleGraph:
    """A traced network: the graph, how it was traced and the constants export lifted."""

    graph: fx.Graph
    tracer: str  # "fx" | "export"
    constants: dict[str, Tensor]


@contextlib.contextmanager
def modes_restored(net: nn.Module) -> Iterator[None]:
    """Restore the ``training`` flag of every submodule exactly on exit."""
    modes = [(m, m.training) for m in net.modules()]
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


# ---------------------------------------------------------------------- the leaf op
_LEAF_FORWARDS: dict[int, Callable[[Tensor], Tensor]] = {}
_LEAF_IDS = itertools.count()


@torch.library.custom_op("pyro_prune::leaf", mutates_args=())
def _leaf(x: Tensor, index: int) -> Tensor:
    return _LEAF_FORWARDS[index](x).clone()


#: output (shape[1:], dtype) of each leaf for each input shape[1:], from an eager probe run
_LEAF_SHAPES: dict[int, dict[tuple[int, ...], tuple[tuple[int, ...], torch.dtype]]] = {}


@_leaf.register_fake
def _leaf_fake(x: Tensor, index: int) -> Tensor:
    key = tuple(int(s) for s in x.shape[1:])
    shapes = _LEAF_SHAPES.get(index, {})
    if key not in shapes:
        raise RuntimeError(f"leaf {index} was not called with inputs of shape [N, {key}] in the probe run")
    rest, dtype = shapes[key]
    return x.new_empty((x.shape[0], *rest), dtype=dtype)


def _outermost(net: nn.Module, is_leaf: Callable[[nn.Module], bool]) -> dict[str, nn.Module]:
    leaves: dict[str, nn.Module] = {}
    for name, m in net.named_modules():
        if not name or any(name.startswith(p + ".") for p in leaves):
            continue
        if is_leaf(m):
            leaves[name] = m
    return leaves


def _has_hooks(net: nn.Module) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())


# ---------------------------------------------------------------------- fx path
def _fx_graph(net: nn.Module, is_leaf: Callable[[nn.Module], bool]) -> fx.Graph:
    class _Tracer(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualified_name: str) -> bool:
            return is_leaf(m) or super().is_leaf_module(m, qualified_name)

    return _Tracer().trace(net)


# ---------------------------------------------------------------------- export path
def _export_graph(net: nn.Module, example: Tensor, is_leaf: Callable[[nn.Module], bool]
                  ) -> tuple[fx.Graph, dict[str, Tensor]]:
    leaves = _outermost(net, is_leaf)
    index_of: dict[int, str] = {}
    saved: list[tuple[nn.Module, Any]] = []
    batch = example if example.shape[0] >= 2 else torch.cat([example, example])
    handles = []
    try:
        for name, m in leaves.items():
            idx = next(_LEAF_IDS)
            _LEAF_FORWARDS[idx] = m.forward
            _LEAF_SHAPES[idx] = {}
            index_of[idx] = name

            def record(_m: nn.Module, inp: tuple, out: Any, i: int = idx) -> None:
                if inp and isinstance(inp[0], Tensor) and isinstance(out, Tensor):
                    _LEAF_SHAPES[i][tuple(inp[0].shape[1:])] = (tuple(out.shape[1:]), out.dtype)

            handles.append(m.register_forward_hook(record, prepend=True))
        with torch.no_grad():
            net(batch)
        for h in handles:
            h.remove()
        handles.clear()
        for idx, name in index_of.items():
            m = leaves[name]
            saved.append((m, m.__dict__.get("forward", None)))
            m.forward = (lambda i: (lambda x, *a, **k: _leaf(x, i)))(idx)  # type: ignore[method-assign]
        dynamic = ({0: torch.export.Dim.AUTO},)
        with torch.no_grad():
            try:
                ep = torch.export.export(net, (batch,), dynamic_shapes=dynamic, strict=False)
            except Exception:  # noqa: BLE001 - a static batch is the fallback
                ep = torch.export.export(net, (batch,), strict=False)
    finally:
        for m, prev in saved:
            if prev is None:
                m.__dict__.pop("forward", None)
            else:
                m.forward = prev  # type: ignore[method-assign]
        for h in handles:
            h.remove()
        for idx in index_of:
            _LEAF_FORWARDS.pop(idx, None)
            _LEAF_SHAPES.pop(idx, None)
    return _to_module_graph(ep, index_of)


def _to_module_graph(ep: Any, index_of: dict[int, str]) -> tuple[fx.Graph, dict[str, Tensor]]:
    sig = ep.graph_signature
    attrs: dict[str, str] = {**sig.inputs_to_parameters, **sig.inputs_to_buffers}
    lifted: dict[str, str] = dict(getattr(sig, "inputs_to_lifted_tensor_constants", {}))
    constants: dict[str, Tensor] = {}
    graph = fx.Graph()
    env: dict[fx.Node, Any] = {}
    user_inputs = [n for n in ep.graph.nodes if n.op == "placeholder"
                   and n.name not in attrs and n.name not in lifted]
    if len(user_inputs) != 1:
        raise ValueError(f"only single-input networks are supported, the network takes {len(user_inputs)} inputs")
    for node in ep.graph.nodes:
        if node.op == "placeholder":
            if node.name in attrs:
                env[node] = graph.get_attr(attrs[node.name])
            elif node.name in lifted:
                key = "_constant_" + lifted[node.name].replace(".", "_")
                constants[key] = ep.constants[lifted[node.name]]
                env[node] = graph.get_attr(key)
            else:
                env[node] = graph.placeholder("x")
            env[node].meta["val"] = node.meta.get("val")
            continue
        if node.op == "output":
            outs = node.args[0]
            out = outs[0] if isinstance(outs, (tuple, list)) and len(outs) == 1 else outs
            graph.output(fx.node.map_arg(out, lambda n: env[n]))
            continue
        target = node.target
        if target is torch.ops.pyro_prune.leaf.default:
            x, idx = node.args
            new = graph.call_module(index_of[int(idx)], (env[x],))
        elif target is _A.scaled_dot_product_attention.default:
            new = _sdpa_as_ops(graph, node, env, constants)
        elif target is _A.baddbmm.default:
            new = _baddbmm_as_ops(graph, node, env)
        elif target is _A.einsum.default:
            new = _einsum_as_ops(graph, node, env) or graph.node_copy(node, lambda n: env[n])
        elif target is _A.view.default:  # a view of an op written out above may need a copy
            new = graph.call_function(_A.reshape.default, fx.node.map_arg(node.args, lambda n: env[n]))
        elif target in _MULTI_OUTPUT:
            env[node] = _split_parts(graph, node, env)
            continue
        elif target is _getitem and isinstance(env.get(node.args[0]), list):  # type: ignore[arg-type]
            env[node] = env[node.args[0]][node.args[1]]  # type: ignore[index]
            continue
        elif getattr(target, "__name__", "").startswith("_assert") or str(target).startswith("aten._assert"):
            continue
        else:
            new = graph.node_copy(node, lambda n: env[n])
        new.meta = {"val": node.meta.get("val"), "nn_module_stack": node.meta.get("nn_module_stack", {})}
        env[node] = new
    for node in reversed(list(graph.nodes)):  # ops whose results nothing uses (but not in-place ones)
        if node.op in ("call_function", "get_attr", "call_module") and not node.users \
                and not _mutates(node):
            graph.erase_node(node)
    graph.lint()
    return graph, constants


def _mutates(node: fx.Node) -> bool:
    """An in-place ATen op (``fill_``, ``copy_``, ...): it matters although nothing reads it."""
    schema = getattr(node.target, "_schema", None)
    return bool(schema is not None and schema.is_mutable)


_getitem = __import__("operator").getitem
_MULTI_OUTPUT = {_A.split.Tensor, _A.split_with_sizes.default, _A.chunk.default, _A.unbind.int,
                 _A.tensor_split.sections}


def _sdpa_as_ops(graph: fx.Graph, node: fx.Node, env: dict, constants: dict[str, Tensor]) -> fx.Node:
    """``scaled_dot_product_attention`` written out as ``softmax(q k^T * scale + mask) @ v``.

    The structure analysis then sees the two products (q and k tied by the contraction,
    heads carried by v); the scale stays the original ``1 / sqrt(head_dim)``.
    """
    names = ["query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa"]
    defaults: dict[str, Any] = {"attn_mask": None, "dropout_p": 0.0, "is_causal": False,
                                "scale": None, "enable_gqa": False}
    a = {**defaults, **dict(zip(names, node.args)), **node.kwargs}
    q_val, k_val = a["query"].meta["val"], a["key"].meta["val"]
    q, k, v = env[a["query"]], env[a["key"]], env[a["value"]]
    if a["enable_gqa"] and int(q_val.shape[-3]) != int(k_val.shape[-3]):
        rep = int(q_val.shape[-3]) // int(k_val.shape[-3])
        k = graph.call_function(_A.repeat_interleave.self_int, (k, rep, -3))
        v = graph.call_function(_A.repeat_interleave.self_int, (v, rep, -3))
    scale = a["scale"] if a["scale"] is not None else 1.0 / float(int(q_val.shape[-1])) ** 0.5
    scores = graph.call_function(_A.matmul.default, (q, graph.call_function(_A.transpose.int, (k, -2, -1))))
    scores = graph.call_function(_A.mul.Tensor, (scores, scale))
    mask = a["attn_mask"]
    if a["is_causal"]:
        length, source = int(q_val.shape[-2]), int(k_val.shape[-2])
        key = f"_constant_causal_{length}_{source}"
        constants[key] = torch.ones(length, source, dtype=torch.bool).tril()
        causal = graph.get_attr(key)
        scores = graph.call_function(_A.masked_fill.Scalar,
                                     (scores, graph.call_function(_A.logical_not.default, (causal,)), float("-inf")))
    if mask is not None:
        m = env[mask]
        if mask.meta["val"].dtype == torch.bool:
            scores = graph.call_function(_A.masked_fill.Scalar,
                                         (scores, graph.call_function(_A.logical_not.default, (m,)), float("-inf")))
        else:
            scores = graph.call_function(_A.add.Tensor, (scores, m))
    probs = graph.call_function(_A.softmax.int, (scores, -1))
    return graph.call_function(_A.matmul.default, (probs, v))


def _baddbmm_as_ops(graph: fx.Graph, node: fx.Node, env: dict) -> fx.Node:
    """``baddbmm(input, b1, b2, beta, alpha)`` as ``beta * input + alpha * (b1 @ b2)`` (BLOOM
    adds its ALiBi bias to the attention scores so): the analysis then sees the product and
    the bias as it sees them written out."""
    names = ["input", "batch1", "batch2", "beta", "alpha"]
    a = {"beta": 1, "alpha": 1, **dict(zip(names, node.args)), **node.kwargs}
    product = graph.call_function(_A.bmm.default, (env[a["batch1"]], env[a["batch2"]]))
    if a["alpha"] != 1:
        product = graph.call_function(_A.mul.Tensor, (product, a["alpha"]))
    if a["beta"] == 0:  # the input is ignored (NaN included)
        return product
    bias = env[a["input"]]
    if a["beta"] != 1:
        bias = graph.call_function(_A.mul.Tensor, (bias, a["beta"]))
    return graph.call_function(_A.add.Tensor, (bias, product))


def _einsum_labels(equation: str, ndims: list[int]) -> tuple[list[list[str]], list[str]] | None:
    """The labels of ``einsum``'s operands and output, one per axis (an ellipsis written out
    as labels of its own, aligned from the right as einsum broadcasts them); ``None`` for an
    equation with a repeated label in one operand (a diagonal)."""
    equation = equation.replace(" ", "")
    lhs, arrow, rhs = equation.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ndims):
        return None
    spans = [n - len(t.replace("...", "")) if "..." in t else 0 for t, n in zip(terms, ndims)]
    widest = max(spans, default=0)
    ellipsis = [chr(0x100 + i) for i in range(widest)]  # not letters: no clash with the user's

    def expand(term: str, span: int) -> list[str]:
        head, dots, tail = term.partition("...")
        return list(head) + (ellipsis[widest - span:] if dots else []) + list(tail)

    inputs = [expand(t, k) for t, k in zip(terms, spans)]
    if any(len(set(labels)) != len(labels) for labels in inputs):
        return None
    if arrow:
        out = expand(rhs, widest)
    else:  # implicit output: the broadcast axes, then the labels met once, in alphabetical order
        counts = [x for labels in inputs for x in labels if x not in ellipsis]
        out = ellipsis + sorted(x for x in set(counts) if counts.count(x) == 1)
    return inputs, out


def _einsum_as_ops(graph: fx.Graph, node: fx.Node, env: dict) -> fx.Node | None:
    """``einsum`` written out as sums, permutes and batched matrix products (pairwise, left to
    right), so that the structure analysis follows it as it follows ``q @ k^T``: the labels
    both operands keep are the product's batch axes, those they share and drop its
    contraction (several flattened into one), each operand's own ones its rows or columns
    (all but the last as broadcast batch axes). ``None`` where it cannot (a diagonal)."""
    equation, operands = node.args[0], list(node.args[1])  # type: ignore[arg-type]
    if not isinstance(equation, str) or not operands:
        return None
    parsed = _einsum_labels(equation, [int(o.meta["val"].dim()) for o in operands])
    if parsed is None:
        return None
    inputs, out = parsed

    def call(op: Any, *args: Any) -> fx.Node:
        return graph.call_function(op, args)

    def arrange(x: fx.Node, labels: list[str], order: list[str]) -> fx.Node:
        perm = [labels.index(label) for label in order]
        return x if perm == list(range(len(perm))) else call(_A.permute.default, x, perm)

    def sum_out(x: fx.Node, labels: list[str], keep: set[str]) -> tuple[fx.Node, list[str]]:
        dims = [i for i, label in enumerate(labels) if label not in keep]
        if not dims:
            return x, labels
        return call(_A.sum.dim_IntList, x, dims, False), [label for label in labels if label in keep]

    x, lx = env[operands[0]], inputs[0]
    for i in range(1, len(inputs) + 1):
        later = {label for labels in inputs[i + 1:] for label in labels} | set(out)
        if i == len(inputs):  # the last operand (or the only one): the output's order
            x, lx = sum_out(x, lx, set(out))
            return arrange(x, lx, out)
        y, ly = env[operands[i]], inputs[i]
        x, lx = sum_out(x, lx, set(ly) | later)
        y, ly = sum_out(y, ly, set(lx) | later)
        batch = [label for label in lx if label in ly and label in later]
        contracted = [label for label in lx if label in ly and label not in later]
        rows = [label for label in lx if label not in ly]
        cols = [label for label in ly if label not in lx]
        nb, nr, nc = len(batch), max(len(rows) - 1, 0), max(len(cols) - 1, 0)
        # x: batch, rows[:-1], 1 per cols[:-1], the last row (or 1), the contraction (or 1)
        x = arrange(x, lx, batch + rows + contracted)
        if len(contracted) > 1:
            x = call(_A.flatten.using_ints, x, nb + len(rows), -1)
        elif not contracted:
            x = call(_A.unsqueeze.default, x, -1)
        if not rows:
            x = call(_A.unsqueeze.default, x, -2)
        for _ in range(nc):
            x = call(_A.unsqueeze.default, x, nb + nr)
        # y: batch, 1 per rows[:-1], cols[:-1], the contraction (or 1), the last column (or 1)
        y = arrange(y, ly, batch + cols[:-1] + contracted + cols[-1:])
        if len(contracted) > 1:
            y = call(_A.flatten.using_ints, y, nb + nc, nb + nc + len(contracted) - 1)
        elif not contracted:
            y = call(_A.unsqueeze.default, y, nb + nc)
        if not cols:
            y = call(_A.unsqueeze.default, y, -1)
        for _ in range(nr):
            y = call(_A.unsqueeze.default, y, nb)
        x = call(_A.matmul.default, x, y)
        lx = batch + rows[:-1] + cols[:-1] + (rows[-1:] or ["<row>"]) + (cols[-1:] or ["<col>"])
        for label in ("<col>", "<row>"):
            if label in lx:
                x = call(_A.squeeze.dim, x, lx.index(label))
                lx = [k for k in lx if k != label]
    raise AssertionError("unreachable")  # pragma: no cover


def _split_parts(graph: fx.Graph, node: fx.Node, env: dict) -> list[fx.Node]:
    """``split``/``chunk``/``unbind`` as one ``slice``/``select`` per part."""
    vals = node.meta["val"]
    x = env[node.args[0]]
    args: Any = node.args
    kwargs: Any = node.kwargs
    if node.target is _A.unbind.int:
        dim = int(args[1]) if len(args) > 1 else int(kwargs.get("dim", 0))
        return [graph.call_function(_A.select.int, (x, dim, i)) for i in range(len(vals))]
    default_dim = 0
    dim = int(args[2]) if len(args) > 2 else int(kwargs.get("dim", default_dim))
    ndim = vals[0].dim()
    dim %= ndim
    parts, start = [], 0
    for v in vals:
        size = int(v.shape[dim])
        parts.append(graph.call_function(_A.slice.Tensor, (x, dim, start, start + size)))
        start += size
    return parts


#: ops the export path writes out in the one graph form (several outputs, fused attention),
#: as torch functions and tensor methods: a fx graph holding one is traced with export instead
_WRITTEN_OUT_FUNCTIONS = {torch.split, torch.chunk, torch.unbind, torch.tensor_split,
                          torch.functional.split, torch.nn.functional.scaled_dot_product_attention,
                          torch.einsum, torch.functional.einsum, torch.baddbmm}
_WRITTEN_OUT_METHODS = {"split", "split_with_sizes", "chunk", "unbind", "tensor_split", "baddbmm"}


def _written_out(node: fx.Node) -> bool:
    """A fx node the one graph form writes out as other ops (``split``/``chunk``/``unbind``
    as one slice per part, ``scaled_dot_product_attention`` as its products), which only the
    export path does."""
    if node.op == "call_function":
        return node.target in _WRITTEN_OUT_FUNCTIONS
    return node.op == "call_method" and node.target in _WRITTEN_OUT_METHODS


# ---------------------------------------------------------------------- entry point
def module_graph(net: nn.Module, example: Tensor, is_leaf: Callable[[nn.Module], bool], *,
                 opaque: Callable[[nn.Module], bool] | None = None) -> ModuleGraph:
    """The module graph of ``net`` for inputs like ``example`` (a batch).

    Args:
        net: the network.
        example: a batch of inputs (its values are not used by fx tracing).
        is_leaf: which modules stay one ``call_module`` node.
        opaque: modules that hide structure inside (e.g. ``nn.MultiheadAttention``): if
            fx would keep one as a leaf, the network is traced with ``torch.export``.
    """
    if not isinstance(example, Tensor):
        raise TypeError(f"example must be a tensor batch, got {type(example).__name__}")
    with modes_restored(net):
        net.eval()
        fallback = None  # a fx graph export may improve on (it holds ops export writes out)
        if not _has_hooks(net):
            try:
                graph = _fx_graph(net, is_leaf)
            except Exception:  # noqa: BLE001 - fx raises many kinds; export is the fallback
                graph = None
            if graph is not None and not any(
                    n.op == "call_module" and opaque is not None
                    and opaque(net.get_submodule(str(n.target))) for n in graph.nodes):
                if not any(_written_out(n) for n in graph.nodes):
                    return ModuleGraph(graph=graph, tracer="fx", constants={})
                fallback = graph
        try:
            graph, constants = _export_graph(net, example, is_leaf)
        except Exception as err:
            if fallback is not None:
                return ModuleGraph(graph=fallback, tracer="fx", constants={})
            raise ValueError(
                f"the network {type(net).__name__} can be traced neither by torch.fx nor by "
                f"torch.export: {type(err).__name__}: {err}") from err
    return ModuleGraph(graph=graph, tracer="export", constants=constants)
