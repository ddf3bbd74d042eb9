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
at the bottom of this module (:func:`_make_inference_data`, :func:`get_group`,
:func:`group_names`, :func:`save`, :func:`load`, :func:`loo`, :func:`compare`, :func:`hdi`).
"""

from __future__ import annotations

import enum
import json
import math
import os
import platform
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from pyro_prune._checks import check_count, check_guide, check_model_data
from pyro_prune.models.base import PrunableNet
from pyro_prune.models.gate import StructureGate
from pyro_prune.models.noise import MultiplicativeNoise, NoiseMode, noise_mode

__all__ = [
    "DEFAULT_CRITERIA",
    "ElpdSummary",
    "STRUCTURE_KINDS",
    "StructureKind",
    "compare",
    "dim_name",
    "elpd_difference",
    "get_group",
    "group_names",
    "hdi",
    "load",
    "loo",
    "save",
    "structure_dims",
    "summary",
    "to_inference_data",
]

#: criteria evaluated for the ``reduction`` group when none are named
DEFAULT_CRITERIA: tuple[str, ...] = ("bmrs_n", "bmrs_u", "snr", "e_theta")

OBS = "obs"
OBS_DIM = "obs_id"


# ============================================================================ dimension names
class StructureKind(enum.Enum):
    """What one index along a gate's axis selects (the suffix of the dimension name)."""

    NEURON = "neuron"
    CHANNEL = "channel"
    HEAD = "head"
    STRUCTURE = "structure"


#: layer type -> kind of its output structures; subclasses match too (checked in order)
STRUCTURE_KINDS: dict[type[nn.Module], StructureKind] = {
    nn.Linear: StructureKind.NEURON,
    nn.Conv1d: StructureKind.CHANNEL,
    nn.Conv2d: StructureKind.CHANNEL,
    nn.Conv3d: StructureKind.CHANNEL,
    nn.BatchNorm1d: StructureKind.CHANNEL,
    nn.BatchNorm2d: StructureKind.CHANNEL,
    nn.BatchNorm3d: StructureKind.CHANNEL,
    nn.GroupNorm: StructureKind.CHANNEL,
    nn.MultiheadAttention: StructureKind.HEAD,
}

#: duck-typed fallbacks (e.g. Bayesian layers, custom attention): attribute -> kind
_KIND_BY_ATTRIBUTE: tuple[tuple[str, StructureKind], ...] = (
    ("num_heads", StructureKind.HEAD),
    ("head_dim", StructureKind.HEAD),
    ("out_channels", StructureKind.CHANNEL),
    ("out_features", StructureKind.NEURON),
    ("num_features", StructureKind.CHANNEL),
)

_UNSAFE = re.compile(r"[^0-9A-Za-z_]+")


def _safe(name: str) -> str:
    """A module path as an identifier: ``layer1.0.conv1`` -> ``layer1_0_conv1``."""
    return _UNSAFE.sub("_", name).strip("_") or "net"


def structure_kind(module: nn.Module | None, gate_dim: int | None = None) -> StructureKind:
    """The kind of the output structures of ``module`` (see :data:`STRUCTURE_KINDS`).

    Unknown modules are recognised by their attributes (``num_heads``, ``out_channels``,
    ``out_features``); failing that a gate over the last axis selects neurons and one over
    axis 1 channels.
    """
    if module is not None:
        for kind_type, kind in STRUCTURE_KINDS.items():
            if isinstance(module, kind_type):
                return kind
        for attr, kind in _KIND_BY_ATTRIBUTE:
            if hasattr(module, attr):
                return kind
    if gate_dim == -1:
        return StructureKind.NEURON
    if gate_dim == 1:
        return StructureKind.CHANNEL
    return StructureKind.STRUCTURE


def _gate_base(name: str, gate: StructureGate) -> str:
    """The identifier of a gate's layer: its producer, else the gate path without ``_gate``."""
    if gate.producer_name:
        return _safe(gate.producer_name)
    return _safe(name[: -len("_gate")] if name.endswith("_gate") else name)


