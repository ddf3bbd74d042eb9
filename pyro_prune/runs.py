"""Runs of ``pyro-prune fit``: the settings, the networks and methods by name, running a fit.

:class:`RunConfig` holds every setting of a run; :data:`MODELS` and :data:`METHODS` are the
registries of the networks and pruning methods a run can use; :func:`run_fit` trains with
continuous pruning into a resumable run folder (:mod:`pyro_prune.run_folder`) and measures
the result (:mod:`pyro_prune.evaluation`); :func:`load_run` reads a finished run back and
:func:`export_run` writes its converted network in an :class:`~pyro_prune.export.ExportFormat`.
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from pyro_prune._checks import SEED_MAX, check_output_file
from pyro_prune._io import (
    RunLock,
    remove_stale_temporaries,
    save_torch,
)
from pyro_prune.evaluation import evaluate_fitted
from pyro_prune.export import EXPORTERS, ExportFormat
from pyro_prune.inference.fit import DEFAULT_NOISE_LR
from pyro_prune.inference.schedules import DEFAULT_EPOCHS, DEFAULT_KL_WARMUP_EPOCHS
from pyro_prune.run_folder import (
    CONFIG_FILE,
    CURVE_FILE,
    FINISHED_RUN_FILES,
    HISTORY_FILE,
    IDATA_FILE,
    LPD_FILE,
    METRICS_FILE,
    MODEL_FILE,
    PROG,
    UsageError,
    clear_run,
    load_state,
    one_line,
    read_json,
    run_folder_lock,
    versions,
    writable_dir,
    write_json,
)

__all__ = [
    "METHODS",
    "MODELS",
    "build_model",
    "DataShape",
    "export_run",
    "FitData",
    "load_data",
    "load_fit_data",
    "load_run",
    "LoadedRun",
    "MethodSpec",
    "ModelSpec",
    "parse_finetune_kl_scale",
    "parse_kl_scale",
    "resolve_device",
    "run_fit",
    "RunConfig",
    "RunResult",
]

@dataclass(frozen=True)
class DataShape:
    """What a model needs to know about the data: shapes and the task."""

    name: str
    input_shape: tuple[int, ...]
    output_dim: int
    task: str  # "classification" | "regression"

    @property
    def input_dim(self) -> int:
        return math.prod(self.input_shape)

    @property
    def likelihood(self) -> str:
        return "categorical" if self.task == "classification" else "gaussian"

    def image(self, model: str) -> tuple[int, int]:
        """``(channels, side)`` of square images, or a :class:`UsageError` naming ``model``."""
        shape = self.input_shape
        if len(shape) != 3 or shape[1] != shape[2]:
            raise UsageError(
                f"model {model!r} needs square images (C, H, H); data set {self.name!r} has "
                f"inputs of shape {shape}"
            )
        if self.task != "classification":
            raise UsageError(f"model {model!r} is a classifier; {self.name!r} is a regression set")
        return shape[0], shape[1]


@dataclass(frozen=True)
class ModelSpec:
    """A network the CLI can build for a data set."""

    name: str
    help: str
    build: Callable[[DataShape, dict[str, Any]], Any]
    takes_hidden: bool = False


def _build_mlp(data: DataShape, opts: dict[str, Any]) -> Any:
    from pyro_prune.models import MLP

    return MLP(data.input_dim, list(opts.get("hidden") or [100, 100]), data.output_dim,
               likelihood=data.likelihood, weights=opts["weights"], gate=opts["gate"])


def _build_lenet5(data: DataShape, opts: dict[str, Any]) -> Any:
    from pyro_prune.models import LeNet5

    channels, side = data.image("lenet5")
    return LeNet5(channels, data.output_dim, side, weights=opts["weights"], gate=opts["gate"])


def _build_resnet(data: DataShape, opts: dict[str, Any]) -> Any:
    from pyro_prune.models import ResNet

    channels, side = data.image("resnet")
    return ResNet(channels, data.output_dim, image_size=side, weights=opts["weights"], gate=opts["gate"])


def _build_vit(data: DataShape, opts: dict[str, Any]) -> Any:
    from pyro_prune.models import ViT

    channels, side = data.image("vit")
    patch = next((p for p in (7, 4, 2, 1) if side % p == 0 and side // p >= 2), 1)
    return ViT(side, patch, channels, data.output_dim, weights=opts["weights"], gate=opts["gate"])


#: ``--model`` names
MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("mlp", "MLP with a gate on every hidden neuron (widths: --hidden)", _build_mlp,
                  takes_hidden=True),
        ModelSpec("lenet5", "LeNet-5 with gates on conv channels and hidden neurons", _build_lenet5),
        ModelSpec("resnet", "small ResNet (16-32-64 channels) with gates after every BatchNorm",
                  _build_resnet),
        ModelSpec("vit", "small Vision Transformer with gates on heads and MLP units", _build_vit),
    )
}


@dataclass(frozen=True)
class MethodSpec:
    """A pruning method: a criterion applied after every epoch (or none)."""

    name: str
    criterion: str | None
    help: str
    weights: str = "point"
    gate: str = "noise"


def _build_methods() -> dict[str, MethodSpec]:
    """``none`` plus every registered criterion that decides removal on its own."""
    from pyro_prune.reduction import CRITERIA, CriterionInput

    methods = {"none": MethodSpec("none", None, "no pruning (the unpruned reference)")}
    for name, crit in CRITERIA.items():
        if not (crit.threshold_free or crit.default_threshold is not None):
            continue  # ranks only (l2, grad): needs a target compression
        if CriterionInput.GAUSSIAN_WEIGHTS in crit.needs:
            gate = "noise" if CriterionInput.NOISE_POSTERIOR in crit.needs else "mask"
            methods[name] = MethodSpec(name, name, crit.description, weights="gaussian", gate=gate)
        elif CriterionInput.NOISE_POSTERIOR in crit.needs:
            methods[name] = MethodSpec(name, name, crit.description)
    return methods


#: ``--method`` names
METHODS: dict[str, MethodSpec] = _build_methods()


@dataclass
class RunConfig:
    """Every setting of a ``fit`` run (stored in ``config.json``)."""

    model: str = "mlp"
    data: str = "digits"
    method: str = "bmrs"
    #: training epochs (with pruning after each); ``None``: :func:`default_epochs`, resolved
    #: once the data are loaded (``config.json`` stores the number)
    epochs: int | None = None
    finetune_epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-2
    #: learning rate of the noise posteriors (``None``: ``lr``); see :func:`fit`
    noise_lr: float | None = DEFAULT_NOISE_LR
    seed: int = 0
    kl_scale: str = "auto"
    #: the KL weight of the fine-tuning epochs: "elbo" (the untempered posterior of the
    #: reduced network), "paper", "auto", a number, or "train" (the training weight)
    finetune_kl_scale: str = "elbo"
    #: epochs over which the KL weight is warmed up from 1 (``ContinuousPruning(kl_warmup_epochs=...)``)
    kl_warmup_epochs: int = DEFAULT_KL_WARMUP_EPOCHS
    hidden: list[int] | None = None
    val_fraction: float = 0.2
    num_samples: int = 200
    curve_points: int = 0
    train_subset: int | None = None
    #: test examples for the InferenceData and the W2 check (``None``: the whole test set;
    #: for the user's own data sets :data:`USER_EVAL_EXAMPLES`)
    eval_examples: int | None = None
    #: where training runs: auto (CUDA when available), cpu or cuda (not a resume key: a
    #: run may continue on another device)
    device: str = "auto"

    #: settings that define the trained model; a run folder refuses to resume with others
    RESUME_KEYS = ("model", "data", "method", "epochs", "finetune_epochs", "batch_size", "lr",
                   "noise_lr", "seed", "kl_scale", "finetune_kl_scale", "kl_warmup_epochs", "hidden",
                   "val_fraction", "train_subset")
    #: what a run folder of an older release that lacks a resume key was made with
    RESUME_KEYS_OF_OLDER = {"kl_warmup_epochs": 0}

    def validate(self) -> None:
        if self.model not in MODELS:
            raise UsageError(f"unknown model {self.model!r}; choose from {', '.join(MODELS)}")
        if self.method not in METHODS:
            raise UsageError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        for key in ("epochs", "batch_size", "num_samples"):
            value = getattr(self, key)
            if key == "epochs" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"{key} must be a positive integer, got {value!r}")
        if self.noise_lr is not None and (isinstance(self.noise_lr, bool)
                                          or not isinstance(self.noise_lr, (int, float))
                                          or not 0 < self.noise_lr < float("inf")):
            raise UsageError(f"noise_lr must be a positive number, got {self.noise_lr!r}")
        if self.eval_examples is not None and (isinstance(self.eval_examples, bool) or
                                               not isinstance(self.eval_examples, int) or
                                               self.eval_examples < 1):
            raise UsageError(f"eval_examples must be a positive integer, got {self.eval_examples!r}")
        for key in ("finetune_epochs", "curve_points", "kl_warmup_epochs"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UsageError(f"{key} must be an integer >= 0, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= SEED_MAX:
            raise UsageError(f"seed must be an integer in 0..{SEED_MAX}, got {self.seed!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UsageError(f"lr must be a positive number, got {self.lr!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise UsageError(f"val_fraction must lie in [0, 1), got {self.val_fraction!r}")
        if self.hidden is not None and not MODELS[self.model].takes_hidden:
            raise UsageError(f"--hidden applies to --model mlp only, not {self.model!r}")
        parse_kl_scale(self.kl_scale)
        parse_finetune_kl_scale(self.finetune_kl_scale)
        from pyro_prune.inference.distributed import DeviceChoice

        if self.device not in {d.value for d in DeviceChoice}:
            raise UsageError(f"device must be one of {', '.join(d.value for d in DeviceChoice)}, "
                             f"got {self.device!r}")

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items()}


def parse_finetune_kl_scale(value: str) -> float | str | None:
    """``--finetune-kl-scale``: a KL weight as for ``--kl-scale``, or ``"train"`` (``None``:
    the fine-tuning epochs keep the training weight)."""
    if value == "train":
        return None
    try:
        return parse_kl_scale(value)
    except UsageError as err:
        raise UsageError(str(err).replace("kl-scale must be", "finetune-kl-scale must be 'train',")) from None


def parse_kl_scale(value: str) -> float | str:
    from pyro_prune.models import KLScale

    if value in {k.value for k in KLScale}:
        return value
    try:
        number = float(value)
    except ValueError:
        raise UsageError(
            f"kl-scale must be {', '.join(k.value for k in KLScale)} or a number >= 0, got {value!r}"
        ) from None
    if not (number >= 0 and math.isfinite(number)):
        raise UsageError(f"kl-scale must be a finite number >= 0, got {value!r}")
    return number


@dataclass
class FitData:
    """The data of a ``fit`` run: training and test sets, their shapes, and for the user's
    own data an optional validation set and the training set's size."""

    train: Any
    test: Any
    shape: DataShape
    val: Any = None
    num_data: int | None = None
    user: bool = False


