"""Resumable training: the checkpoint :func:`~pyro_prune.inference.fit` writes after every
epoch, and reading it back (on every rank of a data-parallel run)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

from pyro_prune._checks import data_fingerprint
from pyro_prune._io import CorruptOutputError, check_zip, save_torch
from pyro_prune.inference.batches import dataset_length
from pyro_prune.inference.distributed import DistributedInfo, broadcast_module, broadcast_object
from pyro_prune.models.base import PrunableNet

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_NAME", "RESUME_KEYS", "dataset_fingerprint",
           "load_checkpoint", "read_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = "pyro_prune.fit/1"
CHECKPOINT_NAME = "checkpoint.pt"

#: settings a checkpoint must share with the run that resumes it (keys an older checkpoint
#: lacks are not compared)
RESUME_KEYS = ("model", "batch_size", "lr", "seed", "engine", "num_data", "total_epochs",
               "epochs", "kl_scale", "schedule", "weight_decay", "noise_lr",
               "per_example_noise", "flush_denormal", "guide", "data", "val_data")

#: the parts of a checkpoint the ranks of a data-parallel run share when resuming
_SHARED_STATE = ("optimizer", "schedule", "history", "epoch", "step", "rng")


def dataset_fingerprint(data: Any) -> str:
    """What a checkpoint remembers of a data set: the bytes of in-memory tensors, else its
    type and length (a data set read from files is not read twice to hash it)."""
    if isinstance(data, TensorDataset):
        return data_fingerprint(*data.tensors)
    return f"{type(data).__name__}:{dataset_length(data)}"


def save_checkpoint(path: Path, *, model: PrunableNet, optimizer: torch.optim.Optimizer,
                    schedule: Any, history: list, epoch: int, step: int, config: dict,
                    generator: torch.Generator, guide: torch.nn.Module | None = None) -> None:
    """Write the whole training state after ``epoch`` epochs (atomically); ``guide``: a custom
    guide (an autoguide), whose parameters are the posterior being fitted."""
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
    if guide is not None:
        state["guide"] = guide.state_dict()
    save_torch(state, path)


def load_checkpoint(path: str | os.PathLike, *, model: PrunableNet | None = None,
                    config: dict | None = None, guide: torch.nn.Module | None = None) -> dict[str, Any]:
    """Load a :func:`~pyro_prune.inference.fit` checkpoint (``weights_only=True``) and, given
    ``model`` (and the custom ``guide`` it was fitted with), restore it.

    Raises:
        ValueError: the file is not a pyro_prune checkpoint, or it was written for another
            model class, other parameter shapes or other fit settings, or without the state
            of the custom guide (named in the message).
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
                     for k in RESUME_KEYS
                     if k in state["config"] and state["config"].get(k) != config.get(k)]
            if diffs:
                raise ValueError(f"checkpoint {path} was written with other settings: " + "; ".join(diffs))
        _check_state(path, "the model", model.state_dict(), state["model"])
        if guide is not None:
            if "guide" not in state:
                raise ValueError(
                    f"checkpoint {path} holds no state of the guide {type(guide).__name__} (written "
                    f"before fit saved a custom guide's parameters): the posterior it fitted is lost; "
                    f"train again in a new folder")
            _check_state(path, f"the guide {type(guide).__name__}", guide.state_dict(), state["guide"])
        model.load_state_dict(state["model"])
        if guide is not None:
            guide.load_state_dict(state["guide"])
    return state


def _check_state(path: Path, what: str, own: dict[str, Any], saved: dict[str, Any]) -> None:
    """A ``ValueError`` when ``saved`` does not have the keys and shapes of ``own``."""
    bad = [k for k, v in saved.items() if k not in own or own[k].shape != v.shape]
    missing = [k for k in own if k not in saved]
    if bad or missing:
        raise ValueError(
            f"checkpoint {path} does not match {what}: unexpected or reshaped {bad[:5]}, missing {missing[:5]}"
        )


def read_checkpoint(path: Path | None, *, model: PrunableNet, config: dict,
                    info: DistributedInfo, device: torch.device,
                    guide: torch.nn.Module | None = None) -> dict[str, Any] | None:
    """The checkpoint at ``path`` restored into ``model`` on every rank, or ``None`` if there
    is none; rank 0 reads it and the other ranks take its model and state.

    Returns the state the caller restores (``optimizer``, ``schedule``, ``history``,
    ``epoch``, ``step``, ``rng``). A checkpoint of other settings stops every rank with rank
    0's ``ValueError``.
    """
    exists = broadcast_object(bool(path is not None and path.exists()), info, device)
    if not exists:
        return None
    assert path is not None
    state: dict[str, Any] = {}
    problem = None
    if info.is_main:
        try:
            state = load_checkpoint(path, model=model, config=config, guide=guide)
        except ValueError as err:  # every rank stops with rank 0's message
            if not info.active:
                raise
            problem = str(err)
    problem = broadcast_object(problem, info, device)
    if problem is not None:
        raise ValueError(problem)
    broadcast_module(model, info)
    if guide is not None:
        broadcast_module(guide, info)
    return broadcast_object({k: state[k] for k in _SHARED_STATE} if info.is_main else None,
                            info, device)
