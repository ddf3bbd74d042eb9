r"""ArviZ views of a fitted (and pruned) model: posterior, predictive, log likelihood, reduction.

:func:`to_inference_data` turns a :class:`~pyro_prune.models.PrunableNet` and its guide into an
ArviZ ``InferenceData`` with the groups

==========================  ==============================================================
``posterior``               one chain of ``num_samples`` guide draws of every latent site:
                            ``<layer>_theta`` of every noise gate (the value the network
                            uses, ``theta * kept``), and ``<layer>_weight`` / ``<layer>_bias``
                            of Bayesian weight layers
``prior``                   ``num_samples`` draws of the same latent sites from the model's
                            priors (given ``data``: the model is run on one input), so a
                            posterior that went back to its prior can be seen as such
``posterior_predictive``    ``obs``: one draw of ``y_n`` per posterior draw (given ``data``)
``observed_data``           ``obs``: the targets of ``data``
``log_likelihood``          ``obs``: pointwise ``log p(y_n | x_n, z_s)`` for draw ``s``, so
                            ``az.loo`` and ``az.waic`` work
``reduction``               per structure: ``kept``, ``loc``/``scale`` of the noise
                            posterior, ``E[theta]``, every criterion's ``score`` and
                            ``remove`` decision, and ``dF`` of the threshold-free criteria
                            (``settings["criterion"]``, the criterion a run pruned with, is
                            always among them and named in the group's attributes)
==========================  ==============================================================

Chains and draws: the draws are *independent* draws of the variational posterior, stored as
one chain of ``num_samples`` draws. Convergence diagnostics made for MCMC say nothing about
SVI here: with independent draws the effective sample size is about ``num_samples`` and
``r_hat`` (which needs two chains or more) would be 1 up to Monte Carlo noise, whether or not
the optimisation converged (judge that from the loss history). :func:`summary` is
``az.summary`` without the one-chain warnings and without the removed structures (each a point
mass at 0, for which every diagnostic is undefined).

Named dimensions come from the layer each gate selects the outputs of (its
``producer_name``) and that layer's kind: ``fc1_neuron`` for a Linear layer, ``conv2_channel``
for a convolution or BatchNorm, ``attn_head`` for attention heads (:data:`STRUCTURE_KINDS`).

Leave-one-out cross-validation (Vehtari, Gelman & Gabry, "Practical Bayesian model
evaluation using leave-one-out cross-validation and WAIC", Statistics and Computing 2017)
estimates the expected log pointwise predictive density

    elpd_loo = sum_n log p(y_n | y_{-n}),   p(y_n | y_{-n}) ~= sum_s w_ns p(y_n | z_s) / sum_s w_ns

with Pareto-smoothed importance weights ``w_ns ~ 1 / p(y_n | z_s)``. Here the draws ``z_s``
come from the variational posterior rather than MCMC; the Pareto ``k`` diagnostic tells
how far that approximation can be trusted. :func:`compare` ranks models (the full and the
reduced network) by it with ``az.compare``.

ArviZ versions: 0.x keeps groups in ``az.InferenceData``; ArviZ >= 1 uses
``xarray.DataTree``. Everything that differs between the two goes through the small adapter
in :mod:`~pyro_prune.inspect.arviz_compat` (:func:`get_group`, :func:`group_names`,
:func:`save`, :func:`load`), which :mod:`~pyro_prune.inspect.elpd` (:func:`loo`,
:func:`compare`) and :mod:`~pyro_prune.inspect.summary` (:func:`hdi`) use.
"""

from __future__ import annotations

import enum
import json
import platform
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor
from torch.utils.data import TensorDataset

from pyro_prune._checks import check_count, check_dataset, check_guide, check_model_data
from pyro_prune.inspect.arviz_compat import make_inference_data
from pyro_prune.inspect.names import OBS, OBS_DIM, safe_name, site_layout
from pyro_prune.inspect.reduction_group import reduction_dataset
from pyro_prune.inspect.sampling import Draws, draw
from pyro_prune.models.base import PrunableNet

__all__ = ["DEFAULT_CRITERIA", "MaskSpec", "to_inference_data"]

#: criteria evaluated for the ``reduction`` group when none are named
DEFAULT_CRITERIA: tuple[str, ...] = ("bmrs_n", "bmrs_u", "snr", "e_theta")


