"""Names that moved out of pyro_prune.inference into pyro_prune.reduction (and the Bayes-factor
figure into pyro_prune.inspect.plots) still import from their old paths, with a DeprecationWarning
naming the new module, for one release."""

from __future__ import annotations

import importlib

import pytest

import pyro_prune
from pyro_prune import reduction
from pyro_prune.inspect import plots
from pyro_prune.reduction import bayes_factor_pruning, bayes_factors, scoring, weight_pruning

OLD_MODULE_NAMES = {
    "pyro_prune.inference.scoring": {
        name: scoring for name in ("as_criterion", "gate_criterion", "gate_inputs", "global_ranking",
                                   "structure_decisions", "structure_removals", "structure_scores")},
    "pyro_prune.inference.bayes_factor": {
        **{name: weight_pruning for name in ("PruneMethod", "apply_masks", "candidate_masks",
                                             "layer_sparsity", "prune_count", "sparsity")},
        **{name: bayes_factors for name in ("BayesFactor", "EvidenceBayesFactor", "EvidenceKind",
                                            "LogPosterior", "bayes_factor", "default_evidence",
                                            "laplace_bayes_factor", "log_posterior")},
        **{name: bayes_factor_pruning for name in ("BayesFactorPruning", "LikelihoodData")},
        "plot_learning_curves": plots,
    },
    "pyro_prune.inference": {
        **{name: scoring for name in ("global_ranking", "structure_removals", "structure_scores")},
        **{name: weight_pruning for name in ("PruneMethod", "candidate_masks")},
        **{name: bayes_factors for name in ("BayesFactor", "EvidenceBayesFactor", "EvidenceKind",
                                            "LogPosterior", "bayes_factor", "laplace_bayes_factor",
                                            "log_posterior")},
        **{name: bayes_factor_pruning for name in ("BayesFactorPruning", "LikelihoodData")},
        "plot_learning_curves": plots,
    },
}


@pytest.mark.parametrize("old", sorted(OLD_MODULE_NAMES))
def test_old_paths_give_the_same_objects_with_a_deprecation_warning(old) -> None:
    module = importlib.import_module(old)
    for name, new in OLD_MODULE_NAMES[old].items():
        with pytest.warns(DeprecationWarning, match=rf"{old}\.{name} moved to pyro_prune\.(reduction|inspect)"):
            value = getattr(module, name)
        assert value is getattr(new, name)
        if new not in (plots, bayes_factor_pruning):
            assert getattr(reduction, name) is value  # the package exports the moved names
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        module.nothing  # noqa: B018


def test_importing_the_old_module_keeps_the_function_of_the_same_name() -> None:
    importlib.import_module("pyro_prune.inference.bayes_factor")
    with pytest.warns(DeprecationWarning):
        from pyro_prune.inference import bayes_factor
    assert bayes_factor is bayes_factors.bayes_factor


def test_the_top_level_verbs_come_from_the_reduction_stage_without_a_warning(recwarn) -> None:
    assert pyro_prune.BayesFactorPruning is bayes_factor_pruning.BayesFactorPruning
    assert pyro_prune.structure_removals is scoring.structure_removals
    assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning)]
