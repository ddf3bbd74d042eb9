"""Pruning schedules for :func:`~pyro_prune.inference.fit.fit`, and the post-training curve.

* :class:`ContinuousPruning` — BMRS's Algorithm 1 (Wright et al., NeurIPS 2024): after
  every ``every`` epochs of SVI, remove each structure whose criterion says so (for the
  threshold-free BMRS criteria, dF >= 0); after the training epochs, ``finetune_epochs``
  more epochs without pruning. Thresholded baselines (SNR < 1, E[theta] < 0.1) use the
  same machinery.
* :func:`post_training_curve` — rank all structures of a trained model by a criterion,
  remove them progressively (one epoch of fine-tuning per point), record accuracy vs
  compression and mark where dF turns negative (the threshold-free stopping point).
* :func:`prune_to_compression` — remove the lowest-ranked structures until a target
  compression is reached (how the L2 baseline is matched to BMRS_N's compression).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from pyro_prune._checks import as_dataset, check_count
from pyro_prune.models.base import PrunableNet
from pyro_prune.models.gate import removals_in_order
from pyro_prune.progress import progress_bar
from pyro_prune.reduction.scoring import (
    as_criterion,
    global_ranking,
    structure_decisions,
    structure_removals,
)

__all__ = [
    "AUTOGUIDE_CRITERION",
    "DEFAULT_CRITERION",
    "DEFAULT_FINETUNE_EPOCHS",
    "DEFAULT_KL_WARMUP_EPOCHS",
    "DEFAULT_EPOCHS",
    "PRUNING_STEPS_MARGIN",
    "ContinuousPruning",
    "PruningStepsWarning",
    "Schedule",
    "default_epochs",
    "default_epochs_note",
    "noise_kl_weight",
    "post_training_curve",
    "pruning_steps_needed",
    "prune_to_compression",
    "set_kl_weight",
]

#: the default criterion of :class:`ContinuousPruning`: BMRS_N with prior odds sqrt(2 pi):1
#: for removal (see ``docs/defaults.md``)
DEFAULT_CRITERION = "bmrs"
#: the default criterion under a Gaussian autoguide, whose posteriors are logit-normal:
#: BMRS_U with its reduced prior inside the range, ``theta <= 2^-4``. Measured on the digits
#: (``benchmarks/autoguide_criteria.py``, seeds 0-2, 20 epochs): the only one of ``bmrs``,
#: ``bmrs_u8`` and ``bmrs_u4`` that prunes under every guide tried (22.7 to 41.7% removed;
#: ``bmrs`` removes nothing, ``bmrs_u8`` nothing with Gaussian weights)
AUTOGUIDE_CRITERION = "bmrs_u4"
#: the default ``ContinuousPruning(kl_warmup_epochs=...)`` (see ``docs/defaults.md``)
DEFAULT_KL_WARMUP_EPOCHS = 0
#: fine-tuning epochs after the training epochs (:class:`ContinuousPruning`)
DEFAULT_FINETUNE_EPOCHS = 10
#: the training epochs of a run that does not name them, on a data set large enough
DEFAULT_EPOCHS = 20
#: a pruning run that does not name its epochs gets at least this many times the optimizer
#: steps its noise posteriors need to reach their prior's width (:func:`pruning_steps_needed`).
#: Measured on four small UCI sets (``benchmarks/pruning_steps_small_data.py``, 3 seeds): at 1x
#: nothing is removed, from 1.25x on the compression grows with the steps (at 3x 82 to 96%)
#: while the test RMSE stays within 0.004 of the 1x run's (which removed nothing) or below it
PRUNING_STEPS_MARGIN = 3.0


class PruningStepsWarning(UserWarning):
    """A pruning run whose training epochs take too few optimizer steps for the noise
    posteriors of unneeded structures to widen to their prior, so that the criterion can
    hardly remove anything (:meth:`ContinuousPruning.on_fit_start`, :func:`pruning_steps_needed`)."""


class Schedule:
    """Hooks :func:`fit` calls; subclasses prune, gate or log.

    Attributes:
        extra_epochs: epochs :func:`fit` adds after the requested ones (fine-tuning).
    """

    extra_epochs: int = 0

    def on_fit_start(self, ctx: Any) -> None:
        """Called once before the first epoch (and before a checkpoint is resumed)."""

    def on_epoch_start(self, ctx: Any, epoch: int) -> None:
        """Called before every epoch (1-based), also the first one after a resume."""

    def on_step_end(self, ctx: Any) -> None:
        """Called after every optimizer step."""

    def on_epoch_end(self, ctx: Any, epoch: int) -> dict[str, Any]:
        """Called after every epoch (1-based); returns entries for the history row.

        :func:`fit` passes its :class:`~pyro_prune.inference.fit.FitContext`; a schedule
        meant for a user's own loop also accepts the model itself
        (:meth:`ContinuousPruning.on_epoch_end`).
        """
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


class ContinuousPruning(Schedule):
    """Prune during training with a criterion from :mod:`pyro_prune.reduction`.

    Args:
        criterion: a registered criterion name that can decide removal on its own
            (``"bmrs"``: BMRS_N with prior odds sqrt(2 pi):1 for removal, see
            ``docs/defaults.md``; ``"bmrs_n"``, ``"bmrs_u"``, ``"bmrs_u_off"``,
            ``"bmrs_joint"``, ``"snr"``, ``"e_theta"``, ``"gaussian_bmr"``). ``None``, the
            default: ``"bmrs"`` for the network's own posterior, ``"bmrs_u4"`` when
            :func:`~pyro_prune.inference.fit.fit` trains a Gaussian autoguide
            (:meth:`choose_criterion`): its posteriors are logit-normal, whose density
            vanishes at the edge of the range where BMRS_N's reduced prior sits.
        every: prune after every ``every``-th training epoch.
        finetune_epochs: epochs of training without pruning after the ``epochs`` of
            :func:`fit` (so a run lasts ``epochs + finetune_epochs``).
        finetune_kl_scale: the KL weight of the fine-tuning epochs: ``"elbo"`` (the default:
            1, the untempered posterior of the reduced network), ``"paper"``, ``"auto"``, a
            number, or ``None`` to keep the weight of the training epochs. The temperature
            of training (``fit(kl_scale=...)``) is a model-selection device that moves the
            posteriors of weakly needed structures to their prior, where the criterion
            removes them; once the structures are chosen, the smaller network's posterior is
            fitted at the ELBO's weight (see ``docs/defaults.md``).
        kl_warmup_epochs: warm the KL weight up over the first ``W`` training epochs: in
            epoch ``e <= W`` every stochastic module's weight is ``k ** ((e - 1) / W)`` for
            its training weight ``k`` (``fit(kl_scale=...)``; 1, the ELBO's, in the first
            epoch, then geometric steps, the weight being a temperature), from epoch
            ``W + 1`` on ``k``. The structures' posteriors are first fitted cold, then
            tempered, so the temperature removes what the data do not need rather than
            what was still untrained. ``W`` never reaches the last training epoch
            (``min(W, epochs - 1)`` when the number of epochs is known); 0 turns it off.
        criterion_kwargs: passed to the criterion (e.g. ``p1=4`` for BMRS_U,
            ``log_prior_odds=0.0`` for plain BMR).

    Pruning takes optimizer steps: a dF criterion removes a structure once its noise
    posterior has widened to about its prior, and Adam moves a posterior's ``log sigma`` by at
    most about ``noise_lr`` per step. When :func:`~pyro_prune.inference.fit` starts a run
    whose training epochs (up to the last pruning one) take fewer steps than
    :func:`pruning_steps_needed` (267 at the defaults: from ``log sigma = -5`` to
    ``log(20)`` at ``noise_lr = 0.03``), :meth:`on_fit_start` warns
    (:class:`PruningStepsWarning`) with the steps it takes, those needed and what to change.
    Not with a KL warm-up: while the weight grows from epoch to epoch, so do the gradients,
    and Adam's step then exceeds its learning rate (measured: 0.034 to 0.038 of log sigma per
    step at ``noise_lr`` 0.03; an MLP 100-100 on the digits removed 60 units in 230 steps).
    """

    def __init__(self, criterion: str | None = None, every: int = 1, finetune_epochs: int = DEFAULT_FINETUNE_EPOCHS,
                 finetune_kl_scale: float | str | None = "elbo", *,
                 kl_warmup_epochs: int = DEFAULT_KL_WARMUP_EPOCHS, **criterion_kwargs: Any) -> None:
        #: whether the criterion is the default one, chosen by the posterior's family
        self.default_criterion = criterion is None and not criterion_kwargs
        self.criterion = as_criterion(DEFAULT_CRITERION if criterion is None else criterion, **criterion_kwargs)
        if not (self.criterion.threshold_free or self.criterion.default_threshold is not None):
            raise ValueError(
                f"criterion {criterion!r} has no removal rule of its own; use "
                f"prune_to_compression for it"
            )
        check_count(every, "every")
        check_count(finetune_epochs, "finetune_epochs", minimum=0)
        self.every = every
        self.extra_epochs = finetune_epochs
        self.finetune_kl_scale = _check_kl_scale(finetune_kl_scale)
        check_count(kl_warmup_epochs, "kl_warmup_epochs", minimum=0)
        self.kl_warmup_epochs = kl_warmup_epochs
        #: the training KL weight of every stochastic module, read at the first warm-up epoch
        self.training_kl_scales: dict[str, float] | None = None
        self.criterion_kwargs = criterion_kwargs
        self.removed_total = 0
        #: range of dF (or the score) over the kept structures at the last pruning decision
        self.last_decision: Any = None

    def __repr__(self) -> str:
        return (f"ContinuousPruning(criterion={self.criterion.name!r}, every={self.every}, "
                f"finetune_epochs={self.extra_epochs}, "
                f"finetune_kl_scale={self.finetune_kl_scale!r}, "
                f"kl_warmup_epochs={self.kl_warmup_epochs})")

    def choose_criterion(self, model: PrunableNet) -> str | None:
        """With the default criterion, the one for the posterior ``model`` reads: ``"bmrs"``
        for its own, :data:`AUTOGUIDE_CRITERION` (``"bmrs_u4"``) for a Gaussian autoguide's
        logit-normal one (:mod:`pyro_prune.inference.guides`). ``fit`` calls this once the
        guide is attached, :meth:`on_epoch_end` before each decision (a loop of one's own).
        Returns a line saying so when it switches to the autoguide's criterion."""
        from pyro.infer.autoguide import AutoDelta

        from pyro_prune.inference.guides import attached_guide

        if not self.default_criterion:
            return None
        guide = attached_guide(model)
        autoguide = guide is not None and not isinstance(guide, AutoDelta)  # AutoDelta: BMR is refused
        name = AUTOGUIDE_CRITERION if autoguide else DEFAULT_CRITERION
        if name == self.criterion.name:
            return None
        self.criterion = as_criterion(name)
        if not autoguide:
            return None
        return (f"criterion: {AUTOGUIDE_CRITERION}, the default under a Gaussian autoguide "
                f"({type(guide).__name__}: logit-normal posteriors, whose density vanishes at the "
                f"edge where {DEFAULT_CRITERION}'s reduced prior sits; ContinuousPruning(criterion=...) "
                f"to choose)")

    def on_fit_start(self, ctx: Any) -> None:
        """A new run: its training KL weights are read again (a resumed run loads them).

        With :func:`fit`'s context, warn (:class:`PruningStepsWarning`) when the run's
        training epochs take too few optimizer steps for this criterion to remove anything
        (:func:`pruning_steps_needed`).
        """
        self.training_kl_scales = None
        if all(hasattr(ctx, name) for name in ("model", "train", "optimizer", "batch_size", "epochs")):
            self._warn_if_too_few_steps(ctx)

    def _warn_if_too_few_steps(self, ctx: Any) -> None:
        """Warn when the steps up to the last pruning epoch are fewer than needed."""
        from pyro_prune.inference.batches import dataset_length
        from pyro_prune.inference.distributed import distributed_info

        model, epochs = ctx.model, ctx.epochs
        noise_posterior = {"loc", "scale"} <= set(self.criterion.input_names)
        if not (self.criterion.threshold_free and noise_posterior) or getattr(ctx, "guide", None) != model.guide:
            return  # a thresholded criterion or another guide's posterior: other distances
        if self.warmup_epochs(epochs):
            return  # a weight growing from epoch to epoch lets Adam step further than noise_lr
        if not distributed_info(init=False).is_main:
            return  # rank 0 says it
        examples = dataset_length(ctx.train)
        noise_lr = _noise_lr(model, ctx.optimizer)
        if not examples or noise_lr is None or not ctx.batch_size:
            return
        needed = pruning_steps_needed(model, noise_lr)
        per_epoch = math.ceil(examples / ctx.batch_size)
        pruning_epochs = epochs // self.every * self.every
        steps = pruning_epochs * per_epoch
        if needed is None or steps >= needed:
            return
        epochs_needed = math.ceil(math.ceil(needed / per_epoch) / self.every) * self.every
        warnings.warn(
            f"this pruning run takes {steps} optimizer steps up to its last pruning epoch "
            f"({pruning_epochs} epochs of {per_epoch} at batch_size {ctx.batch_size}), fewer than the "
            f"{needed} its noise posteriors need to widen to their prior at noise_lr={noise_lr:g}: a "
            f"structure is removed once its posterior's log sigma has travelled about "
            f"{needed * noise_lr:.1f} (from its initial value to log(log_high - log_low)), and Adam "
            f"moves it by at most about noise_lr per step; so {self.criterion.name} can hardly remove "
            f"anything. Train for at least {needed} steps (e.g. epochs={epochs_needed}, or a smaller "
            f"batch_size) or raise noise_lr (to at least about {noise_lr * needed / max(steps, 1):.2g} for "
            f"{steps} steps)",
            PruningStepsWarning, stacklevel=4)

    def warmup_epochs(self, epochs: int | None) -> int:
        """The epochs of KL warm-up in a run of ``epochs`` training epochs (``None``: unknown)."""
        return self.kl_warmup_epochs if epochs is None else max(0, min(self.kl_warmup_epochs, epochs - 1))

    def on_epoch_start(self, model: Any, epoch: int, *, epochs: int | None = None) -> None:
        """Before epoch ``epoch`` (1-based; every one, so that a resumed run agrees), set the
        KL weight: warmed up in the first ``kl_warmup_epochs`` training epochs, the training
        weight after them, ``finetune_kl_scale`` in the fine-tuning phase.

        ``model`` and ``epochs`` as for :meth:`on_epoch_end`: the model being trained (a loop
        of one's own) or :func:`fit`'s context. The weight is set on the model's stochastic
        modules (:meth:`~pyro_prune.models.base.PrunableNet.set_kl_scale`), where the loss
        reads it.
        """
        loss_fn = None
        if not isinstance(model, PrunableNet):  # fit's context
            epochs = model.epochs if epochs is None else epochs
            loss_fn = getattr(model, "loss_fn", None)
            model = model.model
        warmup = self.warmup_epochs(epochs)
        if warmup and epoch <= warmup + 1 and (epochs is None or epoch <= epochs):
            self._warm_up(model, loss_fn, min((epoch - 1) / warmup, 1.0))
            return
        if self.finetune_kl_scale is None or epochs is None or epoch <= epochs:
            return
        set_kl_weight(model, loss_fn, self.finetune_kl_scale)

    def _warm_up(self, model: PrunableNet, loss_fn: Any, fraction: float) -> None:
        """Set every stochastic module's KL weight to its training weight ``** fraction``."""
        modules = model.stochastic_modules()
        if self.training_kl_scales is None:  # the training weights, as fit (or the user) set them
            self.training_kl_scales = {name: float(m.kl_scale) for name, m in modules.items()}
        for name, m in modules.items():
            m.kl_scale = self.training_kl_scales.get(name, float(m.kl_scale)) ** fraction
        set_kl_weight(model, loss_fn)

    def on_epoch_end(self, model: Any, epoch: int, *, epochs: int | None = None) -> dict[str, Any]:
        """Prune ``model`` after training epoch ``epoch`` (1-based) if it is a pruning epoch.

        Args:
            model: the :class:`~pyro_prune.models.base.PrunableNet` being trained (or the
                :class:`~pyro_prune.inference.fit.FitContext` that :func:`fit` passes).
            epoch: the epoch just finished, counting from 1.
            epochs: the number of training epochs; later epochs are fine-tuning (no
                pruning). ``None``: the context's ``epochs``, or no fine-tuning phase.

        Returns:
            the history entries ``{"phase": "train" | "prune" | "finetune", "removed": n}``.
        """
        if not isinstance(model, PrunableNet):  # fit's context
            epochs = model.epochs if epochs is None else epochs
            model = model.model
        if epochs is not None and epoch > epochs:
            return {"phase": "finetune", "removed": 0, "kl_scale": noise_kl_weight(model)}
        weight = {"kl_scale": noise_kl_weight(model)} if self.kl_warmup_epochs else {}
        if epoch % self.every:
            return {"phase": "train", "removed": 0, **weight}
        from pyro_prune.inference.pruning_report import decision_range, logger

        chosen = self.choose_criterion(model)  # fit chose it already; a loop of one's own here
        if chosen is not None:
            logger.info("%s", chosen)
        removed = 0
        kept = model.kept_mask()
        decisions = structure_decisions(model, self.criterion)
        removed += model.prune({name: remove for name, (_, remove) in decisions.items()})
        self.removed_total += removed
        self.last_decision = decision_range(model, self.criterion,
                                            {n: s for n, (s, _) in decisions.items()}, kept)
        return {"phase": "prune", "removed": removed, **weight}

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"removed_total": self.removed_total}
        if self.training_kl_scales is not None:
            state["training_kl_scales"] = dict(self.training_kl_scales)
        if self.last_decision is not None:
            state["last_decision"] = [self.last_decision.low, self.last_decision.high,
                                      self.last_decision.count]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from pyro_prune.inference.pruning_report import ScoreRange

        self.removed_total = int(state.get("removed_total", 0))
        scales = state.get("training_kl_scales")
        self.training_kl_scales = None if scales is None else {str(k): float(v) for k, v in scales.items()}
        last = state.get("last_decision")
        self.last_decision = None if last is None else ScoreRange(float(last[0]), float(last[1]), int(last[2]))