def dim_name(model: PrunableNet, gate_name: str) -> str:
    """The dimension name of gate ``gate_name``'s structures, e.g. ``"fc1_neuron"``.

    ``blocks.0.attn.heads`` (a module holding the rows of each head) gives
    ``blocks_0_attn_head``: a plural that repeats the kind is dropped.
    """
    gate = model.gates()[gate_name]
    kind = _gate_kind(model, gate_name, gate).value
    base = _gate_base(gate_name, gate)
    if base.endswith(f"_{kind}s"):
        base = base[: -len(kind) - 2]
    elif base.endswith(f"_{kind}"):
        base = base[: -len(kind) - 1]
    return f"{base}_{kind}"


def _gate_kind(model: PrunableNet, gate_name: str, gate: StructureGate) -> StructureKind:
    """The kind of a gate's structures, from the structure graph (by the gate's axis when
    the network cannot be traced)."""
    from pyro_prune.graph import structure_graph

    try:
        info = structure_graph(model).gates.get(gate_name)
    except (ValueError, TypeError, RuntimeError):
        info = None
    if info is None:
        return structure_kind(None, gate.dim)
    return StructureKind(info.kind)


def _var_base(dim: str) -> str:
    """The variable prefix of a structure dimension: ``fc1_neuron`` -> ``fc1``."""
    return dim.rsplit("_", 1)[0]


def structure_dims(model: PrunableNet) -> dict[str, str]:
    """Gate path -> dimension name of its structures, for every gate of ``model``."""
    dims = {name: dim_name(model, name) for name in model.gates()}
    seen: dict[str, str] = {}
    for gate_name, dim in dims.items():
        if dim in seen:
            raise ValueError(
                f"gates {seen[dim]!r} and {gate_name!r} would share the dimension {dim!r}"
            )
        seen[dim] = gate_name
    return dims


def _site_layout(model: PrunableNet) -> dict[str, tuple[str, list[str]]]:
    """Pyro site -> (variable name, dims after chain/draw) for every known latent site."""
    layout: dict[str, tuple[str, list[str]]] = {}
    dims = structure_dims(model)
    for gate_name, gate in model.gates().items():
        if isinstance(gate, MultiplicativeNoise):
            layout[gate.site_name] = (f"{_var_base(dims[gate_name])}_theta", [dims[gate_name]])
    producer_dims = {
        g.producer_name: dims[n] for n, g in model.gates().items() if g.producer_name
    }
    for path, module in model.stochastic_modules().items():
        if isinstance(module, MultiplicativeNoise):
            continue
        weight = getattr(module, "weight_loc", None)
        if not isinstance(weight, Tensor):
            continue
        base = _safe(path)
        out_dim = producer_dims.get(path, f"{base}_{structure_kind(module).value}")
        if weight.dim() == 2:
            in_dims = [f"{base}_input"]
        else:
            in_dims = [f"{base}_in_channel"] + [f"{base}_k{i}" for i in range(weight.dim() - 2)]
        layout[f"{module.site_name}.weight"] = (f"{base}_weight", [out_dim, *in_dims])
        layout[f"{module.site_name}.bias"] = (f"{base}_bias", [out_dim])
    return layout


# ============================================================================ sampling
def _check_data(data: Any) -> tuple[Tensor, Tensor]:
    if isinstance(data, TensorDataset):
        tensors = data.tensors
    elif isinstance(data, (tuple, list)):
        tensors = tuple(data)
    else:
        raise TypeError(
            f"data must be a TensorDataset or a tuple (inputs, targets), got {type(data).__name__}"
        )
    if len(tensors) != 2 or not all(isinstance(t, Tensor) for t in tensors):
        raise TypeError("data must hold exactly two tensors: (inputs, targets)")
    x, y = tensors
    if len(x) == 0 or len(x) != len(y):
        raise ValueError(f"data must be non-empty with as many targets as inputs, got {len(x)} and {len(y)}")
    return x, y



