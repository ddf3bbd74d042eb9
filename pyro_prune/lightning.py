"""Bayesian pruning in a Lightning ``Trainer``: a module wrapper and a pruning callback.

Needs the ``lightning`` extra (``pip install 'pyro_prune[lightning]'``).

* :class:`PruningModule` — a ``LightningModule`` around a
  :class:`~pyro_prune.models.base.PrunableNet`: ``training_step`` minimises the same
  negative ELBO as :func:`~pyro_prune.inference.fit`
  (:class:`~pyro_prune.inference.loop.ElboLoss`) with the same Adam
  (:func:`~pyro_prune.inference.fit.make_optimizer`); ``validation_step`` logs the accuracy
  (or RMSE) at the posterior mean. Like ``fit`` it trains the model's own guide or a Pyro
  autoguide (``guide=AutoNormal(model)``), checked and attached before training as ``fit``
  does it (:func:`~pyro_prune.inference.custom_guide.prepare_guide`).
* :class:`PruningCallback` — prunes at the end of every training epoch with a criterion of
  :mod:`pyro_prune.reduction` (:class:`~pyro_prune.inference.schedules.ContinuousPruning`),
  keeps ``history`` (kept structures, compression), and when training ends logs the
  one-line pruning report ``fit`` ends with (``callback.report``) and converts the network
  to a smaller plain ``nn.Module`` (``callback.converted``).

Under a distributed strategy (``strategy="ddp"``, ``devices=N``) Lightning's
``DistributedSampler`` shards the data and DDP averages the gradients, so the per-rank loss
``(num_data / b) sum nll + KL`` gives the objective of one process with the global batch
``N b``. Rank 0 decides which structures to remove and the callback broadcasts its ``kept``
masks, so every replica prunes the same structures. When the ranks' generators are seeded
alike (``lightning.seed_everything``), each rank keeps its rows of one draw of the global
batch's noise, as :func:`~pyro_prune.inference.fit` does under ``torchrun``.
"""

from __future__ import annotations

import warnings
from typing import Any

try:
    import lightning as L
except ImportError as err:  # pragma: no cover - the optional extra is missing
    raise ImportError("pyro_prune.lightning needs Lightning: pip install 'pyro_prune[lightning]'") from err
import torch
from torch import Tensor, nn

from pyro_prune._checks import check_count, check_guide
from pyro_prune.inference.custom_guide import (
    GuideStart,
    guide_start,
    prepare_guide,
    replaced_parameters,
)
from pyro_prune.inference.fit import make_optimizer
from pyro_prune.inference.guides import (
    attached_guide,
    check_point_guide_criterion,
    copy_weight_posterior,
)
from pyro_prune.inference.loop import ElboLoss, pruning_summary
from pyro_prune.inference.metrics import model_device
from pyro_prune.inference.optim import DEFAULT_NOISE_LR
from pyro_prune.inference.pruning_report import PruningReport, logger, pruning_report
from pyro_prune.inference.schedules import (
    DEFAULT_FINETUNE_EPOCHS,
    DEFAULT_KL_WARMUP_EPOCHS,
    ContinuousPruning,
    set_kl_weight,
)
from pyro_prune.models.base import KLScale, Likelihood, PrunableNet

__all__ = ["PruningCallback", "PruningModule", "default_finetune_epochs"]

#: Pyro's warning when a module's parameter that does not train is met in a model run
_FROZEN_NOTE = r".* was not registered in the param store because requires_grad=False"


