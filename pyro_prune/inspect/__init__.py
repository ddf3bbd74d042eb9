"""Inspect a fitted and pruned model: its posterior as ArviZ ``InferenceData``, and figures.

One concept per module:

* :mod:`~pyro_prune.inspect.inference_data` — :func:`to_inference_data`: the posterior,
  prior, predictive, log likelihood and ``reduction`` groups of a model (the module's text
  describes every group);
* :mod:`~pyro_prune.inspect.names` — the dimension names of the structures
  (:func:`dim_name`, :func:`structure_dims`, :data:`STRUCTURE_KINDS`);
* :mod:`~pyro_prune.inspect.sampling` — the guide and prior draws the groups hold;
* :mod:`~pyro_prune.inspect.reduction_group` — the ``reduction`` group;
* :mod:`~pyro_prune.inspect.arviz_compat` — the adapter over ArviZ 0.x and 1.x
  (:func:`get_group`, :func:`group_names`, :func:`save`, :func:`load`);
* :mod:`~pyro_prune.inspect.elpd` — PSIS-LOO (:func:`loo`, :func:`compare`,
  :func:`elpd_difference`);
* :mod:`~pyro_prune.inspect.summary` — :func:`summary` and :func:`hdi` of the kept structures;
* :mod:`~pyro_prune.inspect.plots` — the figures (matplotlib, no ``pyplot``).

``pyro_prune.arviz`` and ``pyro_prune.plots``, where these lived before, still import for one
release, with a ``DeprecationWarning``.
"""

from __future__ import annotations

from pyro_prune.inspect.arviz_compat import get_group, group_names, load, save
from pyro_prune.inspect.elpd import ElpdSummary, compare, elpd_difference, loo
from pyro_prune.inspect.inference_data import DEFAULT_CRITERIA, to_inference_data
from pyro_prune.inspect.names import (
    STRUCTURE_KINDS,
    StructureKind,
    dim_name,
    structure_dims,
    structure_kind,
)
from pyro_prune.inspect.plots import (
    figure_html,
    plot_accuracy_vs_compression,
    plot_bayes_factor_curves,
    plot_decision,
    plot_delta_f,
    plot_history,
    plot_learning_curves,
    plot_reliability,
    plot_summary,
    plot_theta_forest,
    plot_widths,
    save_figure,
)
from pyro_prune.inspect.summary import hdi, summary

__all__ = [
    "DEFAULT_CRITERIA",
    "ElpdSummary",
    "STRUCTURE_KINDS",
    "StructureKind",
    "compare",
    "dim_name",
    "elpd_difference",
    "figure_html",
    "get_group",
    "group_names",
    "hdi",
    "load",
    "loo",
    "plot_accuracy_vs_compression",
    "plot_bayes_factor_curves",
    "plot_decision",
    "plot_delta_f",
    "plot_history",
    "plot_learning_curves",
    "plot_reliability",
    "plot_summary",
    "plot_theta_forest",
    "plot_widths",
    "save",
    "save_figure",
    "structure_dims",
    "structure_kind",
    "summary",
    "to_inference_data",
]
