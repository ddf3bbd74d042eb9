"""Deprecated: moved to :mod:`pyro_prune.reduction` (this alias goes in the next release).

Candidate prunings are in :mod:`pyro_prune.reduction.weight_pruning`, the Bayes factors in
:mod:`pyro_prune.reduction.bayes_factors`, the schedule in
:mod:`pyro_prune.reduction.bayes_factor_pruning` and the figure in :mod:`pyro_prune.inspect.plots`.
"""

from __future__ import annotations

from pyro_prune._deprecation import moved_names

__getattr__ = moved_names(__name__, {
    **{name: "pyro_prune.reduction" for name in (
        "BayesFactor", "EvidenceBayesFactor", "EvidenceKind",
        "LogPosterior", "PruneMethod", "apply_masks", "bayes_factor", "candidate_masks",
        "default_evidence", "laplace_bayes_factor", "layer_sparsity", "log_posterior", "prune_count",
        "sparsity")},
    **{name: "pyro_prune.reduction.bayes_factor_pruning" for name in ("BayesFactorPruning", "LikelihoodData")},
    "plot_learning_curves": "pyro_prune.inspect.plots",
})
