r"""How far pruning moves the posterior predictive, in W2: the shift of a mask and the score of
every structure.

:func:`w2_shift` gives ``W2(p_full, p_pruned)`` and the normalised shift
``W2(p_full, p_pruned) / W2(p_full, p_empty)``, where ``p_empty`` is the fully pruned network
(every structure of every gate removed, so the output is the output layer's bias only).
It applies after any criterion (BMRS, SNR, W2 search, ...). :func:`neuron_w2` scores every
structure by the W2 between its output distribution and the point mass at zero that removing
it would put there (the score itself is :mod:`~pyro_prune.reduction.neuron_scores`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor
from torch.utils.data import TensorDataset

from pyro_prune._deprecation import renamed_keywords
from pyro_prune._enums import Engine
from pyro_prune.models.base import Likelihood, PrunableNet, check_prunable
from pyro_prune.predictive.draws import DEFAULT_DRAWS, Mask, Output, empty_mask, predictive_run
from pyro_prune.predictive.wasserstein import predictive_w2
from pyro_prune.reduction.neuron_scores import NeuronScore

__all__ = ["W2Shift", "neuron_w2", "w2_shift"]


@dataclass(frozen=True)
class W2Shift:
    """Result of :func:`w2_shift`.

    Attributes:
        w2: ``W2(p_full, p_pruned)`` (root mean square over the inputs).
        w2_empty: ``W2(p_full, p_empty)``, the shift of removing every structure.
        normalized: ``w2 / w2_empty`` (0 = unchanged predictive, 1 = as far as the empty net).
        kept_fraction: kept structures / all structures under the mask.
    """

    w2: float
    w2_empty: float
    normalized: float
    kept_fraction: float


def _kept_fraction(model: PrunableNet, mask: Mask | None) -> float:
    gates = model.gates()
    total = sum(g.num_structures for g in gates.values())
    if total == 0:
        return 1.0
    kept = 0
    for name, g in gates.items():
        k = g.kept if mask is None or name not in mask else g.kept & mask[name].to(g.kept.device)
        kept += int(k.sum())
    return kept / total


@renamed_keywords(method="engine")
def w2_shift(
    model: PrunableNet,
    guide: Callable | None,
    mask: Mask | None,
    data: Tensor | TensorDataset | Sequence[Tensor],
    *,
    draws: int = DEFAULT_DRAWS,
    engine: Engine | str = Engine.FAST,
    output: Output | str = Output.AUTO,
    seed: int = 0,
) -> W2Shift:
    """How far a pruning ``mask`` moves the posterior predictive on ``data``.

    ``p_full`` is the model as it is, ``p_pruned`` the model under ``mask`` and ``p_empty``
    the model with every structure removed; all three use the same posterior draws (common
    random numbers, ``seed``). Use it after any criterion, e.g. with
    ``mask = {g: ~remove[g] for g, remove in structure_removals(model, "bmrs_n").items()}``.
    """
    model = check_prunable(model)
    if mask is not None:
        model.check_masks(mask)
    kw: dict[str, Any] = dict(guide=guide, draws=draws, engine=engine, output=output, seed=seed)
    full = predictive_run(model, data, **kw).samples
    pruned = predictive_run(model, data, mask=mask, **kw).samples
    empty = predictive_run(model, data, mask=empty_mask(model), **kw).samples
    w2 = predictive_w2(full, pruned)
    w2_empty = predictive_w2(full, empty)
    normalized = w2 / w2_empty if w2_empty > 0 else (0.0 if w2 == 0 else math.inf)
    return W2Shift(w2=w2, w2_empty=w2_empty, normalized=normalized,
                   kept_fraction=_kept_fraction(model, mask))


@renamed_keywords(method="engine")
def neuron_w2(
    model: PrunableNet,
    guide: Callable | None,
    data: Tensor | TensorDataset | Sequence[Tensor],
    *,
    draws: int = DEFAULT_DRAWS,
    mask: Mask | None = None,
    engine: Engine | str = Engine.FAST,
    score: NeuronScore | str = NeuronScore.ACTIVATION,
    seed: int = 0,
) -> dict[str, Tensor]:
    r"""W2 neuron scores per gate; higher = keep; removed structures score 0.

    * ``score="activation"`` (Kuboň 2025): ``E[z^2] = Var[z] + E[z]^2 = W2(p_z, delta_0)^2``
      of the structure's activation ``z``;
    * ``score="contribution"``: ``E[||z w_out||^2] = E[z^2] sum_k E[w_kj^2]``, the squared W2
      between the signal the structure sends into the next layer and zero. Under the
      mean-field posterior ``z`` and the outgoing weights ``w_kj`` are independent, and with
      common draws removing the structure changes the next layer's pre-activations by
      exactly ``z w_out``, so this bounds the shift of the next layer (in W2) from above.
      It matters for Bayesian networks fitted by mean-field VI, whose unused units often
      have large, noisy activations (incoming weights at the prior) but outgoing weights
      pinned at zero (Trippe & Turner 2018, "Overpruning in variational BNNs").

    The expectation runs over the inputs of ``data`` and ``draws`` posterior draws (and over
    the positions of a conv channel; for a conv channel flattened into a Linear layer the
    outgoing weights of all its positions are summed).
    """
    run = predictive_run(model, data, guide=guide, draws=draws, mask=mask, engine=engine,
                         output=Output.LOGITS if check_prunable(model).likelihood is Likelihood.CATEGORICAL
                         else Output.MEAN, seed=seed, scores=True, score=score)
    assert run.scores is not None
    return run.scores
