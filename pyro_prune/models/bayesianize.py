"""Turn an ordinary torch network into a prunable Pyro model.

:func:`bayesianize` traces the network with ``torch.fx`` and inserts a structure gate
(log-normal multiplicative noise by default) after every chosen layer, reading the
network's graph rather than a list of known architectures:

* a gate follows each ``nn.Linear`` (over its output features), ``nn.Conv2d`` (over its
  output channels) and ``nn.BatchNorm2d`` (over its channels) named in ``noise_on``;
* a convolution whose only consumer is a BatchNorm goes ungated and the gate follows the
  BatchNorm instead (a gate before BatchNorm would be normalised away);
* layers whose output reaches the network's output without passing another gated layer
  (the output layer) get no gate, since pruning them would remove classes.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence

import torch.fx as fx
from torch import nn

from pyro_prune.models.base import Likelihood, PrunableNet
from pyro_prune.models.layers import GateKind, WeightPrior, make_gate

__all__ = ["bayesianize", "BayesianizedNet"]

_STRUCTURE_DIM: dict[type[nn.Module], int] = {nn.Linear: -1, nn.Conv2d: 1, nn.BatchNorm2d: 1}


def _num_structures(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    if isinstance(module, nn.BatchNorm2d):
        return module.num_features
    raise TypeError(f"cannot gate a {type(module).__name__}")


def _dim_of(module: nn.Module) -> int:
    for kind, dim in _STRUCTURE_DIM.items():
        if isinstance(module, kind):
            return dim
    raise TypeError(f"cannot gate a {type(module).__name__}")


class BayesianizedNet(PrunableNet):
    """A :class:`PrunableNet` made by :func:`bayesianize`; ``net`` is an ``fx.GraphModule``."""


def bayesianize(
    module: nn.Module,
    noise_on: Sequence[type[nn.Module]] = (nn.Linear, nn.Conv2d, nn.BatchNorm2d),
    *,
    likelihood: Likelihood | str = Likelihood.CATEGORICAL,
    gate: GateKind | str = GateKind.NOISE,
    weights: WeightPrior | str = WeightPrior.POINT,
    prior_scale: float = 1.0,
    exclude: Iterable[str] = (),
    num_data: int | None = None,
    **noise_kwargs: float,
) -> BayesianizedNet:
    """Make a Pyro model with gates after the chosen layers of ``module``.

    The input module is not modified (it is deep-copied first), so its trained weights
    become the initial point estimates of the Pyro model.

    Args:
        module: any ``torch.fx``-traceable network.
        noise_on: layer types to gate; each must be ``nn.Linear``, ``nn.Conv2d`` or
            ``nn.BatchNorm2d``.
        likelihood: ``"categorical"`` (the module outputs logits) or ``"gaussian"``.
        gate: ``"noise"`` or ``"mask"``.
        weights: ``"point"`` or ``"gaussian"`` (every Linear/Conv2d becomes Bayesian).
        exclude: module paths that get no gate.
        num_data: training-set size for the likelihood scaling.

    Raises:
        TypeError: ``module`` is not an ``nn.Module`` or ``noise_on`` names another type.
        ValueError: the network cannot be traced (the message names the failing op) or
            no layer is left to gate.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    noise_on = tuple(noise_on)
    for kind in noise_on:
        if not (isinstance(kind, type) and issubclass(kind, tuple(_STRUCTURE_DIM))):
            raise TypeError(
                f"noise_on may name nn.Linear, nn.Conv2d and nn.BatchNorm2d, got {kind!r}"
            )
    exclude = set(exclude)
    module = copy.deepcopy(module)
    try:
        gm = fx.symbolic_trace(module)
    except Exception as err:  # fx raises many kinds; name the cause
        raise ValueError(
            f"bayesianize needs a torch.fx-traceable network; tracing "
            f"{type(module).__name__} failed: {err}"
        ) from err
    graph = gm.graph
    modules = dict(gm.named_modules())
    layer_types = tuple(_STRUCTURE_DIM)

    def is_layer(node: fx.Node) -> bool:
        return node.op == "call_module" and isinstance(modules.get(str(node.target)), layer_types)

    def reaches_output(node: fx.Node) -> bool:
        """True when the output is reachable from ``node`` without passing another layer."""
        stack, seen = list(node.users), set()
        while stack:
            user = stack.pop()
            if user in seen:
                continue
            seen.add(user)
            if user.op == "output":
                return True
            if not is_layer(user):
                stack.extend(user.users)
        return False

    targets: list[tuple[fx.Node, str]] = []  # (node to gate, producer path)
    for node in list(graph.nodes):
        if node.op != "call_module":
            continue
        layer = modules.get(str(node.target))
        if not isinstance(layer, noise_on) or str(node.target) in exclude:
            continue
        users = list(node.users)
        if (
            isinstance(layer, nn.Conv2d)
            and len(users) == 1
            and users[0].op == "call_module"
            and isinstance(modules.get(str(users[0].target)), nn.BatchNorm2d)
            and nn.BatchNorm2d in noise_on
        ):
            continue  # the gate goes after the BatchNorm
        if reaches_output(node):
            continue
        producer = str(node.target)
        if isinstance(layer, nn.BatchNorm2d):
            arg = node.args[0]
            if isinstance(arg, fx.Node) and arg.op == "call_module" and isinstance(
                modules.get(str(arg.target)), nn.Conv2d
            ):
                producer = str(arg.target)
        targets.append((node, producer))
    if not targets:
        raise ValueError(
            f"bayesianize found no layer of types {[k.__name__ for k in noise_on]} to gate "
            f"(output layers and excluded paths get no gate)"
        )
    producers: dict[str, str] = {}
    for node, producer in targets:
        layer = modules[str(node.target)]
        gate_name = f"{str(node.target).replace('.', '_')}_gate"
        gm.add_submodule(gate_name, make_gate(_num_structures(layer), _dim_of(layer), gate, **noise_kwargs))
        with graph.inserting_after(node):
            gate_node = graph.call_module(gate_name, (node,))
        node.replace_all_uses_with(gate_node, delete_user_cb=lambda user, g=gate_node: user is not g)  # type: ignore[misc]
        producers[gate_name] = producer
    graph.lint()
    gm.recompile()
    if WeightPrior(weights) is WeightPrior.GAUSSIAN:
        from pyro_prune.models.bayesian import bayesian_weights

        bayesian_weights(gm, prior_scale=prior_scale)
    net = BayesianizedNet(gm, likelihood=likelihood, num_data=num_data)
    for gate_name, producer in producers.items():
        net.net.get_submodule(gate_name).producer_name = producer  # type: ignore[assignment]
    net.config = {"source": type(module).__name__, "gate": GateKind(gate).value,
                  "weights": WeightPrior(weights).value, "likelihood": net.likelihood.value}
    return net
