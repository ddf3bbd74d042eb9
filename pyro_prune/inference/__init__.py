"""Inference: SVI fitting, the ELBO, pruning schedules, guides and the W2 search.

The criteria applied to a model (``structure_removals``, ``structure_scores``,
``global_ranking``) and Bayes-factor pruning (``BayesFactorPruning``, ``bayes_factor``,
``candidate_masks``, ...) moved to :mod:`pyro_prune.reduction`; their names still import
from here for one release, with a ``DeprecationWarning``.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from pyro_prune._deprecation import moved_names
from pyro_prune.inference.fit import (
    Engine,
    FitContext,
    FitResult,
    evaluate,
    fit,
    flush_denormals,
    load_checkpoint,
    make_optimizer,
)
from pyro_prune.inference.guides import (
    SUPPORTED_GUIDES,
    attach_guide,
    attached_guide,
    detach_guide,
    init_to_model,
)
from pyro_prune.inference.loop import ElboLoss, pruning_summary
from pyro_prune.inference.pruning_report import PruningReport, pruning_report
from pyro_prune.inference.schedules import (
    ContinuousPruning,
    Schedule,
    post_training_curve,
    prune_to_compression,
)
from pyro_prune.inference.w2_search import DEFAULT_LAMBDA, W2PruneResult, w2_prune

__all__ = [
    "SUPPORTED_GUIDES",
    "PruningReport",
    "attach_guide",
    "attached_guide",
    "detach_guide",
    "init_to_model",
    "pruning_report",
    "DEFAULT_LAMBDA",
    "W2PruneResult",
    "w2_prune",
    "ContinuousPruning",
    "ElboLoss",
    "Engine",
    "FitContext",
    "FitResult",
    "Schedule",
    "evaluate",
    "fit",
    "flush_denormals",
    "load_checkpoint",
    "make_optimizer",
    "pruning_summary",
    "post_training_curve",
    "prune_to_compression",
]

#: names that moved to the reduction stage (and the figure to the plots)
_MOVED = {
    **{name: "pyro_prune.reduction" for name in (
        "BayesFactor", "EvidenceBayesFactor", "EvidenceKind",
        "LogPosterior", "PruneMethod", "bayes_factor", "candidate_masks", "global_ranking",
        "laplace_bayes_factor", "log_posterior", "structure_removals", "structure_scores")},
    **{name: "pyro_prune.reduction.bayes_factor_pruning" for name in ("BayesFactorPruning", "LikelihoodData")},
    "plot_learning_curves": "pyro_prune.inspect.plots",
}
__getattr__ = moved_names(__name__, _MOVED)


class _Package(types.ModuleType):
    """Importing the deprecated module ``pyro_prune.inference.bayes_factor`` binds it on this
    package under the name of the function ``bayes_factor``; this keeps the function."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _MOVED and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
