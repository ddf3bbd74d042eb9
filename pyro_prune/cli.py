"""The ``pyro-prune`` command (also ``python -m pyro_prune``).

    pyro-prune fit --model mlp --data digits --epochs 20 --out runs/mlp
    pyro-prune fit --model lenet5 --data mypkg.mydata:make_datasets --device auto
    pyro-prune report runs/mlp
    pyro-prune export runs/mlp --format onnx
    pyro-prune demo

``fit`` trains with continuous pruning (Wright, Igel & Selvan, NeurIPS 2024, Algorithm 1)
and writes a *run folder*:

=============================  ===============================================================
``config.json``                every setting, the data set's shapes and library versions
``history.json``               one row per epoch (loss, accuracy, kept structures, compression)
``checkpoint.pt``              the resumable training state: running the same command again
                               continues where it stopped (``--restart`` starts over)
``model.pt``                   the Pyro model's ``state_dict`` (variational parameters, masks)
``converted_state_dict.pt``    the smaller deterministic network's ``state_dict``
``converted.pt2``              the same network as a ``torch.export`` program, batch size free
                               (``torch.export.load(path).module()``; no pyro_prune needed)
``posterior.nc``               the ArviZ InferenceData (netCDF; :mod:`pyro_prune.arviz`), with
                               the log likelihood of training data (for PSIS-LOO)
``calibration.json``           reliability bins and ECE, removed structures restored and pruned
``test_lpd.json``              pointwise test-set log predictive density of the pruned network
``metrics.json``               test accuracy, compression, MACs, latency, test-set log
                               predictive density (pruned, restored, paired difference and
                               SE), PSIS-LOO on training data, W2 shift, ECE, the pruning
                               report; written last: a run folder that has it is finished, and
                               running the same command again only reads it back
=============================  ===============================================================

``report`` writes ``report.md`` with tables and PNG figures into the run folder; ``export``
writes the converted network as a ``torch.export`` program (the default), a state dict,
ONNX, or TorchScript (deprecated in current torch, kept for older deployments).

``--data`` is a named data set or the user's own data: ``module:function`` returning
``(train, test)`` Datasets or DataLoaders, or a tensor file (:mod:`pyro_prune.user_data`).
``--device`` chooses where training runs (under ``torchrun`` on CUDA: ``cuda:LOCAL_RANK``
and NCCL; :func:`~pyro_prune.inference.distributed.select_device`).

Every bad argument (unknown model or method, a data set that cannot be found, epochs <= 0,
a run folder that does not exist, a damaged ``model.pt``, a diverging run, ...) ends with exit
code 2 and one line naming the problem. A run folder is locked while a command works in it
(a second ``fit`` on it is refused, naming the holder), and every file is written under a
temporary name and renamed, so a killed run never leaves a truncated file (see
``docs/reliability.md``).
Models, methods and export formats are registries (:data:`MODELS`, :data:`METHODS`,
:data:`EXPORTERS`).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import enum
import json
import math
import os
import platform
import re
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from pyro_prune._checks import SEED_MAX, check_output_dir, check_output_file
from pyro_prune._io import (
    CorruptOutputError,
    FolderLockedError,
    RunLock,
    atomic_path,
    atomic_write_text,
    check_zip,
    remove_stale_temporaries,
    save_torch,
)
from pyro_prune.inference.fit import DEFAULT_NOISE_LR

__all__ = [
    "EXPORTERS",
    "METHODS",
    "MODELS",
    "DataShape",
    "ExportFormat",
    "MethodSpec",
    "ModelSpec",
    "RunConfig",
    "RunResult",
    "UsageError",
    "build_parser",
    "export_run",
    "load_run",
    "main",
    "run_fit",
    "write_report",
]

PROG = "pyro-prune"
EXIT_USAGE = 2

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.json"
METRICS_FILE = "metrics.json"
MODEL_FILE = "model.pt"
CONVERTED_STATE_FILE = "converted_state_dict.pt"
EXPORTED_PROGRAM_FILE = "converted.pt2"
IDATA_FILE = "posterior.nc"
CURVE_FILE = "curve.json"
CALIBRATION_FILE = "calibration.json"
LPD_FILE = "test_lpd.json"  # pointwise test-set log predictive density of the pruned network
REPORT_FILE = "report.md"
FIGURES_DIR = "figures"
CHECKPOINT_FILE = "checkpoint.pt"  # written by pyro_prune.inference.fit


class UsageError(Exception):
    """A bad argument or input: reported as one line, exit code 2."""


# ============================================================================ registries
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


# ============================================================================ run config
@dataclass
class RunConfig:
    """Every setting of a ``fit`` run (stored in ``config.json``)."""

    model: str = "mlp"
    data: str = "digits"
    method: str = "bmrs"
    epochs: int = 20
    finetune_epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-2
    #: learning rate of the noise posteriors (``None``: ``lr``); see :func:`fit`
    noise_lr: float | None = DEFAULT_NOISE_LR
    seed: int = 0
    kl_scale: str = "auto"
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
                   "noise_lr", "seed", "kl_scale", "hidden", "val_fraction", "train_subset")

    def validate(self) -> None:
        if self.model not in MODELS:
            raise UsageError(f"unknown model {self.model!r}; choose from {', '.join(MODELS)}")
        if self.method not in METHODS:
            raise UsageError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        for key in ("epochs", "batch_size", "num_samples"):
            value = getattr(self, key)
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
        for key in ("finetune_epochs", "curve_points"):
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
        _parse_kl_scale(self.kl_scale)
        from pyro_prune.inference.distributed import DeviceChoice

        if self.device not in {d.value for d in DeviceChoice}:
            raise UsageError(f"device must be one of {', '.join(d.value for d in DeviceChoice)}, "
                             f"got {self.device!r}")

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items()}


def _parse_kl_scale(value: str) -> float | str:
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


def _versions() -> dict[str, str]:
    import arviz
    import numpy
    import pyro

    import pyro_prune

    return {"pyro_prune": pyro_prune.__version__, "torch": torch.__version__,
            "pyro": pyro.__version__, "arviz": arviz.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}


def _finite(value: Any) -> Any:
    """JSON has no inf/nan: store them as the strings ``"inf"``, ``"-inf"``, ``"nan"``."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _write_json(path: Path, payload: Any) -> None:
    atomic_write_text(path, json.dumps(_finite(payload), indent=2, default=_json_default,
                                       allow_nan=False) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.tolist()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path} not found: is {path.parent} a pyro-prune run folder?") from None
    except json.JSONDecodeError as err:
        raise UsageError(f"{path} is not valid JSON: {err}") from None