MaskSpec = Mapping[str, Tensor] | str | None


def _resolve_mask(model: PrunableNet, mask: MaskSpec) -> dict[str, Tensor] | None:
    """``mask`` as gate -> keep bool tensor; a criterion name keeps what it does not remove."""
    if mask is None:
        return None
    if isinstance(mask, str):
        from pyro_prune.inference.scoring import structure_removals

        return {name: ~remove for name, remove in structure_removals(model, mask).items()}
    if not isinstance(mask, Mapping):
        raise TypeError(
            f"mask must be a criterion name or a dict gate -> bool tensor, got {type(mask).__name__}"
        )
    return model.check_masks(mask)


@dataclass
class _Draws:
    latents: dict[str, list[np.ndarray]]
    log_lik: list[np.ndarray]
    predictive: list[np.ndarray]
    prior: dict[str, list[np.ndarray]] | None = None


def _draw_prior(model: PrunableNet, x0: Tensor, num_samples: int) -> dict[str, list[np.ndarray]]:
    """``num_samples`` draws of every latent site from the model's priors (the model traced
    on the single input ``x0``, no guide)."""
    from pyro import poutine
    from pyro.poutine.util import site_is_subsample

    out: dict[str, list[np.ndarray]] = {}
    with noise_mode(model.net, NoiseMode.SAMPLE):
        for _ in range(num_samples):
            trace = poutine.trace(model).get_trace(x0, None)
            for name, site in trace.nodes.items():
                if (site["type"] != "sample" or site["is_observed"] or name == OBS
                        or site_is_subsample(site)):
                    continue
                out.setdefault(name, []).append(cast(Tensor, site["value"]).detach().cpu().numpy())
    return out


def _draw(
    model: PrunableNet,
    guide: Callable,
    x: Tensor | None,
    y: Tensor | None,
    num_samples: int,
    batch_size: int,
    progress: bool,
) -> _Draws:
    """``num_samples`` guide draws; the model replayed on each for the likelihood of ``y``.

    One guide trace is shared by every batch of the data, so ``log_lik[s][n]`` is
    ``log p(y_n | x_n, z_s)`` under a single posterior draw ``z_s``.
    """
    from pyro import poutine
    from pyro.poutine.util import site_is_subsample

    from pyro_prune.progress import progress_bar

    gates = {g.site_name: g for g in model.gates().values() if isinstance(g, MultiplicativeNoise)}
    out = _Draws(latents={}, log_lik=[], predictive=[])
    x0 = x[:1] if x is not None else None
    y0 = y[:1] if y is not None else None
    num_data = model.num_data
    model.num_data = None  # no num_data / batch scaling of the likelihood here
    try:
        with noise_mode(model.net, NoiseMode.SAMPLE):
            for _ in progress_bar(range(num_samples), desc="posterior draws", enabled=progress):
                guide_trace = poutine.trace(guide).get_trace(x0, y0)
                for name, site in guide_trace.nodes.items():
                    if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
                        continue
                    value = cast(Tensor, site["value"]).detach()
                    if name in gates:
                        value = value * gates[name].kept.to(value.dtype)
                    out.latents.setdefault(name, []).append(value.cpu().numpy())
                if x is None or y is None:
                    continue
                lls, pps = [], []
                replayed = poutine.replay(model, trace=guide_trace)
                for i in range(0, len(x), batch_size):
                    xb, yb = x[i : i + batch_size], y[i : i + batch_size]
                    trace = poutine.trace(replayed).get_trace(xb, None)
                    obs_site = trace.nodes[OBS]
                    lls.append(cast(Any, obs_site["fn"]).log_prob(yb).detach().double())
                    pps.append(cast(Tensor, obs_site["value"]).detach())
                out.log_lik.append(torch.cat(lls).cpu().numpy())
                out.predictive.append(torch.cat(pps).cpu().numpy())
        if x0 is not None:
            out.prior = _draw_prior(model, x0, num_samples)
    finally:
        model.num_data = num_data
    return out


