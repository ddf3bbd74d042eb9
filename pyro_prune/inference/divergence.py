"""Telling a diverged training run from a slow one (a finite but exploding loss)."""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor

from pyro_prune.models.base import Likelihood, PrunableNet

__all__ = ["DIVERGENCE_FACTOR", "DivergenceWarning", "chance_level", "warn_if_diverging"]


class DivergenceWarning(RuntimeWarning):
    """Training diverged to a huge but finite loss (see :func:`~pyro_prune.inference.fit`)."""


#: an epoch loss this many times above the best epoch so far counts as diverged
DIVERGENCE_FACTOR = 1e3


def chance_level(model: PrunableNet, targets: Tensor) -> tuple[float, float] | None:
    """``(majority-class rate, log of the number of classes)`` of a classifier's training
    targets, by which a failed classifier is judged; ``None`` for regression or fewer than
    10 examples per class."""
    if model.likelihood is not Likelihood.CATEGORICAL:
        return None
    counts = torch.bincount(targets)
    if int((counts > 0).sum()) > 1 and len(targets) >= 10 * len(counts):
        return float(counts.max()) / len(targets), math.log(len(counts))
    return None


def warn_if_diverging(history: list[dict[str, Any]], chance: tuple[float, float] | None, *,
                      final: bool) -> None:
    """Warn (once) when training diverged without a NaN, the usual sign of a too large lr.

    Diverged: the epoch loss blew up to ``DIVERGENCE_FACTOR`` x the best epoch's (on the
    first epoch, above ``1e6`` per example); or, at the end, a classifier predicts at chance
    (accuracy within 0.02 of the majority class's rate) with a loss above 10 x ``log C``,
    ten times what predicting the uniform distribution costs.
    """
    if any(row.get("diverged") for row in history[:-1]):
        return
    row = history[-1]
    losses = [float(r["loss"]) for r in history if "loss" in r]
    if not losses:
        return
    now, best = losses[-1], min(losses)
    blown = now > 1e6 if len(losses) == 1 else now > DIVERGENCE_FACTOR * max(best, 1e-3)
    acc = row.get("val_accuracy", row.get("train_accuracy"))
    at_chance = (final and chance is not None and acc is not None
                 and acc <= chance[0] + 0.02 and now > 10 * chance[1])
    if not (blown or at_chance):
        return
    row["diverged"] = True
    detail = f", accuracy {acc:.3f}" if acc is not None else ""
    if at_chance:
        detail += f" at chance (majority class {chance[0]:.3f})"  # type: ignore[index]
    warnings.warn(
        f"training diverged at epoch {row.get('epoch')}: loss {now:.3g} per example "
        f"(best epoch {best:.3g}){detail}; lower lr or noise_lr",
        DivergenceWarning, stacklevel=3,
    )