# ============================================================================ data and models
#: examples of a user's data set (not in memory as tensors) that the evaluation after training
#: collects for the W2 check, calibration, test-set lpd and the InferenceData, when
#: ``--eval-examples`` is not given (accuracy always uses the whole test set)
USER_EVAL_EXAMPLES = 1000


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
        raise UsageError(f"data set {name!r} not available: {_one_line(err)}") from None
    if train_subset is not None and train_subset < len(train):
        train = _stratified_subset(train, train_subset, seed)
    info = train.info
    shape = DataShape(info.name, tuple(int(s) for s in info.input_shape), int(info.output_dim),
                      info.task.value)
    return FitData(train, test, shape)


def _stratified_subset(train: Any, examples: int, seed: int) -> Any:
    from pyro_prune.data import train_val_split

    return train_val_split(train, val_fraction=examples / len(train), seed=seed)[1]


def _one_line(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    return " ".join(text.split())


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
        raise UsageError(f"cannot build model {cfg.model!r} for {data.name!r}: {_one_line(err)}") from None


@contextlib.contextmanager
def all_kept(model: Any) -> Iterator[dict[str, Tensor]]:
    """Temporarily restore every removed structure; yields the kept masks to return to."""
    gates = model.gates()
    saved = {name: g.kept.clone() for name, g in gates.items()}
    try:
        for g in gates.values():
            g.kept.fill_(True)
        yield saved
    finally:
        for name, kept in saved.items():
            gates[name].kept.copy_(kept)


def interleaved_timings(modules: Sequence[nn.Module], x: Tensor, *, repeats: int = 21,
                        min_time_s: float = 1.0, warmup: int = 5,
                        min_warmup_s: float = 0.2) -> list[list[float]]:
    """Wall times (seconds) of ``m(x)`` for each module, in eval mode, one list per module.

    Each module is warmed up (at least ``warmup`` calls and ``min_warmup_s`` seconds), then
    the modules are timed interleaved, one call of each per round, the order of the calls
    reversed every other round, for at least ``repeats`` rounds and ``min_time_s`` seconds:
    a change in the load of the machine, or a cache warmed by the module before, affects all
    of them alike. Round ``r`` of every list was measured at the same time.
    """
    for m in modules:
        m.eval()
    times: list[list[float]] = [[] for _ in modules]
    order = list(range(len(modules)))
    with torch.inference_mode():
        for m in modules:
            t0, calls = time.perf_counter(), 0
            while calls < warmup or time.perf_counter() - t0 < min_warmup_s:
                m(x)
                calls += 1
        start, r = time.perf_counter(), 0
        while r < repeats or time.perf_counter() - start < min_time_s:
            for i in (order if r % 2 == 0 else order[::-1]):
                t0 = time.perf_counter()
                modules[i](x)
                times[i].append(time.perf_counter() - t0)
            r += 1
    return times


def median_latencies(modules: Sequence[nn.Module], x: Tensor, **options: Any) -> list[float]:
    """Median wall time (seconds) of ``m(x)`` for each module (:func:`interleaved_timings`)."""
    return [statistics.median(t) for t in interleaved_timings(modules, x, **options)]


def paired_speedup(reference: Sequence[float], other: Sequence[float]) -> float:
    """The median over rounds of ``reference / other`` of times measured side by side: a
    round slowed down by the machine slows both, so the ratio of equal networks stays ~1."""
    if len(reference) != len(other) or not reference:
        raise ValueError("reference and other must be non-empty timings of the same rounds")
    return statistics.median(r / o for r, o in zip(reference, other))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the warnings of torch.export, torch.jit and the ONNX exporters."""
    with warnings.catch_warnings():
        for category in (DeprecationWarning, FutureWarning, UserWarning):
            warnings.simplefilter("ignore", category)
        yield


# ============================================================================ export
class ExportFormat(enum.Enum):
    """``--format`` of ``pyro-prune export``."""

    EXPORTED_PROGRAM = "exported-program"
    STATE_DICT = "state-dict"
    ONNX = "onnx"
    TORCHSCRIPT = "torchscript"


def _export_program(module: nn.Module, example: Tensor, path: Path) -> Path:
    """``torch.export`` with a free batch dimension, saved with ``torch.export.save`` (.pt2)."""
    batch = torch.export.Dim("batch", min=1)
    if example.shape[0] < 2:  # a batch of 1 would be specialised into the program
        example = example[:1].expand(2, *example.shape[1:])
    with _quiet():
        program = torch.export.export(module.eval(), (example,), dynamic_shapes=({0: batch},))
        with atomic_path(path) as tmp:
            torch.export.save(program, str(tmp))
    return path


def _export_torchscript(module: nn.Module, example: Tensor, path: Path) -> Path:
    with _quiet():
        try:
            scripted = torch.jit.script(module)
        except Exception:  # scripting is picky about some generated code; tracing is exact here
            scripted = torch.jit.trace(module, example)
        with atomic_path(path) as tmp:
            scripted.save(str(tmp))
    return path


def _export_state_dict(module: nn.Module, example: Tensor, path: Path) -> Path:
    save_torch(module.state_dict(), path)
    return path





def _export_onnx(module: nn.Module, example: Tensor, path: Path) -> Path:
    import importlib.util

    if importlib.util.find_spec("onnx") is None:
        raise UsageError("exporting to ONNX needs the 'onnx' package: pip install 'pyro_prune[onnx]'")
    # the torch.export-based exporter needs onnxscript; the TorchScript-based one nothing more
    dynamo = importlib.util.find_spec("onnxscript") is not None
    with _quiet(), atomic_path(path) as tmp:
        torch.onnx.export(module, (example,), str(tmp), dynamo=dynamo,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    return path


#: format -> (writer, file suffix)
EXPORTERS: dict[ExportFormat, tuple[Callable[[nn.Module, Tensor, Path], Path], str]] = {
    ExportFormat.EXPORTED_PROGRAM: (_export_program, ".pt2"),
    ExportFormat.STATE_DICT: (_export_state_dict, ".state_dict.pt"),
    ExportFormat.ONNX: (_export_onnx, ".onnx"),
    ExportFormat.TORCHSCRIPT: (_export_torchscript, ".torchscript.pt"),
}


# ============================================================================ fit
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


#: every file and folder a run writes, in the order a restart deletes them: the result that
#: marks a finished run first, the settings last, so an interrupted restart leaves the old
#: settings beside part of the old outputs (a rerun deletes the rest), never old outputs
#: beside new settings
RUN_OUTPUTS = (METRICS_FILE, CHECKPOINT_FILE, MODEL_FILE, CONVERTED_STATE_FILE,
               EXPORTED_PROGRAM_FILE, IDATA_FILE, CURVE_FILE, CALIBRATION_FILE, REPORT_FILE,
               FIGURES_DIR, "export",
               HISTORY_FILE, CONFIG_FILE)


def _clear_run(out: Path) -> None:
    import shutil

    for name in RUN_OUTPUTS:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _check_existing(out: Path, cfg: RunConfig, restart: bool) -> None:
    path = out / CONFIG_FILE
    if restart:
        _clear_run(out)
        return
    if not path.exists():
        return
    old = _read_json(path).get("run", {})
    now = cfg.to_json()
    diffs = [f"{k}: {old.get(k)!r} there vs {now[k]!r} now" for k in RunConfig.RESUME_KEYS
             if old.get(k) != now[k]]
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
    data = load_fit_data(cfg.data, root=data_root, train_subset=cfg.train_subset, seed=cfg.seed)
    if not ranks.is_main:  # rank 0 owns the run folder; the others train along
        problem = broadcast_object(None, ranks, device)
        if problem is not None:
            raise UsageError(problem)
        return _run_fit_locked(cfg, out, data, progress=False, measure=measure,
                               say=say, t_start=t_start, ranks=ranks, device=device)
    told = False  # whether the other ranks were told to go on
    try:
        _writable_dir(out, "run folder")
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


def _writable_dir(path: Path, what: str) -> Path:
    try:
        return check_output_dir(path, what)
    except ValueError as err:
        raise UsageError(str(err)) from None


def _run_fit_locked(cfg: RunConfig, out: Path, data: FitData, *,
                    progress: bool, measure: bool, say: Callable[[str], None],
                    t_start: float, ranks: Any = None,
                    device: torch.device | None = None) -> RunResult:
    from pyro_prune import arviz as pa
    from pyro_prune.convert import compression, count_macs, count_params, to_deterministic
    from pyro_prune.data import train_val_split
    from pyro_prune.inference import ContinuousPruning, evaluate, fit
    from pyro_prune.predictive import compare_lpd, log_predictive_density, w2_shift
    from pyro_prune.user_data import random_split_of, to_tensors

    train, test, shape, val = data.train, data.test, data.shape, data.val
    if val is None and cfg.val_fraction > 0:
        if isinstance(train, TensorDataset):
            train, val = train_val_split(train, val_fraction=cfg.val_fraction, seed=cfg.seed)
        elif isinstance(train, (DataLoader, IterableDataset)):
            say(f"no validation set: a {type(train).__name__} cannot be split (give 'val' with "
                "the data, or --val-fraction 0)")
        else:
            train, val = random_split_of(train, cfg.val_fraction, cfg.seed)
    model = build_model(cfg, shape)
    method = METHODS[cfg.method]
    if all((out / name).exists() for name in FINISHED_RUN_FILES):
        try:
            finished = _finished_run(cfg, out, model)
        except Exception as err:  # damaged since: rebuild the outputs from the checkpoint
            say(f"{out} holds this run, but {_one_line(err)[:200]}; rebuilding its outputs")
            model = build_model(cfg, shape)
        else:
            say(f"{out} holds this run, finished: reading it back (--restart to run it again)")
            return finished
    if method.criterion is None:
        schedule, epochs = None, cfg.epochs + cfg.finetune_epochs
    else:
        schedule = ContinuousPruning(method.criterion, every=1, finetune_epochs=cfg.finetune_epochs)
        epochs = cfg.epochs
    device = device if device is not None else torch.device("cpu")
    model.to(device)
    main = ranks is None or ranks.is_main
    if main:
        _write_json(out / CONFIG_FILE, {
            "run": cfg.to_json(), "data": asdict(shape), "model_config": getattr(model, "config", {}),
            "model_class": type(model).__name__, "versions": _versions(),
            "command": " ".join([PROG, *sys.argv[1:]]) if sys.argv and PROG in sys.argv[0] else None,
            # how the run was made: processes (torchrun) and their communication backend
            "world_size": ranks.world_size if ranks is not None else 1,
            "backend": ranks.backend if ranks is not None else None,
            "device": str(device),
        })
    say(f"fit {cfg.model} on {cfg.data} with {cfg.method} ({epochs} + "
        f"{cfg.finetune_epochs if schedule else 0} epochs) -> {out}")
    from pyro_prune.inference.fit import DivergenceWarning

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DivergenceWarning)
            result = fit(model, train, epochs=epochs, batch_size=cfg.batch_size, lr=cfg.lr, val=val,
                         schedule=schedule, seed=cfg.seed, checkpoint_dir=out, progress=progress,
                         kl_scale=_parse_kl_scale(cfg.kl_scale), noise_lr=cfg.noise_lr,
                         num_data=data.num_data)
        for w in caught:  # a diverged run is said in one line; other warnings go on as usual
            if issubclass(w.category, DivergenceWarning):
                say(f"warning: {w.message}")
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    except ValueError as err:
        if "checkpoint" in str(err):
            raise UsageError(f"{_one_line(err)}; use --restart to start over") from None
        raise
    except FloatingPointError as err:  # diverged: the message names epoch, step and lr
        raise UsageError(f"training diverged: {_one_line(err)} (--lr / --noise-lr)") from None
    if not main:  # rank 0 evaluates, converts and writes the run folder
        return RunResult(out=out, config=cfg, model=model, history=result.history, metrics={})
    model.cpu()  # the evaluation after training runs on the CPU
    if result.report is not None:
        say(str(result.report))
    fit_time = sum(float(r.get("epoch_time_s", 0.0)) for r in result.history)
    save_torch(model.state_dict(), out / MODEL_FILE)
    _write_json(out / HISTORY_FILE, result.history)

    stages = ["evaluate on the test set", "convert and count", "latency (batch 256)",
              "W2 shift of the predictive", "calibration", "test-set log predictive density",
              "posterior draws for ArviZ", "PSIS-LOO",
              "accuracy-vs-compression curve"]
    if not measure:
        stages.remove("latency (batch 256)")
    if cfg.curve_points <= 0:
        stages.remove("accuracy-vs-compression curve")
    t_eval = time.perf_counter()

    def stage(name: str) -> None:
        say(f"[{stages.index(name) + 1}/{len(stages)}] {name} "
            f"({time.perf_counter() - t_eval:.0f} s into the evaluation)")

    stage("evaluate on the test set")
    test_metrics = evaluate(model, test)
    # the checks below need tensors: a user's data set gives a sample (USER_EVAL_EXAMPLES)
    eval_limit = cfg.eval_examples or USER_EVAL_EXAMPLES
    test_t = test if isinstance(test, TensorDataset) else to_tensors(test, eval_limit, seed=cfg.seed)
    train_t = (train if isinstance(train, TensorDataset) or not data.user
               else to_tensors(train, eval_limit, seed=cfg.seed))
    stage("convert and count")
    converted = to_deterministic(model)
    save_torch(converted.state_dict(), out / CONVERTED_STATE_FILE)
    example = test_t.tensors[0][:2]
    _export_program(converted, example, out / EXPORTED_PROGRAM_FILE)
    input_shape = tuple(test_t.tensors[0].shape[1:])
    with all_kept(model) as kept_masks:
        full_net = to_deterministic(model)
    metrics: dict[str, Any] = {
        "method": cfg.method, "model": cfg.model, "data": cfg.data,
        **{f"test_{k}": v for k, v in test_metrics.items()},
        "compression": compression(model),
        "params_full": count_params(full_net), "params_pruned": count_params(converted),
        "macs_full": count_macs(full_net, input_shape), "macs_pruned": count_macs(converted, input_shape),
        "kept": model.kept_counts(),
        "structures": {n: g.num_structures for n, g in model.gates().items()},
        "epochs_run": len(result.history), "fit_time_s": fit_time,
        "pruning_report": str(result.report) if result.report is not None else None,
    }
    if measure:
        stage("latency (batch 256)")
        batch = test_t.tensors[0][:256]
        if len(batch) < 256:
            batch = batch.repeat(math.ceil(256 / len(batch)), *([1] * (batch.dim() - 1)))[:256]
        full_t, pruned_t = interleaved_timings([full_net, converted], batch)
        metrics["latency_full_ms"] = 1e3 * statistics.median(full_t)
        metrics["latency_pruned_ms"] = 1e3 * statistics.median(pruned_t)
        metrics["speedup"] = paired_speedup(full_t, pruned_t)
        metrics["latency_rounds"] = len(full_t)

    stage("W2 shift of the predictive")
    held = _subset(test_t, cfg.eval_examples, cfg.seed)
    with all_kept(model):
        shift = w2_shift(model, None, kept_masks, held.tensors[0][:512], seed=cfg.seed)
    metrics.update(w2=shift.w2, w2_empty=shift.w2_empty, w2_normalized=shift.normalized)
    stage("calibration")
    calibrations = _calibrations(model, held, seed=cfg.seed)
    if calibrations:
        _write_json(out / CALIBRATION_FILE, calibrations)
        metrics.update({f"ece_{k}": v["ece"] for k, v in calibrations.items()})
    # the uncertainty cost on new data: test-set log predictive density of the pruned network
    # and of the same network with every structure restored, paired over the test points
    stage("test-set log predictive density")
    lpd = log_predictive_density(model, held, draws=cfg.num_samples, seed=cfg.seed)
    with all_kept(model):
        lpd_full = log_predictive_density(model, held, draws=cfg.num_samples, seed=cfg.seed)
    cmp = compare_lpd(lpd, lpd_full)
    _write_json(out / LPD_FILE, lpd.tolist())
    metrics.update(test_lpd=cmp.pruned, test_lpd_mean=cmp.pruned_mean, test_lpd_full=cmp.full,
                   test_lpd_full_mean=cmp.full_mean, test_lpd_diff=cmp.difference,
                   test_lpd_diff_se=cmp.se, test_lpd_n=cmp.n)
    stage("posterior draws for ArviZ")
    settings = {"method": cfg.method, "criterion": method.criterion, "epochs": cfg.epochs, "finetune_epochs": cfg.finetune_epochs,
                "kl_scale": cfg.kl_scale, "lr": cfg.lr, "batch_size": cfg.batch_size,
                "data": cfg.data, "compression": metrics["compression"]}
    # PSIS-LOO estimates the predictive density of new data from the training data: it
    # belongs on the training set (on test data it answers no question); its Pareto k say
    # where the importance weights cannot be trusted
    idata = pa.to_inference_data(model, data=_subset(train_t, cfg.eval_examples, cfg.seed),
                                 num_samples=cfg.num_samples, seed=cfg.seed,
                                 progress=progress, settings=settings)
    pa.save(idata, out / IDATA_FILE)
    stage("PSIS-LOO")
    elpd = pa.loo(idata)
    metrics.update(elpd_loo=elpd.elpd, elpd_loo_se=elpd.se, p_loo=elpd.p,
                   pareto_k_max=elpd.pareto_k_max, pareto_k_bad=elpd.pareto_k_bad, loo_n=elpd.n)

    curves: dict[str, list[dict[str, Any]]] = {}
    if cfg.curve_points > 0:
        stage("accuracy-vs-compression curve")
        from pyro_prune.inference.distributed import single_process

        with single_process():  # rank 0 alone fine-tunes the curves' copies
            curves = accuracy_curves(model, train, test, [method.criterion or "bmrs_n"],
                                     points=cfg.curve_points, batch_size=cfg.batch_size, lr=cfg.lr,
                                     seed=cfg.seed, progress=progress, num_data=data.num_data)
        _write_json(out / CURVE_FILE, curves)
    metrics["total_time_s"] = time.perf_counter() - t_start
    _write_json(out / METRICS_FILE, metrics)
    return RunResult(out=out, config=cfg, model=model, history=result.history, metrics=metrics,
                     idata=idata, curves=curves, lpd_pointwise=lpd)


def _subset(data: Any, examples: int | None, seed: int) -> Any:
    """``examples`` points of ``data`` (a stratified, seeded split), or all of it."""
    from pyro_prune.data import train_val_split

    if examples is not None and examples < len(data):
        return train_val_split(data, val_fraction=examples / len(data), seed=seed)[1]
    return data


#: posterior draws of the calibration check
CALIBRATION_DRAWS = 32


def _calibrations(model: Any, held: Any, *, seed: int) -> dict[str, dict[str, Any]]:
    """Reliability bins and ECE of the posterior predictive on ``held``, with the removed
    structures restored (``restored``) and as pruned (``pruned``); empty for regression."""
    from pyro_prune.calibration import calibration
    from pyro_prune.models.base import Likelihood
    from pyro_prune.predictive import posterior_predictive

    if model.likelihood is not Likelihood.CATEGORICAL:
        return {}
    x, y = held.tensors
    out = {}
    for name, restore in (("restored", True), ("pruned", False)):
        with all_kept(model) if restore else contextlib.nullcontext():
            probs = posterior_predictive(model, x, draws=CALIBRATION_DRAWS, method="fast",
                                         output="probs", seed=seed).mean(0)
        out[name] = calibration(probs, y).to_json()
    return out


#: a run folder with all of these is finished (``metrics.json`` is written last)
FINISHED_RUN_FILES = (METRICS_FILE, MODEL_FILE, IDATA_FILE, HISTORY_FILE, CONVERTED_STATE_FILE,
                      EXPORTED_PROGRAM_FILE)


def _finished_run(cfg: RunConfig, out: Path, model: Any) -> RunResult:
    """The :class:`RunResult` of a finished run folder, read back (nothing recomputed)."""
    from pyro_prune import arviz as pa

    model.load_state_dict(_load_state(out / MODEL_FILE, model))
    model.eval()
    curves = _read_json(out / CURVE_FILE) if (out / CURVE_FILE).exists() else {}
    lpd = torch.tensor(_read_json(out / LPD_FILE), dtype=torch.float64) if (out / LPD_FILE).exists() else None
    return RunResult(out=out, config=cfg, model=model, history=_read_json(out / HISTORY_FILE),
                     metrics=_read_json(out / METRICS_FILE), idata=pa.load(out / IDATA_FILE),
                     curves=curves, lpd_pointwise=lpd)


def accuracy_curves(model: Any, train: Any, test: Any, criteria: Sequence[str], *, points: int,
                    batch_size: int, lr: float, seed: int, progress: bool,
                    max_fraction: float = 0.95,
                    num_data: int | None = None) -> dict[str, list[dict[str, Any]]]:
    """Accuracy vs compression when the kept structures are removed in each criterion's order.

    ``points`` fractions evenly spaced in ``[0, max_fraction]``, plus the stopping point of
    every threshold-free criterion among ``criteria`` (the fraction of structures with
    ``dF >= 0``) so that it is a point of every curve; one epoch of fine-tuning per point
    (:func:`~pyro_prune.inference.post_training_curve`).
    """
    from pyro_prune.inference import post_training_curve, structure_removals
    from pyro_prune.reduction import get_criterion

    total = sum(int(g.kept.sum()) for g in model.gates().values())
    stops = set()
    for crit in criteria:  # every threshold-free criterion's own stopping point is a point
        if total and model.noise_layers() and get_criterion(crit).threshold_free:
            n_stop = sum(int(m.sum()) for m in structure_removals(model, crit).values())
            stops.add(round(n_stop / total, 6))
    grid = [max_fraction * i / max(1, points - 1) for i in range(points)] if points > 1 else [0.0]
    fractions = sorted({round(f, 6) for f in grid} | stops)
    fractions = [f for f in fractions if 0.0 <= f < 1.0]
    curves = {}
    for crit in criteria:
        curves[crit] = post_training_curve(copy.deepcopy(model), train, test, crit,
                                           fractions=fractions, finetune_epochs=1,
                                           batch_size=batch_size, lr=lr, seed=seed,
                                           progress=progress,
                                           fit_kwargs={"num_data": num_data} if num_data else None)
    return curves


# ============================================================================ load / report / export
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
    raw = _read_json(out / CONFIG_FILE)
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
    model.load_state_dict(_load_state(path, model))
    model.eval()
    history = _read_json(out / HISTORY_FILE)
    metrics = _read_json(out / METRICS_FILE) if (out / METRICS_FILE).exists() else {}
    return LoadedRun(out=out, config=cfg, shape=shape, model=model, history=history, metrics=metrics)


def _load_state(path: Path, model: nn.Module) -> dict[str, Tensor]:
    """The state dict in ``path``, checked (CRC, safe unpickling, keys and shapes) for ``model``."""
    import pickle

    try:
        check_zip(path, "model file")
        state = torch.load(path, map_location="cpu", weights_only=True)
    except CorruptOutputError as err:
        raise UsageError(f"{err}: run fit again with --restart") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        raise UsageError(f"refusing to load {path}: not a plain state dict of tensors "
                         f"({_one_line(err)[:200]})") from None
    own = model.state_dict()
    if not isinstance(state, dict) or any(not isinstance(v, Tensor) for v in state.values()):
        raise UsageError(f"{path} is not a state dict of tensors")
    bad = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    missing = [k for k in own if k not in state]
    if bad or missing:
        raise UsageError(f"{path} does not match the run's model (unexpected or reshaped "
                         f"{bad[:3]}, missing {missing[:3]})")
    return state


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
        _writable_dir(Path(out), "run folder")
    if output is not None:
        try:
            check_output_file(output, "--output")
        except ValueError as err:
            raise UsageError(str(err)) from None
    with _run_folder_lock(out):
        run = load_run(out)
        converted = to_deterministic(run.model)
        example = torch.zeros(2, *run.shape.input_shape)
        path = Path(output) if output is not None else run.out / "export" / f"model{suffix}"
        _writable_dir(path.parent, "export folder")
        return writer(converted, example, path)


@contextlib.contextmanager
def _run_folder_lock(out: str | os.PathLike) -> Iterator[None]:
    """The run folder's lock, when the folder exists (else :func:`load_run` reports it)."""
    if not Path(out).is_dir():
        yield
        return
    try:
        lock = RunLock(out)
        lock.acquire()
    except PermissionError:  # a read-only folder: nothing can be written there anyway
        yield
        return
    try:
        remove_stale_temporaries(out)  # what writers killed earlier left
        yield
    finally:
        lock.release()


def _fmt(value: Any, spec: str = ".4g") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return format(value, spec)
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """A Markdown table; ``columns`` are ``(key, header, format spec)``."""
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(k), spec) for k, _, spec in columns) + " |")
    return "\n".join(lines)