def _check_kl_scale(kl_scale: float | str | None) -> float | str | None:
    """``finetune_kl_scale`` checked: ``None`` (keep the training weight) or a KL weight."""
    from pyro_prune.models.base import check_kl_scale

    return None if kl_scale is None else check_kl_scale(kl_scale, "finetune_kl_scale")


def noise_kl_weight(model: PrunableNet) -> float | None:
    """The KL weight of the structures' noise now (of the stochastic modules in a network
    without noise; ``None`` without any, or if they differ)."""
    modules = model.noise_layers() or model.stochastic_modules()
    weights = {float(m.kl_scale) for m in modules.values()}
    return weights.pop() if len(weights) == 1 else None


def pruning_steps_needed(model: PrunableNet, noise_lr: float) -> int | None:
    """About the fewest Adam steps after which a dF criterion can remove a structure of ``model``
    (``None`` without kept noise structures).

    A dF criterion (BMRS) removes a structure once its noise posterior is about as wide as
    its prior, the log-uniform density on ``[log_low, log_high]``: once ``log sigma`` has
    reached about ``log(log_high - log_low)`` (log 20 = 3.0 at the defaults; BMRS's dF turns
    >= 0 at ``log sigma`` 2.6 for a posterior at ``loc`` 0). Adam moves ``log sigma`` by at
    most about ``noise_lr`` per step, so the structure whose ``log sigma`` is already widest
    needs ``(log(log_high - log_low) - log sigma) / noise_lr`` steps: from
    ``MultiplicativeNoise``'s initial ``log sigma`` -5 at the default ``noise_lr`` 0.03,
    ``(3.0 + 5) / 0.03 = 267``. Measured on a tiny GPT-2 on the defaults (``docs/transformers.md``,
    seeds 0-2): 250 steps of pruning epochs remove nothing, 360 remove 72.5% of the structures.
    """
    if not noise_lr > 0:
        return None
    needed = None
    for layer in model.noise_layers().values():
        kept = layer.kept
        if not bool(kept.any()):
            continue
        start = float(layer.log_scale.detach()[kept].max())
        steps = max(0, math.ceil((math.log(layer.log_high - layer.log_low) - start) / noise_lr))
        needed = steps if needed is None else min(needed, steps)
    return needed


