"""Candidate weight prunings of a network with weight masks, and applying them.

A candidate prunes every ``nn.Linear`` / ``nn.Conv2d`` layer (weights only) to a target
sparsity, by magnitude or at random (:class:`PruneMethod`), never emptying a layer
(:func:`prune_count`); :func:`apply_masks` makes it the network's pruning, monotonically.
The Bayes factor that decides whether a candidate is applied is in
:mod:`~pyro_prune.reduction.bayes_factors`, the schedule that draws one after every epoch in
:mod:`~pyro_prune.reduction.bayes_factor_pruning`.
"""

from __future__ import annotations

import enum
import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from pyro_prune._enums import parse_enum
from pyro_prune.models.fcn import ensure_weight_masks, prunable_layers, weight_masks

__all__ = ["PruneMethod", "apply_masks", "candidate_masks", "layer_sparsity", "prune_count", "sparsity"]


class PruneMethod(enum.Enum):
    """How a candidate pruning picks the weights to zero within a layer."""

    #: uniformly at random among the kept weights
    RANDOM = "random"
    #: the kept weights with the smallest absolute value
    MAGNITUDE = "magnitude"


def _method(value: object) -> PruneMethod:
    return parse_enum(PruneMethod, value, "method")


def _check_sparsity(value: object, arg: str = "target_sparsity") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{arg} must be a number in [0, 1), got {type(value).__name__}")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{arg} must lie in [0, 1), got {value!r}")
    return float(value)


def prune_count(numel: int, target_sparsity: float) -> int:
    """Number of weights a layer of ``numel`` weights has pruned at ``target_sparsity``.

    ``round(target_sparsity * numel)`` (Python rounding, as ``torch.nn.utils.prune``), but at
    most ``numel - 1`` so that a layer is never emptied (with a warning when that binds).
    """
    r = _check_sparsity(target_sparsity)
    k = round(r * numel)
    if k >= numel:
        warnings.warn(
            f"sparsity {r} of a layer with {numel} weights would empty it; keeping one weight",
            RuntimeWarning,
            stacklevel=2,
        )
        k = numel - 1
    return k


def sparsity(model: torch.nn.Module) -> float:
    """Fraction of the prunable weights (all Linear/Conv2d weights) that are pruned (masked)."""
    masks = weight_masks(model)
    layers = prunable_layers(model)
    total = sum(layer.weight.numel() for layer in layers.values())
    pruned = sum(int((~m).sum()) for m in masks.values())
    return pruned / total if total else 0.0


def layer_sparsity(model: torch.nn.Module) -> dict[str, float]:
    """Pruned fraction of each prunable layer's weights (0 for a layer without a mask)."""
    masks = weight_masks(model)
    return {
        name: (float((~masks[name]).sum()) / layer.weight.numel()) if name in masks else 0.0
        for name, layer in prunable_layers(model).items()
    }


def candidate_masks(
    model: torch.nn.Module,
    target_sparsity: float,
    method: PruneMethod | str = PruneMethod.MAGNITUDE,
    *,
    generator: torch.Generator | None = None,
    layers: Sequence[str] | None = None,
) -> dict[str, Tensor]:
    """Keep-masks of the candidate pruning of every prunable layer to ``target_sparsity``.

    Starts from the layer's current ``weight_mask`` (registered if missing) and prunes
    ``prune_count(numel, r) - (already pruned)`` more of its kept weights: the smallest
    ``|w|`` (ties broken by ``torch.topk``) or a uniform random subset drawn with
    ``generator``. Layers already at (or past) the target keep their mask, and so do the
    layers not named in ``layers`` (default: every prunable layer). Nothing in the model is
    changed.
    """
    kind = _method(method)
    r = _check_sparsity(target_sparsity)
    out: dict[str, Tensor] = {}
    masks = ensure_weight_masks(model)
    chosen = _check_layers(model, layers)
    for name, layer in prunable_layers(model).items():
        mask = masks[name]
        need = prune_count(mask.numel(), r) - int((~mask).sum()) if name in chosen else 0
        if need <= 0:
            out[name] = mask.clone()
            continue
        flat_mask = mask.reshape(-1)
        if kind is PruneMethod.MAGNITUDE:
            score = layer.weight.detach().abs().reshape(-1).masked_fill(~flat_mask, float("inf"))
            idx = torch.topk(score, need, largest=False, sorted=False).indices
        else:
            kept_idx = flat_mask.nonzero().squeeze(1)
            pick = torch.randperm(kept_idx.numel(), generator=generator, device="cpu")[:need]
            idx = kept_idx[pick.to(kept_idx.device)]
        new = flat_mask.clone()
        new[idx] = False
        out[name] = new.reshape(mask.shape)
    return out


def _layer_list(layers: Sequence[str] | None) -> list[str] | None:
    """``layers`` as a list of names (``None`` stays ``None``: every layer)."""
    if layers is None:
        return None
    if isinstance(layers, str) or not all(isinstance(n, str) for n in layers) or not layers:
        raise TypeError(f"layers must be a non-empty sequence of layer names or None, got {layers!r}")
    return list(layers)


def _check_layers(model: torch.nn.Module, layers: Sequence[str] | None) -> set[str]:
    """The names of the layers to prune; every prunable layer for ``None``."""
    names = list(prunable_layers(model))
    chosen = _layer_list(layers)
    if chosen is None:
        return set(names)
    unknown = [n for n in chosen if n not in names]
    if unknown:
        raise ValueError(f"unknown layers {unknown}; the prunable layers are {names}")
    return set(chosen)


@torch.no_grad()
def apply_masks(
    model: torch.nn.Module,
    masks: Mapping[str, Tensor],
    optimizer: torch.optim.Optimizer | None = None,
) -> int:
    """Make ``masks`` the model's pruning: set ``weight_mask``, zero the pruned weights.

    Pruning is monotone: a mask that would bring back a pruned weight raises
    ``ValueError``. With ``optimizer``, the per-weight optimizer state of the pruned
    entries (Adam's moment estimates, any state tensor shaped like the weight) is zeroed
    too, so that with masked gradients the optimizer never moves them again.

    Returns the number of newly pruned weights.
    """
    current = ensure_weight_masks(model)
    layers = prunable_layers(model)
    unknown = sorted(set(masks) - set(layers))
    if unknown:
        raise ValueError(f"masks name layers the model does not have: {unknown}")
    newly = 0
    for name, mask in masks.items():
        old = current[name]
        if mask.shape != old.shape or mask.dtype != torch.bool:
            raise ValueError(
                f"masks[{name!r}] must be a bool tensor of shape {tuple(old.shape)}, "
                f"got {mask.dtype} {tuple(mask.shape)}"
            )
        if bool((mask & ~old).any()):
            raise ValueError(f"masks[{name!r}] would restore pruned weights; pruning is monotone")
        newly += int((old & ~mask).sum())
        old.copy_(mask)
        weight = layers[name].weight
        weight.mul_(mask)
        if optimizer is not None:
            for value in optimizer.state.get(weight, {}).values():
                if isinstance(value, Tensor) and value.shape == weight.shape:
                    value.mul_(mask)
    return newly


def _enforce_masks(pairs: Sequence[tuple[Tensor, Tensor]]) -> None:
    with torch.no_grad():
        for weight, mask in pairs:
            weight.mul_(mask)