def write_report(out: str | os.PathLike, *, idata: Any = None) -> Path:
    """Write ``report.md`` and its PNG figures (``figures/``) into a run folder."""
    if not Path(out).is_dir():
        raise UsageError(f"run folder {str(out)!r} does not exist")
    _writable_dir(Path(out), "run folder")
    with _run_folder_lock(out):
        return _write_report_locked(out, idata)


def _write_report_locked(out: str | os.PathLike, idata: Any) -> Path:
    from pyro_prune import arviz as pa
    from pyro_prune import plots
    from pyro_prune.reduction import get_criterion

    run = load_run(out)
    out = run.out
    fig_dir = out / FIGURES_DIR
    fig_dir.mkdir(exist_ok=True)
    if idata is None:
        path = out / IDATA_FILE
        if not path.exists():
            raise UsageError(f"{path} not found: the run in {out} has not finished (run fit again)")
        try:
            idata = pa.load(path)
        except Exception as err:  # h5netcdf / HDF5 report damage in many ways
            raise UsageError(f"{path} is truncated or damaged ({_one_line(err)[:200]}); "
                             f"run fit again to rebuild it") from None
    cfg, m = run.config, run.metrics
    figures: list[tuple[str, str]] = []

    def save(fig: Any, name: str, caption: str) -> None:
        plots.save_figure(fig, fig_dir / name)
        figures.append((name, caption))

    save(plots.plot_history(run.history, title=f"{cfg.model} / {cfg.method} on {cfg.data}"),
         "history.png", "Loss, accuracy and kept structures per epoch.")
    if m.get("structures") and m.get("kept"):
        save(plots.plot_widths(m["structures"], m["kept"],
                               title=f"Width per layer: {m.get('compression', 0.0):.1%} of the "
                                     "parameters removed"),
             "widths.png", "Structures (neurons, channels, heads) of every layer before and after "
                           "pruning.")
    if m.get("params_full"):
        save(plots.plot_summary(m), "summary.png",
             "The pruned network against the unpruned one: parameters, MACs per input and "
             "latency (batch 256, medians of interleaved repeats) as ratios, and the W2 shift "
             "of the posterior predictive (0: unchanged, 1: as far as removing everything).")
    calibration_path = out / CALIBRATION_FILE
    if calibration_path.exists():
        cal = _read_json(calibration_path)
        save(plots.plot_reliability({"removed structures restored": cal["restored"],
                                     "pruned": cal["pruned"]},
                                    title="Calibration of the posterior predictive (test set)"),
             "calibration.png",
             "Reliability diagram: accuracy against confidence in 15 bins, with the expected "
             "calibration error (ECE); below, the share of test examples per bin.")
    if run.model.noise_layers():
        save(plots.plot_theta_forest(idata), "theta_forest.png",
             "Posterior mean and 94% HDI of the multiplicative noise of every structure.")
        criterion = METHODS[cfg.method].criterion
        shown = criterion or "bmrs_n"
        red = pa.get_group(idata, "reduction")
        have = set(map(str, red["criterion"].values)) if "criterion" in red.coords else set()
        if shown in have:
            rule = ("removed at dF >= 0" if get_criterion(shown).threshold_free
                    else f"removed below {get_criterion(shown).default_threshold:g}")
            save(plots.plot_decision(idata, shown), "delta_f.png",
                 f"The rule of {shown} per structure ({rule}), at the final posterior; grey: "
                 "removed during training." if criterion else
                 f"This run did not prune; what {shown} would decide ({rule}).")
    curves = _read_json(out / CURVE_FILE) if (out / CURVE_FILE).exists() else {}
    point = {"label": f"{cfg.method} (this run)", "compression": m.get("compression", 0.0),
             "accuracy": m.get("test_accuracy")}
    if point["accuracy"] is not None:
        save(plots.plot_accuracy_vs_compression(curves, [point]), "accuracy_vs_compression.png",
             "Test accuracy against compression; curves remove structures in the criterion's "
             "order from the final model (one epoch of fine-tuning per point).")
    kept_rows = [{"gate": g, "kept": m.get("kept", {}).get(g), "total": n}
                 for g, n in m.get("structures", {}).items()]
    lines = [
        f"# pyro-prune run: {cfg.model} / {cfg.method} on {cfg.data}",
        "",
        "## Settings",
        "",
        markdown_table([cfg.to_json()], [(k, k, "") for k in
                                          ("model", "data", "method", "epochs", "finetune_epochs",
                                           "batch_size", "lr", "kl_scale", "seed", "num_samples")]),
        "",
        "## Results (test set)",
        "",
        markdown_table([m], [("test_accuracy", "accuracy", ".4f"), ("test_loss", "NLL", ".4f"),
                             ("compression", "compression", ".3f"),
                             ("params_full", "params (full)", ""), ("params_pruned", "params (pruned)", ""),
                             ("macs_full", "MACs (full)", ""), ("macs_pruned", "MACs (pruned)", ""),
                             ("speedup", "speedup (batch 256)", ".2f")]),
        "",
        *([f"Pruning: {m['pruning_report']}", ""] if m.get("pruning_report") else []),
        "Uncertainty cost on the test set: log predictive density (sum over the test points of "
        "log mean_s p(y | x, z_s)) of the pruned network and of the same network with every "
        "structure restored; the difference is paired over the test points, with its standard "
        "error. The posterior predictive shift W2 and the calibration are measured on the same "
        "points.",
        "",
        markdown_table([m], [("test_lpd", "lpd (pruned)", ".2f"), ("test_lpd_full", "lpd (restored)", ".2f"),
                             ("test_lpd_diff", "difference", "+.2f"), ("test_lpd_diff_se", "SE", ".2f"),
                             ("test_lpd_n", "test points", ""),
                             ("w2", "W2(restored, pruned)", ".4g"), ("w2_normalized", "W2 / W2(empty)", ".3g"),
                             ("ece_restored", "ECE (restored)", ".3f"), ("ece_pruned", "ECE (pruned)", ".3f")]),
        "",
        "PSIS-LOO on training data (ArviZ): the estimate of the predictive density of new data "
        "from the training data, with its Pareto k diagnostics (k > 0.7: that point's estimate is "
        "unreliable).",
        "",
        markdown_table([m], [("elpd_loo", "elpd_loo", ".2f"), ("elpd_loo_se", "SE", ".2f"),
                             ("p_loo", "p_loo", ".2f"), ("pareto_k_max", "max Pareto k", ".2f"),
                             ("pareto_k_bad", "points with k > 0.7", ""), ("loo_n", "points", "")]),
        "",
        "## Kept structures",
        "",
        markdown_table(kept_rows, [("gate", "gate", ""), ("kept", "kept", ""), ("total", "total", "")]),
        "",
        "## Figures",
        "",
    ]
    for name, caption in figures:
        lines += [f"![{caption}]({FIGURES_DIR}/{name})", "", caption, ""]
    lines += ["## Files", "", "| file | content |", "|---|---|"]
    for name, what in ((CONFIG_FILE, "settings"), (HISTORY_FILE, "per-epoch history"),
                       (MODEL_FILE, "Pyro model state dict"),
                       (CONVERTED_STATE_FILE, "converted deterministic network (state dict)"),
                       (EXPORTED_PROGRAM_FILE, "converted network (torch.export program)"),
                       (IDATA_FILE, "ArviZ InferenceData (netCDF)"),
                       (CALIBRATION_FILE, "reliability bins and ECE"), (METRICS_FILE, "metrics")):
        if (out / name).exists():
            lines.append(f"| `{name}` | {what} |")
    path = out / REPORT_FILE
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


