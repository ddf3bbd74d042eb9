r"""Iterative neuron pruning of a Bayesian network with a Wasserstein-2 criterion.

The procedure of Kuboň ("Practical Neuron-level Pruning Framework for Bayesian Neural
Networks", TU Delft 2025), on any :class:`~pyro_prune.models.PrunableNet` with structure
gates (typically ``MLP(..., weights="gaussian", gate="mask")``):

1. draw the posterior predictive of the full network on a set of inputs
   (:func:`~pyro_prune.predictive.predictive_run`) and of the empty network (every
   structure removed), and compute ``W2(p_full, p_empty)``;
2. score every kept structure by ``E[z^2] = W2(p_z, delta_0)^2`` of its activation
   (:func:`~pyro_prune.predictive.neuron_w2`) and remove the ``batch`` lowest-scoring ones
   (globally, never emptying a gate);
3. re-draw the predictive of the reduced network (which also re-scores the remaining
   structures, in the same pass) and record

       cost(alpha) = W2(p_full, p_alpha) / W2(p_full, p_empty)  +  lambda * kept_fraction(alpha)
                     \___________ shape cost ____________/     \_____ sparsity cost _____/

4. repeat until every gate is down to one structure; return the mask of lowest cost and the
   whole path.

Every predictive draw uses the same seed (common random numbers): ``p_full`` and ``p_alpha``
share their posterior draws, so the shape cost measures the pruning, not Monte Carlo noise.

Choice of ``lambda`` (default 0.3). The cost is ``shape(p) + lambda (1 - p)`` in the prune
ratio ``p``; it falls while the shape cost grows slower than ``lambda`` per unit of prune
ratio, and its minimum sits where the slope of the shape cost reaches ``lambda``: with
``lambda = 0.3`` pruning stops when removing another 1% of the structures would move the
predictive by more than 0.3% of the distance to the empty network. Both terms are ratios, so
the default has no unit and needs no tuning per data set, but it must be small enough for
the networks whose error is small against the spread of their predictions. ``lambda = 1`` is
the indifference point (the full network and the empty one both cost 1), and it proved too
permissive there: on a regression with R^2 near 1 (UCI yacht) the distance to the empty
network is about the standard deviation of the targets while the model's own error is a few
per cent of it, so a shift of a tenth of that distance, which ``lambda = 1`` accepts for a
tenth of the structures, nearly doubles the test RMSE. In the benchmarks
(``benchmarks/w2_uci.py``, ``benchmarks/w2_fashion_mnist.py``) ``lambda = 0.3`` keeps the
test RMSE of every UCI set within 5% of the unpruned network's and still removes over 80% of
the hidden neurons of the Fashion-MNIST network at unchanged accuracy. Smaller ``lambda``
prunes less (``lambda -> 0`` keeps everything), larger prunes more;
:meth:`W2PruneResult.select` re-picks along a stored path for another ``lambda`` without
re-running the search.

Defaults and cost: ``draws=32`` posterior draws per input on ``max_inputs=512`` inputs
(a seeded subset of ``data``), ``batch=0.02`` (2% of all structures per step, so about 50
steps): each step is one batched forward pass of ``draws x inputs`` rows plus one exact
optimal transport per input (``32 x 32``, or the sorted-sample formula for 1-D outputs).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from pyro_prune._checks import check_count, check_inputs, check_number
from pyro_prune._deprecation import renamed_keywords
from pyro_prune.models.base import PrunableNet, check_prunable
from pyro_prune.models.gate import rank_structures, removals_in_order

# Imported at module load on purpose: the signature's defaults (DEFAULT_DRAWS, Output.AUTO)
# come from here, the predictive imports nothing of the inference stage (no cycle; see
# tests/test_imports.py), and everything it needs is already loaded by ``fit``, so the
# import adds only the predictive's own modules to ``import pyro_prune.inference``.
from pyro_prune.predictive import (
    DEFAULT_DRAWS,
    Engine,
    NeuronScore,
    Output,
    empty_mask,
    kept_mask,
    predictive_run,
    predictive_w2,
)
from pyro_prune.progress import progress_bar

__all__ = ["DEFAULT_LAMBDA", "W2PruneResult", "w2_prune"]

#: default weight of the sparsity cost (see the module docstring)
DEFAULT_LAMBDA = 0.3


@dataclass
class W2PruneResult:
    """What :func:`w2_prune` returns.

    Attributes:
        mask: dict gate name -> kept bool tensor of the lowest-cost step.
        path: one row per step: ``step``, ``removed`` (structures removed so far by the
            search), ``kept``, ``kept_fraction``, ``prune_ratio``, ``w2``, ``shape_cost``
            (``w2 / w2_empty``), ``sparsity_cost`` (``lam * kept_fraction``), ``cost`` and
            ``kept_per_gate``.
        best_step: index into ``path`` of ``mask``.
        lam: the lambda used.
        w2_empty: ``W2(p_full, p_empty)``.
        order: the removed structures ``(gate, index)`` in removal order.
        initial: the gates' ``kept`` before the search.
    """

    mask: dict[str, Tensor]
    path: list[dict[str, Any]]
    best_step: int
    lam: float
    w2_empty: float
    order: list[tuple[str, int]] = field(default_factory=list)
    initial: dict[str, Tensor] = field(default_factory=dict)

    @property
    def best(self) -> dict[str, Any]:
        return self.path[self.best_step]

    def mask_at(self, step: int) -> dict[str, Tensor]:
        """The kept masks after ``step`` steps of the search."""
        removed = self.path[step]["removed"]
        mask = {k: v.clone() for k, v in self.initial.items()}
        for name, idx in self.order[:removed]:
            mask[name][idx] = False
        return mask

    def select(self, lam: float) -> W2PruneResult:
        """The same path with the step of lowest cost under another ``lam``."""
        lam = _check_lambda(lam)
        path = [dict(row) for row in self.path]
        for row in path:
            row["sparsity_cost"] = lam * row["kept_fraction"]
            row["cost"] = row["shape_cost"] + row["sparsity_cost"]
        best = _argmin_cost(path)
        result = W2PruneResult(mask={}, path=path, best_step=best, lam=lam, w2_empty=self.w2_empty,
                               order=self.order, initial=self.initial)
        result.mask = result.mask_at(best)
        return result

    def apply(self, model: PrunableNet) -> int:
        """Prune ``model``'s gates to :attr:`mask` (monotone); returns how many were removed."""
        return check_prunable(model).prune({name: ~kept for name, kept in self.mask.items()})


