"""Telling a diverged training run from a slow one (a finite but exploding loss).

Each epoch of :func:`~pyro_prune.inference.fit` records two losses per example: ``loss``,
the negative ELBO of the epoch's minibatches (the expected negative log likelihood plus
the regulariser, KL / N for Bayesian weights and noise, minus the log prior / N for point
weights), and the data term alone, the mean negative log likelihood at the posterior mean
(``val_loss`` with validation data, else ``train_loss``). On a small data set the
regulariser can be tens to hundreds of nats per example while the network learns well
(LeNet-5 with Gaussian weights on the 1,438 digits after one epoch: KL / N ~ 67 against a
likelihood term of ~ 2.3), so the likelihood is judged on its own term, never through the
total.

A classifier that is only slow, or that never learns (a learning rate too small, a guide
that starts where nothing moves, a KL weight that holds the weights at their prior), ends
at chance without diverging: :func:`chance_note` says so in one line, which
:func:`~pyro_prune.inference.fit` and ``pyro-prune fit`` add to their summary at the end of
a run.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor

from pyro_prune.models.base import Likelihood, PrunableNet

__all__ = ["CHANCE_ACCURACY_MARGIN", "CHANCE_NLL_FACTOR", "CHANCE_STANDARD_ERRORS", "DIVERGENCE_FACTOR",
           "FIRST_EPOCH_LIMIT", "DivergenceWarning", "at_chance", "chance_level", "chance_margin",
           "chance_note", "divergence_reason", "lr_advice", "warn_if_diverging"]


class DivergenceWarning(RuntimeWarning):
    """Training diverged to a huge but finite loss (see :func:`~pyro_prune.inference.fit`)."""


#: a loss (or negative log likelihood) that rose this many times its scale above its best
#: epoch counts as diverged; the scale is ``max(|best|, log C)`` for a classifier of C
#: classes, ``max(|best|, 1)`` otherwise (the negative log likelihood of a Gaussian
#: likelihood may be negative)
DIVERGENCE_FACTOR = 1e3
#: the first epoch has no best to compare with: a loss above this (per example) diverged
FIRST_EPOCH_LIMIT = 1e6
#: a classifier that ends at chance diverged when its negative log likelihood was, at some
#: epoch, above this many times ``log C`` (what predicting the uniform distribution costs):
#: worse than knowing nothing, it was confidently wrong, not slow (a network still learning
#: stays near ``log C``)
CHANCE_NLL_FACTOR = 2.0
#: an accuracy "at chance" is at most the majority class's share of the training targets plus
#: a margin: at least this much ...
CHANCE_ACCURACY_MARGIN = 0.02
#: ... and at least this many standard errors ``sqrt(p (1 - p) / n)`` of the accuracy, on
#: ``n`` examples, of a classifier that is right with probability ``p``, the majority share
#: (a network that learned nothing scores about ``p`` or less; its measured accuracy exceeds
#: ``p`` by three standard errors with probability about 0.001)
CHANCE_STANDARD_ERRORS = 3.0


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


def _nll_key(row: dict[str, Any]) -> str | None:
    """The row's evaluated negative log likelihood: on the validation data when there is
    one (every epoch has it), else on the training data."""
    for key in ("val_loss", "train_loss"):
        if row.get(key) is not None:
            return key
    return None


def _series(history: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    """``(epoch, value)`` of every row with a finite ``key``."""
    out = []
    for i, row in enumerate(history):
        value = row.get(key)
        if value is not None and math.isfinite(float(value)):
            out.append((int(row.get("epoch", i + 1)), float(value)))
    return out


def _risen(series: list[tuple[int, float]], scale: float) -> tuple[int, float] | None:
    """``(epoch, value)`` of the best earlier epoch when the last value rose more than
    ``DIVERGENCE_FACTOR x max(|best|, scale)`` above it, else ``None``."""
    if len(series) < 2:
        return None
    now = series[-1][1]
    best_epoch, best = min(series[:-1], key=lambda item: item[1])
    if now - best > DIVERGENCE_FACTOR * max(abs(best), scale):
        return best_epoch, best
    return None


def divergence_reason(history: list[dict[str, Any]], chance: tuple[float, float] | None, *,
                      final: bool) -> str | None:
    """Why the last epoch of ``history`` counts as diverged, or ``None`` when it does not.

    Diverged when any of these holds:

    - the loss (negative ELBO per example) rose more than ``DIVERGENCE_FACTOR`` x its scale
      above its best epoch, or is above ``FIRST_EPOCH_LIMIT`` in the first epoch;
    - the evaluated negative log likelihood (``val_loss``, else ``train_loss``) rose more
      than ``DIVERGENCE_FACTOR`` x its scale above its best epoch;
    - at the end (``final``), a classifier predicts at chance (accuracy within
      ``CHANCE_ACCURACY_MARGIN`` of the majority class's rate) *and* its likelihood says it failed: the negative log
      likelihood was above ``CHANCE_NLL_FACTOR x log C`` at some epoch.

    A classifier that is only slow (at chance with a likelihood term near ``log C``) is
    not diverged, whatever its regulariser (KL / N) adds to the loss.
    """
    row = history[-1]
    log_classes = chance[1] if chance is not None else 1.0
    scale = max(log_classes, 1e-3)
    losses = _series(history, "loss")
    if len(history) == 1 and losses and losses[-1][1] > FIRST_EPOCH_LIMIT:
        return f"loss {losses[-1][1]:.3g} per example in its first epoch"
    if losses and losses[-1][0] == row.get("epoch", len(history)):
        risen = _risen(losses, scale)
        if risen is not None:
            return (f"loss {losses[-1][1]:.3g} per example, up from {risen[1]:.3g} at epoch "
                    f"{risen[0]}, its best")
    key = _nll_key(row)
    if key is None:
        return None
    where = "validation" if key == "val_loss" else "training"
    nlls = _series(history, key)
    if nlls and nlls[-1][0] == row.get("epoch", len(history)):
        risen = _risen(nlls, scale)
        if risen is not None:
            return (f"negative log likelihood {nlls[-1][1]:.3g} per example on the {where} data, "
                    f"up from {risen[1]:.3g} at epoch {risen[0]}, its best")
    acc_key = "val_accuracy" if key == "val_loss" else "train_accuracy"
    acc = row.get(acc_key)
    if not final or chance is None or acc is None or acc > chance[0] + CHANCE_ACCURACY_MARGIN or not nlls:
        return None
    worst_epoch, worst = max(nlls, key=lambda item: item[1])
    if worst <= CHANCE_NLL_FACTOR * log_classes:
        return None  # at chance but with a likelihood near log C: slow, not diverged
    return (f"{where} accuracy {acc:.3f}, no better than chance (majority class {chance[0]:.3f}), after the "
            f"negative log likelihood reached {worst:.3g} per example at epoch {worst_epoch} "
            f"(predicting uniformly costs log C = {log_classes:.3g})")


def lr_advice(lr: float | None, noise_lr: float | None) -> str:
    """The advice every training failure ends with: ``"lower lr (now 0.001) or noise_lr
    (now 0.03)"`` (the noise learning rate only when the noise posteriors have their own)."""
    advice = "lower lr" + (f" (now {lr:g})" if lr is not None else "")
    if noise_lr is not None:  # otherwise the noise posteriors learn at lr too
        advice += f" or noise_lr (now {noise_lr:g})"
    return advice


def warn_if_diverging(history: list[dict[str, Any]], chance: tuple[float, float] | None, *,
                      final: bool, lr: float | None = None, noise_lr: float | None = None) -> None:
    """Warn (once) when training diverged without a NaN, the usual sign of a too large lr.

    The rules are :func:`divergence_reason`'s; the warning names the epoch, the quantity
    that diverged with its value and best epoch, and the learning rates to lower. The
    last row gets ``"diverged": True``.
    """
    if not history or any(row.get("diverged") for row in history[:-1]):
        return
    reason = divergence_reason(history, chance, final=final)
    if reason is None:
        return
    row = history[-1]
    row["diverged"] = True
    warnings.warn(f"training diverged at epoch {row.get('epoch', len(history))}: {reason}; "
                  f"{lr_advice(lr, noise_lr)}",
                  DivergenceWarning, stacklevel=3)


def chance_margin(majority: float, n: int | None) -> float:
    """How far above the majority share ``majority`` an accuracy on ``n`` examples must be to
    count as learned: ``max(CHANCE_ACCURACY_MARGIN, CHANCE_STANDARD_ERRORS * sqrt(p (1 - p) /
    n))`` (the floor alone when ``n`` is unknown)."""
    if not n:
        return CHANCE_ACCURACY_MARGIN
    return max(CHANCE_ACCURACY_MARGIN, CHANCE_STANDARD_ERRORS * math.sqrt(majority * (1.0 - majority) / n))


def at_chance(accuracy: float, majority: float, n: int | None) -> bool:
    """Whether ``accuracy`` (on ``n`` examples) is no better than predicting the majority class,
    whose share of the training targets is ``majority``, within :func:`chance_margin`."""
    return accuracy <= majority + chance_margin(majority, n)


def chance_note(accuracy: float | None, majority: float | None, n: int | None, *, where: str,
                checks: str, history: list[dict[str, Any]] | None = None) -> str | None:
    """The one-line note of a classifier whose final ``where`` accuracy is at chance
    (:func:`at_chance`), naming ``checks``, what to look at; ``None`` when it learned, when
    there is nothing to judge (no accuracy, no majority share) or when an epoch of the run's
    ``history`` diverged (the divergence warning has said what went wrong)."""
    if accuracy is None or majority is None or not math.isfinite(accuracy):
        return None
    if history is not None and any(row.get("diverged") for row in history):
        return None
    if not at_chance(accuracy, majority, n):
        return None
    on = f" on {n} examples" if n else ""
    return (f"note: the {where} accuracy {accuracy:.3f} is no better than chance (predicting the "
            f"majority class scores {majority:.3f}; learned means above "
            f"{majority + chance_margin(majority, n):.3f}{on}): the network has not learned; "
            f"check {checks}")
