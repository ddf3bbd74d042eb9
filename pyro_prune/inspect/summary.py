"""Posterior summaries of the kept structures: ``az.summary`` without the warnings that one
chain of independent draws and the removed structures (point masses at 0) provoke, and
highest-density intervals."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from pyro_prune.inspect.arviz_compat import Backend, backend, get_group, group_names

__all__ = ["hdi", "summary"]


def _hdi_numpy(values: np.ndarray, prob: float) -> np.ndarray:
    """Shortest interval holding ``ceil(prob * S)`` of the ``S`` draws, per column: ``[n, 2]``."""
    x = np.sort(values, axis=0)
    s = x.shape[0]
    width = min(s - 1, max(0, int(math.floor(prob * s))))
    spans = x[width:] - x[: s - width]
    start = np.argmin(spans, axis=0)
    cols = np.arange(x.shape[1])
    return np.stack([x[start, cols], x[start + width, cols]], axis=-1)


def hdi(values: np.ndarray, prob: float = 0.94) -> np.ndarray:
    """Highest-density interval of draws ``[S, n]`` for every column: ``[n, 2]`` (low, high)."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 2 or values.shape[0] < 2:
        raise ValueError(f"values must be draws [S >= 2, n], got shape {values.shape}")
    if not 0.0 < prob < 1.0:
        raise ValueError(f"prob must lie in (0, 1), got {prob}")
    if backend() is Backend.INFERENCE_DATA:
        import warnings

        import arviz

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = arviz.hdi(values[None], hdi_prob=prob)  # (chain, draw, n)
        if isinstance(out, xr.Dataset):
            out = next(iter(out.data_vars.values())).values
        return np.asarray(out).reshape(values.shape[1], 2)
    return _hdi_numpy(values, prob)


def _kept_posterior(idata: Any, group: str = "posterior") -> xr.Dataset:
    """The ``group`` dataset without the removed structures (by the ``reduction`` group)."""
    ds = get_group(idata, group)
    if "reduction" not in group_names(idata):
        return ds
    red = get_group(idata, "reduction")
    for var in red.data_vars:
        if not str(var).endswith("_kept"):
            continue
        (dim,) = red[var].dims
        if dim in ds.dims:
            ds = ds.isel({dim: np.flatnonzero(red[var].values.astype(bool))})
    return ds


def summary(idata: Any, var_names: Sequence[str] | None = None, *, group: str = "posterior",
            kept_only: bool = True, hdi_prob: float = 0.94) -> Any:
    """``az.summary`` of the kept structures, without one warning per removed structure.

    Args:
        idata: what :func:`to_inference_data` returned (or :func:`load` read).
        var_names: variables to summarise (default: all of ``group``).
        group: ``"posterior"`` or ``"prior"``.
        kept_only: leave out the removed structures (point masses at 0: every diagnostic
            of them is undefined, and ArviZ warns once for each).
        hdi_prob: probability of the highest-density interval.

    Returns:
        a ``pandas.DataFrame`` with ``mean``, ``sd``, the HDI, ``mcse`` and ``ess`` columns.
        ``r_hat`` is left out with one chain (see the module docstring: the draws are
        independent draws of the variational posterior).
    """
    import logging
    import warnings

    import arviz

    if group not in group_names(idata):
        raise ValueError(f"idata has no {group!r} group; have {group_names(idata)}")
    ds = _kept_posterior(idata, group) if kept_only else get_group(idata, group)
    if var_names is not None:
        missing = [v for v in var_names if v not in ds.data_vars]
        if missing:
            raise ValueError(f"no variables {missing} in the {group} group; have {list(ds.data_vars)}")
        ds = ds[list(var_names)]
    # ArviZ 0.x logs through its own Logger object (not registered with logging.getLogger)
    logger = getattr(arviz, "_log", None) or logging.getLogger("arviz")
    level = logger.level
    logger.setLevel(logging.ERROR)  # "Shape validation failed" for one chain
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            warnings.simplefilter("ignore", UserWarning)
            table = arviz.summary(ds, hdi_prob=hdi_prob)
    finally:
        logger.setLevel(level)
    if ds.sizes.get("chain", 1) < 2 and "r_hat" in table.columns:
        table = table.drop(columns="r_hat")
    return table