def default_epochs(cfg: RunConfig, train: Any, shape: DataShape) -> tuple[int, str | None]:
    """The training epochs of a run whose ``cfg.epochs`` is ``None``, and, when they are more
    than :data:`DEFAULT_EPOCHS`, a line saying why (else ``None``).

    :data:`DEFAULT_EPOCHS`, or more on a small data set: enough epochs that the pruning
    epochs take :data:`PRUNING_STEPS_MARGIN` times the optimizer steps the noise posteriors
    need to widen to their prior (:func:`~pyro_prune.inference.schedules.pruning_steps_needed`
    of the run's model, 267 at the default ``noise_lr``). An epoch of ``train`` (the training
    set after the validation split) is ``ceil(len(train) / batch_size)`` steps (the batch is
    the global one under torchrun); a stream without a length keeps the default.
    """
    from pyro_prune.inference.batches import steps_per_epoch
    from pyro_prune.inference.schedules import default_epochs as pruning_epochs
    from pyro_prune.inference.schedules import default_epochs_note

    steps = steps_per_epoch(train, cfg.batch_size)
    if METHODS[cfg.method].criterion is None or steps is None:
        return DEFAULT_EPOCHS, None
    noise_lr = cfg.noise_lr if cfg.noise_lr is not None else cfg.lr
    epochs, needed = pruning_epochs(build_model(cfg, shape), steps, noise_lr)
    return epochs, default_epochs_note(epochs, steps, needed, noise_lr, batch_size=cfg.batch_size,
                                       choose="--epochs")