# ============================================================================ argparse
class _Parser(argparse.ArgumentParser):
    """Reports a bad argument as one line (``prog: error: message``), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {' '.join(message.split())}\n")


def _number_arg(convert: Callable[[str], Any], ok: Callable[[Any], bool], what: str) -> Callable[[str], Any]:
    """An argparse ``type``: ``convert(text)`` accepted when ``ok``, else "must be <what>"."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    return parse


_positive_int = _number_arg(int, lambda v: v >= 1, "a positive integer")
_nonnegative_int = _number_arg(int, lambda v: v >= 0, "an integer >= 0")
_positive_float = _number_arg(float, lambda v: v > 0 and math.isfinite(v), "a positive number")


_seed = _number_arg(int, lambda v: 0 <= v <= SEED_MAX, f"an integer in 0..{SEED_MAX}")
_fraction = _number_arg(float, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be comma-separated positive integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"must be comma-separated positive integers, got {text!r}")
    return values


def _names(registry: dict[str, Any], what: str) -> Callable[[str], list[str]]:
    """Parser of a comma-separated list of registry names."""

    def parse(text: str) -> list[str]:
        names = [v for v in text.replace(" ", "").split(",") if v]
        unknown = [v for v in names if v not in registry]
        if not names or unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {', '.join(map(repr, unknown)) or repr(text)}; "
                f"choose from {', '.join(registry)}")
        return names

    return parse


