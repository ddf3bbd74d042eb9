"""The W2 neuron score of a structure, recorded during predictive draws.

A structure's score is ``E[z^2] = Var[z] + E[z]^2 = W2(p_z, delta_0)^2`` of its activation ``z``
over the inputs and the posterior draws (Kuboň, "Practical Neuron-level Pruning Framework for
Bayesian Neural Networks", TU Delft 2025): the squared distance between the structure's output
distribution and the point mass at zero that removing it would put there. ``z`` is the gate's
output passed through the elementwise activation that follows it (e.g. ``ReLU``; none if
another op follows); a conv channel's score averages over its positions.
:class:`ScoreRecorder` accumulates it with forward hooks while
:func:`~pyro_prune.predictive.predictive_run` draws;
:func:`~pyro_prune.predictive.neuron_w2` returns it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import Tensor, nn

from pyro_prune.models.base import PrunableNet
from pyro_prune.models.gate import StructureGate

__all__ = ["NeuronScore", "ScoreRecorder"]


class NeuronScore(enum.Enum):
    """What a structure's W2 score measures (see :func:`~pyro_prune.predictive.neuron_w2`)."""

    #: ``E[z^2] = W2(p_z, delta_0)^2`` of the activation ``z`` (Kuboň 2025)
    ACTIVATION = "activation"
    #: ``E[||z w_out||^2] = E[z^2] sum_k E[w_kj^2]``: the W2 to zero of the signal the
    #: structure sends into the next layer (its activation times its outgoing weights)
    CONTRIBUTION = "contribution"


def _owner_model(model: PrunableNet | nn.Module) -> PrunableNet | None:
    """``model``, or the model whose backbone ``model`` is (recorded by its gates)."""
    if isinstance(model, PrunableNet):
        return model
    for m in model.modules():
        owner = m.__dict__.get("_owner") if isinstance(m, StructureGate) else None
        if owner is not None and owner[0].net is model:
            return owner[0]  # type: ignore[no-any-return]
    return None


def _gate_info(model: PrunableNet | nn.Module, gate_name: str) -> Any:
    """Gate ``gate_name``'s entry of the structure graph (None when the network cannot be
    traced: no activation or consumer is known then)."""
    from pyro_prune.graph import structure_graph

    owner = _owner_model(model)
    if owner is None:
        return None
    try:
        return structure_graph(owner).gates.get(gate_name)
    except (ValueError, TypeError, RuntimeError):
        return None


def _activation_after(model: PrunableNet | nn.Module, gate_name: str) -> Callable[[Tensor], Tensor] | None:
    """The elementwise activation applied right after gate ``gate_name``, if any."""
    info = _gate_info(model, gate_name)
    return info.activation if info is not None else None


def _consumer_of(model: PrunableNet | nn.Module, gate_name: str) -> nn.Module | None:
    """The one weight layer that reads gate ``gate_name``'s output (through activations,
    pooling and index ops); ``None`` when there is no such single consumer."""
    info = _gate_info(model, gate_name)
    if info is None or len(info.consumers) != 1:
        return None
    owner = _owner_model(model)
    assert owner is not None
    return owner.net.get_submodule(info.consumers[0])


def _outgoing_second_moments(layer: nn.Module, n: int, rows_kept: Tensor | None = None) -> Tensor | None:
    """``sum_k E[w_kj^2]`` over the outgoing weights of each of the ``n`` input structures.

    ``rows_kept`` masks the consumer's removed output structures (their weights send the
    signal nowhere).
    """
    loc = getattr(layer, "weight_loc", None)
    if loc is not None:
        m2 = loc.detach() ** 2 + (2 * cast(Tensor, layer.weight_log_scale).detach()).exp()
    else:
        m2 = cast(Tensor, layer.weight).detach() ** 2
    if getattr(layer, "groups", 1) != 1:
        return None
    if rows_kept is not None and rows_kept.shape == m2.shape[:1]:
        m2 = m2 * rows_kept.to(m2.dtype).reshape(-1, *([1] * (m2.dim() - 1)))
    cols = m2.sum(0)
    cols = cols.sum(tuple(range(1, cols.dim()))) if cols.dim() > 1 else cols  # conv kernels
    if cols.numel() == n:
        return cols
    if cols.dim() == 1 and cols.numel() % n == 0:  # flattened channels feeding a Linear layer
        return cols.reshape(n, -1).sum(-1)
    return None


class ScoreRecorder:
    """Forward hooks accumulating ``sum z^2`` per structure of every gate (a context manager:
    the hooks are attached inside the ``with`` block); :meth:`scores` gives the scores."""

    def __init__(self, model: PrunableNet) -> None:
        self.net = model.net
        self.gates = model.gates()
        self.model = model
        self.activations = {n: _activation_after(model, n) for n in self.gates}
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}
        self.handles: list = []

    def _hook(self, name: str) -> Callable:
        gate = self.gates[name]

        def hook(_module: nn.Module, _inp: tuple, out: Tensor) -> None:
            act = self.activations[name]
            z = act(out) if act is not None else out
            dim = gate.dim % z.dim()
            z2 = (z.detach().double() ** 2).movedim(dim, -1).reshape(-1, gate.num_structures)
            self.sums[name] = self.sums.get(name, 0) + z2.sum(0)
            self.counts[name] = self.counts.get(name, 0) + z2.shape[0]

        return hook

    def __enter__(self) -> ScoreRecorder:
        for name, gate in self.gates.items():
            self.handles.append(gate.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def _rows_kept(self, layer: nn.Module) -> Tensor | None:
        """Kept output structures of ``layer`` (``kept`` of the gates that select its rows)."""
        kept = None
        for gate in self.gates.values():
            if gate.producer_name is not None and self.net is not None \
                    and self.net.get_submodule(gate.producer_name) is layer:
                kept = gate.kept if kept is None else kept & gate.kept
        return kept

    def scores(self, kind: NeuronScore = NeuronScore.ACTIVATION) -> dict[str, Tensor]:
        out = {}
        for name, gate in self.gates.items():
            if name in self.sums:
                s = (self.sums[name] / self.counts[name]).float()
            else:
                s = torch.zeros(gate.num_structures)
            if kind is NeuronScore.CONTRIBUTION:
                consumer = _consumer_of(self.model, name)
                weights = None if consumer is None else _outgoing_second_moments(
                    consumer, gate.num_structures, self._rows_kept(consumer))
                if weights is None:
                    raise ValueError(
                        f"score='contribution' needs the weight layer that reads gate {name!r} "
                        f"(through activations, pooling and flattening only); none was found"
                    )
                s = s * weights.to(s.device, s.dtype)
            out[name] = s * gate.kept.to(s.device, s.dtype)
        return out
