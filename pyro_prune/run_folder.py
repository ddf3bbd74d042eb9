"""A run folder: its files, their JSON, the lock, and one line per user mistake.

A ``pyro-prune fit`` run writes everything into one folder (the files are listed in
:mod:`pyro_prune.cli`). This module names the files, reads and writes their JSON atomically,
locks the folder while a command works in it, checks a saved state dict before loading it,
and defines :class:`UsageError`: a bad argument or input, reported as one line, exit code 2.
"""

from __future__ import annotations

import contextlib
import enum
import json
import math
import os
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pyro_prune._checks import check_output_dir
from pyro_prune._io import (
    CorruptOutputError,
    RunLock,
    atomic_write_text,
    check_zip,
    remove_stale_temporaries,
)

__all__ = [
    "CALIBRATION_FILE",
    "CHECKPOINT_FILE",
    "CONFIG_FILE",
    "CONVERTED_STATE_FILE",
    "CURVE_FILE",
    "EXIT_USAGE",
    "EXPORTED_PROGRAM_FILE",
    "FIGURES_DIR",
    "FINISHED_RUN_FILES",
    "HISTORY_FILE",
    "IDATA_FILE",
    "LPD_FILE",
    "METRICS_FILE",
    "MODEL_FILE",
    "PROG",
    "REPORT_FILE",
    "RUN_OUTPUTS",
    "clear_run",
    "load_state",
    "one_line",
    "read_json",
    "run_folder_lock",
    "UsageError",
    "versions",
    "writable_dir",
    "write_json",
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


def _finite(value: Any) -> Any:
    """JSON has no inf/nan: store them as the strings ``"inf"``, ``"-inf"``, ``"nan"``."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_json(path: Path, payload: Any) -> None:
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


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path} not found: is {path.parent} a pyro-prune run folder?") from None
    except json.JSONDecodeError as err:
        raise UsageError(f"{path} is not valid JSON: {err}") from None


def one_line(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    return " ".join(text.split())


def versions() -> dict[str, str]:
    import arviz
    import numpy
    import pyro

    import pyro_prune

    return {"pyro_prune": pyro_prune.__version__, "torch": torch.__version__,
            "pyro": pyro.__version__, "arviz": arviz.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}


def writable_dir(path: Path, what: str) -> Path:
    try:
        return check_output_dir(path, what)
    except ValueError as err:
        raise UsageError(str(err)) from None


#: every file and folder a run writes, in the order a restart deletes them: the result that
#: marks a finished run first, the settings last, so an interrupted restart leaves the old
#: settings beside part of the old outputs (a rerun deletes the rest), never old outputs
#: beside new settings
RUN_OUTPUTS = (METRICS_FILE, CHECKPOINT_FILE, MODEL_FILE, CONVERTED_STATE_FILE,
               EXPORTED_PROGRAM_FILE, IDATA_FILE, CURVE_FILE, CALIBRATION_FILE, REPORT_FILE,
               FIGURES_DIR, "export",
               HISTORY_FILE, CONFIG_FILE)


def clear_run(out: Path) -> None:
    import shutil

    for name in RUN_OUTPUTS:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


#: a run folder with all of these is finished (``metrics.json`` is written last)
FINISHED_RUN_FILES = (METRICS_FILE, MODEL_FILE, IDATA_FILE, HISTORY_FILE, CONVERTED_STATE_FILE,
                      EXPORTED_PROGRAM_FILE)


def load_state(path: Path, model: nn.Module) -> dict[str, Tensor]:
    """The state dict in ``path``, checked (CRC, safe unpickling, keys and shapes) for ``model``."""
    import pickle

    try:
        check_zip(path, "model file")
        state = torch.load(path, map_location="cpu", weights_only=True)
    except CorruptOutputError as err:
        raise UsageError(f"{err}: run fit again with --restart") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        raise UsageError(f"refusing to load {path}: not a plain state dict of tensors "
                         f"({one_line(err)[:200]})") from None
    own = model.state_dict()
    if not isinstance(state, dict) or any(not isinstance(v, Tensor) for v in state.values()):
        raise UsageError(f"{path} is not a state dict of tensors")
    bad = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    missing = [k for k in own if k not in state]
    if bad or missing:
        raise UsageError(f"{path} does not match the run's model (unexpected or reshaped "
                         f"{bad[:3]}, missing {missing[:3]})")
    return state


@contextlib.contextmanager
def run_folder_lock(out: str | os.PathLike) -> Iterator[None]:
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