def default_epochs(model: PrunableNet, steps_per_epoch: int | None, noise_lr: float) -> tuple[int, int | None]:
    """The training epochs of a pruning run that does not name them, and the optimizer steps
    its noise posteriors need (:func:`pruning_steps_needed`; ``None`` when unknown).

    :data:`DEFAULT_EPOCHS`, or more on a small data set: enough epochs of ``steps_per_epoch``
    optimizer steps that the pruning epochs take :data:`PRUNING_STEPS_MARGIN` times the steps
    needed (267 at the default ``noise_lr``, so 801 steps). Without a number of steps per
    epoch (a stream without a length) or without kept noise structures, the default.
    """
    needed = pruning_steps_needed(model, noise_lr)
    if needed is None or not steps_per_epoch or steps_per_epoch < 1:
        return DEFAULT_EPOCHS, needed
    wanted = math.ceil(PRUNING_STEPS_MARGIN * needed)
    return max(DEFAULT_EPOCHS, math.ceil(wanted / steps_per_epoch)), needed


def default_epochs_note(epochs: int, steps_per_epoch: int, needed: int | None, noise_lr: float, *,
                        batch_size: int | None = None, choose: str = "epochs=") -> str | None:
    """The line saying why a run that does not name its epochs trains ``epochs`` of them
    (:func:`default_epochs`), or ``None`` when they are the default."""
    if epochs == DEFAULT_EPOCHS or needed is None:
        return None
    batch = f" at batch size {batch_size}" if batch_size is not None else ""
    return (f"epochs: {epochs}, not {DEFAULT_EPOCHS}: an epoch is {steps_per_epoch} optimizer steps{batch}, "
            f"and the noise posteriors need about {needed} steps at noise_lr={noise_lr:g} to widen to "
            f"their prior; {epochs} epochs give {epochs * steps_per_epoch} ({choose} to choose)")