def load_data(name: str, *, root: str | None = None, train_subset: int | None = None,
              seed: int = 0) -> tuple[Any, Any, DataShape]:
    """``(train, test, shape)`` of a data set, or a :class:`UsageError` naming what is wrong."""
    data = load_fit_data(name, root=root, train_subset=train_subset, seed=seed)
    return data.train, data.test, data.shape


def load_fit_data(name: str, *, root: str | None = None, train_subset: int | None = None,
                  seed: int = 0) -> FitData:
    """The :class:`FitData` of ``--data name``: a named data set or the user's own
    (:mod:`pyro_prune.user_data`), or a :class:`UsageError` naming what is wrong."""
    from pyro_prune.data import load_dataset
    from pyro_prune.user_data import UserDataError, is_user_data, load_user_data, random_split_of

    if is_user_data(name):
        try:
            user = load_user_data(name)
        except UserDataError as err:
            raise UsageError(str(err)) from None
        shape = DataShape(user.name, user.input_shape, user.output_dim, user.task)
        subset: Any = user.train
        if train_subset is not None:
            from pyro_prune.inference.batches import dataset_length

            n = dataset_length(subset)
            if n is None or isinstance(subset, (DataLoader, IterableDataset)):
                raise UsageError(f"--train-subset needs a map-style training Dataset; data "
                                 f"{name!r} gives a {type(subset).__name__}")
            if train_subset < n:
                subset = (_stratified_subset(subset, train_subset, seed)
                          if isinstance(subset, TensorDataset) else
                          random_split_of(subset, train_subset / n, seed)[1])
        return FitData(subset, user.test, shape, val=user.val,
                       num_data=user.num_data if subset is user.train else None, user=True)
    train: Any
    try:
        train = load_dataset(name, "train", root=root)
        test = load_dataset(name, "test", root=root)
    except (ValueError, FileNotFoundError, TypeError, OSError) as err:
        raise UsageError(f"data set {name!r} not available: {one_line(err)}") from None
    if train_subset is not None and train_subset < len(train):
        train = _stratified_subset(train, train_subset, seed)
    info = train.info
    shape = DataShape(info.name, tuple(int(s) for s in info.input_shape), int(info.output_dim),
                      info.task.value)
    return FitData(train, test, shape)


