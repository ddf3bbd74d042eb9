"""Fit a Pyro model by stochastic variational inference, with pruning schedules.

:func:`fit` is the training loop every method of the package shares: Adam on the negative
ELBO (closed-form KL, :mod:`pyro_prune.inference.elbo`), minibatches of a
``TensorDataset``, a :class:`~pyro_prune.inference.schedules.Schedule` that may prune at the
end of each epoch, a per-epoch history, tqdm progress and resumable checkpoints.
"""

from __future__ import annotations

import contextlib
import enum
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pyro
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from pyro_prune._checks import (
    check_dataset,
    check_guide,
    check_model_data,
    check_number,
    check_seed,
    data_fingerprint,
)
from pyro_prune._enums import parse_enum
from pyro_prune._io import CorruptOutputError, check_zip, save_torch
from pyro_prune.inference.batches import batch_source, dataset_length, eval_batches
from pyro_prune.inference.distributed import (
    GradientSync,
    broadcast_module,
    broadcast_object,
    broadcast_state,
    distributed_info,
)
from pyro_prune.inference.loop import ElboLoss, pruning_summary
from pyro_prune.models.base import KLScale, Likelihood, PrunableNet
from pyro_prune.progress import progress_bar

__all__ = ["DEFAULT_NOISE_LR", "DivergenceWarning", "Engine", "FitContext", "FitResult", "evaluate", "fit",
           "flush_denormals", "load_checkpoint", "make_optimizer"]

#: default learning rate of the noise posteriors (see ``docs/defaults.md``)
DEFAULT_NOISE_LR = 0.03

CHECKPOINT_FORMAT = "pyro_prune.fit/1"
CHECKPOINT_NAME = "checkpoint.pt"