def _noise_lr(model: PrunableNet, optimizer: Any) -> float | None:
    """The learning rate of ``optimizer``'s group holding the noise posteriors, or ``None``."""
    noise = {id(p) for layer in model.noise_layers().values() for p in layer.parameters()}
    for group in getattr(optimizer, "param_groups", ()):
        if any(id(p) in noise for p in group["params"]):
            return float(group["lr"])
    return None


def set_kl_weight(model: PrunableNet, loss_fn: Any, kl_scale: float | str | None = None) -> float | None:
    """Set the KL weight of ``model``'s stochastic modules to ``kl_scale``
    (:meth:`~pyro_prune.models.base.PrunableNet.set_kl_scale`; ``None``: keep the weights they
    have) and copy the weight of the structures' noise into ``loss_fn.kl_scale``, the loss's
    record of it (:class:`~pyro_prune.inference.loop.ElboLoss`; ``loss_fn`` may be ``None``).

    Returns the noise's weight (:func:`noise_kl_weight` when ``kl_scale`` is ``None``; the
    record is left alone when that is ``None``).
    """
    weight = noise_kl_weight(model) if kl_scale is None else model.set_kl_scale(kl_scale)
    if loss_fn is not None and weight is not None:
        loss_fn.kl_scale = weight
    return weight