def _stratified_subset(train: Any, examples: int, seed: int) -> Any:
    from pyro_prune.data import train_val_split

    return train_val_split(train, val_fraction=examples / len(train), seed=seed)[1]


def build_model(cfg: RunConfig, data: DataShape) -> Any:
    """The Pyro model of ``cfg`` for ``data`` (seeded by ``cfg.seed``)."""
    method = METHODS[cfg.method]
    torch.manual_seed(cfg.seed)
    opts = {"hidden": cfg.hidden, "weights": method.weights, "gate": method.gate}
    try:
        return MODELS[cfg.model].build(data, opts)
    except UsageError:
        raise
    except (ValueError, TypeError) as err:
        raise UsageError(f"cannot build model {cfg.model!r} for {data.name!r}: {one_line(err)}") from None


@dataclass
class RunResult:
    """What :func:`run_fit` produced (everything is also in the run folder)."""

    out: Path
    config: RunConfig
    model: Any
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
    idata: Any = None
    curves: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    #: pointwise test-set log predictive density of the pruned network (same points in
    #: every run of one configuration and seed: paired comparisons across runs)
    lpd_pointwise: Any = None


def _with_validation_split(cfg: RunConfig, data: FitData, say: Callable[[str], None]) -> FitData:
    """``data`` with ``cfg.val_fraction`` of its training set held out for validation (seeded),
    unless it brings its own validation set or cannot be split."""
    from pyro_prune.data import train_val_split
    from pyro_prune.user_data import random_split_of

    train, val = data.train, data.val
    if val is not None or cfg.val_fraction <= 0:
        return data
    if isinstance(train, TensorDataset):
        train, val = train_val_split(train, val_fraction=cfg.val_fraction, seed=cfg.seed)
    elif isinstance(train, (DataLoader, IterableDataset)):
        say(f"no validation set: a {type(train).__name__} cannot be split (give 'val' with "
            "the data, or --val-fraction 0)")
    else:
        train, val = random_split_of(train, cfg.val_fraction, cfg.seed)
    return replace(data, train=train, val=val)


