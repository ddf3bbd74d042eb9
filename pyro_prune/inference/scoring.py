"""Deprecated: moved to :mod:`pyro_prune.reduction.scoring` (this alias goes in the next release)."""

from __future__ import annotations

from pyro_prune._deprecation import moved_names

__getattr__ = moved_names(__name__, {
    name: "pyro_prune.reduction.scoring"
    for name in ("as_criterion", "gate_criterion", "gate_inputs", "global_ranking", "structure_decisions",
                 "structure_removals", "structure_scores")
})
