"""The ``reduction`` group: per structure of every gate its ``kept`` flag, the noise posterior,
``E[theta]``, every criterion's score and removal decision, and ``dF`` of the threshold-free
criteria."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from pyro_prune.inspect.names import structure_dims, var_base
from pyro_prune.models.base import PrunableNet
from pyro_prune.models.noise import MultiplicativeNoise

__all__ = ["reduction_dataset"]


def _criterion_dF(criterion: Any, score: Tensor) -> Tensor | None:
    """``dF`` per structure of a threshold-free criterion (their score is ``-dF``), else ``None``."""
    if not getattr(criterion, "threshold_free", False):
        return None
    return -score


def reduction_dataset(model: PrunableNet, criteria: Sequence[str]) -> xr.Dataset:
    """Per-structure reduction results of every gate (see the module docstring)."""
    from pyro_prune.inference.guides import attached_guide
    from pyro_prune.reduction import gate_criterion, get_criterion

    crits = [get_criterion(c) for c in criteria]
    names = [c.name for c in crits]
    dims = structure_dims(model)
    data_vars: dict[str, xr.Variable] = {}
    coords: dict[str, Any] = {"criterion": np.array(names, dtype=str)}
    df_names: list[str] = []
    for gate_name, gate in model.gates().items():
        d = dims[gate_name]
        base = var_base(d)
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
