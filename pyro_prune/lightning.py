"""Bayesian pruning in a Lightning ``Trainer``: a module wrapper and a pruning callback.

Needs the ``lightning`` extra (``pip install 'pyro_prune[lightning]'``).

* :class:`PruningModule` — a ``LightningModule`` around a
  :class:`~pyro_prune.models.base.PrunableNet`: ``training_step`` minimises the same
  negative ELBO as :func:`~pyro_prune.inference.fit`
  (:class:`~pyro_prune.inference.loop.ElboLoss`) with the same Adam
  (:func:`~pyro_prune.inference.fit.make_optimizer`); ``validation_step`` logs the accuracy
  (or RMSE) at the posterior mean.
* :class:`PruningCallback` — prunes at the end of every training epoch with a criterion of
  :mod:`pyro_prune.reduction` (:class:`~pyro_prune.inference.schedules.ContinuousPruning`),
  keeps ``history`` (kept structures, compression), and converts the network to a smaller
  plain ``nn.Module`` when training ends (``callback.converted``).

Under a distributed strategy (``strategy="ddp"``, ``devices=N``) Lightning's
``DistributedSampler`` shards the data and DDP averages the gradients, so the per-rank loss
``(num_data / b) sum nll + KL`` gives the objective of one process with the global batch
``N b``. Rank 0 decides which structures to remove and the callback broadcasts its ``kept``
masks, so every replica prunes the same structures. When the ranks' generators are seeded
alike (``lightning.seed_everything``), each rank keeps its rows of one draw of the global
batch's noise, as :func:`~pyro_prune.inference.fit` does under ``torchrun``.
"""

from __future__ import annotations

from typing import Any

try:
    import lightning as L
except ImportError as err:  # pragma: no cover - the optional extra is missing
    raise ImportError("pyro_prune.lightning needs Lightning: pip install 'pyro_prune[lightning]'") from err
import torch
from torch import Tensor, nn

from pyro_prune.inference.fit import make_optimizer
from pyro_prune.inference.loop import ElboLoss, pruning_summary
from pyro_prune.inference.optim import DEFAULT_NOISE_LR
from pyro_prune.inference.schedules import (
    DEFAULT_KL_WARMUP_EPOCHS,
    ContinuousPruning,
    set_kl_weight,
)
from pyro_prune.models.base import KLScale, Likelihood, PrunableNet

__all__ = ["PruningCallback", "PruningModule"]