def _choices_help(registry: dict[str, Any]) -> str:
    return "; ".join(f"{name}: {getattr(spec, 'help', '')}" for name, spec in registry.items())


def _add_fit_arguments(p: argparse.ArgumentParser) -> None:
    d = RunConfig()
    p.add_argument("--model", choices=list(MODELS), default=d.model,
                   help=f"network (default {d.model}). {_choices_help(MODELS)}")
    p.add_argument("--data", required=True, metavar="NAME",
                   help="data set: digits (embedded), mnist, fashion-mnist, cifar10, uci/<name> "
                        "(files under $PYRO_PRUNE_DATA or --data-root); or your own: "
                        "module:function returning (train, test) Datasets or DataLoaders, or a "
                        "file.pt saved with torch.save({'train': (x, y), 'test': (x, y)})")
    p.add_argument("--method", choices=list(METHODS), default=d.method,
                   help=f"pruning method (default {d.method}). {_choices_help(METHODS)}")
    p.add_argument("--epochs", type=_positive_int, default=d.epochs,
                   help=f"training epochs with pruning after each (default {d.epochs})")
    p.add_argument("--finetune-epochs", type=_nonnegative_int, default=d.finetune_epochs,
                   help=f"epochs without pruning afterwards (default {d.finetune_epochs})")
    p.add_argument("--batch-size", type=_positive_int, default=d.batch_size,
                   help=f"minibatch size (default {d.batch_size})")
    p.add_argument("--lr", type=_positive_float, default=d.lr, help=f"Adam learning rate (default {d.lr})")
    p.add_argument("--noise-lr", type=_positive_float, default=d.noise_lr,
                   help=f"learning rate of the noise posteriors (default {d.noise_lr})")
    p.add_argument("--seed", type=_seed, default=d.seed, help=f"random seed (default {d.seed})")
    p.add_argument("--kl-scale", default=d.kl_scale,
                   help="weight of the KL term, a temperature: 'elbo' (1), 'paper' (num_data / "
                        "num_structures, as in the BMRS authors' code), 'auto' ('paper' with "
                        f"noise gates, else 'elbo') or a number (default {d.kl_scale})")
    p.add_argument("--hidden", type=_int_list, default=None, metavar="W1,W2,...",
                   help="hidden widths of --model mlp (default 100,100)")
    p.add_argument("--val-fraction", type=_fraction, default=d.val_fraction,
                   help=f"fraction of the training set held out for validation (default {d.val_fraction})")
    p.add_argument("--num-samples", type=_positive_int, default=d.num_samples,
                   help=f"posterior draws in the InferenceData (default {d.num_samples})")
    p.add_argument("--curve-points", type=_nonnegative_int, default=d.curve_points,
                   help="points of the accuracy-vs-compression curve (0: none; each costs one "
                        "epoch of fine-tuning)")
    p.add_argument("--train-subset", type=_positive_int, default=None, metavar="N",
                   help="train on a stratified subset of N training examples")
    p.add_argument("--eval-examples", type=_positive_int, default=None, metavar="N",
                   help="test examples (a stratified subset) for the InferenceData, PSIS-LOO and "
                        "the W2 check (default: the whole test set; accuracy always uses all)")
    p.add_argument("--data-root", default=None, metavar="DIR",
                   help="folder of the data sets (default $PYRO_PRUNE_DATA)")
    from pyro_prune.inference.distributed import DeviceChoice

    p.add_argument("--device", choices=[c.value for c in DeviceChoice], default=d.device,
                   help="where training runs: auto (CUDA when available), cpu or cuda; under "
                        "torchrun on CUDA each process uses cuda:LOCAL_RANK and NCCL (default "
                        f"{d.device})")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _config_from(args: argparse.Namespace) -> RunConfig:
    return RunConfig(model=args.model, data=args.data, method=args.method, epochs=args.epochs,
                     finetune_epochs=args.finetune_epochs, batch_size=args.batch_size, lr=args.lr,
                     noise_lr=args.noise_lr, seed=args.seed, kl_scale=str(args.kl_scale), hidden=args.hidden,
                     val_fraction=args.val_fraction, num_samples=args.num_samples,
                     curve_points=args.curve_points, train_subset=args.train_subset,
                     eval_examples=args.eval_examples, device=args.device)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _cmd_fit(args: argparse.Namespace) -> int:
    cfg = _config_from(args)
    data_name = re.sub(r"[^\w.-]+", "_", cfg.data).strip("_.")
    out = Path(args.out) if args.out else Path("runs") / f"{cfg.model}-{data_name}-{cfg.method}"
    res = run_fit(cfg, out, data_root=args.data_root, progress=not args.no_progress,
                  restart=args.restart, log=_log)
    m = res.metrics
    if not m:  # a rank other than 0 of a torchrun run: rank 0 reports
        return 0
    score = (f"test accuracy {m['test_accuracy']:.4f}" if "test_accuracy" in m
             else f"test RMSE {m.get('test_rmse', float('nan')):.4f} (normalised targets)")
    print(f"{score}  compression {m['compression']:.3f}  "
          f"MACs {m['macs_pruned']}/{m['macs_full']}  speedup {m.get('speedup', float('nan')):.2f}x  "
          f"test lpd {m['test_lpd']:.1f} (pruned - restored {m['test_lpd_diff']:+.1f} +- "
          f"{m['test_lpd_diff_se']:.1f})")
    if m.get("pruning_report"):
        print(m["pruning_report"])
    print(f"run folder: {out}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    path = write_report(args.dir)
    print(f"report: {path}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    path = export_run(args.dir, args.format, args.output)
    print(f"exported {args.format}: {path}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from pyro_prune.demo import DemoConfig, run_demo

    cfg = DemoConfig(data=args.data, out=Path(args.out), epochs=args.epochs,
                     finetune_epochs=args.finetune_epochs, seed=args.seed,
                     num_samples=args.num_samples, curve_points=args.curve_points,
                     train_subset=args.train_subset, models=tuple(args.models),
                     methods=tuple(args.methods), noise_lr=args.noise_lr)
    run_demo(cfg, data_root=args.data_root, progress=not args.no_progress, restart=args.restart)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``pyro-prune`` argument parser (subcommands ``fit``, ``report``, ``export``, ``demo``)."""
    import pyro_prune

    parser = _Parser(prog=PROG, description="Bayesian pruning of neural networks on Pyro.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {pyro_prune.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)

    p = sub.add_parser("fit", help="train with continuous pruning and write a run folder",
                       description="Train a network with continuous pruning and write a run folder "
                                   "(resumable: the same command continues an interrupted run).")
    _add_fit_arguments(p)
    p.add_argument("--out", default=None, metavar="DIR",
                   help="run folder (default runs/<model>-<data>-<method>)")
    p.add_argument("--restart", action="store_true", help="discard a checkpoint in --out and start over")
    p.set_defaults(handler=_cmd_fit)

    p = sub.add_parser("report", help="write report.md with tables and figures for a run folder",
                       description="Write report.md and PNG figures into a run folder.")
    p.add_argument("dir", metavar="DIR", help="run folder written by 'pyro-prune fit'")
    p.set_defaults(handler=_cmd_report)

    p = sub.add_parser("export", help="export the converted network of a run folder",
                       description="Convert a run's model to a smaller deterministic network and "
                                   "write it as a torch.export program, a state dict, ONNX or "
                                   "TorchScript (deprecated in current torch).")
    p.add_argument("dir", metavar="DIR", help="run folder written by 'pyro-prune fit'")
    p.add_argument("--format", choices=[f.value for f in ExportFormat],
                   default=ExportFormat.EXPORTED_PROGRAM.value,
                   help="output format (default exported-program: torch.export, .pt2)")
    p.add_argument("--output", default=None, metavar="PATH",
                   help="file to write (default DIR/export/model.<suffix>)")
    p.set_defaults(handler=_cmd_export)

    from pyro_prune.demo import DATA_DEFAULTS, DemoConfig

    d = DemoConfig()
    p = sub.add_parser("demo", help="the end-to-end demo (digits by default)",
                       description="Fit an MLP and LeNet-5 with BMRS_N continuous pruning and the "
                                   "SNR baseline, check the posterior predictive, convert, and "
                                   "print a table; writes a report with figures.")
    p.add_argument("--data", default=d.data, choices=["digits", "mnist"],
                   help="digits (embedded, default) or mnist (needs $PYRO_PRUNE_DATA)")
    p.add_argument("--out", default=str(d.out), metavar="DIR", help=f"output folder (default {d.out})")
    per_data = ", ".join(f"{k}: {v.epochs}+{v.finetune_epochs}" for k, v in DATA_DEFAULTS.items())
    p.add_argument("--epochs", type=_positive_int, default=None,
                   help=f"training epochs (default per data set, training+fine-tuning: {per_data})")
    p.add_argument("--finetune-epochs", type=_nonnegative_int, default=None,
                   help="fine-tuning epochs without pruning (default per data set)")
    p.add_argument("--models", type=_names(MODELS, "model"), default=list(d.models),
                   metavar="M1,M2", help=f"networks (default {','.join(d.models)})")
    p.add_argument("--methods", type=_names(METHODS, "method"), default=list(d.methods),
                   metavar="M1,M2", help=f"methods, 'none' is the reference (default {','.join(d.methods)})")
    p.add_argument("--noise-lr", type=_positive_float, default=d.noise_lr,
                   help=f"learning rate of the noise posteriors (default {d.noise_lr})")
    p.add_argument("--seed", type=_seed, default=d.seed, help=f"random seed (default {d.seed})")
    p.add_argument("--num-samples", type=_positive_int, default=d.num_samples,
                   help=f"posterior draws for ArviZ (default {d.num_samples})")
    p.add_argument("--curve-points", type=_nonnegative_int, default=None,
                   help="points of the accuracy-vs-compression curve (default per data set)")
    p.add_argument("--train-subset", type=_positive_int, default=None, metavar="N",
                   help="train on N training examples (a stratified subset)")
    p.add_argument("--data-root", default=None, metavar="DIR",
                   help="folder of the data sets (default $PYRO_PRUNE_DATA)")
    p.add_argument("--restart", action="store_true", help="retrain instead of resuming runs in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``pyro-prune``; returns the exit code (2 for bad arguments)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a bad argument (message already printed)
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_USAGE
    try:
        return int(args.handler(args) or 0)
    except (UsageError, FolderLockedError) as err:
        print(f"{PROG} {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:  # the file system refused: read-only, full, not a folder, ...
        where = f": {err.filename}" if err.filename else ""
        print(f"{PROG} {args.command}: error: {err.strerror or _one_line(err)}{where}",
              file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