MaskSpec = Mapping[str, Tensor] | str | None


def _resolve_mask(model: PrunableNet, mask: MaskSpec) -> dict[str, Tensor] | None:
    """``mask`` as gate -> keep bool tensor; a criterion name keeps what it does not remove."""
    if mask is None:
        return None
    if isinstance(mask, str):
        from pyro_prune.reduction import structure_removals

        return {name: ~remove for name, remove in structure_removals(model, mask).items()}
    if not isinstance(mask, Mapping):
        raise TypeError(
            f"mask must be a criterion name or a dict gate -> bool tensor, got {type(mask).__name__}"
        )
    return model.check_masks(mask)


def _versions() -> dict[str, str]:
    import arviz
    import pyro

    import pyro_prune

    return {
        "arviz_version": str(arviz.__version__),
        "inference_library": "pyro",
        "inference_library_version": str(pyro.__version__),
        "torch_version": str(torch.__version__),
        "numpy_version": str(np.__version__),
        "xarray_version": str(xr.__version__),
        "pyro_prune_version": str(pyro_prune.__version__),
        "python_version": platform.python_version(),
    }


def _attr(value: Any) -> Any:
    """A netCDF-storable attribute value (str, number, or a list of them)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float, str)):
        return value
    if value is None:
        return "none"
    if isinstance(value, enum.Enum):
        return _attr(value.value)
    if isinstance(value, (list, tuple)) and all(
        isinstance(v, (int, float, str)) and not isinstance(v, bool) for v in value
    ) and value and len({type(v) for v in value}) == 1:
        return list(value)
    return json.dumps(value, default=str, sort_keys=True)


def _chain_draw_coords(num_samples: int) -> dict[str, np.ndarray]:
    return {"chain": np.arange(1), "draw": np.arange(num_samples)}


def _dims_for(name: str, shape: tuple[int, ...], layout: dict[str, tuple[str, list[str]]]) -> tuple[str, list[str]]:
    if name in layout:
        var, dims = layout[name]
        if len(dims) == len(shape):
            return var, dims
    var = safe_name(name)
    return var, [f"{var}_dim_{i}" for i in range(len(shape))]


def _posterior_dataset(model: PrunableNet, latents: Mapping[str, list[np.ndarray]],
                       num_samples: int) -> xr.Dataset:
    layout = site_layout(model)
    data_vars = {}
    coords: dict[str, np.ndarray] = _chain_draw_coords(num_samples)
    for site, values in latents.items():
        stacked = np.stack(values)[None]  # [1, S, ...]
        var, dims = _dims_for(site, stacked.shape[2:], layout)
        data_vars[var] = xr.Variable(["chain", "draw", *dims], stacked, attrs={"site": site})
        for d, n in zip(dims, stacked.shape[2:]):
            coords.setdefault(d, np.arange(n))
    return xr.Dataset(data_vars, coords=coords)


def _observed_dims(y: Tensor) -> list[str]:
    return [OBS_DIM] + [f"{OBS}_dim_{i}" for i in range(y.dim() - 1)]


def _data_datasets(y: Tensor, draws: Draws, num_samples: int) -> dict[str, xr.Dataset]:
    dims = _observed_dims(y)
    y_np = y.detach().cpu().numpy()
    coords = {d: np.arange(n) for d, n in zip(dims, y_np.shape)}
    cd = {**_chain_draw_coords(num_samples), **coords}
    log_lik = np.stack(draws.log_lik)[None]  # [1, S, N]
    predictive = np.stack(draws.predictive)[None]  # [1, S, N, ...]
    return {
        "posterior_predictive": xr.Dataset({OBS: (["chain", "draw", *dims], predictive)}, coords=cd),
        "log_likelihood": xr.Dataset({OBS: (["chain", "draw", OBS_DIM], log_lik)}, coords=cd),
        "observed_data": xr.Dataset({OBS: (dims, y_np)}, coords=coords),
    }


def to_inference_data(
    model: PrunableNet,
    guide: Callable | None = None,
    data: TensorDataset | tuple[Tensor, Tensor] | None = None,
    num_samples: int = 500,
    mask: MaskSpec = None,
    seed: int = 0,
    *,
    criteria: Sequence[str] | None = None,
    batch_size: int = 2048,
    progress: bool = False,
    settings: Mapping[str, Any] | None = None,
) -> Any:
    """An ArviZ ``InferenceData`` of ``model``'s variational posterior (see the module docstring).

    Args:
        model: a fitted :class:`PrunableNet`.
        guide: the guide to draw from (default: the autoguide ``fit`` trained, else
            ``model.guide``).
        data: ``(inputs, targets)`` (a ``TensorDataset`` or a tuple); adds the ``prior``,
            ``posterior_predictive``, ``observed_data`` and pointwise ``log_likelihood``
            groups, evaluated on these examples (use held-out data for ``az.loo``).
        num_samples: number of posterior draws (one chain).
        mask: evaluate a reduced model without changing ``model``: a dict gate ->
            bool tensor of the structures to keep (on top of ``kept``), or a criterion
            name (keep what it does not remove, e.g. ``"bmrs_n"``).
        seed: seeds the draws; the caller's random state is left unchanged.
        criteria: criteria evaluated for the ``reduction`` group (default
            :data:`DEFAULT_CRITERIA`, plus ``gaussian_bmr`` when the model has Bayesian
            weight layers).
        batch_size: examples per forward pass.
        progress: show a progress bar over the draws.
        settings: extra pruning settings stored in the attributes (method, epochs, ...);
            ``settings["criterion"]``, the criterion the model was pruned with, is added to
            ``criteria``.

    Returns:
        ``az.InferenceData`` (ArviZ 0.x) or ``xarray.DataTree`` (ArviZ >= 1).
    """
    if not isinstance(model, PrunableNet):
        raise TypeError(f"model must be a PrunableNet, got {type(model).__name__}")
    num_samples = check_count(num_samples, "num_samples")
    batch_size = check_count(batch_size, "batch_size")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if criteria is None:
        criteria = DEFAULT_CRITERIA
        if any(callable(getattr(m, "weight_posterior", None)) for m in model.stochastic_modules().values()):
            criteria = (*criteria, "gaussian_bmr")
    elif isinstance(criteria, str):
        criteria = (criteria,)
    own = (settings or {}).get("criterion")
    if own is not None and own not in criteria:
        criteria = (*criteria, str(own))
    x = y = None
    if data is not None:
        x, y = check_dataset(data, "data")
    if x is not None:
        check_model_data(model, x, y, "data")
    if guide is not None and guide != model.guide:
        check_guide(model, guide, None if x is None else x[:2], None if y is None else y[:2])
    guide = guide if guide is not None else (model.__dict__.get("_fitted_guide") or model.guide)
    keep = _resolve_mask(model, mask)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]), model.masked(keep or None):
            torch.manual_seed(seed)
            draws = draw(model, guide, x, y, num_samples, batch_size, progress)
            reduction = reduction_dataset(model, list(criteria))
            kept_counts = model.kept_counts()
    finally:
        model.train(was_training)

    groups: dict[str, xr.Dataset] = {"posterior": _posterior_dataset(model, draws.latents, num_samples)}
    if draws.prior:
        groups["prior"] = _posterior_dataset(model, draws.prior, num_samples)
    if y is not None:
        groups.update(_data_datasets(y, draws, num_samples))
    groups["reduction"] = reduction
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    base_attrs = {"created_at": created, **_versions()}
    config = getattr(model, "config", {})
    run_attrs = {
        "model": type(model).__name__,
        "model_config": config,
        "likelihood": model.likelihood.value,
        "num_samples": num_samples,
        "seed": seed,
        "criteria": list(criteria),
        "mask": mask if isinstance(mask, str) else ("custom" if mask is not None else "none"),
        "kept": kept_counts,
        "kept_total": sum(kept_counts.values()),
        "num_structures": model.num_structures(),
    }
    if settings:
        run_attrs.update(settings)
    for name, ds in groups.items():
        attrs: dict[str, Any] = dict(base_attrs)
        if name in ("posterior", "prior", "reduction"):
            attrs.update(run_attrs)
        ds.attrs.update({k: _attr(v) for k, v in attrs.items()})
    return make_inference_data(groups, attrs={k: _attr(v) for k, v in {**base_attrs, **run_attrs}.items()})