class PruningModule(L.LightningModule):
    """A :class:`PrunableNet` as a ``LightningModule`` (the loss and optimizer of ``fit``).

    Args:
        model: the Pyro model to train.
        num_data: size of the whole training set (all ranks together).
        guide: a Pyro guide of ``model`` to train instead of its own (an autoguide such as
            ``AutoNormal(model)``; see :mod:`pyro_prune.inference.guides` for those the
            criteria read). It is checked and attached to the model here, as ``fit`` does,
            and becomes a submodule (``module.guide``): its parameters train at
            ``noise_lr`` and are saved in Lightning's checkpoints.
        example_batch: inputs and targets of a few training examples, ``(x, y)``: an
            autoguide creates its parameters on its first call, so one not run yet is run
            on the first two examples (Lightning builds the optimizer before the first batch).
        lr, noise_lr, weight_decay: Adam's settings, with :func:`fit`'s defaults.
        kl_scale: weight of the KL term (``"auto"``, the default of :func:`fit`;
            ``"elbo"``, ``"paper"`` or a number).
        per_example_noise: one noise draw per example (default) or per step (the model's
            own guide; an autoguide's ELBO draws once per step).

    Raises:
        ValueError: a guide of another model, or one not run yet without ``example_batch``;
            one :func:`~pyro_prune.inference.custom_guide.prepare_guide` refuses.
        TypeError: a guide that is not a ``torch.nn.Module`` (its parameters would not
            train: Lightning optimises the module's parameters).
    """

    def __init__(self, model: PrunableNet, *, num_data: int, guide: Any = None,
                 example_batch: tuple[Tensor, Tensor] | None = None, lr: float = 1e-3,
                 noise_lr: float | None = DEFAULT_NOISE_LR, weight_decay: float = 0.0,
                 kl_scale: float | KLScale | str = KLScale.AUTO, per_example_noise: bool = True) -> None:
        super().__init__()
        if not isinstance(model, PrunableNet):
            raise TypeError(f"model must be a PrunableNet, got {type(model).__name__}")
        custom = guide is not None and guide != model.guide
        if custom and not isinstance(guide, nn.Module):
            raise TypeError(f"guide must be a torch.nn.Module (an autoguide such as AutoNormal(model)), "
                            f"got {type(guide).__name__}: Lightning trains the module's parameters")
        self.model = model
        self.lr, self.noise_lr, self.weight_decay = lr, noise_lr, weight_decay
        self.loss_fn = ElboLoss(model, num_data=num_data, kl_scale=kl_scale,
                                per_example=per_example_noise, guide=guide if custom else None)
        self._frozen: list[nn.Parameter] = []
        if custom:
            start = guide_start(guide)
            device = model_device(model)
            x, y = (t.to(device) for t in self._sample(guide, start, example_batch))
            sample = (x, y)
            check_guide(model, guide, x, y)  # another model's guide, other sites
            prepare_guide(model, guide, sample, kl_scale=kl_scale, start=start)
            self.guide = guide  # a submodule: trained, moved, checkpointed with the module
        else:
            self.guide = None

    @staticmethod
    def _sample(guide: Any, start: GuideStart, example_batch: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
        """Two examples to run the guide on; a guide not run yet needs ``example_batch``."""
        if example_batch is None:
            if start.fresh:
                raise ValueError(
                    f"guide {type(guide).__name__} has not been run yet, so it has no parameters "
                    f"for Lightning's optimizer: pass example_batch=(x, y), a few training examples")
            raise ValueError("pass example_batch=(x, y), a few training examples: the guide is "
                             "checked against the model on them")
        try:
            x, y = example_batch
        except (TypeError, ValueError):
            raise ValueError("example_batch must be a pair (inputs, targets) of tensors") from None
        if not (isinstance(x, Tensor) and isinstance(y, Tensor)) or len(x) == 0 or len(x) != len(y):
            raise ValueError("example_batch must be a pair (inputs, targets) of tensors with the same "
                             "number of examples (at least one)")
        return x[:2], y[:2]

    def forward(self, x: Tensor) -> Tensor:
        """The network's output at the posterior mean."""
        return self.model.predict(x)

    def setup(self, stage: str) -> None:
        """Under a custom guide, the model's own posterior parameters take no gradient: they
        are left out of training (restored in :meth:`teardown`), so DDP, which expects a
        gradient for every trainable parameter, runs with its defaults."""
        if self.guide is not None and stage == "fit" and not self._frozen:
            self._frozen = [p for p in replaced_parameters(self.model, self.guide) if p.requires_grad]
            for param in self._frozen:
                param.requires_grad_(False)

    def teardown(self, stage: str) -> None:
        for param in self._frozen:
            param.requires_grad_(True)
        self._frozen = []

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        plan = self.loss_fn.plan
        world = self.trainer.world_size if self._trainer is not None else 1
        if plan is not None and world > 1 and self.loss_fn.per_example and plan.draws_global_batch:
            plan.rows = (len(x) * world, self.global_rank, world)
        if self._frozen:  # Pyro notes each parameter left out of training; they are so on purpose
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=_FROZEN_NOTE, category=UserWarning)
                loss, out = self.loss_fn(x, y)
        else:
            loss, out = self.loss_fn(x, y)
        num_data = float(self.model.num_data or 1)
        self.log("train_loss", loss.detach() / num_data, on_step=False, on_epoch=True,
                 sync_dist=True, batch_size=len(x))
        return loss

    def sync_guide_posterior(self) -> None:
        """Copy a custom guide's posterior of Gaussian weights into the layers' parameters,
        which ``predict``, the conversion and the export read (as ``fit`` does every epoch)."""
        if self.guide is not None and attached_guide(self.model) is self.guide:
            copy_weight_posterior(self.model, self.guide)

    def on_validation_epoch_start(self) -> None:
        self.sync_guide_posterior()

    def on_train_epoch_end(self) -> None:
        self.sync_guide_posterior()

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
                              weight_decay=self.weight_decay, guide=self.guide)


