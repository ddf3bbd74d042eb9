"""The optimizer :func:`~pyro_prune.inference.fit` trains with: Adam, the noise posteriors at
their own learning rate."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pyro_prune.models.base import PrunableNet

__all__ = ["DEFAULT_NOISE_LR", "make_optimizer", "trainable_parameters"]

#: default learning rate of the noise posteriors (see ``docs/defaults.md``)
DEFAULT_NOISE_LR = 0.03


def trainable_parameters(model: nn.Module, guide: Callable) -> list[nn.Parameter]:
    """The parameters that train: the model's, then a guide module's own, each once."""
    params = list(model.parameters())
    if isinstance(guide, nn.Module) and guide is not model:
        seen = {id(p) for p in params}
        params += [p for p in guide.parameters() if id(p) not in seen]
    return [p for p in params if p.requires_grad]


def _param_groups(model: nn.Module, guide: Callable, lr: float,
                  noise_lr: float | None) -> list[dict[str, Any]]:
    """One Adam group, or two when the noise posteriors get their own learning rate."""
    params = trainable_parameters(model, guide)
    if noise_lr is None:
        return [{"params": params, "lr": lr}]
    from pyro_prune.models.noise import MultiplicativeNoise

    noise_ids = {id(p) for m in model.modules() if isinstance(m, MultiplicativeNoise)
                 for p in m.parameters()}
    if isinstance(guide, nn.Module) and guide is not model:  # an autoguide's own parameters
        own = {id(p) for p in model.parameters()}
        noise_ids |= {id(p) for p in guide.parameters() if id(p) not in own}
    groups = [{"params": [p for p in params if id(p) not in noise_ids], "lr": lr},
              {"params": [p for p in params if id(p) in noise_ids], "lr": noise_lr}]
    return [g for g in groups if g["params"]]


def _adam(groups: list[dict[str, Any]], **options: Any) -> torch.optim.Adam:
    """Adam with its fused kernel where the parameters' device has one, else ``foreach``.

    Both avoid a Python loop over the parameters, which matters with many small ones (two
    per noise layer); the fused kernel (CPU since torch 2.4) also does each update in one
    pass over memory: on the MNIST MLP (7x100, batch 128, CPU) it cuts a training step by
    about 15%. The arithmetic is Adam's either way.
    """
    try:
        return torch.optim.Adam(groups, fused=True, **options)
    except (RuntimeError, TypeError):  # no fused kernel for these parameters
        return torch.optim.Adam(groups, foreach=True, **options)


def make_optimizer(model: PrunableNet, *, lr: float = 1e-3, noise_lr: float | None = None,
                   weight_decay: float = 0.0, guide: Callable | None = None) -> torch.optim.Adam:
    """The Adam optimizer :func:`~pyro_prune.inference.fit` trains with (for a training loop
    of your own).

    One parameter group at ``lr``, or two when the noise posteriors get ``noise_lr``; the
    parameters of a custom ``guide`` module are included; the fused kernel where the device
    has one (:func:`_adam`).
    """
    guide = guide if guide is not None else model.guide
    return _adam(_param_groups(model, guide, lr, noise_lr), lr=lr, weight_decay=weight_decay)
