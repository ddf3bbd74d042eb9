"""pyro_prune: Bayesian pruning of neural networks on Pyro.

The pipeline's verbs, one import line away (each stage is a subpackage with the rest)::

    define   load_dataset, MLP, LeNet5, ResNet, ViT, bayesianize        (data, models)
    fit      fit, evaluate, ContinuousPruning                         (inference)
    reduce   structure_removals, get_criterion, BayesFactorPruning,
             prune_to_compression, w2_prune                           (reduction, inference)
    check    posterior_predictive, w2_shift                           (predictive)
    convert  to_deterministic, shrink, compression, count_params      (convert)
    inspect  to_inference_data                                        (inspect)

    >>> from pyro_prune import LeNet5, fit, load_dataset, to_deterministic

The names are imported on first use, so ``import pyro_prune`` stays cheap (the command line
starts without loading Pyro's inference or the converter until it needs them).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: exported name -> the subpackage that defines it, in pipeline order
_EXPORTS: dict[str, str] = {
    # define: data and models
    "load_dataset": "pyro_prune.data",
    "train_val_split": "pyro_prune.data",
    "MLP": "pyro_prune.models",
    "LeNet5": "pyro_prune.models",
    "ResNet": "pyro_prune.models",
    "ViT": "pyro_prune.models",
    "PrunableNet": "pyro_prune.models",
    "bayesianize": "pyro_prune.models",
    # fit
    "fit": "pyro_prune.inference",
    "evaluate": "pyro_prune.inference",
    "ContinuousPruning": "pyro_prune.inference",
    "BayesFactorPruning": "pyro_prune.reduction.bayes_factor_pruning",
    # reduce
    "structure_removals": "pyro_prune.reduction",
    "prune_to_compression": "pyro_prune.inference",
    "w2_prune": "pyro_prune.inference",
    "get_criterion": "pyro_prune.reduction",
    # check
    "posterior_predictive": "pyro_prune.predictive",
    "w2_shift": "pyro_prune.predictive",
    # convert
    "to_deterministic": "pyro_prune.convert",
    "shrink": "pyro_prune.convert",
    "compression": "pyro_prune.convert",
    "count_params": "pyro_prune.convert",
    # inspect
    "to_inference_data": "pyro_prune.inspect",
}

__all__ = [
    "__version__",
    "load_dataset",
    "train_val_split",
    "MLP",
    "LeNet5",
    "ResNet",
    "ViT",
    "PrunableNet",
    "bayesianize",
    "fit",
    "evaluate",
    "ContinuousPruning",
    "BayesFactorPruning",
    "structure_removals",
    "prune_to_compression",
    "w2_prune",
    "get_criterion",
    "posterior_predictive",
    "w2_shift",
    "to_deterministic",
    "shrink",
    "compression",
    "count_params",
    "to_inference_data",
]

if TYPE_CHECKING:  # the eager imports, for type checkers and editors
    from pyro_prune.convert import compression, count_params, shrink, to_deterministic
    from pyro_prune.data import load_dataset, train_val_split
    from pyro_prune.inference import (
        ContinuousPruning,
        evaluate,
        fit,
        prune_to_compression,
        w2_prune,
    )
    from pyro_prune.inspect import to_inference_data
    from pyro_prune.models import MLP, LeNet5, PrunableNet, ResNet, ViT, bayesianize
    from pyro_prune.predictive import posterior_predictive, w2_shift
    from pyro_prune.reduction import get_criterion, structure_removals
    from pyro_prune.reduction.bayes_factor_pruning import BayesFactorPruning


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pyro_prune' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