def _check_lambda(lam: object) -> float:
    return check_number(lam, "lam", minimum=0.0)


def _argmin_cost(path: list[dict[str, Any]]) -> int:
    return min(range(len(path)), key=lambda i: (path[i]["cost"], i))


def _step_size(batch: int | float, total: int) -> int:
    if isinstance(batch, bool) or not isinstance(batch, (int, float)):
        raise TypeError(f"batch must be an int or a float fraction, got {type(batch).__name__}")
    if isinstance(batch, int):
        if batch < 1:
            raise ValueError(f"batch must be >= 1 structure, got {batch}")
        return batch
    if not 0.0 < batch < 1.0:
        raise ValueError(f"a fractional batch must lie in (0, 1), got {batch}")
    return max(1, math.ceil(batch * total))


def _next_removals(kept: dict[str, Tensor], scores: dict[str, Tensor], k: int) -> list[tuple[str, int]]:
    """The ``k`` lowest-scoring kept structures, never taking a gate's last one."""
    order = rank_structures(kept, scores)
    return [(name, idx) for _, name, idx in itertools.islice(removals_in_order(kept, order), k)]


@renamed_keywords(method="engine")
def w2_prune(
    model: PrunableNet,
    data: Tensor | TensorDataset | Sequence[Tensor],
    *,
    lam: float = DEFAULT_LAMBDA,
    batch: int | float = 0.02,
    draws: int = DEFAULT_DRAWS,
    guide: Callable | None = None,
    engine: Engine | str = Engine.FAST,
    output: Output | str = Output.AUTO,
    score: NeuronScore | str = NeuronScore.ACTIVATION,
    max_inputs: int | None = 512,
    seed: int = 0,
    prune: bool = False,
    progress: bool = False,
) -> W2PruneResult:
    """Iterative W2 neuron pruning; returns the lowest-cost mask and the whole path.

    Args:
        model: a trained :class:`PrunableNet` with structure gates (Bayesian weights, or
            multiplicative noise).
        data: inputs (or a ``TensorDataset`` or ``(inputs, targets)`` pair) on which the predictive is compared, usually
            training inputs.
        lam: weight of the sparsity cost (default 0.3; see the module docstring).
        batch: structures removed per step: an int, or a fraction of all structures.
        draws: posterior draws per input.
        guide: the guide (default ``model.guide``); another guide needs ``engine="pyro"``.
        engine: ``"fast"`` (local reparameterisation) or ``"pyro"`` (``Predictive``); the
            keyword was ``method`` before (still accepted for one release, with a warning).
        output: what the predictive compares (``"auto"``: probabilities / means).
        score: the neuron score that orders the removals (``"activation"`` or
            ``"contribution"``, see :func:`~pyro_prune.predictive.neuron_w2`).
        max_inputs: use a seeded random subset of this many inputs (``None``: all).
        seed: seed of the input subset and of every predictive draw (common random numbers).
        prune: also prune ``model``'s gates to the chosen mask.
        progress: show progress (:func:`~pyro_prune.progress.progress_bar`).

    Raises:
        ValueError: the model has no gate, or removing everything does not move the
            predictive (``W2(p_full, p_empty) = 0``), or bad arguments.
    """
    model = check_prunable(model)
    lam = _check_lambda(lam)
    gates = model.gates()
    if not gates:
        raise ValueError("model has no structure gates to prune")
    x = check_inputs(data)
    if max_inputs is not None:
        check_count(max_inputs, "max_inputs", or_none=True)
        if x.shape[0] > max_inputs:
            gen = torch.Generator().manual_seed(seed)
            x = x[torch.randperm(x.shape[0], generator=gen)[:max_inputs].sort().values]
    total = sum(g.num_structures for g in gates.values())
    step = _step_size(batch, total)
    kw: dict[str, Any] = dict(guide=guide, draws=draws, engine=engine, output=output, seed=seed)

    initial = kept_mask(model)
    full = predictive_run(model, x, scores=True, score=score, **kw)
    empty = predictive_run(model, x, mask=empty_mask(model), **kw)
    w2_empty = predictive_w2(full.samples, empty.samples)
    if not w2_empty > 0:
        raise ValueError("removing every structure does not change the predictive (W2 = 0)")

    kept = {k: v.clone() for k, v in initial.items()}
    order: list[tuple[str, int]] = []

    def row(step_i: int, w2: float) -> dict[str, Any]:
        n_kept = sum(int(m.sum()) for m in kept.values())
        frac = n_kept / total
        shape = w2 / w2_empty
        return {"step": step_i, "removed": len(order), "kept": n_kept, "kept_fraction": frac,
                "prune_ratio": 1.0 - frac, "w2": w2, "shape_cost": shape,
                "sparsity_cost": lam * frac, "cost": shape + lam * frac,
                "kept_per_gate": {k: int(v.sum()) for k, v in kept.items()}}

    path = [row(0, 0.0)]
    scores = full.scores
    assert scores is not None
    removable = sum(max(0, int(m.sum()) - 1) for m in kept.values())
    bar = progress_bar(desc="w2 prune", total=removable, enabled=progress)
    while True:
        chosen = _next_removals(kept, scores, step)
        if not chosen:
            break
        for name, idx in chosen:
            kept[name][idx] = False
        order.extend(chosen)
        run = predictive_run(model, x, mask=kept, scores=True, score=score, **kw)
        assert run.scores is not None
        scores = run.scores
        path.append(row(len(path), predictive_w2(full.samples, run.samples)))
        bar.update(len(chosen))
        bar.set_postfix(cost=f"{path[-1]['cost']:.3f}")
    bar.close()

    best = _argmin_cost(path)
    result = W2PruneResult(mask={}, path=path, best_step=best, lam=lam, w2_empty=w2_empty,
                           order=order, initial=initial)
    result.mask = result.mask_at(best)
    if prune:
        result.apply(model)
    return result