# ============================================================================ groups
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
    var = _safe(name)
    return var, [f"{var}_dim_{i}" for i in range(len(shape))]


def _posterior_dataset(model: PrunableNet, latents: Mapping[str, list[np.ndarray]],
                       num_samples: int) -> xr.Dataset:
    layout = _site_layout(model)
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


def _data_datasets(y: Tensor, draws: _Draws, num_samples: int) -> dict[str, xr.Dataset]:
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


def _criterion_dF(criterion: Any, score: Tensor) -> Tensor | None:
    """``dF`` per structure of a threshold-free criterion (their score is ``-dF``), else ``None``."""
    if not getattr(criterion, "threshold_free", False):
        return None
    return -score


def _reduction_dataset(model: PrunableNet, criteria: Sequence[str]) -> xr.Dataset:
    """Per-structure reduction results of every gate (see the module docstring)."""
    from pyro_prune.inference.guides import attached_guide
    from pyro_prune.inference.scoring import gate_criterion
    from pyro_prune.reduction import get_criterion

    crits = [get_criterion(c) for c in criteria]
    names = [c.name for c in crits]
    dims = structure_dims(model)
    data_vars: dict[str, xr.Variable] = {}
    coords: dict[str, Any] = {"criterion": np.array(names, dtype=str)}
    df_names: list[str] = []
    for gate_name, gate in model.gates().items():
        d = dims[gate_name]
        base = _var_base(d)
        coords[d] = np.arange(gate.num_structures)
        attrs = {"gate": gate_name, "producer": gate.producer_name or "none"}
        kept = gate.kept.detach().cpu().numpy().astype(bool)
        data_vars[f"{base}_kept"] = xr.Variable([d], kept, attrs=attrs)
        external = gate.guide_posterior() if isinstance(gate, MultiplicativeNoise) else None
        if external is not None:  # the fitted autoguide's posterior, in its own parameters
            attrs = {**attrs, "posterior": f"{type(attached_guide(model)).__name__}, {external.family}"}
            for key, value in external.parameters().items():
                data_vars[f"{base}_{key}"] = xr.Variable([d], value.detach().cpu().numpy(), attrs=attrs)
        elif isinstance(gate, MultiplicativeNoise):
            data_vars[f"{base}_loc"] = xr.Variable([d], gate.loc.detach().cpu().numpy(), attrs=attrs)
            data_vars[f"{base}_scale"] = xr.Variable([d], gate.scale.detach().cpu().numpy(), attrs=attrs)
        if isinstance(gate, MultiplicativeNoise):
            data_vars[f"{base}_e_theta"] = xr.Variable(
                [d], gate.expected_theta().detach().cpu().numpy(), attrs=attrs
            )
        scores, removes, dfs = [], [], {}
        for crit in crits:
            try:
                score, remove = gate_criterion(model, gate_name, crit)
                assert remove is not None
            except (TypeError, KeyError, ValueError):  # not applicable to this gate
                score = torch.full((gate.num_structures,), float("nan"))
                remove = torch.zeros(gate.num_structures, dtype=torch.bool)
            scores.append(score.detach().double().cpu().numpy())
            removes.append(remove.detach().cpu().numpy().astype(bool))
            df = _criterion_dF(crit, score)
            if df is not None and bool(torch.isfinite(score).any()):
                dfs[crit.name] = df.detach().double().cpu().numpy()
        data_vars[f"{base}_score"] = xr.Variable(["criterion", d], np.stack(scores), attrs=attrs)
        data_vars[f"{base}_remove"] = xr.Variable(["criterion", d], np.stack(removes), attrs=attrs)
        if dfs:
            for n in dfs:
                if n not in df_names:
                    df_names.append(n)
            data_vars[f"{base}_dF"] = xr.Variable(
                ["dF_criterion", d],
                np.stack([dfs.get(n, np.full(gate.num_structures, np.nan)) for n in df_names]),
                attrs=attrs,
            )
    if df_names:
        coords["dF_criterion"] = np.array(df_names, dtype=str)
        # gates evaluated before a later criterion appeared: pad them to every dF criterion
        for var in list(data_vars):
            v = data_vars[var]
            if var.endswith("_dF") and v.shape[0] < len(df_names):
                pad = np.full((len(df_names) - v.shape[0], v.shape[1]), np.nan)
                data_vars[var] = xr.Variable(v.dims, np.concatenate([v.values, pad]), attrs=v.attrs)
    return xr.Dataset(data_vars, coords=coords)


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
        x, y = _check_data(data)
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
            draws = _draw(model, guide, x, y, num_samples, batch_size, progress)
            reduction = _reduction_dataset(model, list(criteria))
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
    return _make_inference_data(groups, attrs={k: _attr(v) for k, v in {**base_attrs, **run_attrs}.items()})


