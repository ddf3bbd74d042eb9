"""Turn an ordinary torch network into a prunable Pyro model.

:func:`bayesianize` reads the network's structure graph (:mod:`pyro_prune.graph`) rather
than a list of known architectures, and puts a structure gate (log-normal multiplicative
noise by default) on every structure that can actually shrink:

* the output neurons / channels of every registered layer
  (:func:`~pyro_prune.convert.register_layer`: ``nn.Linear``, ``nn.Conv1d/2d``, their
  subclasses and Pyro wrappers, ...) whose type is in ``noise_on`` — after the BatchNorm
  when the layer's only consumer is one (a gate before BatchNorm would be normalised away),
  also a functional ``F.batch_norm`` in the network's own code;
* the heads of every attention (a ``softmax(q k^T) @ v`` product or
  ``scaled_dot_product_attention`` whose heads feed an output projection): one gate over
  the heads on the input of the output projection; q, k and v then get no neuron gates.

Layers whose structures cannot be removed get no gate: the output layer, and the residual
stream of a transformer (pinned by LayerNorm and the residual adds).

Networks ``torch.fx`` can trace get the gates as nodes of an ``fx.GraphModule``; any other
network (Hugging Face transformers, ``nn.MultiheadAttention``, data-dependent Python) keeps
its own code and gets the gates through forward hooks, and is traced with ``torch.export``.
"""

from __future__ import annotations

import copy
import inspect
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.fx as fx
from pyro.nn import PyroModule
from torch import Tensor, nn

from pyro_prune.models.base import Likelihood, PrunableNet
from pyro_prune.models.gate import StructureGate
from pyro_prune.models.layers import GateKind, WeightPrior, check_noise_options, make_gate

__all__ = ["bayesianize", "BayesianizedNet", "GatedNetwork"]


class BayesianizedNet(PrunableNet):
    """A :class:`PrunableNet` made by :func:`bayesianize`.

    ``net`` is an ``fx.GraphModule`` (fx-traceable networks) or a :class:`GatedNetwork`.
    """


class _OutputGate:
    """Forward hook: the gate applied to a layer's output (deep-copies with the network)."""

    def __init__(self, gate: StructureGate) -> None:
        self.gate = gate

    def __call__(self, _module: nn.Module, _inputs: tuple, output: Tensor) -> Tensor:
        return self.gate(output)


class _InputGate:
    """Forward pre-hook: the gate applied to a layer's input."""

    def __init__(self, gate: StructureGate) -> None:
        self.gate = gate

    def __call__(self, _module: nn.Module, inputs: tuple) -> tuple:
        return (self.gate(inputs[0]), *inputs[1:])


class _HeadGate:
    """Forward pre-hook: a gate over ``heads`` blocks of the last axis of a layer's input."""

    def __init__(self, gate: StructureGate, heads: int) -> None:
        self.gate = gate
        self.heads = heads

    def __call__(self, _module: nn.Module, inputs: tuple) -> tuple:
        x = inputs[0]
        y = self.gate(x.unflatten(-1, (self.heads, -1))).flatten(-2)
        return (y, *inputs[1:])


def gate_hooks() -> tuple[type, ...]:
    """The hook types :func:`bayesianize` registers (the converter strips them)."""
    return (_OutputGate, _InputGate, _HeadGate)


