"""A criterion of :mod:`~pyro_prune.reduction.criteria` applied to the gates of a model.

For every gate this gathers what a criterion needs — the noise posterior (``loc``,
``scale`` and bounds), the structure's incoming weights and their gradients (from the
gate's ``producer_name`` layer, which the structure graph names, one row per structure), or
the Gaussian posterior of those weights — and returns per-structure scores (higher = more
important) or removal masks. A gate over attention heads (no producer: its rows are spread
over q, k and v, or over a fused qkv layer) owns the rows the structure graph gives it
(:func:`~pyro_prune.graph.structure_rows`): a structure's weights are all of its rows in every
layer, so weight criteria (``gaussian_bmr``, the joint ``bmrs_joint``, the L2 norm) sum over
a head's q, k and v rows.

When the model was fitted with an autoguide (``fit(model, data, guide=AutoNormal(model))``),
the noise criteria read that guide's posterior (:mod:`pyro_prune.inference.guides`), which
``fit`` attached to the model; ``guide=`` passes one explicitly.

:func:`global_ranking` lists every kept structure across the gates, least important first;
it is :func:`pyro_prune.models.gate.rank_structures` of the criterion's scores, so every
ranking of the package breaks ties the same way (the order of the gates in the model, then
the index).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from pyro_prune.graph.layers import layer_slicer
from pyro_prune.models.base import PrunableNet
from pyro_prune.models.gate import StructureGate, rank_structures
from pyro_prune.models.noise import MultiplicativeNoise
from pyro_prune.reduction.criteria import Criterion, CriterionInput, get_criterion

__all__ = ["as_criterion", "gate_criterion", "gate_inputs", "global_ranking", "structure_decisions",
           "structure_removals", "structure_scores"]


def _rows(t: Tensor, gate: StructureGate) -> Tensor:
    """Per-structure rows ``[n, -1]`` of a producer's weight (structures on dim 0)."""
    if t.shape[0] != gate.num_structures:
        raise ValueError(
            f"{gate.site_name}: producer weight has {t.shape[0]} rows, expected {gate.num_structures}"
        )
    return t.reshape(t.shape[0], -1)


def _weight_rows(producer: nn.Module, t: Tensor, gate: StructureGate) -> Tensor:
    """:func:`_rows` of a producer's ``weight`` or its gradient, its structure axis first (the
    registered layout: Hugging Face's ``Conv1D`` stores ``[in, out]``)."""
    slicer = layer_slicer(producer)
    axis = slicer.tensors.get("weight", (0, None))[0] if slicer is not None else 0
    return _rows(t.movedim(axis, 0) if axis else t, gate)


def _layer_rows(layer: nn.Module, t: Tensor) -> Tensor:
    """A layer's weight (or gradient) as rows ``[out, -1]`` (its output axis first)."""
    slicer = layer_slicer(layer)
    axis = slicer.tensors.get("weight", (0, None))[0] if slicer is not None else 0
    t = t.movedim(axis, 0) if axis else t
    return t.reshape(t.shape[0], -1)


def _per_structure(mats: list[Tensor], owners: list[Tensor], n: int, fill: float) -> Tensor:
    """``[n, L]``: structure ``s``'s rows of every layer (``owners[i][r] == s``), flattened in
    order; structures owning fewer entries are padded with ``fill`` (a value that adds
    nothing: a zero weight, or a Gaussian at its prior)."""
    parts = [torch.cat([m[own.to(m.device) == s].reshape(-1) for m, own in zip(mats, owners)])
             for s in range(n)]
    width = max(p.numel() for p in parts)
    out = mats[0].new_full((n, width), fill)
    for s, part in enumerate(parts):
        out[s, : part.numel()] = part
    return out


