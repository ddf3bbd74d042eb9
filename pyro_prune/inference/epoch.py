"""One training epoch of :func:`~pyro_prune.inference.fit`, and the state a schedule sees."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from pyro_prune.inference.batches import BatchSource
from pyro_prune.inference.distributed import DistributedInfo, GradientSync
from pyro_prune.inference.divergence import lr_advice
from pyro_prune.inference.loop import ElboLoss
from pyro_prune.inference.metrics import evaluate
from pyro_prune.models.base import Likelihood, PrunableNet, correct_totals

__all__ = ["EpochTrainer", "FitContext"]


@dataclass
class FitContext:
    """The training state a schedule sees (and may act on)."""

    model: PrunableNet
    guide: Callable
    optimizer: torch.optim.Optimizer
    train: Any
    val: Any
    batch_size: int
    seed: int
    epochs: int
    epoch: int = 0
    step: int = 0
    train_epoch: Callable[[], dict[str, float]] = field(default=lambda: {})
    loss_fn: Callable[[Tensor, Tensor], tuple[Tensor, Tensor | None]] | None = None

    def evaluate(self, dataset: TensorDataset) -> dict[str, float]:
        return evaluate(self.model, dataset)


@dataclass
class EpochTrainer:
    """One pass over the training batches: Adam steps on the loss, the schedule's step hook.

    Calling it trains ``ctx.epoch`` and returns the epoch's row of the history: the mean
    loss per example divided by ``num_data`` and, when ``running_accuracy``, the running
    training accuracy: the share of the epoch's counted predictions the argmax got right
    (per example for class labels, per token for token labels, tokens labelled the
    model's ``ignore_index`` left out, as :func:`~pyro_prune.inference.evaluate` counts). In a data-parallel run every rank steps in lockstep (a rank whose
    stream ended early takes part with an empty share) and the row sums over all ranks.
    """

    ctx: FitContext
    source: BatchSource
    loss_fn: ElboLoss
    sync: GradientSync
    info: DistributedInfo
    schedule: Any
    device: torch.device
    #: whether the ranks share one noise generator (see :class:`~pyro_prune.inference.elbo.NoisePlan`)
    shared_noise: bool
    #: whether the row records the running training accuracy (fast engine, classifier)
    running_accuracy: bool
    #: the learning rates named when the loss is no longer finite
    lr: float
    noise_lr: float | None

    def __call__(self) -> dict[str, float]:
        ctx, model, optimizer, info = self.ctx, self.ctx.model, self.ctx.optimizer, self.info
        plan = self.loss_fn.plan
        model.train()
        total, correct, counted, seen = 0.0, 0.0, 0.0, 0
        batches = self.source.epoch(ctx.epoch)
        while True:
            batch = next(batches, None)
            if batch is None and (self.source.even or not info.active):
                break
            optimizer.zero_grad(set_to_none=True)
            n_local, loss_value, right, count = 0, 0.0, 0.0, 0.0
            if info.active and plan is not None and self.shared_noise and batch is not None:
                plan.rows = (batch[2], info.rank, info.world_size)
            if batch is not None and len(batch[0]) == 0:  # an empty share of a small last batch
                if plan is not None:
                    plan.advance()
            elif batch is not None:
                xb = batch[0].to(self.device, non_blocking=True)
                yb = batch[1].to(self.device, non_blocking=True)
                try:
                    loss, out = self.loss_fn(xb, yb)
                except ValueError as err:  # a distribution refusing a parameter the last step made NaN
                    bad = _first_non_finite(model)
                    if bad is None:
                        raise
                    raise FloatingPointError(
                        f"the parameter {bad} became non-finite at epoch {ctx.epoch + 1}, step {ctx.step}; "
                        + self._advice()) from err
                loss_value = float(loss.detach())  # one read of the loss: the check and the sum
                if not math.isfinite(loss_value):
                    raise FloatingPointError(
                        f"the loss became {loss_value} at epoch {ctx.epoch + 1}, step {ctx.step}; "
                        + self._advice())
                loss.backward()
                n_local = len(xb)
                if out is not None and model.likelihood is Likelihood.CATEGORICAL:
                    right, count = correct_totals(out.detach(), yb, model.ignore_index)
            n_step, loss_value, right, count = self.sync.reduce(n_local, loss_value, right, count)
            if n_step == 0:  # every rank's stream has ended
                break
            optimizer.step()
            ctx.step += 1
            if self.schedule is not None:
                self.schedule.on_step_end(ctx)
            total += loss_value * n_step
            seen += n_step
            correct += right
            counted += count
        row = {"loss": total / max(seen, 1) / cast(int, model.num_data)}
        if self.running_accuracy:
            row["train_accuracy_running"] = correct / counted if counted else 0.0
        return row

    def _advice(self) -> str:
        return lr_advice(self.lr, self.noise_lr)


def _first_non_finite(model: PrunableNet) -> str | None:
    """The name of the model's first parameter holding a NaN or an infinity, or ``None``."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not bool(torch.isfinite(param).all()):
                return name
    return None