def _check_existing(out: Path, cfg: RunConfig, restart: bool) -> None:
    path = out / CONFIG_FILE
    if restart:
        clear_run(out)
        return
    if not path.exists():
        return
    old = read_json(path).get("run", {})
    now = cfg.to_json()
    then = {k: old.get(k, RunConfig.RESUME_KEYS_OF_OLDER.get(k)) for k in RunConfig.RESUME_KEYS}
    diffs = [f"{k}: {then[k]!r} there vs {now[k]!r} now" for k in RunConfig.RESUME_KEYS
             if then[k] != now[k]]
    if diffs:
        raise UsageError(
            f"{out} holds a run with other settings ({'; '.join(diffs)}); use another --out "
            f"or --restart"
        )


def run_fit(cfg: RunConfig, out: str | os.PathLike, *, data_root: str | None = None,
            progress: bool = True, restart: bool = False, measure: bool = True,
            log: Callable[[str], None] | None = None) -> RunResult:
    """Train ``cfg`` with continuous pruning and write the run folder ``out`` (resumable).

    Steps: load the data (``val_fraction`` of the training set for validation), build the
    model, :func:`~pyro_prune.inference.fit` with
    :class:`~pyro_prune.inference.ContinuousPruning` (``none``: plain SVI for the same
    number of epochs), evaluate on the test set, convert to a deterministic network
    (:func:`~pyro_prune.convert.to_deterministic`), count parameters and MACs of it and of
    the unpruned network, time both (batch 256), compute the W2 shift of the posterior
    predictive caused by the removals (:func:`~pyro_prune.predictive.w2_shift`, removed
    structures restored as the reference), write the InferenceData and, with
    ``curve_points``, the accuracy-vs-compression curve of the method's criterion.
    """
    from pyro_prune.inference.distributed import broadcast_object, distributed_info

    cfg.validate()
    out = Path(out)
    t_start = time.perf_counter()
    device = resolve_device(cfg.device)
    ranks = distributed_info(device)  # under torchrun: join its process group (gloo / nccl)
    say = (log or (lambda msg: None)) if ranks.is_main else (lambda msg: None)
    data = _with_validation_split(cfg, load_fit_data(cfg.data, root=data_root, train_subset=cfg.train_subset,
                                                     seed=cfg.seed), say)
    if cfg.epochs is None:
        epochs, why = default_epochs(cfg, data.train, data.shape)
        cfg = replace(cfg, epochs=epochs)
        if why:
            say(why)
    if not ranks.is_main:  # rank 0 owns the run folder; the others train along
        problem = broadcast_object(None, ranks, device)
        if problem is not None:
            raise UsageError(problem)
        return _run_fit_locked(cfg, out, data, progress=False, measure=measure,
                               say=say, t_start=t_start, ranks=ranks, device=device)
    told = False  # whether the other ranks were told to go on
    try:
        writable_dir(out, "run folder")
        with RunLock(out, on_stale=lambda who: say(f"taking over the lock of a dead run ({who})")):
            remove_stale_temporaries(out)
            _check_existing(out, cfg, restart)
            broadcast_object(None, ranks, device)
            told = True
            return _run_fit_locked(cfg, out, data, progress=progress, measure=measure,
                                   say=say, t_start=t_start, ranks=ranks, device=device)
    except UsageError as err:
        if ranks.active and not told:
            broadcast_object(str(err), ranks, device)
        raise


