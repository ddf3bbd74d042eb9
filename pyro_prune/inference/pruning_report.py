"""What a pruning run did, in one line: removed of total per layer kind, criterion, dF range.

:func:`pruning_report` returns a :class:`PruningReport`; its ``str`` is the line
:func:`~pyro_prune.inference.fit.fit` logs at the end of a run with a pruning schedule and
the CLI prints. When nothing was removed it says why (every dF below 0, with the largest)
and what to try, so that "compression 0" never passes unexplained. When, besides, every noise
posterior is still far narrower than its prior (:class:`PosteriorSpread`), the run most
likely took too few optimizer steps for unneeded structures to widen to their prior (a log
sigma moves by about ``noise_lr`` per Adam step), and the line says so.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from pyro_prune.inference.schedules import AUTOGUIDE_CRITERION
from pyro_prune.models.base import PrunableNet
from pyro_prune.models.gate import StructureGate
from pyro_prune.reduction import Criterion
from pyro_prune.reduction.scoring import as_criterion, structure_scores

__all__ = ["KIND_LABELS", "KindCount", "PosteriorSpread", "PruningReport", "ScoreRange", "pruning_report",
           "structure_kind"]

logger = logging.getLogger("pyro_prune")

#: what to try when a threshold-free criterion removed nothing
ADVICE = ("try a larger KL weight (kl_scale, a tempered posterior), a larger noise_lr or more optimizer "
          "steps, so that the posteriors of unneeded structures can move away from their initialisation; "
          "see docs/guides_and_reports.md")
#: what to try when nothing was removed and every noise posterior is still narrow
STEPS_ADVICE = ("either every structure is needed or the run took too few optimizer steps for the "
                "posteriors of unneeded structures to widen to their prior (a log sigma moves by about "
                "noise_lr per Adam step: a few hundred steps at the default 0.03); train for more steps "
                "(more epochs, or a smaller batch_size: each epoch is ceil(num_data / batch_size) steps); "
                "see docs/guides_and_reports.md")
#: the criteria whose reduced prior is a spike at the bottom ``A`` of the range (BMRS_N)
SPIKE_AT_A = frozenset({"bmrs", "bmrs_n", "bmrs_n_code"})
#: what to try when such a criterion removed nothing from the posterior of a Pyro autoguide
GUIDE_ADVICE = ("under a Pyro autoguide each structure's posterior is logit-normal, whose density "
                "vanishes at the edge A where this criterion's reduced prior sits, so it removes little; "
                f"use ContinuousPruning() (its default criterion under an autoguide, {AUTOGUIDE_CRITERION}, "
                "whose reduced prior lies inside the range); see docs/guides_and_reports.md")
#: a posterior at most this share of its prior's width is "still narrow" (the posterior of a
#: structure the data does not need widens to about its prior's width, a share of about 1,
#: before a dF criterion removes it); the share only chooses the advice, never a removal
NARROW = 0.5


#: the report's name of each kind of structure (:class:`~pyro_prune.graph.GateInfo` ``kind``)
KIND_LABELS = {"neuron": "linear neurons", "channel": "conv channels", "head": "attention heads"}


def structure_kind(model: PrunableNet, name: str, gate: StructureGate) -> str:
    """What the structures of gate ``name`` are: ``"linear neurons"``, ``"conv channels"`` or
    ``"attention heads"``.

    Decided by what the gate multiplies, not by a layer's class name: the gate's kind in the
    structure graph (the output features of a linear map, whatever its weight layout, e.g.
    GPT-2's ``Conv1D``; the channels of a spatial convolution; blocks of attention channels).
    A gate of a network that cannot be traced is read from the axis it multiplies: the last
    (features) or another (channels).
    """
    from pyro_prune.graph import structure_graph

    try:
        info = structure_graph(model).gates.get(name)
    except (ValueError, TypeError, RuntimeError):
        info = None
    if info is not None:
        return KIND_LABELS[info.kind]
    return KIND_LABELS["neuron" if gate.dim == -1 else "channel"]


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
class PosteriorSpread:
    """How far the noise posteriors of the kept structures have widened towards their prior.

    ``widest``: the largest posterior ``sigma`` (of ``log theta``); ``prior``: the standard
    deviation of ``log theta`` under that structure's log-uniform prior,
    ``(log_high - log_low) / sqrt(12)``. A structure the data does not need ends with a
    posterior about as wide as its prior; one it needs stays far narrower.
    """

    widest: float
    prior: float

    @property
    def narrow(self) -> bool:
        """Every posterior is at most :data:`NARROW` of its prior's width."""
        return self.widest <= NARROW * self.prior


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
        spread: the widest noise posterior of the kept structures against its prior's
            width, ``None`` without noise layers or with a guide of one's own.
        foreign_guide: the posterior is a guide's other than the model's built-in one (an
            autoguide): a BMRS_N criterion that removed nothing then says to use
            ``ContinuousPruning()``'s default under an autoguide, ``bmrs_u4``.
    """

    criterion: str
    threshold_free: bool
    threshold: float | None
    counts: tuple[KindCount, ...]
    values: ScoreRange | None
    spread: PosteriorSpread | None = None
    #: whether the noise posterior is a guide's other than the model's built-in one
    foreign_guide: bool = False

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
            if self.foreign_guide and self.criterion in SPIKE_AT_A:
                return f"{head}; {why}; {GUIDE_ADVICE}"
            if self.spread is not None and self.spread.narrow:
                narrow = (f"the noise posteriors are all still narrow (widest sigma {self.spread.widest:.3g}, "
                          f"the prior's {self.spread.prior:.3g})")
                return f"{head}; {why}; {narrow}: {STEPS_ADVICE}"
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


def posterior_spread(model: PrunableNet) -> PosteriorSpread | None:
    """The widest built-in noise posterior of the kept structures, against its prior's width."""
    best: PosteriorSpread | None = None
    for layer in model.noise_layers().values():
        if not bool(layer.kept.any()):
            continue
        prior = (layer.log_high - layer.log_low) / math.sqrt(12.0)
        widest = float(layer.scale.detach()[layer.kept].max())
        if best is None or widest / prior > best.widest / best.prior:
            best = PosteriorSpread(widest=widest, prior=prior)
    return best


def _foreign_guide(model: PrunableNet, guide: Any) -> bool:
    """Whether the noise posterior is a guide's other than the model's built-in one."""
    from pyro_prune.inference.guides import attached_guide

    fitted = attached_guide(model) if guide is None else guide
    return fitted is not None and fitted != model.guide


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
    foreign = _foreign_guide(model, guide)
    threshold = None if crit.threshold_free else crit.default_threshold
    if threshold is not None and not math.isfinite(threshold):
        threshold = None
    return PruningReport(
        criterion=crit.name, threshold_free=crit.threshold_free, threshold=threshold,
        counts=tuple(KindCount(k, r, t) for k, (r, t) in counts.items()), values=decision,
        spread=None if foreign else posterior_spread(model), foreign_guide=foreign,
    )