def _owned_row_inputs(model: PrunableNet, name: str, gate: StructureGate) -> dict[str, Tensor | float]:
    """The weight inputs of a gate over attention heads (no producer): the rows it owns in
    every layer. Other gates without a producer (a gate on a residual stream) have none."""
    from pyro_prune.graph import head_rows

    owned = [(model.net.get_submodule(path), own) for path, own in head_rows(model, name).items() if bool((own >= 0).any())]
    if not owned:
        return {}
    layers, owners = [m for m, _ in owned], [own for _, own in owned]
    n = gate.num_structures
    if all(callable(getattr(m, "weight_posterior", None)) for m in layers):
        posts = [m.weight_posterior() for m in layers]  # type: ignore[operator]
        priors = {float(p[2]) for p in posts}
        if len(priors) > 1:
            raise ValueError(f"{name}: its rows have Gaussian priors of different scales {sorted(priors)}; "
                             f"a weight criterion takes one prior_scale")
        prior = priors.pop()
        loc = _per_structure([p[0].detach() for p in posts], owners, n, 0.0)
        return {"weight_loc": loc, "weight": loc, "prior_scale": prior,
                "weight_scale": _per_structure([p[1].detach() for p in posts], owners, n, prior)}
    weights: list[Tensor] = [w for w in (getattr(m, "weight", None) for m in layers) if isinstance(w, Tensor)]
    if len(weights) != len(layers):
        return {}
    inputs: dict[str, Tensor | float] = {
        "weight": _per_structure([_layer_rows(m, w.detach()) for m, w in zip(layers, weights)], owners, n, 0.0)}
    if all(w.grad is not None for w in weights):  # type: ignore[union-attr]
        inputs["grad"] = _per_structure([_layer_rows(m, w.grad.detach())  # type: ignore[union-attr]
                                         for m, w in zip(layers, weights)], owners, n, 0.0)
    return inputs


def gate_inputs(model: PrunableNet, name: str) -> dict[str, Tensor | float]:
    """Everything a criterion may need about the structures of gate ``name``."""
    gate = model.gates()[name]
    inputs: dict[str, Tensor | float] = {}
    if isinstance(gate, MultiplicativeNoise):
        inputs.update(loc=gate.loc.detach(), scale=gate.scale.detach(),
                      log_low=gate.log_low, log_high=gate.log_high)
    producer: nn.Module | None = None
    if gate.producer_name is not None:
        producer = model.net.get_submodule(gate.producer_name)
    else:
        inputs.update(_owned_row_inputs(model, name, gate))
    if producer is not None:
        posterior = getattr(producer, "weight_posterior", None)
        if callable(posterior):  # Bayesian weights: (loc, scale, prior_scale) of [n, -1]
            loc, scale, prior_scale = posterior()
            inputs.update(weight_loc=_rows(loc.detach(), gate), weight_scale=_rows(scale.detach(), gate),
                          prior_scale=prior_scale)
            inputs["weight"] = inputs["weight_loc"]
        else:
            weight = getattr(producer, "weight", None)
            if isinstance(weight, Tensor):
                inputs["weight"] = _weight_rows(producer, weight.detach(), gate)
                if weight.grad is not None:
                    inputs["grad"] = _weight_rows(producer, weight.grad.detach(), gate)
    return inputs


def as_criterion(criterion: str | Criterion, **criterion_kwargs: Any) -> Criterion:
    """A registered criterion by name (with options bound), or ``criterion`` itself."""
    if isinstance(criterion, Criterion):
        if criterion_kwargs:
            raise TypeError("options go with a criterion name, not a Criterion object")
        return criterion
    return get_criterion(criterion, **criterion_kwargs)


def _inputs_for(crit: Criterion, inputs: dict[str, Tensor | float]) -> dict[str, Tensor | float]:
    """The gate inputs a criterion takes (``dim=-1``: a structure's row of weights)."""
    wanted = {f for need in crit.needs for f in need.fields + need.settings} | set(crit.accepts)
    args = {k: v for k, v in inputs.items() if k in wanted}
    if "dim" in wanted:
        args["dim"] = -1
    missing = [f for f in crit.input_names if f not in args]
    if missing:
        raise ValueError(f"criterion {crit.name!r} needs {missing}, which this gate does not have")
    return args