class Engine(enum.Enum):
    """How the negative ELBO is computed (see :mod:`pyro_prune.inference.elbo`)."""

    #: ``FAST`` for the built-in mean-field guide, ``PYRO`` for any other guide
    AUTO = "auto"
    #: plain-torch ELBO with per-example reparameterised draws
    FAST = "fast"
    #: ``TraceMeanField_ELBO`` on the Pyro model and guide
    PYRO = "pyro"


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

    @property
    def last(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


def _tensors(dataset: Any, arg: str) -> tuple[Tensor, Tensor]:
    return check_dataset(dataset, arg)


def _check_targets(model: PrunableNet, x: Tensor, y: Tensor, arg: str) -> None:
    check_model_data(model, x, y, arg)


@torch.no_grad()
def evaluate(model: PrunableNet, dataset: Any, *, batch_size: int = 2048) -> dict[str, float]:
    """Mean negative log likelihood and accuracy (or RMSE) at the posterior mean.

    ``dataset``: a ``TensorDataset(inputs, targets)``, any map-style or iterable ``Dataset``
    of ``(input, target)`` pairs, or a ``DataLoader`` (read in order, batch by batch).
    """
    if isinstance(dataset, TensorDataset):
        x, y = _tensors(dataset, "dataset")
        _check_targets(model, x, y, "dataset")
    else:
        _check_targets(model, *_first_batch(dataset, "dataset"), "dataset")
    was_training = model.training
    model.eval()
    device = _device(model)
    total_nll, correct, sq, n, width = 0.0, 0, 0.0, 0, 1
    try:
        for xb, yb in eval_batches(dataset, batch_size):
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            out = model.predict(xb)
            total_nll += float(model.nll(out, yb).sum())
            n += len(xb)
            if model.likelihood is Likelihood.CATEGORICAL:
                correct += int((out.argmax(-1) == yb).sum())
            else:
                sq += float(((out - yb) ** 2).sum())
                width = yb.shape[-1]
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("dataset is empty")
    metrics = {"loss": total_nll / n}
    if model.likelihood is Likelihood.CATEGORICAL:
        metrics["accuracy"] = correct / n
    else:
        metrics["rmse"] = math.sqrt(sq / (n * width))
    return metrics


def _first_batch(data: Any, arg: str) -> tuple[Tensor, Tensor]:
    """Two examples of a data set of any kind (for the checks of inputs and targets)."""
    try:
        return next(eval_batches(data, 2))
    except StopIteration:
        raise ValueError(f"{arg} is empty") from None


def _device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


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


def _parameters(model: nn.Module, guide: Callable) -> list[nn.Parameter]:
    params = list(model.parameters())
    if isinstance(guide, nn.Module) and guide is not model:
        seen = {id(p) for p in params}
        params += [p for p in guide.parameters() if id(p) not in seen]
    return [p for p in params if p.requires_grad]


def _param_groups(model: nn.Module, guide: Callable, lr: float,
                  noise_lr: float | None) -> list[dict[str, Any]]:
    """One Adam group, or two when the noise posteriors get their own learning rate."""
    params = _parameters(model, guide)
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
    """The Adam optimizer :func:`fit` trains with (for a training loop of your own).

    One parameter group at ``lr``, or two when the noise posteriors get ``noise_lr``; the
    parameters of a custom ``guide`` module are included; the fused kernel where the device
    has one (:func:`_adam`).
    """
    guide = guide if guide is not None else model.guide
    return _adam(_param_groups(model, guide, lr, noise_lr), lr=lr, weight_decay=weight_decay)


def _flush_denormal_enabled() -> bool:
    """Whether the CPU currently flushes subnormal floats (torch has no getter for it)."""
    return float(torch.tensor([1e-39], dtype=torch.float32) * 1.0) == 0.0


@contextlib.contextmanager
def flush_denormals(enabled: bool = True) -> Iterator[None]:
    """Treat subnormal floats as zero on the CPU inside the block; the previous mode after.

    Training a heavily pruned network drives part of the optimizer state (Adam's moments of
    weights whose gradients vanish) and of the activations into the subnormal range below
    ``1.2e-38`` (float32), where x86 arithmetic is many times slower: an FCN with 99% of its
    hidden weights pruned slowed from 3.2 s to 5.7 s per epoch by its sixth epoch, and kept
    slowing, while with flushing its epochs stayed at 3.2 s. Values change only below that
    threshold. A no-op where the CPU cannot flush (``torch.set_flush_denormal`` says so).
    """
    if not enabled:
        yield
        return
    before = _flush_denormal_enabled()
    supported = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if supported:
            torch.set_flush_denormal(before)


def fit(
    model: PrunableNet,
    train: Any,
    *,
    epochs: int,
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
        train: the training set: a ``TensorDataset(inputs, targets)`` (minibatches by
            index slicing, the fastest), any map-style ``Dataset`` or ``IterableDataset``
            of ``(input, target)`` pairs (read through a ``DataLoader``, one batch in
            memory at a time, so per-example transforms and augmentation work), or a
            ``DataLoader`` (its own batch size, workers and collate function apply; its
            ``batch_size`` is the global batch). See :mod:`pyro_prune.inference.batches`.
        epochs: number of training epochs (a schedule may add ``extra_epochs`` of
            fine-tuning).
        batch_size, lr: minibatch size and Adam learning rate. Under ``torchrun`` the
            batch is global: each of the N processes takes ``batch_size / N`` of it.
        val: validation data (like ``train``), evaluated at the posterior mean after
            every epoch.
        schedule: a :class:`~pyro_prune.inference.schedules.Schedule` (or ``None``).
        seed: seeds torch, Pyro and the data order.
        checkpoint_dir: if given, a checkpoint is written there after every epoch and an
            existing one is resumed from (same model class and settings required).
        progress: show progress (:func:`~pyro_prune.progress.progress_bar`: a bar on a
            terminal, one plain line per epoch in a log file).
        engine: ``"auto"``, ``"fast"`` or ``"pyro"`` (see :class:`Engine`).
        kl_scale: weight of the KL term, a temperature of the posterior: a number,
            ``"elbo"`` (1), ``"paper"`` (``num_data / num_structures``) or ``"auto"`` (the
            default: ``"paper"`` for a network with multiplicative noise, ``"elbo"``
            otherwise). See :class:`~pyro_prune.models.base.KLScale` and ``docs/defaults.md``.
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
    if not isinstance(model, PrunableNet):
        raise TypeError(f"model must be a PrunableNet, got {type(model).__name__}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    check_number(lr, "lr", positive=True)
    if noise_lr is not None:
        check_number(noise_lr, "noise_lr", positive=True)
    check_number(weight_decay, "weight_decay", minimum=0.0)
    check_seed(seed)
    if isinstance(train, TensorDataset):
        x_train, y_train = _tensors(train, "train")
    elif isinstance(train, (Dataset, DataLoader)):
        x_train, y_train = _first_batch(train, "train")
    else:
        raise TypeError(f"train must be a torch Dataset, IterableDataset or DataLoader, "
                        f"got {type(train).__name__}")
    _check_targets(model, x_train, y_train, "train")
    if val is not None:
        _check_targets(model, *(_tensors(val, "val") if isinstance(val, TensorDataset)
                                else _first_batch(val, "val")), "val")
    if num_data is None:
        num_data = dataset_length(train)
        if num_data is None:
            raise ValueError("num_data is needed: train has no len() (a stream); pass the "
                             "number of training examples")
    elif isinstance(num_data, bool) or not isinstance(num_data, int) or num_data < 1:
        raise ValueError(f"num_data must be a positive int or None, got {num_data!r}")
    if num_data == 0:
        raise ValueError("train is empty")
    engine = parse_enum(Engine, engine, "engine")
    custom_guide = guide is not None and guide != model.guide
    if custom_guide:
        check_guide(model, guide, x_train[:2], y_train[:2])
    guide = guide if guide is not None else model.guide
    if engine is Engine.AUTO:
        engine = Engine.PYRO if custom_guide else Engine.FAST
    if engine is Engine.FAST and custom_guide:
        raise ValueError("engine='fast' works with the model's own guide only; use engine='pyro'")
    device = _device(model)
    dist_info = distributed_info(device)
    main = dist_info.is_main

    torch.manual_seed(seed)
    pyro.set_rng_seed(seed)
    loss_fn = ElboLoss(model, num_data=num_data, kl_scale=kl_scale, per_example=per_example_noise,
                       guide=guide if custom_guide else None, use_pyro=engine is Engine.PYRO)
    kl_value = loss_fn.kl_scale
    model.train()

    if custom_guide:  # autoguides create their parameters on the first call
        with torch.no_grad():
            pyro.poutine.trace(guide).get_trace(x_train[:2].to(device), y_train[:2].to(device))
    # the criteria, the posterior mean and the predictive read the guide that is fitted here
    _attach_fitted_guide(model, guide if custom_guide else None)
    if dist_info.active:  # every rank starts from rank 0's weights
        broadcast_module(model, dist_info)
        if isinstance(guide, nn.Module) and guide is not model:
            broadcast_module(guide, dist_info)
    # Ranks share one noise generator when the whole network's per-example noise comes from
    # one draw (each rank keeps its rows of the global batch's draw: exactly the draws of one
    # process), or when one draw serves the whole batch; otherwise each rank draws its own.
    plan = loss_fn.plan
    shared_noise = plan is None or not per_example_noise or plan.draws_global_batch
    if dist_info.active and dist_info.rank and not shared_noise:
        torch.manual_seed(_rank_seed(seed, dist_info.rank))
    params = _parameters(model, guide)
    optimizer = make_optimizer(model, lr=lr, noise_lr=noise_lr, weight_decay=weight_decay, guide=guide)
    generator = torch.Generator().manual_seed(seed)
    source = batch_source(train, batch_size, generator=generator, seed=seed, info=dist_info)
    sync = GradientSync(params, dist_info)

    ctx = FitContext(
        model=model, guide=guide, optimizer=optimizer, train=train, val=val,
        batch_size=source.batch_size, seed=seed, epochs=epochs, loss_fn=loss_fn,
    )

    def train_epoch() -> dict[str, float]:
        model.train()
        total, correct, seen = 0.0, 0, 0
        batches = source.epoch(ctx.epoch)
        while True:
            batch = next(batches, None)
            if batch is None and (source.even or not dist_info.active):
                break
            optimizer.zero_grad(set_to_none=True)
            n_local, loss_value, right = 0, 0.0, 0
            if dist_info.active and plan is not None and shared_noise and batch is not None:
                plan.rows = (batch[2], dist_info.rank, dist_info.world_size)
            if batch is not None and len(batch[0]) == 0:  # an empty share of a small last batch
                if plan is not None:
                    plan.advance()
            elif batch is not None:
                xb, yb = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
                loss, out = loss_fn(xb, yb)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"the loss became {float(loss.detach())} at epoch {ctx.epoch + 1}, step {ctx.step}; "
                        f"lower lr (now {lr})" + (f" or noise_lr (now {noise_lr})" if noise_lr else "")
                    )
                loss.backward()
                n_local, loss_value = len(xb), float(loss.detach())
                if out is not None and model.likelihood is Likelihood.CATEGORICAL:
                    right = int((out.detach().argmax(-1) == yb).sum())
            n_step, loss_value, right = sync.reduce(n_local, loss_value, right)
            if n_step == 0:  # every rank's stream has ended
                break
            optimizer.step()
            ctx.step += 1
            if schedule is not None:
                schedule.on_step_end(ctx)
            total += loss_value * n_step
            seen += n_step
            correct += right
        row = {"loss": total / max(seen, 1) / cast(int, model.num_data)}
        if engine is Engine.FAST and model.likelihood is Likelihood.CATEGORICAL:
            row["train_accuracy_running"] = correct / max(seen, 1)
        return row

    ctx.train_epoch = train_epoch
    total_epochs = epochs + int(getattr(schedule, "extra_epochs", 0) if schedule is not None else 0)
    history: list[dict[str, Any]] = []
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    config = {
        "model": type(model).__name__, "epochs": epochs, "total_epochs": total_epochs,
        "batch_size": source.batch_size, "lr": lr, "seed": seed, "engine": engine.value,
        "kl_scale": kl_value, "num_data": model.num_data,
        "schedule": _schedule_name(schedule),
        "weight_decay": float(weight_decay), "noise_lr": noise_lr,
        "per_example_noise": bool(per_example_noise), "flush_denormal": bool(flush_denormal),
        "guide": _guide_name(guide, custom_guide),
        "world_size": dist_info.world_size, "backend": dist_info.backend,
    }
    if ckpt_path is not None:  # resuming on other data must fail: fingerprint it
        config["data"] = _fingerprint(train)
        config["val_data"] = _fingerprint(val) if val is not None else None
    start_epoch = 0
    if schedule is not None:
        schedule.on_fit_start(ctx)
    resume = broadcast_object(bool(ckpt_path is not None and ckpt_path.exists()), dist_info, device)
    if resume:
        assert ckpt_path is not None
        state, problem = {}, None
        if main:
            try:
                state = load_checkpoint(ckpt_path, model=model, config=config)
            except ValueError as err:  # every rank stops with rank 0's message
                if not dist_info.active:
                    raise
                problem = str(err)
        problem = broadcast_object(problem, dist_info, device)
        if problem is not None:
            raise ValueError(problem)
        broadcast_module(model, dist_info)
        state = broadcast_object(
            {k: state[k] for k in ("optimizer", "schedule", "history", "epoch", "step", "rng")} if main else None,
            dist_info, device)
        optimizer.load_state_dict(state["optimizer"])
        if schedule is not None:
            schedule.load_state_dict(state.get("schedule", {}))
        history = list(state["history"])
        start_epoch = int(state["epoch"])
        ctx.step = int(state["step"])
        torch.set_rng_state(state["rng"]["torch"] if main or shared_noise else
                            torch.Generator().manual_seed(_rank_seed(seed, dist_info.rank, start_epoch)).get_state())
        generator.set_state(state["rng"]["data"])

    chance = None  # (majority-class rate, log of the number of classes): a failed classifier
    if model.likelihood is Likelihood.CATEGORICAL:  # (judged on 10+ examples per class)
        counts = torch.bincount(y_train)
        if int((counts > 0).sum()) > 1 and len(y_train) >= 10 * len(counts):
            chance = (float(counts.max()) / len(y_train), math.log(len(counts)))
    bar = progress_bar(desc=f"fit {type(model).__name__}", total=total_epochs, initial=start_epoch,
                       enabled=progress and main, every_s=0.0)
    with flush_denormals(flush_denormal):
        for epoch in range(start_epoch, total_epochs):
            ctx.epoch = epoch
            t0 = time.perf_counter()
            row: dict[str, Any] = {"epoch": epoch + 1}
            row.update(train_epoch())
            row["epoch_time_s"] = time.perf_counter() - t0
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
            _warn_if_diverging(history, chance, final=epoch + 1 == total_epochs)
            bar.set_postfix({k: f"{v:.4g}" for k, v in row.items()
                             if k in ("loss", "val_accuracy", "compression") and v is not None})
            bar.update(1)
            if ckpt_path is not None and main:
                _save_checkpoint(ckpt_path, model=model, optimizer=optimizer, schedule=schedule,
                                 history=history, epoch=epoch + 1, step=ctx.step, config=config,
                                 generator=generator)
    bar.close()
    model.eval()
    report = _report(model, schedule, progress)
    return FitResult(model=model, guide=guide, history=history, config=config, report=report)


def _report(model: PrunableNet, schedule: Any, progress: bool) -> Any:
    """The one-line pruning report of a run whose schedule prunes with a criterion (logged)."""
    from pyro_prune.inference.pruning_report import logger, pruning_report
    from pyro_prune.reduction import Criterion

    criterion = getattr(schedule, "criterion", None)
    if not isinstance(criterion, Criterion):
        return None
    report = pruning_report(model, criterion, decision=getattr(schedule, "last_decision", None))
    logger.info("%s", report)
    if progress:  # below the progress bar, not through it
        from tqdm.auto import tqdm

        tqdm.write(str(report), file=sys.stderr)
    return report


def _attach_fitted_guide(model: PrunableNet, guide: Callable | None) -> None:
    """Remember the fitted guide on ``model`` (see :mod:`pyro_prune.inference.guides`).

    A guide whose noise posterior the reduction cannot read is still trained (its weights
    may be all the user wants), with a warning that the criteria will refuse it.
    """
    from pyro_prune.inference.guides import attach_guide, detach_guide

    if guide is None:
        detach_guide(model)
        return
    try:
        attach_guide(model, guide)
    except (TypeError, ValueError) as err:
        detach_guide(model)
        model.__dict__["_fitted_guide_error"] = str(err)
        warnings.warn(f"{err}; the pruning criteria cannot use this fit", RuntimeWarning, stacklevel=3)
    else:
        model.__dict__.pop("_fitted_guide_error", None)


def _rank_seed(seed: int, rank: int, epoch: int = 0) -> int:
    """The noise seed of rank ``rank > 0`` when ranks draw their own noise (rank 0 keeps ``seed``)."""
    return (seed * 1_000_003 + rank * 7919 + epoch * 104_729) % (2**63)


def _fingerprint(data: Any) -> str:
    """What a checkpoint remembers of a data set: the bytes of in-memory tensors, else its
    type and length (a data set read from files is not read twice to hash it)."""
    if isinstance(data, TensorDataset):
        return data_fingerprint(*data.tensors)
    return f"{type(data).__name__}:{dataset_length(data)}"


def _save_checkpoint(path: Path, *, model: PrunableNet, optimizer: torch.optim.Optimizer,
                     schedule: Any, history: list, epoch: int, step: int, config: dict,
                     generator: torch.Generator) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": CHECKPOINT_FORMAT,
        "model_class": type(model).__name__,
        "config": dict(config),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict() if schedule is not None else {},
        "history": history,
        "epoch": epoch,
        "step": step,
        "rng": {"torch": torch.get_rng_state(), "data": generator.get_state()},
    }
    save_torch(state, path)


#: settings a checkpoint must share with the run that resumes it (keys an older checkpoint
#: lacks are not compared)
_RESUME_KEYS = ("model", "batch_size", "lr", "seed", "engine", "num_data", "total_epochs",
                "epochs", "kl_scale", "schedule", "weight_decay", "noise_lr",
                "per_example_noise", "flush_denormal", "guide", "data", "val_data")


def _schedule_name(schedule: Any) -> str | None:
    """The schedule's settings as text (its ``repr`` when it defines one, else its class)."""
    if schedule is None:
        return None
    if type(schedule).__repr__ is object.__repr__:
        return type(schedule).__name__
    return repr(schedule)


def _guide_name(guide: Callable, custom: bool) -> str:
    if not custom:
        return "model.guide"
    return type(getattr(guide, "__self__", guide)).__name__


class DivergenceWarning(RuntimeWarning):
    """Training diverged to a huge but finite loss (see :func:`fit`)."""


#: an epoch loss this many times above the best epoch so far counts as diverged
DIVERGENCE_FACTOR = 1e3


def _warn_if_diverging(history: list[dict[str, Any]], chance: tuple[float, float] | None, *,
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
    import warnings

    warnings.warn(
        f"training diverged at epoch {row.get('epoch')}: loss {now:.3g} per example "
        f"(best epoch {best:.3g}){detail}; lower lr or noise_lr",
        DivergenceWarning, stacklevel=3,
    )


def load_checkpoint(path: str | os.PathLike, *, model: PrunableNet | None = None,
                    config: dict | None = None) -> dict[str, Any]:
    """Load a :func:`fit` checkpoint (``weights_only=True``) and, given ``model``, restore it.

    Raises:
        ValueError: the file is not a pyro_prune checkpoint, or it was written for another
            model class, other parameter shapes or other fit settings (named in the message).
    """
    path = Path(path)
    try:
        check_zip(path, "checkpoint")
        state = torch.load(path, map_location="cpu", weights_only=True)
    except CorruptOutputError as err:
        raise ValueError(f"cannot read checkpoint: {err}") from None
    except Exception as err:
        raise ValueError(f"cannot read checkpoint {path}: {err}") from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a pyro_prune fit checkpoint (format {CHECKPOINT_FORMAT})")
    if model is not None:
        if state["model_class"] != type(model).__name__:
            raise ValueError(
                f"checkpoint {path} is for a {state['model_class']}, not a {type(model).__name__}"
            )
        if config is not None:
            diffs = [f"{k}: checkpoint {state['config'].get(k)!r} vs now {config.get(k)!r}"
                     for k in _RESUME_KEYS
                     if k in state["config"] and state["config"].get(k) != config.get(k)]
            if diffs:
                raise ValueError(f"checkpoint {path} was written with other settings: " + "; ".join(diffs))
        own = model.state_dict()
        bad = [k for k, v in state["model"].items() if k not in own or own[k].shape != v.shape]
        missing = [k for k in own if k not in state["model"]]
        if bad or missing:
            raise ValueError(
                f"checkpoint {path} does not match the model: unexpected or reshaped "
                f"{bad[:5]}, missing {missing[:5]}"
            )
        model.load_state_dict(state["model"])
    return state