# ============================================================================ ArviZ adapter
class _Backend(enum.Enum):
    """The container ArviZ uses for groups."""

    #: ArviZ 0.x: ``az.InferenceData``
    INFERENCE_DATA = "inference_data"
    #: ArviZ >= 1: ``xarray.DataTree``
    DATATREE = "datatree"


def _arviz_version() -> str:
    import arviz

    return str(arviz.__version__)


def _backend() -> _Backend:
    major = int(re.match(r"\d+", _arviz_version()).group())  # type: ignore[union-attr]
    return _Backend.INFERENCE_DATA if major < 1 else _Backend.DATATREE


def _make_inference_data(groups: dict[str, xr.Dataset], attrs: Mapping[str, Any] | None = None) -> Any:
    """Groups -> ``az.InferenceData`` (ArviZ 0.x) or ``xr.DataTree`` (ArviZ >= 1)."""
    if _backend() is _Backend.INFERENCE_DATA:
        import arviz

        return arviz.InferenceData(attrs=dict(attrs or {}), **groups)  # type: ignore[arg-type]
    tree = xr.DataTree.from_dict({f"/{name}": ds for name, ds in groups.items()})
    tree.attrs.update(attrs or {})
    return tree


def group_names(idata: Any) -> list[str]:
    """Names of the groups of an ``InferenceData`` / ``DataTree``."""
    if isinstance(idata, xr.DataTree):
        return list(idata.children)
    return list(idata.groups())


def get_group(idata: Any, name: str) -> xr.Dataset:
    """Group ``name`` as an ``xarray.Dataset``."""
    if name not in group_names(idata):
        raise KeyError(f"no group {name!r}; groups: {group_names(idata)}")
    if isinstance(idata, xr.DataTree):
        return idata[name].to_dataset()
    return getattr(idata, name)


def save(idata: Any, path: str | os.PathLike) -> Path:
    """Write ``idata`` to a netCDF file (every group, the custom ``reduction`` one too).

    The file is written under a temporary name and renamed: an interrupted write leaves the
    previous file (or none), never a truncated one.
    """
    from pyro_prune._io import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        if isinstance(idata, xr.DataTree):
            idata.to_netcdf(tmp, engine="h5netcdf")
        else:
            idata.to_netcdf(str(tmp), engine="h5netcdf")
    return path


def load(path: str | os.PathLike) -> Any:
    """Read what :func:`save` wrote, fully into memory (the file is closed afterwards)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no InferenceData file at {path}")
    if _backend() is _Backend.INFERENCE_DATA:
        import arviz

        idata = arviz.from_netcdf(str(path), engine="h5netcdf")
        for name in idata.groups():
            setattr(idata, name, getattr(idata, name).load())
        return idata
    with xr.open_datatree(path, engine="h5netcdf") as tree:
        return tree.load().copy()


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
    if _backend() is _Backend.INFERENCE_DATA:
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
        if _backend() is _Backend.INFERENCE_DATA:
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
    if _backend() is _Backend.INFERENCE_DATA:
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