def default_finetune_epochs(max_epochs: int | None) -> int:
    """The fine-tuning epochs :class:`PruningCallback` takes by default out of a Trainer's
    ``max_epochs``: a sixth, rounded up (the BMRS protocol's 50 + 10), at most
    :class:`ContinuousPruning`'s ``DEFAULT_FINETUNE_EPOCHS`` (10), leaving at least one pruning
    epoch; 0 for an unbounded or one-epoch run."""
    if max_epochs is None or max_epochs < 2:
        return 0
    return min(-(-max_epochs // 6), DEFAULT_FINETUNE_EPOCHS, max_epochs - 1)


class PruningCallback(L.Callback):
    """Prune after every training epoch (rank 0 decides), convert when training ends.

    Args:
        criterion: a criterion of :mod:`pyro_prune.reduction` with a removal rule of its own
            (``"bmrs_n"``, ``"bmrs_u"``, ``"snr"``, ...). By default that of
            :class:`ContinuousPruning`: ``"bmrs"``, or ``"bmrs_u4"`` when the module trains
            a Gaussian autoguide (chosen, and said in one logged line, when training starts).
        every: prune after every ``every``-th epoch.
        finetune_epochs: the last ``finetune_epochs`` of ``Trainer(max_epochs=...)`` train
            without pruning (at ``finetune_kl_scale``). ``None``, the default:
            :func:`default_finetune_epochs` of ``max_epochs``, a sixth of them (rounded up,
            at most :class:`ContinuousPruning`'s 10, at least one pruning epoch left), the
            proportion of the BMRS protocol's 50 + 10 epochs, so that a Trainer of 60 epochs
            runs ``fit``'s default recipe of 50 + 10, one of 13 the reduced 10 + 3; 0 when
            ``max_epochs`` is unbounded. Chosen when training starts and said in one logged
            line.
        finetune_kl_scale, kl_warmup_epochs: the KL weight of the fine-tuning epochs and the
            warm-up of the training weight, as for :class:`ContinuousPruning` (the same
            defaults); the callback sets them on the model's stochastic modules, where the
            :class:`PruningModule`'s loss reads them.
        convert: build the deterministic network at the end (``converted``).
        criterion_kwargs: passed to the criterion.

    Attributes:
        history: one row per epoch: ``epoch``, ``phase``, ``removed``, ``kept``, ``compression``.
        report: the pruning report of the run (after ``fit``;
            :class:`~pyro_prune.inference.pruning_report.PruningReport`: removed of total per
            layer kind, the criterion, the range of dF of the last decision and, when nothing
            was removed, why and what to try), logged by rank 0 as ``fit`` logs it.
        converted: the smaller plain ``nn.Module`` (after ``fit``), or ``None``.
    """

    def __init__(self, criterion: str | None = None, *, every: int = 1, finetune_epochs: int | None = None,
                 finetune_kl_scale: float | str | None = "elbo",
                 kl_warmup_epochs: int = DEFAULT_KL_WARMUP_EPOCHS, convert: bool = True,
                 **criterion_kwargs: Any) -> None:
        if finetune_epochs is not None:
            check_count(finetune_epochs, "finetune_epochs", minimum=0, or_none=True)
        #: the fine-tuning epochs asked for (``None``: chosen from ``max_epochs`` at the start)
        self.finetune_epochs = finetune_epochs
        self.schedule = ContinuousPruning(criterion, every=every, finetune_epochs=finetune_epochs or 0,
                                          finetune_kl_scale=finetune_kl_scale,
                                          kl_warmup_epochs=kl_warmup_epochs, **criterion_kwargs)
        self.convert = convert
        self.history: list[dict[str, Any]] = []
        self.report: PruningReport | None = None
        self.converted: nn.Module | None = None

    @staticmethod
    def _model(pl_module: L.LightningModule) -> PrunableNet:
        model = getattr(pl_module, "model", None)
        if not isinstance(model, PrunableNet):
            raise TypeError("PruningCallback needs a LightningModule whose .model is a PrunableNet "
                            "(e.g. PruningModule)")
        return model

    @staticmethod
    def _max_epochs(trainer: L.Trainer) -> int | None:
        """The Trainer's ``max_epochs``; ``None`` when unbounded."""
        return trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs > 0 else None

    def _training_epochs(self, trainer: L.Trainer) -> int | None:
        max_epochs = self._max_epochs(trainer)
        return None if max_epochs is None else max_epochs - self.schedule.extra_epochs

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The criterion for the posterior the module trains (its own, or an autoguide's);
        a point posterior under a criterion of model reduction is refused before training."""
        model = self._model(pl_module)
        guide = attached_guide(model)
        if guide is not None:
            check_point_guide_criterion(guide, self.schedule.criterion)
        why = self.schedule.choose_criterion(model)
        if why is not None and trainer.is_global_zero:
            logger.info("%s", why)
        if self.finetune_epochs is None:
            max_epochs = self._max_epochs(trainer)
            self.schedule.extra_epochs = default_finetune_epochs(max_epochs)
            if trainer.is_global_zero and max_epochs is not None:
                logger.info("fine-tuning: the last %d of %d epochs, without pruning (PruningCallback"
                            "(finetune_epochs=...) to choose)", self.schedule.extra_epochs, max_epochs)

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
        sync = getattr(pl_module, "sync_guide_posterior", None)
        if callable(sync):  # an autoguide's posterior of Gaussian weights, for the decision
            sync()
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
        model = self._model(pl_module)
        self.report = pruning_report(model, self.schedule.criterion, decision=self.schedule.last_decision)
        if trainer.is_global_zero:
            logger.info("%s", self.report)
        if self.convert:
            from pyro_prune.convert import to_deterministic

            self.converted = to_deterministic(model)

    def state_dict(self) -> dict[str, Any]:
        return {"schedule": self.schedule.state_dict(), "history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.schedule.load_state_dict(state_dict.get("schedule", {}))
        self.history = list(state_dict.get("history", []))
