"""Leave-one-out cross-validation of a model from its ``InferenceData`` (PSIS-LOO), and
comparing the full and the reduced network by it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from pyro_prune.inspect.arviz_compat import Backend, backend, get_group, group_names
from pyro_prune.inspect.names import OBS

__all__ = ["ElpdSummary", "compare", "elpd_difference", "loo"]


@dataclass(frozen=True)
class ElpdSummary:
    """PSIS-LOO estimate of a model's expected log pointwise predictive density.

    Attributes:
        elpd: ``elpd_loo`` (sum over the observations; higher is better).
        se: its standard error.
        p: effective number of parameters ``p_loo``.
        n: number of observations.
        pareto_k_max: the largest Pareto ``k`` (> 0.7: the estimate is unreliable).
        warning: ArviZ flagged the estimate.
        pareto_k_bad: how many observations have ``k > 0.7``.
    """

    elpd: float
    se: float
    p: float
    n: int
    pareto_k_max: float
    warning: bool
    pareto_k_bad: int = 0


def loo(idata: Any) -> ElpdSummary:
    """PSIS-LOO of the ``obs`` log likelihood with ``az.loo``, in version-neutral form."""
    import warnings

    import arviz

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        res = arviz.loo(idata, pointwise=True)
    if backend() is Backend.INFERENCE_DATA:
        elpd, p = float(res["elpd_loo"]), float(res["p_loo"])
    else:
        elpd, p = float(res.elpd), float(res.p)
    k = np.asarray(res.pareto_k)
    return ElpdSummary(elpd=elpd, se=float(res.se), p=p, n=int(res.n_data_points),
                       pareto_k_max=float(np.nanmax(k)) if k.size else math.nan,
                       warning=bool(res.warning), pareto_k_bad=int(np.sum(~(k <= 0.7))))


def compare(models: Mapping[str, Any], **kwargs: Any) -> Any:
    """Rank models by PSIS-LOO with ``az.compare`` (e.g. ``{"full": ..., "pruned": ...}``).

    Returns ``az.compare``'s DataFrame (best model first) with the columns normalised
    across ArviZ versions: ``rank``, ``elpd``, ``p``, ``elpd_diff`` (>= 0, the best model's
    ELPD minus this one's), ``se``, ``dse`` (standard error of the difference),
    ``weight``, ``warning``. Every model must hold the same observations.
    """
    import warnings

    import arviz

    if not isinstance(models, Mapping) or len(models) < 2:
        raise ValueError("models must be a dict of at least two named InferenceData")
    for name, idata in models.items():
        if "log_likelihood" not in group_names(idata):
            raise ValueError(
                f"models[{name!r}] has no log_likelihood group; pass data= to to_inference_data"
            )
    sizes = {name: get_group(idata, "observed_data")[OBS].shape for name, idata in models.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"the models were evaluated on different observations: {sizes}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Pareto k: reported in the "warning" column
        warnings.filterwarnings("ignore", module=r"arviz")  # ArviZ's own pandas deprecations
        if backend() is Backend.INFERENCE_DATA:
            table = arviz.compare(dict(models), ic="loo", **kwargs)
        else:
            table = arviz.compare(dict(models), **kwargs)
    return table.rename(columns={"elpd_loo": "elpd", "p_loo": "p"})


def elpd_difference(reduced: Any, full: Any) -> tuple[float, float]:
    """``elpd_loo(reduced) - elpd_loo(full)`` and its standard error, via :func:`compare`.

    Negative values mean the reduced model predicts held-out data worse.
    """
    table = compare({"full": full, "reduced": reduced})
    sign = -1.0 if table.index[0] == "full" else 1.0
    other = "reduced" if sign < 0 else "full"
    return sign * float(table.loc[other, "elpd_diff"]), float(table.loc[other, "dse"])