def _guide_reader(model: PrunableNet, guide: Any) -> Any:
    """``gate -> NoisePosterior or None``: the posterior a criterion reads for each noise gate."""
    from pyro_prune.inference import guides as _guides

    if guide is None:
        guide = _guides.attached_guide(model)
        if guide is None:
            error = model.__dict__.get("_fitted_guide_error")
            if error is None:
                return lambda gate, crit: None

            def refuse(gate: StructureGate, crit: Criterion) -> Any:
                if isinstance(gate, MultiplicativeNoise) and CriterionInput.NOISE_POSTERIOR in crit.needs:
                    raise TypeError(error)
                return None

            return refuse
    elif guide == model.guide:
        return lambda gate, crit: None
    else:
        _guides.check_readable_guide(model, guide)
    sites = set(guide.prototype_trace.nodes) if getattr(guide, "prototype_trace", None) else set()
    noise_sites = {m.site_name for m in model.noise_layers().values()}

    def read(gate: StructureGate, crit: Criterion) -> Any:
        if CriterionInput.GAUSSIAN_WEIGHTS in crit.needs and sites - noise_sites:
            raise ValueError(
                f"criterion {crit.name!r} reads the model's own weight posterior, but the fitted "
                f"{type(guide).__name__} also holds the weights' posterior; use a noise criterion "
                f"({', '.join(_guides.GUIDE_CRITERIA)}) or the model's own guide"
            )
        if isinstance(gate, MultiplicativeNoise) and CriterionInput.NOISE_POSTERIOR in crit.needs:
            return _guides.guide_noise_posterior(guide, gate)
        return None

    return read


def gate_criterion(model: PrunableNet, name: str, crit: Criterion, *, guide: Any = None,
                   remove: bool = True) -> tuple[Tensor, Tensor | None]:
    """One gate's scores (higher = keep) and, with ``remove``, its removal mask (kept only).

    The noise posterior is the fitted guide's (``guide``, else the one :func:`fit` attached),
    else the layer's own.
    """
    return _gate_criterion(model, name, crit, _guide_reader(model, guide), remove)


def _gate_criterion(model: PrunableNet, name: str, crit: Criterion, reader: Any,
                    remove: bool) -> tuple[Tensor, Tensor | None]:
    from pyro_prune.inference import guides as _guides

    gate = model.gates()[name]
    posterior = reader(gate, crit) if reader is not None else None
    if posterior is not None:
        extra = {k: v for k, v in _inputs_for(crit, gate_inputs(model, name)).items()
                 if k in crit.accepts}
        score = _guides.guide_score(posterior, crit, extra)
        mask = _guides.guide_removal(posterior, crit, extra) & gate.kept if remove else None
        return score, mask
    args: dict[str, Any] = _inputs_for(crit, gate_inputs(model, name))
    return crit.score(**args), (crit.remove(**args) & gate.kept) if remove else None


def structure_scores(model: PrunableNet, criterion: str | Criterion, *, guide: Any = None,
                     **criterion_kwargs: Any) -> dict[str, Tensor]:
    """Per-gate scores (higher = keep) of a criterion (a name or a ``Criterion``).

    ``guide``: read the noise posterior of this fitted autoguide (default: the guide
    :func:`~pyro_prune.inference.fit.fit` trained, else the layers' own posterior).
    """
    crit = as_criterion(criterion, **criterion_kwargs)
    reader = _guide_reader(model, guide)
    return {name: _gate_criterion(model, name, crit, reader, remove=False)[0] for name in model.gates()}


def structure_decisions(model: PrunableNet, criterion: str | Criterion, *, guide: Any = None,
                        **criterion_kwargs: Any) -> dict[str, tuple[Tensor, Tensor]]:
    """Per gate, the criterion's scores (higher = keep; ``-dF`` for dF criteria) and its
    removal mask of kept structures, from one evaluation."""
    crit = as_criterion(criterion, **criterion_kwargs)
    reader = _guide_reader(model, guide)
    out = {}
    for name in model.gates():
        score, mask = _gate_criterion(model, name, crit, reader, remove=True)
        assert mask is not None
        out[name] = (score, mask)
    return out


def structure_removals(model: PrunableNet, criterion: str | Criterion, *, guide: Any = None,
                       **criterion_kwargs: Any) -> dict[str, Tensor]:
    """Per-gate boolean masks of the kept structures the criterion removes.

    Threshold-free criteria remove where dF >= 0; thresholded ones below their default
    threshold (SNR < 1, E[theta] < 0.1). ``guide`` as in :func:`structure_scores`.
    """
    return {name: mask for name, (_, mask) in
            structure_decisions(model, criterion, guide=guide, **criterion_kwargs).items()}


def global_ranking(model: PrunableNet, criterion: Any, **criterion_kwargs: Any) -> list[tuple[str, int]]:
    """Every kept structure as ``(gate, index)``, least important first, across all gates.

    Ties go by the order of the gates in ``model.gates()``, then by index
    (:func:`~pyro_prune.models.gate.rank_structures`, the one ranking of the package).
    """
    return rank_structures(model.kept_mask(), structure_scores(model, criterion, **criterion_kwargs))
