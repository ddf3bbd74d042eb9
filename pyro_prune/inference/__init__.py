"""Inference: SVI fitting, the ELBO, pruning schedules and criteria applied to models."""

from __future__ import annotations

from pyro_prune.inference.bayes_factor import (
    BayesFactor,
    BayesFactorPruning,
    EvidenceBayesFactor,
    EvidenceKind,
    LikelihoodData,
    LogPosterior,
    PruneMethod,
    bayes_factor,
    candidate_masks,
    laplace_bayes_factor,
    log_posterior,
    plot_learning_curves,
)
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
from pyro_prune.inference.guides import SUPPORTED_GUIDES, attach_guide, attached_guide, detach_guide
from pyro_prune.inference.loop import ElboLoss, pruning_summary
from pyro_prune.inference.pruning_report import PruningReport, pruning_report
from pyro_prune.inference.schedules import (
    ContinuousPruning,
    Schedule,
    post_training_curve,
    prune_to_compression,
)
from pyro_prune.inference.scoring import global_ranking, structure_removals, structure_scores
from pyro_prune.inference.w2_search import DEFAULT_LAMBDA, W2PruneResult, w2_prune

__all__ = [
    "SUPPORTED_GUIDES",
    "PruningReport",
    "attach_guide",
    "attached_guide",
    "detach_guide",
    "pruning_report",
    "DEFAULT_LAMBDA",
    "W2PruneResult",
    "w2_prune",
    "BayesFactor",
    "BayesFactorPruning",
    "EvidenceBayesFactor",
    "EvidenceKind",
    "LikelihoodData",
    "LogPosterior",
    "PruneMethod",
    "bayes_factor",
    "laplace_bayes_factor",
    "candidate_masks",
    "log_posterior",
    "plot_learning_curves",
    "ContinuousPruning",
    "ElboLoss",
    "Engine",
    "FitContext",
    "FitResult",
    "Schedule",
    "evaluate",
    "fit",
    "flush_denormals",
    "global_ranking",
    "load_checkpoint",
    "make_optimizer",
    "pruning_summary",
    "post_training_curve",
    "prune_to_compression",
    "structure_removals",
    "structure_scores",
]