def _removal_masks(model: PrunableNet, order: Sequence[tuple[str, int]], k: int) -> dict[str, torch.Tensor]:
    """Kept masks after removing the first ``k`` structures of ``order`` (never emptying a gate)."""
    kept = model.kept_mask()
    for _, name, idx in removals_in_order(kept, order[:k]):
        kept[name][idx] = False
    return kept


def prune_to_compression(model: PrunableNet, criterion: str, target: float, **criterion_kwargs: Any) -> float:
    """Remove the lowest-ranked structures until ``compression(model) >= target``.

    Structures are ranked globally by the criterion's score; the smallest number of
    removals that reaches the target is found by bisection. Returns the compression reached.

    Raises:
        ValueError: the target cannot be reached (every gate would be down to one
            structure, or what is left cannot be sliced out); the masks are restored.
    """
    from pyro_prune.convert import compression

    if not 0.0 <= target < 1.0:
        raise ValueError(f"target compression must lie in [0, 1), got {target}")
    order = global_ranking(model, criterion, **criterion_kwargs)
    lo, hi = 0, len(order)
    while lo < hi:
        mid = (lo + hi) // 2
        with model.masked(_removal_masks(model, order, mid)):
            reached = compression(model)
        if reached >= target:
            hi = mid
        else:
            lo = mid + 1
    final = _removal_masks(model, order, lo)
    with model.masked(final):
        reached = compression(model)
    if reached < target:
        raise ValueError(
            f"target compression {target:.3g} cannot be reached: removing every structure the "
            f"gates allow gives {reached:.3g} (at least one structure stays per gate, and tied or "
            f"pinned structures cannot be sliced out); the masks are unchanged")
    model.prune({name: ~mask for name, mask in final.items()})
    return reached


