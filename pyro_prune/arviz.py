"""Deprecated: moved to :mod:`pyro_prune.inspect` (this alias goes in the next release).

The ArviZ export is :mod:`pyro_prune.inspect.inference_data`, its adapter over ArviZ versions
:mod:`pyro_prune.inspect.arviz_compat`, PSIS-LOO :mod:`pyro_prune.inspect.elpd` and the
summaries :mod:`pyro_prune.inspect.summary`; every name imports from :mod:`pyro_prune.inspect`.
"""

from __future__ import annotations

from pyro_prune._deprecation import moved_names

__getattr__ = moved_names(__name__, {
    **{name: "pyro_prune.inspect" for name in (
        "DEFAULT_CRITERIA", "ElpdSummary", "STRUCTURE_KINDS", "StructureKind", "compare", "dim_name",
        "elpd_difference", "get_group", "group_names", "hdi", "load", "loo", "save", "structure_dims",
        "structure_kind", "summary", "to_inference_data")},
    **{name: "pyro_prune.inspect.names" for name in ("OBS", "OBS_DIM")},
    "MaskSpec": "pyro_prune.inspect.inference_data",
})
