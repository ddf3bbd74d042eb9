"""Fit a Pyro model by stochastic variational inference, with pruning schedules.

:func:`fit` is the training loop every method of the package shares: Adam on the negative
ELBO (closed-form KL, :mod:`pyro_prune.inference.elbo`), minibatches of a
``TensorDataset``, a :class:`~pyro_prune.inference.schedules.Schedule` that may prune at the
end of each epoch, a per-epoch history, tqdm progress and resumable checkpoints. Its pieces
live next to it: the argument checks and their resolution (:mod:`~pyro_prune.inference.arguments`),
one epoch (:mod:`~pyro_prune.inference.epoch`), the optimizer (:mod:`~pyro_prune.inference.optim`),
checkpoints (:mod:`~pyro_prune.inference.checkpoint`), evaluation at the posterior mean
(:mod:`~pyro_prune.inference.metrics`), divergence (:mod:`~pyro_prune.inference.divergence`)
and subnormal flushing (:mod:`~pyro_prune.inference.denormals`).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch
from torch import nn
from torch.utils.data import TensorDataset

from pyro_prune._enums import Engine
from pyro_prune.inference.arguments import guide_name, resolve_fit_arguments, schedule_name
from pyro_prune.inference.batches import batch_source, dataset_length, steps_per_epoch
from pyro_prune.inference.checkpoint import (
    CHECKPOINT_NAME,
    dataset_fingerprint,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from pyro_prune.inference.custom_guide import guide_start, prepare_guide
from pyro_prune.inference.denormals import flush_denormals
from pyro_prune.inference.distributed import (
    GradientSync,
    broadcast_module,
    broadcast_state,
    distributed_info,
)
from pyro_prune.inference.divergence import (
    DivergenceWarning,
    chance_level,
    chance_note,
    warn_if_diverging,
)
from pyro_prune.inference.epoch import EpochTrainer, FitContext
from pyro_prune.inference.guides import attached_guide, copy_weight_posterior, detach_guide
from pyro_prune.inference.loop import ElboLoss, pruning_summary
from pyro_prune.inference.metrics import evaluate, model_device
from pyro_prune.inference.optim import (
    DEFAULT_NOISE_LR,
    load_optimizer_state,
    make_optimizer,
    trainable_parameters,
)
from pyro_prune.inference.schedules import (
    DEFAULT_EPOCHS,
    ContinuousPruning,
    default_epochs,
    default_epochs_note,
)
from pyro_prune.models.base import KLScale, Likelihood, PrunableNet
from pyro_prune.progress import progress_bar

__all__ = ["DEFAULT_NOISE_LR", "DivergenceWarning", "Engine", "FitContext", "FitResult", "evaluate", "fit",
           "flush_denormals", "load_checkpoint", "make_optimizer"]


@dataclass
class FitResult:
    """What :func:`fit` returns."""

    model: PrunableNet
    guide: Callable
    history: list[dict[str, Any]]
    config: dict[str, Any] = field(default_factory=dict)
    #: the one-line pruning report (:class:`~pyro_prune.inference.pruning_report.PruningReport`)
    #: of a run whose schedule prunes with a criterion, else ``None``
    report: Any = None
    #: the note of a classifier whose final accuracy is at chance, the network not learned
    #: (:func:`~pyro_prune.inference.divergence.chance_note`; also logged), else ``None``
    chance_note: str | None = None

    @property
    def last(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


def fit(
    model: PrunableNet,
    train: Any,
    *,
    epochs: int | None = None,
    batch_size: int = 128,
    lr: float = 1e-3,
    val: Any = None,
    schedule: Any = None,
    seed: int = 0,
    checkpoint_dir: str | os.PathLike | None = None,
    progress: bool = True,
    engine: Engine | str = Engine.AUTO,
    kl_scale: float | KLScale | str = KLScale.AUTO,
    guide: Callable | None = None,
    weight_decay: float = 0.0,
    noise_lr: float | None = DEFAULT_NOISE_LR,
    per_example_noise: bool = True,
    flush_denormal: bool = True,
    num_data: int | None = None,
) -> FitResult:
    """Fit ``model`` (and its guide) by SVI; prune along the way if ``schedule`` says so.

    Args:
        model: a :class:`PrunableNet` (its ``num_data`` is set to ``num_data``).
        train: the training set: a ``TensorDataset(inputs, targets)`` or simply the pair
            of tensors ``(inputs, targets)`` (a tuple or list, the same first dimension; read
            as that ``TensorDataset``: minibatches by index slicing, the fastest), any map-style ``Dataset`` or ``IterableDataset``
            of ``(input, target)`` pairs (read through a ``DataLoader``, one batch in
            memory at a time, so per-example transforms and augmentation work), or a
            ``DataLoader`` (its own batch size, workers and collate function apply; its
            ``batch_size`` is the global batch). See :mod:`pyro_prune.inference.batches`.
        epochs: number of training epochs (a schedule may add ``extra_epochs`` of
            fine-tuning). ``None`` (the default): 20, or, under
            :class:`~pyro_prune.inference.schedules.ContinuousPruning` on a small data set,
            enough epochs for 3x the optimizer steps the noise posteriors need to widen to
            their prior (:func:`~pyro_prune.inference.schedules.default_epochs`; 801 steps
            at the default ``noise_lr``), with a line saying why; ``config["epochs"]``
            records the number.
        batch_size, lr: minibatch size and Adam learning rate. Under ``torchrun`` the
            batch is global: each of the N processes takes ``batch_size / N`` of it.
        val: validation data (any form ``train`` takes, a pair ``(inputs, targets)``
            too), evaluated at the posterior mean after every epoch.
        schedule: a :class:`~pyro_prune.inference.schedules.Schedule` (or ``None``).
        seed: seeds torch, Pyro and the data order.
        checkpoint_dir: if given, a checkpoint is written there after every epoch and an
            existing one is resumed from (same model class and settings required).
        progress: show progress (:func:`~pyro_prune.progress.progress_bar`: a bar on a
            terminal, one plain line per epoch in a log file).
        engine: ``"auto"``, ``"fast"`` or ``"pyro"`` (see :class:`Engine`).
        kl_scale: weight of the KL term, a temperature of the posterior: a number,
            ``"elbo"`` (1), ``"paper"`` (``num_data / num_structures``) or ``"auto"`` (the
            default: ``"paper"`` for a classifier with multiplicative noise, ``"elbo"``
            otherwise, regression included). A name weights the structures' noise; Gaussian weights beside
            noise keep the ELBO's weight. See :class:`~pyro_prune.models.base.KLScale` and
            ``docs/defaults.md``.
        guide: a custom Pyro guide (e.g. ``AutoDelta``); defaults to ``model.guide``.
        weight_decay: Adam weight decay (0: none; the priors already regularise).
        noise_lr: learning rate of the noise posteriors (loc and log scale of every
            :class:`~pyro_prune.models.noise.MultiplicativeNoise`), default
            ``DEFAULT_NOISE_LR`` = 0.03; ``None`` uses ``lr``. Adam moves a parameter by
            about ``lr`` per step, so with ``lr=1e-3`` a log scale needs thousands of steps
            to travel from its initial -5 to where an unneeded structure's posterior
            settles; a larger ``noise_lr`` gets there in a few epochs while the weights
            keep their usual rate.
        per_example_noise: with the fast engine, draw the noise once per example (lower
            gradient variance, the default) or once per step for the whole batch (the
            Pyro ELBO's estimator; cheaper, see ``benchmarks/training_speed.py``).
        flush_denormal: treat subnormal floats as zero on the CPU while training
            (:func:`flush_denormals`; the setting is restored afterwards).
        num_data: the number of training examples, which scales the likelihood of a
            minibatch to the whole data set; ``None``: ``len(train)`` (a stream without
            ``len()`` needs it).

    Under ``torchrun --nproc_per_node=N`` (or any launcher setting ``RANK``,
    ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) the same call trains data-parallel:
    see :mod:`pyro_prune.inference.distributed`. Every rank returns the same result;
    rank 0 alone evaluates, prunes (its decision is broadcast), logs and writes the
    checkpoint; ``config`` records ``world_size`` and ``backend``.

    Returns:
        :class:`FitResult` with the model, the guide, the per-epoch history and, with a
        pruning schedule, the one-line ``report`` (also logged).

    A custom guide (an autoguide such as ``AutoNormal(model)``) is remembered on the model:
    the criteria, ``ContinuousPruning``, ``model.predict`` and the predictive then read its
    posterior (:mod:`pyro_prune.inference.guides`: AutoNormal, AutoDiagonalNormal,
    AutoMultivariateNormal, AutoLowRankMultivariateNormal, AutoDelta), and its own
    parameters train at ``noise_lr``.
    """
    # an autoguide not run yet starts where its init_loc_fn puts it, or where Pyro's param
    # store holds its names (both checked before training)
    start = guide_start(guide) if guide is not None else None
    args = resolve_fit_arguments(model, train, epochs=epochs, batch_size=batch_size, lr=lr, val=val,
                                 seed=seed, engine=engine, kl_scale=kl_scale, guide=guide,
                                 weight_decay=weight_decay, noise_lr=noise_lr, num_data=num_data)
    train, val = args.train, args.val  # an (inputs, targets) pair is a TensorDataset from here on
    why_epochs = None
    if epochs is None:
        epochs, why_epochs = _default_epochs(model, train, batch_size=batch_size,
                                             noise_lr=noise_lr if noise_lr is not None else lr, schedule=schedule)
    guide, custom_guide = args.guide, args.custom_guide
    device = model_device(model)
    dist_info = distributed_info(device)
    main = dist_info.is_main
    if why_epochs is not None and main:
        _write_summary([why_epochs], progress)

    torch.manual_seed(seed)
    pyro.set_rng_seed(seed)
    loss_fn = ElboLoss(model, num_data=args.num_data, kl_scale=args.kl_spec, per_example=per_example_noise,
                       guide=guide if custom_guide else None, use_pyro=args.engine is Engine.PYRO)
    model.train()

    # the criteria, the posterior mean and the predictive read the guide that is fitted here;
    # guide_state: the module holding a custom guide's parameters (the guide, or a guide
    # function's pyro.params), trained, kept equal across ranks and checkpointed
    guide_state: nn.Module | None = None
    if custom_guide:
        guide_state = prepare_guide(model, guide, tuple(t.to(device) for t in args.sample),
                                    kl_scale=args.kl_spec, criterion=getattr(schedule, "criterion", None),
                                    start=start)
    else:
        detach_guide(model)
    if isinstance(schedule, ContinuousPruning):  # the default criterion follows the posterior's family
        why_criterion = schedule.choose_criterion(model)
        if why_criterion is not None and main:
            _write_summary([why_criterion], progress)
    if dist_info.active:  # every rank starts from rank 0's weights
        broadcast_module(model, dist_info)
        if guide_state is not None:
            broadcast_module(guide_state, dist_info)
    # Ranks share one noise generator when the whole network's per-example noise comes from
    # one draw (each rank keeps its rows of the global batch's draw: exactly the draws of one
    # process), or when one draw serves the whole batch; otherwise each rank draws its own.
    plan = loss_fn.plan
    shared_noise = plan is None or not per_example_noise or plan.draws_global_batch
    if dist_info.active and dist_info.rank and not shared_noise:
        torch.manual_seed(_rank_seed(seed, dist_info.rank))
    optimizer = make_optimizer(model, lr=lr, noise_lr=noise_lr, weight_decay=weight_decay, guide=guide_state)
    generator = torch.Generator().manual_seed(seed)
    source = batch_source(train, batch_size, generator=generator, seed=seed, info=dist_info)

    ctx = FitContext(
        model=model, guide=guide, optimizer=optimizer, train=train, val=val,
        batch_size=source.batch_size, seed=seed, epochs=epochs, loss_fn=loss_fn,
    )
    sync = GradientSync(trainable_parameters(model, guide_state), dist_info)
    ctx.train_epoch = EpochTrainer(
        ctx, source=source, loss_fn=loss_fn, sync=sync,
        info=dist_info, schedule=schedule, device=device, shared_noise=shared_noise,
        running_accuracy=args.engine is Engine.FAST and model.likelihood is Likelihood.CATEGORICAL,
        lr=lr, noise_lr=noise_lr)
    total_epochs = epochs + int(getattr(schedule, "extra_epochs", 0) if schedule is not None else 0)
    history: list[dict[str, Any]] = []
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    config = {
        "model": type(model).__name__, "epochs": epochs, "total_epochs": total_epochs,
        "batch_size": source.batch_size, "lr": lr, "seed": seed, "engine": args.engine.value,
        "kl_scale": args.kl_scale, "num_data": model.num_data,
        "schedule": schedule_name(schedule),
        "weight_decay": float(weight_decay), "noise_lr": noise_lr,
        "per_example_noise": bool(per_example_noise), "flush_denormal": bool(flush_denormal),
        "guide": guide_name(guide, custom_guide),
        "world_size": dist_info.world_size, "backend": dist_info.backend,
    }
    if ckpt_path is not None:  # resuming on other data must fail: fingerprint it
        config["data"] = dataset_fingerprint(train)
        config["val_data"] = dataset_fingerprint(val) if val is not None else None
    start_epoch = 0
    if schedule is not None:
        schedule.on_fit_start(ctx)
    # a custom guide's parameters are the posterior being fitted: saved and restored with the model
    state = read_checkpoint(ckpt_path, model=model, config=config, info=dist_info, device=device,
                            guide=guide_state)
    if state is not None:
        load_optimizer_state(optimizer, state["optimizer"], model)
        if schedule is not None:
            schedule.load_state_dict(state.get("schedule", {}))
        history = list(state["history"])
        start_epoch = int(state["epoch"])
        ctx.step = int(state["step"])
        torch.set_rng_state(state["rng"]["torch"] if main or shared_noise else
                            torch.Generator().manual_seed(_rank_seed(seed, dist_info.rank, start_epoch)).get_state())
        generator.set_state(state["rng"]["data"])

    # a failed classifier is judged on an in-memory training set (10+ examples per class; not
    # a language model's token labels, whose per-example loss sums over the tokens)
    chance = (chance_level(model, train.tensors[1])
              if isinstance(train, TensorDataset) and train.tensors[1].dim() == 1 else None)
    bar = progress_bar(desc=f"fit {type(model).__name__}", total=total_epochs, initial=start_epoch,
                       enabled=progress and main, every_s=0.0)
    with flush_denormals(flush_denormal):
        for epoch in range(start_epoch, total_epochs):
            ctx.epoch = epoch
            if schedule is not None and hasattr(schedule, "on_epoch_start"):
                schedule.on_epoch_start(ctx, epoch + 1)
            t0 = time.perf_counter()
            row: dict[str, Any] = {"epoch": epoch + 1}
            row.update(ctx.train_epoch())
            row["epoch_time_s"] = time.perf_counter() - t0
            if custom_guide and attached_guide(model) is guide:  # what evaluate and the rest read
                copy_weight_posterior(model, guide)
            if main:  # rank 0 evaluates, decides and logs; the other ranks take its state
                train_metrics = evaluate(model, train) if val is None or epoch + 1 == total_epochs else None
                if train_metrics is not None:
                    row.update({f"train_{k}": v for k, v in train_metrics.items()})
                if val is not None:
                    row.update({f"val_{k}": v for k, v in evaluate(model, val).items()})
                if schedule is not None:
                    row.update(schedule.on_epoch_end(ctx, epoch + 1))
                row.update(pruning_summary(model))
            if dist_info.active:
                row = broadcast_state(dist_info, model, optimizer=optimizer, schedule=schedule,
                                      extra=row if main else None)
                row["comm_time_s"] = sync.comm_seconds
                sync.comm_seconds = 0.0
            history.append(row)
            warn_if_diverging(history, chance, final=epoch + 1 == total_epochs, lr=lr, noise_lr=noise_lr)
            bar.set_postfix({k: f"{v:.4g}" for k, v in row.items()
                             if k in ("loss", "val_accuracy", "compression") and v is not None})
            bar.update(1)
            if ckpt_path is not None and main:
                save_checkpoint(ckpt_path, model=model, guide=guide_state, optimizer=optimizer, schedule=schedule,
                                history=history, epoch=epoch + 1, step=ctx.step, config=config,
                                generator=generator)
    bar.close()
    model.eval()
    report = _report(model, schedule)
    note = _chance_note(history, chance, val=val, evaluated=val if val is not None else train, lr=lr,
                        kl_spec=args.kl_spec, kl_value=args.kl_scale)
    if main:
        _write_summary([line for line in (report, note) if line is not None], progress)
    return FitResult(model=model, guide=guide, history=history, config=config, report=report,
                     chance_note=note)


def _default_epochs(model: PrunableNet, train: Any, *, batch_size: int, noise_lr: float,
                    schedule: Any) -> tuple[int, str | None]:
    """The epochs of a run that does not name them (see :func:`fit`), and, when they are
    more than :data:`~pyro_prune.inference.schedules.DEFAULT_EPOCHS`, a line saying why."""
    steps = steps_per_epoch(train, batch_size)
    if not isinstance(schedule, ContinuousPruning) or steps is None:
        return DEFAULT_EPOCHS, None
    epochs, needed = default_epochs(model, steps, noise_lr)
    return epochs, default_epochs_note(epochs, steps, needed, noise_lr)


def _report(model: PrunableNet, schedule: Any) -> Any:
    """The one-line pruning report of a run whose schedule prunes with a criterion."""
    from pyro_prune.inference.pruning_report import pruning_report
    from pyro_prune.reduction import Criterion

    criterion = getattr(schedule, "criterion", None)
    if not isinstance(criterion, Criterion):
        return None
    return pruning_report(model, criterion, decision=getattr(schedule, "last_decision", None))


def _chance_note(history: list[dict[str, Any]], chance: tuple[float, float] | None, *, val: Any,
                 evaluated: Any, lr: float, kl_spec: float | str, kl_value: float) -> str | None:
    """The note of a classifier whose last evaluated accuracy (on ``val``, else on the
    training data) is at chance; none after a divergence, which was warned of already."""
    if not history or chance is None:
        return None
    where = "validation" if val is not None else "training"
    accuracy = history[-1].get("val_accuracy" if val is not None else "train_accuracy")
    checks = (f"the learning rate (lr={lr:g}), the guide's start (where its means and scales begin: "
              f"an autoguide's init_loc_fn and init_scale) and the KL weight (kl_scale={kl_spec!r}, "
              f"{kl_value:.3g}: a large weight holds the posterior at the prior)")
    return chance_note(accuracy, chance[0], dataset_length(evaluated), where=where, checks=checks,
                       history=history)


def _write_summary(lines: list[Any], progress: bool) -> None:
    """The end-of-run lines (the pruning report, the chance note): logged and, with
    ``progress``, written below the progress bar."""
    from pyro_prune.inference.pruning_report import logger

    for line in lines:
        logger.info("%s", line)
        if progress:  # below the progress bar, not through it
            from tqdm.auto import tqdm

            tqdm.write(str(line), file=sys.stderr)


def _rank_seed(seed: int, rank: int, epoch: int = 0) -> int:
    """The noise seed of rank ``rank > 0`` when ranks draw their own noise (rank 0 keeps ``seed``)."""
    return (seed * 1_000_003 + rank * 7919 + epoch * 104_729) % (2**63)