def post_training_curve(
    model: PrunableNet,
    train: Any,
    test: Any,
    criterion: str,
    *,
    fractions: Sequence[float] | None = None,
    finetune_epochs: int = 1,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
    stop_criterion: str | None = None,
    fit_kwargs: Mapping[str, Any] | None = None,
    **criterion_kwargs: Any,
) -> list[dict[str, Any]]:
    """Accuracy vs compression when a trained model is pruned progressively by a criterion.

    The structures are ranked once on the trained model (lowest score first). For each
    fraction of structures removed, a copy of the trained model has that many removed,
    is fine-tuned for ``finetune_epochs`` epochs, and is evaluated on ``test``. ``train`` and
    ``test`` take the forms :func:`~pyro_prune.inference.fit` takes (a ``TensorDataset``, the
    pair of tensors ``(inputs, targets)``, any ``Dataset`` or ``DataLoader``).

    Each returned point has ``fraction`` (of structures removed), ``removed``,
    ``compression``, ``accuracy`` (or ``rmse``), ``loss`` and ``before_stop``: True up to
    the threshold-free stopping point, the fraction of structures with dF >= 0 under
    ``stop_criterion`` (default: ``criterion`` itself when it is threshold-free, else
    BMRS_N); ``stop_fraction`` repeats where that point lies.

    ``fit_kwargs`` go to the fine-tuning :func:`~pyro_prune.inference.fit` (e.g.
    ``{"kl_scale": "paper", "noise_lr": 0.03}``: fine-tune with the KL weight the model was
    trained with; ``fit`` sets the weight on every call, ``"elbo"`` unless told).
    """
    from pyro_prune.convert import compression
    from pyro_prune.inference.fit import evaluate, fit

    train, test = as_dataset(train, "train"), as_dataset(test, "test")
    order = global_ranking(model, criterion, **criterion_kwargs)
    total = len(order)
    if fractions is None:
        fractions = [i / 20 for i in range(20)]
    if stop_criterion is None:
        stop_criterion = criterion if as_criterion(criterion).threshold_free else "bmrs_n"
    bmrs_remove = structure_removals(model, stop_criterion) if model.noise_layers() else {}
    n_df_positive = sum(int(m.sum()) for m in bmrs_remove.values())
    stop_fraction = n_df_positive / total if total else 0.0
    points = []
    for fraction in progress_bar(fractions, desc=f"curve {criterion}", enabled=progress):
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"fractions must lie in [0, 1), got {fraction}")
        k = int(round(fraction * total))
        pruned = copy.deepcopy(model)
        pruned.prune({name: ~mask for name, mask in _removal_masks(pruned, order, k).items()})
        if finetune_epochs > 0 and k > 0:
            fit(pruned, train, epochs=finetune_epochs, batch_size=batch_size, lr=lr, seed=seed,
                progress=False, **dict(fit_kwargs or {}))
        metrics = evaluate(pruned, test)
        points.append({
            "criterion": criterion, "fraction": fraction, "removed": k,
            "compression": compression(pruned), **metrics,
            "before_stop": fraction <= stop_fraction, "stop_fraction": stop_fraction,
        })
    return points