class PruningModule(L.LightningModule):
    """A :class:`PrunableNet` as a ``LightningModule`` (the loss and optimizer of ``fit``).

    Args:
        model: the Pyro model to train.
        num_data: size of the whole training set (all ranks together).
        lr, noise_lr, weight_decay: Adam's settings, with :func:`fit`'s defaults.
        kl_scale: weight of the KL term (``"auto"``, the default of :func:`fit`;
            ``"elbo"``, ``"paper"`` or a number).
        per_example_noise: one noise draw per example (default) or per step.
    """

    def __init__(self, model: PrunableNet, *, num_data: int, lr: float = 1e-3,
                 noise_lr: float | None = DEFAULT_NOISE_LR, weight_decay: float = 0.0,
                 kl_scale: float | KLScale | str = KLScale.AUTO, per_example_noise: bool = True) -> None:
        super().__init__()
        if not isinstance(model, PrunableNet):
            raise TypeError(f"model must be a PrunableNet, got {type(model).__name__}")
        self.model = model
        self.lr, self.noise_lr, self.weight_decay = lr, noise_lr, weight_decay
        self.loss_fn = ElboLoss(model, num_data=num_data, kl_scale=kl_scale,
                                per_example=per_example_noise)

    def forward(self, x: Tensor) -> Tensor:
        """The network's output at the posterior mean."""
        return self.model.predict(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        plan = self.loss_fn.plan
        world = self.trainer.world_size if self._trainer is not None else 1
        if plan is not None and world > 1 and self.loss_fn.per_example and plan.draws_global_batch:
            plan.rows = (len(x) * world, self.global_rank, world)
        loss, out = self.loss_fn(x, y)
        num_data = float(self.model.num_data or 1)
        self.log("train_loss", loss.detach() / num_data, on_step=False, on_epoch=True,
                 sync_dist=True, batch_size=len(x))
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        out = self.model.predict(x)
        self.log("val_loss", self.model.nll(out, y).mean(), sync_dist=True, batch_size=len(x))
        if self.model.likelihood is Likelihood.CATEGORICAL:
            self.log("val_accuracy", (out.argmax(-1) == y).float().mean(), sync_dist=True,
                     batch_size=len(x))
        else:
            self.log("val_mse", ((out - y) ** 2).mean(), sync_dist=True, batch_size=len(x))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return make_optimizer(self.model, lr=self.lr, noise_lr=self.noise_lr,
                              weight_decay=self.weight_decay)


class PruningCallback(L.Callback):
    """Prune after every training epoch (rank 0 decides), convert when training ends.

    Args:
        criterion: a criterion of :mod:`pyro_prune.reduction` with a removal rule of its own
            (``"bmrs"``, the default of :class:`ContinuousPruning`; ``"bmrs_n"``,
            ``"bmrs_u"``, ``"snr"``, ...).
        every: prune after every ``every``-th epoch.
        finetune_epochs: the last ``finetune_epochs`` of ``Trainer(max_epochs=...)`` train
            without pruning.
        finetune_kl_scale, kl_warmup_epochs: the KL weight of the fine-tuning epochs and the
            warm-up of the training weight, as for :class:`ContinuousPruning` (the same
            defaults); the callback sets them on the model's stochastic modules, where the
            :class:`PruningModule`'s loss reads them.
        convert: build the deterministic network at the end (``converted``).
        criterion_kwargs: passed to the criterion.

    Attributes:
        history: one row per epoch: ``epoch``, ``phase``, ``removed``, ``kept``, ``compression``.
        converted: the smaller plain ``nn.Module`` (after ``fit``), or ``None``.
    """

    def __init__(self, criterion: str = "bmrs", *, every: int = 1, finetune_epochs: int = 0,
                 finetune_kl_scale: float | str | None = "elbo",
                 kl_warmup_epochs: int = DEFAULT_KL_WARMUP_EPOCHS, convert: bool = True,
                 **criterion_kwargs: Any) -> None:
        self.schedule = ContinuousPruning(criterion, every=every, finetune_epochs=finetune_epochs,
                                          finetune_kl_scale=finetune_kl_scale,
                                          kl_warmup_epochs=kl_warmup_epochs, **criterion_kwargs)
        self.convert = convert
        self.history: list[dict[str, Any]] = []
        self.converted: nn.Module | None = None

    @staticmethod
    def _model(pl_module: L.LightningModule) -> PrunableNet:
        model = getattr(pl_module, "model", None)
        if not isinstance(model, PrunableNet):
            raise TypeError("PruningCallback needs a LightningModule whose .model is a PrunableNet "
                            "(e.g. PruningModule)")
        return model

    def _training_epochs(self, trainer: L.Trainer) -> int | None:
        max_epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs > 0 else None
        return None if max_epochs is None else max_epochs - self.schedule.extra_epochs

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Set the epoch's KL weight (warm-up, training, fine-tuning) on every rank alike."""
        model = self._model(pl_module)
        self.schedule.on_epoch_start(model, trainer.current_epoch + 1, epochs=self._training_epochs(trainer))
        set_kl_weight(model, getattr(pl_module, "loss_fn", None))  # the loss's record of the weight

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model = self._model(pl_module)
        epoch = trainer.current_epoch + 1
        epochs = self._training_epochs(trainer)
        row: dict[str, Any] = {"epoch": epoch}
        if trainer.is_global_zero:
            row.update(self.schedule.on_epoch_end(model, epoch, epochs=epochs))
        gates = model.gates()
        kept = trainer.strategy.broadcast({n: g.kept.cpu() for n, g in gates.items()}, src=0)
        state = trainer.strategy.broadcast((self.schedule.state_dict(), row), src=0)
        with torch.no_grad():
            for name, mask in kept.items():
                gates[name].kept.copy_(mask.to(gates[name].kept.device))
        self.schedule.load_state_dict(state[0])
        row = {**state[1], **pruning_summary(model)}
        self.history.append(row)
        # the same on every rank: the mean over ranks is the value
        pl_module.log("compression", float(row["compression"] or 0.0), sync_dist=True)
        pl_module.log("kept", float(sum(row["kept"].values())), sync_dist=True)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.convert:
            from pyro_prune.convert import to_deterministic

            self.converted = to_deterministic(self._model(pl_module))

    def state_dict(self) -> dict[str, Any]:
        return {"schedule": self.schedule.state_dict(), "history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.schedule.load_state_dict(state_dict.get("schedule", {}))
        self.history = list(state_dict.get("history", []))