class GatedNetwork(nn.Module):
    """A user's network with gates in forward hooks; returns a tensor.

    ``module`` keeps its own code; ``gates`` holds the structure gates its hooks call.
    When ``module`` returns a Hugging Face ``ModelOutput`` (or a tuple), the tensor the
    likelihood reads is its ``logits`` (or its first element).
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.gates = nn.ModuleDict()

    def forward(self, x: Tensor) -> Tensor:
        return _output_tensor(self.module(x))


def _output_tensor(out: Any) -> Tensor:
    """The tensor a network's output stands for: itself, its ``logits`` or its first element."""
    if isinstance(out, Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    raise TypeError(f"the network returned {type(out).__name__}, not a tensor or an output with logits")


def _probe(module: nn.Module, example: Tensor) -> Any:
    """``module(example)`` in eval mode without gradients (each submodule's mode restored)."""
    with torch.no_grad():
        was = [(sub, sub.training) for sub in module.modules()]
        module.eval()
        try:
            return module(example)
        except Exception as err:
            raise ValueError(f"the network does not run on example_input: {type(err).__name__}: {err}") from err
        finally:
            for sub, mode in was:
                sub.training = mode


def _layer_inputs(module: nn.Module, example: Tensor,
                  layers: dict[str, nn.Module]) -> dict[str, tuple[tuple, dict]]:
    """The first ``(args, kwargs)`` each of ``layers`` (path -> module) is called with when
    ``module`` runs ``example``."""
    seen: dict[str, tuple[tuple, dict]] = {}

    def record(path: str) -> Callable[..., None]:
        def hook(_m: nn.Module, args: tuple, kwargs: dict) -> None:
            seen.setdefault(path, (args, kwargs))
        return hook

    handles = [m.register_forward_pre_hook(record(path), with_kwargs=True) for path, m in layers.items()]
    try:
        _probe(module, example)
    finally:
        for h in handles:
            h.remove()
    return seen


def _check_bayesian_layers(module: nn.Module, old: dict[str, nn.Module],
                           inputs: dict[str, tuple[tuple, dict]]) -> None:
    """Each Bayesian layer, at its posterior means, computes what the layer it replaced did
    (to 10 float epsilons of its dtype, at least ``1e-4`` relative)."""
    from pyro_prune.models.bayesian import BayesianLayer
    from pyro_prune.models.noise import NoiseMode, noise_mode

    for path, (args, kwargs) in inputs.items():
        new = module.get_submodule(path)
        if not isinstance(new, BayesianLayer):
            continue
        with torch.no_grad(), noise_mode(new, NoiseMode.MEAN):
            want, got = old[path](*args, **kwargs), new(*args, **kwargs)
        tol = max(1e-4, 10 * torch.finfo(want.dtype).eps) if isinstance(want, Tensor) \
            and want.is_floating_point() else 0.0
        if not (isinstance(want, Tensor) and isinstance(got, Tensor) and want.shape == got.shape
                and torch.allclose(got, want, rtol=tol, atol=0.1 * tol * max(1.0, float(want.abs().max())))):
            raise ValueError(
                f"weights='gaussian': the {type(new).__name__} that replaced {path!r} "
                f"({type(old[path]).__name__}) does not compute what it computed at its posterior "
                f"means: check the rule given to register_bayesian_layer for that type")


def _example(module: nn.Module, example_input: Any) -> Tensor:
    from pyro_prune.graph import net_device, net_dtype, search_input_shape

    dtype, device = net_dtype(module), net_device(module)
    if example_input is None:
        shape = search_input_shape(module, dtype, device)
        return torch.zeros((2, *shape), dtype=dtype, device=device)
    if isinstance(example_input, Tensor):
        if example_input.dim() < 2:
            raise ValueError(f"example_input must be a batch [N, ...], got shape {tuple(example_input.shape)}")
        return example_input[:2].to(device)
    if isinstance(example_input, (tuple, list, torch.Size)) and all(
            isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in example_input):
        return torch.zeros((2, *example_input), dtype=dtype, device=device)
    raise TypeError("example_input must be a batch tensor or the shape of one input (ints), "
                    f"got {type(example_input).__name__}")


def bayesianize(
    module: nn.Module,
    noise_on: Sequence[type[nn.Module]] | None = None,
    *,
    likelihood: Likelihood | str = Likelihood.CATEGORICAL,
    gate: GateKind | str = GateKind.NOISE,
    weights: WeightPrior | str = WeightPrior.POINT,
    prior_scale: float = 1.0,
    exclude: Iterable[str] = (),
    num_data: int | None = None,
    heads: bool = True,
    example_input: Any = None,
    check_conversion: bool = True,
    **noise_kwargs: float,
) -> BayesianizedNet:
    """Make a Pyro model with gates on the structures of ``module`` that can shrink.

    The input module is not modified (it is deep-copied first), so its trained weights
    become the initial point estimates of the Pyro model.

    Args:
        module: any network ``torch.fx`` or ``torch.export`` can trace (one tensor input).
        noise_on: layer types to gate (registered layer types and their subclasses, see
            :func:`~pyro_prune.convert.register_layer`; a BatchNorm type here puts the gate
            of a convolution after its BatchNorm); ``None`` (default): every registered type.
        likelihood: ``"categorical"`` (the module outputs logits) or ``"gaussian"``.
        gate: ``"noise"`` or ``"mask"``.
        weights: ``"point"`` or ``"gaussian"``: every layer with a Bayesian rule (``nn.Linear``,
            ``nn.Conv1d/2d/3d``, GPT-2's ``Conv1D``, one given to
            :func:`~pyro_prune.models.bayesian.register_bayesian_layer`) gets Gaussian weights
            whose posterior means start at its weights (:func:`~pyro_prune.models.bayesian_weights`;
            a layer tied to another module's weight keeps its point weights, with a warning).
            Each replaced layer is checked on the example input: at its posterior means it must
            compute what the layer it replaced did.
        exclude: module paths that get no gate.
        num_data: training-set size for the likelihood scaling.
        heads: gate attention heads (and leave q/k/v without neuron gates). Every
            ``nn.MultiheadAttention`` (also inside ``nn.TransformerEncoderLayer``) is replaced
            by the equivalent :class:`~pyro_prune.models.attention.ProjectedMultiheadAttention`
            first, whose q/k/v/output projections are layers the gate and the converter see.
        example_input: a batch (or the shape of one input) the network accepts; needed for
            integer inputs (token ids); by default searched from the first layer.
        check_conversion: try the gates' removals through the converter before returning
            (each gate's first structure removed, :func:`~pyro_prune.convert.to_deterministic`
            with its check): a gate whose removals the converter cannot carry out is left out,
            with one warning naming it and why, so that every structure the model can remove
            also leaves the converted network. Examples: attention heads folded into the
            batch axis whose scores add a bias repeated along it (BLOOM's ALiBi layout), single
            q/k/v neurons where the heads are not found, a layer whose width a later ``view``
            reads from a tensor that is not sliced with it. Costs one conversion of the
            network, a few more when a gate fails (the failing set is halved down to its gates).

    Raises:
        TypeError: ``module`` is not an ``nn.Module``, ``noise_on`` names an unregistered type,
            a keyword is neither an argument nor a noise option (the message names the
            closest one), or a submodule samples its parameters from Pyro priors
            (``PyroSample``).
        ValueError: the network cannot be traced (the message names the failing op), a
            Bayesian layer does not compute what the layer it replaced did (names it), or no
            layer is left to gate.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    check_noise_options(gate, noise_kwargs, own=list(inspect.signature(bayesianize).parameters))
    options = dict(likelihood=likelihood, gate=gate, weights=weights, prior_scale=prior_scale,
                   num_data=num_data, heads=heads, example_input=example_input, **noise_kwargs)
    excluded = set(exclude)
    refused: dict[str, str] = {}
    while True:
        try:
            with warnings.catch_warnings(record=True) as said:  # said once, for the last round
                warnings.simplefilter("always")
                net, paths, example = _gated_network(module, noise_on, exclude=excluded, **options)
        except ValueError as err:
            if not refused:
                raise
            raise ValueError(f"{err}; the gates it could place were left out because removing their "
                             f"structures cannot be converted into a smaller network: "
                             f"{_reasons(refused)}") from err
        if not check_conversion:
            break
        failing = _unconvertible_gates(net, example)
        if not failing:
            break
        for name, why in failing.items():
            refused[paths[name]] = why
            excluded.add(paths[name])
    for message in said:
        warnings.warn(message.message, message.category, stacklevel=2)
    if refused:
        warnings.warn(
            f"no gate on {sorted(refused)}: removing their structures cannot be converted into a smaller "
            f"network ({_reasons(refused)}); the rest of the network is gated as usual (check_conversion=False "
            f"keeps these gates for a model that is never converted)", RuntimeWarning, stacklevel=2)
    return net


def _untraced_note(untraced: dict[str, list[str]]) -> str:
    """Which layers get no gate because their channels reach ops the converter cannot trace."""
    ops = sorted({o for names in untraced.values() for o in names})
    return (f"{sorted(untraced)} get no gate: their channels reach ops the converter cannot trace ({ops}), "
            f"so none of their structures could leave the converted network")


def _reasons(refused: dict[str, str]) -> str:
    """``path: the converter's reason`` for each gate left out, one short line each."""
    return "; ".join(f"{path}: {why.splitlines()[0][:300]}" for path, why in refused.items())


def _unconvertible_gates(net: BayesianizedNet, example: Tensor) -> dict[str, str]:
    """The gates of ``net`` whose removals :func:`~pyro_prune.convert.to_deterministic` cannot
    carry out (its first structure removed), with the converter's reason: all the gates at once
    (one conversion), and when that fails, halves of the failing set down to single gates."""
    from pyro_prune.convert import to_deterministic

    gates = net.gates()

    def failure(names: Iterable[str]) -> str | None:
        keep = {n: torch.arange(gates[n].num_structures, device=gates[n].kept.device) != 0
                for n in names if gates[n].num_structures > 1}
        if not keep:
            return None
        with net.masked(keep), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                to_deterministic(net, example_input=example)
            except (ValueError, RuntimeError) as err:  # UnsupportedOpError is a ValueError
                return str(err)
        return None

    def culprits(names: list[str], why: str) -> dict[str, str]:
        """The failing gates among ``names`` (which fail together with ``why``), by halves."""
        if len(names) == 1:
            return {names[0]: why}
        found: dict[str, str] = {}
        for part in (names[: len(names) // 2], names[len(names) // 2:]):
            part_why = failure(part)
            if part_why is not None:
                found.update(culprits(part, part_why))
        return found  # empty when only the two halves together fail: nothing to blame alone

    why = failure(gates)
    return {} if why is None else culprits(list(gates), why)


def _gated_network(
    module: nn.Module,
    noise_on: Sequence[type[nn.Module]] | None,
    *,
    likelihood: Likelihood | str,
    gate: GateKind | str,
    weights: WeightPrior | str,
    prior_scale: float,
    exclude: Iterable[str],
    num_data: int | None,
    heads: bool,
    example_input: Any,
    **noise_kwargs: float,
) -> tuple[BayesianizedNet, dict[str, str], Tensor]:
    """:func:`bayesianize` without the conversion check: the network, each gate's module path
    (by the gate's name in ``net.gates()``) and the example input it was traced with."""
    from pyro_prune.graph import (
        OpKind,
        attention_heads,
        dependency_analysis,
        layer_slicer,
        registered_layers,
    )

    sampled = [path or type(module).__name__ for path, m in module.named_modules()
               if isinstance(m, PyroModule) and m._pyro_samples]
    if sampled:
        raise TypeError(
            f"{sampled[:3]} sample parameters from Pyro priors of their own (PyroSample), which "
            "the pruning model would redraw from the prior at every step; bayesianize puts the "
            "priors on a network itself: pass it without PyroSample (nn.Linear, or "
            "PyroModule[nn.Linear] without priors) and weights='gaussian', prior_scale=s for a "
            "N(0, s^2) prior on every weight")
    for sub in module.modules():
        layer_slicer(sub)  # registers the layers of other libraries it knows (GPT-2's Conv1D)
    known = tuple(registered_layers())
    every_layer = noise_on is None
    noise_on = known if noise_on is None else tuple(noise_on)
    for kind in noise_on:
        if not (isinstance(kind, type) and issubclass(kind, known)):
            raise TypeError(
                f"noise_on may name registered layer types (nn.Linear, nn.Conv2d, nn.BatchNorm2d, "
                f"... or one given to register_layer), got {kind!r}")
    kinds: tuple[type, ...] = () if every_layer else noise_on  # (): every registered layer
    exclude = set(exclude)
    module = copy.deepcopy(module)
    if heads:
        from pyro_prune.models.attention import project_attention

        project_attention(module)  # nn.MultiheadAttention computes with raw weights: give it layers
    config: Any = getattr(module, "config", None)
    if getattr(config, "use_cache", False):
        config.use_cache = False  # a key/value cache is for generation, not for a forward pass
    example = _example(module, example_input)
    if WeightPrior(weights) is WeightPrior.GAUSSIAN:
        from pyro_prune.models.bayesian import bayesian_layer_rule, bayesian_weights

        old = {path: m for path, m in module.named_modules() if path and bayesian_layer_rule(m) is not None}
        inputs = _layer_inputs(module, example, old)
        bayesian_weights(module, prior_scale=prior_scale)
        _check_bayesian_layers(module, old, inputs)
    probe = _probe(module, example)
    backbone: nn.Module = module if isinstance(probe, Tensor) else GatedNetwork(module)
    try:
        an = dependency_analysis(PrunableNet(backbone), example)
    except ValueError as err:
        raise ValueError(f"bayesianize needs a network torch.fx or torch.export can trace "
                         f"(traceable); {err}") from err
    if an.tracer == "export" and not isinstance(backbone, GatedNetwork):
        backbone = GatedNetwork(module)
        an = dependency_analysis(PrunableNet(backbone), example)
    prefix = "module." if isinstance(backbone, GatedNetwork) else ""

    # ---------------------------------------------------------------- attention heads
    head_sites: list[tuple[fx.Node, int, str]] = []
    in_attention: set[int] = set()
    if heads:
        head_sites, in_attention = attention_heads(an, exclude)

    # ---------------------------------------------------------------- neuron / channel gates
    sites: list[tuple[fx.Node, str, int, int]] = []  # (node, path, n, dim)
    hooked: dict[str, tuple[str, bool]] = {}  # export path: producer -> (hooked module, on its input)
    unplaced: list[str] = []
    untraced: dict[str, list[str]] = {}  # producer path -> the untraceable ops its channels reach
    pinned_untraced: dict[str, list[str]] = {}  # the same among producers nothing of which can go
    for path, nodes in an.producers.items():
        if len(nodes) != 1 or path in exclude:
            continue
        node = nodes[0]
        op = an.ops[node]
        m: Any = op.module
        slicer = layer_slicer(m)
        assert slicer is not None
        ids = torch.arange(op.offset, op.offset + op.channels)
        roots = an.root[ids]
        reaches = sorted({name for name, reached in an.untraceable if bool(torch.isin(roots, reached).any())})
        if bool(an.pinned_root[roots].all()):
            if reaches and not _feeds_the_output(an, node):  # pinned by the op, said below
                untraced[path] = reaches
            elif reaches:  # an output layer: said if no layer is left at all
                pinned_untraced[path] = reaches
            continue  # nothing of it can be removed (output layer, residual stream, ...)
        if reaches:  # some of its channels meet an op the converter cannot trace (BLOOM's baddbmm)
            untraced[path] = reaches
            continue
        if set(roots.tolist()) & in_attention:
            continue  # q, k, v: covered by the head gate
        at, at_path = node, path
        users = list(node.users)
        if len(users) == 1 and users[0].op == "call_module" and an.ops[users[0]].kind is OpKind.BATCH_NORM \
                and len(an.ops) and _called_once(an, users[0]):
            bn = an.ops[users[0]].module
            if _is_kind(bn, kinds):
                at, at_path = users[0], str(users[0].target)
            elif not _is_kind(m, kinds):
                continue
        elif not _is_kind(m, kinds):
            continue
        elif len(users) == 1 and users[0].op == "call_function" and an.ops[users[0]].kind is OpKind.BATCH_NORM:
            at = users[0]  # F.batch_norm: the gate goes after it (named after the producer)
            if an.tracer == "export":  # the network keeps its code: a hook after the BN
                hook = _hook_after(an, at)
                if hook is None:
                    unplaced.append(path)
                    continue
                hooked[path] = hook
        if at_path in exclude:
            continue
        sites.append((at, at_path, op.channels, -1 if slicer.out_axis == -1 else slicer.out_axis))
    if unplaced:
        warnings.warn(
            f"no gate on {unplaced}: the F.batch_norm after each is followed by ops a gate cannot be "
            f"moved past, and a gate before a BatchNorm would be normalised away; write the BatchNorm "
            f"as a module (nn.BatchNorm*d) or as the last op of a module", RuntimeWarning, stacklevel=2)
    if not sites and not head_sites:
        both = {**pinned_untraced, **untraced}
        raise ValueError(
            f"bayesianize found no layer of types {[k.__name__ for k in noise_on]} whose "
            f"structures can be removed (output layers, residual streams and excluded paths get no gate)"
            + (f"; {_untraced_note(both)}" if both else ""))
    if untraced:
        warnings.warn(_untraced_note(untraced), RuntimeWarning, stacklevel=3)

    def gate_name(path: str, suffix: str) -> str:
        return f"{path[len(prefix):].replace('.', '_')}_{suffix}"

    name: str
    if an.tracer == "fx":
        graph, env = _clean_copy(an.graph)
        gm = fx.GraphModule(backbone, graph)
        nodes_by_name = {n.name: env[n] for n in an.graph.nodes}
        for node, path, n, dim in sites:
            name = gate_name(path, "gate")
            gm.add_submodule(name, make_gate(n, dim, gate, **noise_kwargs))
            target = nodes_by_name[node.name]
            with gm.graph.inserting_after(target):
                gate_node = gm.graph.call_module(name, (target,))
            target.replace_all_uses_with(gate_node, delete_user_cb=lambda u, g=gate_node: u is not g)  # type: ignore[misc]
        for proj, n_heads, path in head_sites:
            name = gate_name(path, "head_gate")
            gm.add_submodule(name, make_gate(n_heads, -2, gate, **noise_kwargs))
            target = nodes_by_name[proj.name]
            x = target.args[0]
            with gm.graph.inserting_before(target):
                split = gm.graph.call_method("unflatten", (x, -1, (n_heads, -1)))
                gated = gm.graph.call_module(name, (split,))
                merged = gm.graph.call_method("flatten", (gated, -2))
            target.args = (merged, *target.args[1:])
        gm.graph.lint()
        gm.recompile()
        net_module: nn.Module = gm
    else:
        assert isinstance(backbone, GatedNetwork)
        for _node, path, n, dim in sites:
            name = gate_name(path, "gate")
            g = make_gate(n, dim, gate, **noise_kwargs)
            backbone.gates[name] = g
            hook_path, on_input = hooked.get(path, (path, False))
            if on_input:
                backbone.get_submodule(hook_path).register_forward_pre_hook(_InputGate(g))
            else:
                backbone.get_submodule(hook_path).register_forward_hook(_OutputGate(g))
        for _proj, n_heads, path in head_sites:
            name = gate_name(path, "head_gate")
            g = make_gate(n_heads, -2, gate, **noise_kwargs)
            backbone.gates[name] = g
            backbone.get_submodule(path).register_forward_pre_hook(_HeadGate(g, n_heads))
        net_module = backbone
    net = BayesianizedNet(net_module, likelihood=likelihood, num_data=num_data)
    if not example.is_floating_point():
        net.input_dtype = example.dtype
    net.record_config(example.shape[1:], source=type(module).__name__, gate=GateKind(gate),
                      weights=WeightPrior(weights), likelihood=net.likelihood)
    # record_config linked every gate to its Bayesian rows (a head's q, k and v too)
    paths = {gate_name(path, "gate"): path for _node, path, _n, _dim in sites}
    paths.update({gate_name(path, "head_gate"): path for _proj, _n, path in head_sites})
    return net, {name: paths[name.rsplit(".", 1)[-1]] for name in net.gates()}, example


def _is_kind(m: Any, kinds: tuple[type, ...]) -> bool:
    """``isinstance``, with a Bayesian layer standing for the plain layer it replaced."""
    from pyro_prune.models.bayesian import BayesianLayer

    if not kinds or isinstance(m, kinds):
        return True
    return isinstance(m, BayesianLayer) and issubclass(m.replaces, kinds)


def _hook_after(an: Any, node: fx.Node) -> tuple[str, bool] | None:
    """Where a forward hook applies a gate to the output of ``node`` (an op in the network's
    own code, e.g. ``F.batch_norm``) of a graph traced with ``torch.export``.

    ``(module path, False)``: the innermost module around ``node`` returns its value (a
    forward hook on that module); ``(layer path, True)``: the one layer reading it through
    ops that commute with a positive per-channel scale and keep the channel axis (ReLU,
    dropout, pooling: a pre-hook on that layer's input is the same gate); ``None``: neither.
    """
    from pyro_prune.graph import OpKind, module_returning, sole_reader

    path = module_returning(an, node)
    if path is not None:
        return path, False
    reader = sole_reader(an, node, lambda op: (op.kind is OpKind.ELEMENTWISE and op.elem.homogeneous)
                         or op.kind is OpKind.POOL)
    return (str(reader.target), True) if reader is not None else None


def _feeds_the_output(an: Any, node: fx.Node) -> bool:
    """Whether ``node``'s value reaches the network's output without passing another layer
    (an output layer, whatever ops it goes through: a classifier pooling its last token)."""
    from pyro_prune.graph import OpKind

    seen, todo = {node}, list(node.users)
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op == "output":
            return True
        op = an.ops.get(n)
        if op is not None and op.kind is OpKind.PRODUCER:
            continue
        todo.extend(n.users)
    return False


def _called_once(an: Any, node: fx.Node) -> bool:
    return sum(1 for n in an.ops if n.op == "call_module" and n.target == node.target) == 1


def _clean_copy(graph: fx.Graph) -> tuple[fx.Graph, dict[fx.Node, fx.Node]]:
    new = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in graph.nodes:
        copied = new.node_copy(node, lambda n: env[n])
        copied.meta = {}
        env[node] = copied
    return new, env