def resolve_device(choice: str) -> torch.device:
    """The device of this process for ``--device choice`` (under torchrun: ``LOCAL_RANK``'s
    GPU), by :func:`~pyro_prune.inference.distributed.select_device`."""
    from pyro_prune.inference.distributed import select_device

    try:
        device, _ = select_device(choice, cuda_available=torch.cuda.is_available(),
                                  cuda_count=torch.cuda.device_count(),
                                  world_size=int(os.environ.get("WORLD_SIZE", "1") or 1),
                                  local_rank=int(os.environ.get("LOCAL_RANK", "0") or 0))
    except ValueError as err:
        raise UsageError(str(err)) from None
    return device


def _run_fit_locked(cfg: RunConfig, out: Path, data: FitData, *,
                    progress: bool, measure: bool, say: Callable[[str], None],
                    t_start: float, ranks: Any = None,
                    device: torch.device | None = None) -> RunResult:
    from pyro_prune.inference import ContinuousPruning, fit

    assert cfg.epochs is not None, "run_fit resolves the default epochs"
    train, test, shape, val = data.train, data.test, data.shape, data.val
    model = build_model(cfg, shape)
    method = METHODS[cfg.method]
    if all((out / name).exists() for name in FINISHED_RUN_FILES):
        try:
            finished = _finished_run(cfg, out, model)
        except Exception as err:  # damaged since: rebuild the outputs from the checkpoint
            say(f"{out} holds this run, but {one_line(err)[:200]}; rebuilding its outputs")
            model = build_model(cfg, shape)
        else:
            say(f"{out} holds this run, finished: reading it back (--restart to run it again)")
            return finished
    if method.criterion is None:
        schedule, epochs = None, cfg.epochs + cfg.finetune_epochs
    else:
        schedule = ContinuousPruning(method.criterion, every=1, finetune_epochs=cfg.finetune_epochs,
                                     finetune_kl_scale=parse_finetune_kl_scale(cfg.finetune_kl_scale),
                                     kl_warmup_epochs=cfg.kl_warmup_epochs)
        epochs = cfg.epochs
    device = device if device is not None else torch.device("cpu")
    model.to(device)
    main = ranks is None or ranks.is_main
    if main:
        write_json(out / CONFIG_FILE, {
            "run": cfg.to_json(), "data": asdict(shape), "model_config": getattr(model, "config", {}),
            "model_class": type(model).__name__, "versions": versions(),
            "command": " ".join([PROG, *sys.argv[1:]]) if sys.argv and PROG in sys.argv[0] else None,
            # how the run was made: processes (torchrun) and their communication backend
            "world_size": ranks.world_size if ranks is not None else 1,
            "backend": ranks.backend if ranks is not None else None,
            "device": str(device),
        })
    say(f"fit {cfg.model} on {cfg.data} with {cfg.method} ({epochs} + "
        f"{cfg.finetune_epochs if schedule else 0} epochs) -> {out}")
    from pyro_prune.inference.fit import DivergenceWarning
    from pyro_prune.inference.schedules import PruningStepsWarning

    caught: list[warnings.WarningMessage] = []

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: Any = None, line: str | None = None) -> None:
        if issubclass(category, PruningStepsWarning):  # one line, at once: before training
            say(f"warning: {message}; on the command line: --epochs, --batch-size, --noise-lr")
        else:
            caught.append(warnings.WarningMessage(message, category, filename, lineno, file, line))

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", DivergenceWarning)
            warnings.simplefilter("always", PruningStepsWarning)
            warnings.showwarning = show
            result = fit(model, train, epochs=epochs, batch_size=cfg.batch_size, lr=cfg.lr, val=val,
                         schedule=schedule, seed=cfg.seed, checkpoint_dir=out, progress=progress,
                         kl_scale=parse_kl_scale(cfg.kl_scale), noise_lr=cfg.noise_lr,
                         num_data=data.num_data)
        for w in caught:  # a diverged run is said in one line; other warnings go on as usual
            if issubclass(w.category, DivergenceWarning):
                say(f"warning: {w.message}")
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    except ValueError as err:
        if "checkpoint" in str(err):
            raise UsageError(f"{one_line(err)}; use --restart to start over") from None
        raise
    except FloatingPointError as err:  # diverged: the message names epoch, step and lr
        raise UsageError(f"training diverged: {one_line(err)} (--lr / --noise-lr)") from None
    if not main:  # rank 0 evaluates, converts and writes the run folder
        return RunResult(out=out, config=cfg, model=model, history=result.history, metrics={})
    model.cpu()  # the evaluation after training runs on the CPU
    # the one-line pruning report: fit writes it below its progress bar, the CLI ends with it
    save_torch(model.state_dict(), out / MODEL_FILE)
    write_json(out / HISTORY_FILE, result.history)

    metrics, idata, curves, lpd = evaluate_fitted(
        cfg, out, model, result, train, test, criterion=method.criterion, user_data=data.user,
        num_data=data.num_data, measure=measure, progress=progress, say=say)
    metrics["total_time_s"] = time.perf_counter() - t_start
    write_json(out / METRICS_FILE, metrics)
    return RunResult(out=out, config=cfg, model=model, history=result.history, metrics=metrics,
                     idata=idata, curves=curves, lpd_pointwise=lpd)


