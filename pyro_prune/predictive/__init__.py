r"""The predictive check: how far does pruning move the posterior predictive?

One concept per module:

* :mod:`~pyro_prune.predictive.draws` — posterior predictive draws (:func:`posterior_predictive`,
  :func:`predictive_run`), through Pyro or the fast plain-torch path (:class:`Engine`), with
  a pruning mask applied for the call (:func:`apply_mask`) and common random numbers;
* :mod:`~pyro_prune.predictive.wasserstein` — Wasserstein-2 distances between empirical
  distributions (:func:`wasserstein2`), aggregated over inputs (:func:`predictive_w2`);
* :mod:`~pyro_prune.predictive.shift` — the W2 shift of a pruning (:func:`w2_shift`) and the
  W2 neuron scores (:func:`neuron_w2`);
* what a neuron score measures (:class:`NeuronScore`) and its recording during the draws
  belong to the reduce stage: :mod:`~pyro_prune.reduction.neuron_scores`;
* :mod:`~pyro_prune.predictive.density` — the predictive on labelled data: metrics of the
  model average (:func:`evaluate_predictive`), the log predictive density of held-out data
  (:func:`log_predictive_density`) and a paired comparison (:func:`compare_lpd`).

``Method``, the name this package gave the engine switch before, still imports from here for
one release, with a ``DeprecationWarning``; it is :class:`Engine`. Likewise the keyword
``method=`` of the functions here is now ``engine=`` (as in ``fit``); the old keyword still
works for one release, with a ``DeprecationWarning``.
"""

from __future__ import annotations

import warnings
from typing import Any

from pyro_prune._enums import Engine
from pyro_prune.predictive.density import (
    LpdComparison,
    compare_lpd,
    evaluate_predictive,
    log_predictive_density,
)
from pyro_prune.predictive.draws import (
    DEFAULT_DRAWS,
    Mask,
    Output,
    PredictiveRun,
    apply_mask,
    empty_mask,
    kept_mask,
    posterior_predictive,
    predictive_run,
)
from pyro_prune.predictive.shift import W2Shift, neuron_w2, w2_shift
from pyro_prune.predictive.wasserstein import (
    aggregate_w2,
    predictive_w2,
    wasserstein2,
    wasserstein2_1d,
    wasserstein2_gaussian,
)
from pyro_prune.reduction.neuron_scores import NeuronScore

__all__ = [
    "DEFAULT_DRAWS",
    "Engine",
    "LpdComparison",
    "Mask",
    "NeuronScore",
    "Output",
    "PredictiveRun",
    "W2Shift",
    "aggregate_w2",
    "apply_mask",
    "compare_lpd",
    "empty_mask",
    "evaluate_predictive",
    "kept_mask",
    "log_predictive_density",
    "neuron_w2",
    "posterior_predictive",
    "predictive_w2",
    "predictive_run",
    "w2_shift",
    "wasserstein2",
    "wasserstein2_1d",
    "wasserstein2_gaussian",
]


def __getattr__(name: str) -> Any:
    if name == "Method":
        warnings.warn("pyro_prune.predictive.Method is now pyro_prune.predictive.Engine (the same "
                      "switch as fit's engine); import Engine (this alias goes in the next release)",
                      DeprecationWarning, stacklevel=2)
        return Engine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
