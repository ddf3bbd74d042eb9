"""Inference: SVI fitting, the ELBO, pruning schedules and criteria applied to models."""

from __future__ import annotations

from pyro_prune.inference.fit import Engine, FitContext, FitResult, evaluate, fit, load_checkpoint
from pyro_prune.inference.schedules import (
    ContinuousPruning,
    Schedule,
    post_training_curve,
    prune_to_compression,
)
from pyro_prune.inference.scoring import global_ranking, structure_removals, structure_scores

__all__ = [
    "ContinuousPruning",
    "Engine",
    "FitContext",
    "FitResult",
    "Schedule",
    "evaluate",
    "fit",
    "global_ranking",
    "load_checkpoint",
    "post_training_curve",
    "prune_to_compression",
    "structure_removals",
    "structure_scores",
]