def _finished_run(cfg: RunConfig, out: Path, model: Any) -> RunResult:
    """The :class:`RunResult` of a finished run folder, read back (nothing recomputed)."""
    from pyro_prune import inspect as pa

    model.load_state_dict(load_state(out / MODEL_FILE, model))
    model.eval()
    curves = read_json(out / CURVE_FILE) if (out / CURVE_FILE).exists() else {}
    lpd = torch.tensor(read_json(out / LPD_FILE), dtype=torch.float64) if (out / LPD_FILE).exists() else None
    return RunResult(out=out, config=cfg, model=model, history=read_json(out / HISTORY_FILE),
                     metrics=read_json(out / METRICS_FILE), idata=pa.load(out / IDATA_FILE),
                     curves=curves, lpd_pointwise=lpd)


@dataclass
class LoadedRun:
    """A run folder read back: its settings, the Pyro model and what was measured."""

    out: Path
    config: RunConfig
    shape: DataShape
    model: Any
    history: list[dict[str, Any]]
    metrics: dict[str, Any]


def load_run(out: str | os.PathLike) -> LoadedRun:
    """Read a run folder written by :func:`run_fit` (the model with its final weights)."""
    out = Path(out)
    if not out.is_dir():
        raise UsageError(f"run folder {str(out)!r} does not exist")
    raw = read_json(out / CONFIG_FILE)
    try:
        fields = {k: v for k, v in raw["run"].items() if k in RunConfig.__dataclass_fields__}
        cfg = RunConfig(**fields)
        shape = DataShape(**{**raw["data"], "input_shape": tuple(raw["data"]["input_shape"])})
    except (KeyError, TypeError) as err:
        raise UsageError(f"{out / CONFIG_FILE} is not a pyro-prune run config: {err}") from None
    cfg.validate()
    model = build_model(cfg, shape)
    path = out / MODEL_FILE
    if not path.exists():
        raise UsageError(f"{path} not found: the run in {out} has not finished (run fit again)")
    model.load_state_dict(load_state(path, model))
    model.eval()
    history = read_json(out / HISTORY_FILE)
    metrics = read_json(out / METRICS_FILE) if (out / METRICS_FILE).exists() else {}
    return LoadedRun(out=out, config=cfg, shape=shape, model=model, history=history, metrics=metrics)


def export_run(out: str | os.PathLike, fmt: ExportFormat | str, output: str | os.PathLike | None = None) -> Path:
    """Convert the run's model and write it in ``fmt``; returns the file written."""
    from pyro_prune.convert import to_deterministic

    try:
        fmt = ExportFormat(fmt)
    except ValueError:
        raise UsageError(
            f"unknown format {fmt!r}; choose from {', '.join(f.value for f in ExportFormat)}") from None
    writer, suffix = EXPORTERS[fmt]
    if output is None and Path(out).is_dir():
        writable_dir(Path(out), "run folder")
    if output is not None:
        try:
            check_output_file(output, "--output")
        except ValueError as err:
            raise UsageError(str(err)) from None
    with run_folder_lock(out):
        run = load_run(out)
        converted = to_deterministic(run.model)
        example = torch.zeros(2, *run.shape.input_shape)
        path = Path(output) if output is not None else run.out / "export" / f"model{suffix}"
        writable_dir(path.parent, "export folder")
        return writer(converted, example, path)
