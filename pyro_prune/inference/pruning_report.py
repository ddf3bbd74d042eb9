"""What a pruning run did, in one line: removed of total per layer kind, criterion, dF range.

:func:`pruning_report` returns a :class:`PruningReport`; its ``str`` is the line
:func:`~pyro_prune.inference.fit.fit` logs at the end of a run with a pruning schedule and
the CLI prints. When nothing was removed it says why (every dF below 0, with the largest)
and what to try, so that "compression 0" never passes unexplained.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from pyro_prune.models.base import PrunableNet
from pyro_prune.models.gate import StructureGate
from pyro_prune.reduction import Criterion
from pyro_prune.reduction.scoring import as_criterion, structure_scores

__all__ = ["KindCount", "PruningReport", "ScoreRange", "pruning_report", "structure_kind"]

logger = logging.getLogger("pyro_prune")

#: what to try when a threshold-free criterion removed nothing
ADVICE = ("try a larger KL weight (kl_scale, a tempered posterior) or a larger noise_lr, so that "
          "the posteriors of unneeded structures can move away from their initialisation; "
          "see docs/guides_and_reports.md")


def structure_kind(model: PrunableNet, name: str, gate: StructureGate) -> str:
    """What the structures of gate ``name`` are: ``"linear neurons"``, ``"conv channels"``, ...
    (the gate's kind in the structure graph, and its producer's type)."""
    from pyro_prune.graph import structure_graph

    try:
        info = structure_graph(model).gates.get(name)
    except (ValueError, TypeError, RuntimeError):
        info = None
    if info is not None and info.kind == "head":
        return "attention heads"
    producer: nn.Module | None = None
    if info is not None and info.producer is not None:
        producer = model.net.get_submodule(info.producer)
    cls = type(producer).__name__.lower() if producer is not None else ""
    if "conv" in cls or (info is not None and info.kind == "channel" and producer is None):
        return "conv channels"
    if "linear" in cls or (info is not None and info.kind == "neuron" and producer is None):
        return "linear neurons"
    return f"{type(producer).__name__} structures" if producer is not None else "structures"


@dataclass(frozen=True)
class KindCount:
    """Structures of one kind: how many were removed of how many."""

    kind: str
    removed: int
    total: int


@dataclass(frozen=True)
class ScoreRange:
    """The range of a criterion over the structures it decided on (dF, or the score)."""

    low: float
    high: float
    count: int


@dataclass(frozen=True)
class PruningReport:
    """One run's pruning outcome (``str`` gives the one-line report).

    Attributes:
        criterion: the criterion's name.
        threshold_free: dF criteria (remove where ``dF >= 0``); else score below ``threshold``.
        threshold: the thresholded criterion's threshold (``None`` for dF criteria).
        counts: removed / total per layer kind, in network order.
        values: range of dF (threshold-free) or of the score over the structures of the
            last decision (the kept structures when it was taken), or ``None``.
    """

    criterion: str
    threshold_free: bool
    threshold: float | None
    counts: tuple[KindCount, ...]
    values: ScoreRange | None

    @property
    def removed(self) -> int:
        return sum(c.removed for c in self.counts)

    @property
    def total(self) -> int:
        return sum(c.total for c in self.counts)

    def _quantity(self) -> str:
        return "dF" if self.threshold_free else self.criterion

    def __str__(self) -> str:
        parts = ", ".join(f"{c.removed} of {c.total} {c.kind}" for c in self.counts) or "no structures"
        head = f"{self.criterion}: removed {parts}"
        q = self._quantity()
        if self.values is None:
            return head
        rng = f"{q} from {self.values.low:.4g} to {self.values.high:.4g}"
        if self.removed > 0:
            return f"{head} ({rng} at the last decision)"
        if self.threshold_free:
            why = f"nothing removed: all dF < 0 (max dF = {self.values.high:.4g})"
            return f"{head}; {why}; {ADVICE}"
        why = (f"nothing removed: all {q} >= {self.threshold:g} (min {q} = {self.values.low:.4g})")
        return f"{head}; {why}; lower the threshold or try a threshold-free criterion (bmrs_u)"


def _range(scores: dict[str, Tensor], masks: dict[str, Tensor], sign: float) -> ScoreRange | None:
    values = [sign * s.detach().double().flatten()[m.flatten()] for s, m in
              ((scores[n], masks[n]) for n in scores)]
    flat = torch.cat(values) if values else torch.zeros(0, dtype=torch.float64)
    flat = flat[~torch.isnan(flat)]
    if flat.numel() == 0:
        return None
    return ScoreRange(low=float(flat.min()), high=float(flat.max()), count=int(flat.numel()))


def decision_range(model: PrunableNet, crit: Criterion, scores: dict[str, Tensor],
                   kept: dict[str, Tensor]) -> ScoreRange | None:
    """The range of dF (or the score) of a decision over the structures kept before it."""
    return _range(scores, kept, -1.0 if crit.threshold_free else 1.0)


def pruning_report(model: PrunableNet, criterion: str | Criterion, *,
                    decision: ScoreRange | None = None, guide: Any = None,
                    **criterion_kwargs: Any) -> PruningReport:
    """Summarise what ``criterion`` has removed from ``model`` (removed = not kept).

    Gates that cannot shrink the network whatever they remove are not counted (and are
    reported once, :func:`~pyro_prune.graph.warn_cannot_shrink`).

    ``decision``: the dF range of the last pruning decision (what
    :class:`~pyro_prune.inference.schedules.ContinuousPruning` records); without it the
    criterion is evaluated now, over the kept structures (with the fitted ``guide``, as
    :func:`~pyro_prune.reduction.scoring.structure_scores`).
    """
    from pyro_prune.graph import shrinkable_gates

    crit = as_criterion(criterion, **criterion_kwargs)
    counts: dict[str, list[int]] = {}
    for name, gate in shrinkable_gates(model).items():
        c = counts.setdefault(structure_kind(model, name, gate), [0, 0])
        c[0] += gate.num_structures - int(gate.kept.sum())
        c[1] += gate.num_structures
    if decision is None:
        try:
            scores = structure_scores(model, crit, guide=guide)
        except (TypeError, ValueError) as err:  # the criterion does not apply: say so, keep counts
            logger.debug("pruning_report: %s", err)
        else:
            decision = decision_range(model, crit, scores, {n: g.kept for n, g in model.gates().items()})
    threshold = None if crit.threshold_free else crit.default_threshold
    if threshold is not None and not math.isfinite(threshold):
        threshold = None
    return PruningReport(
        criterion=crit.name, threshold_free=crit.threshold_free, threshold=threshold,
        counts=tuple(KindCount(k, r, t) for k, (r, t) in counts.items()), values=decision,
    )
