""":func:`~pyro_prune.inference.fit`'s arguments: checked, resolved once (the engine, the KL
weight as a number, the guide, the data-set size) and described for the run's record."""

from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor
from torch.utils.data import TensorDataset

from pyro_prune._checks import (
    as_dataset,
    check_dataset,
    check_guide,
    check_model_data,
    check_number,
    check_seed,
)
from pyro_prune._enums import Engine, parse_enum
from pyro_prune.inference.batches import dataset_length
from pyro_prune.inference.metrics import first_batch
from pyro_prune.models.base import KLScale, PrunableNet, check_kl_scale

__all__ = ["FitArguments", "guide_name", "resolve_fit_arguments", "schedule_name"]


@dataclass(frozen=True)
class FitArguments:
    """What :func:`resolve_fit_arguments` settles before training starts."""

    #: the training set as :func:`~pyro_prune._checks.as_dataset` reads it (an ``(inputs,
    #: targets)`` pair becomes a ``TensorDataset``)
    train: Any
    #: the validation set likewise, or ``None``
    val: Any

    #: two training examples ``(x, y)`` (an autoguide creates its parameters on them)
    sample: tuple[Tensor, Tensor]
    #: the number of training examples the likelihood of a batch is scaled to
    num_data: int
    #: ``Engine.FAST`` or ``Engine.PYRO`` (never ``AUTO``)
    engine: Engine
    #: the weight of the KL term of the structures' noise, a number
    kl_scale: float
    #: ``kl_scale`` as given, checked: a number or a :class:`KLScale` name (the loss sets
    #: each module's weight from it: :meth:`~pyro_prune.models.base.PrunableNet.kl_scales`)
    kl_spec: float | str
    #: the guide that trains: the user's, else ``model.guide``
    guide: Callable
    #: whether ``guide`` is the user's own (not ``model.guide``)
    custom_guide: bool


def _labelled(data: Any, arg: str) -> tuple[Tensor, Tensor]:
    """All of an in-memory ``TensorDataset``, else its first two examples (for the checks)."""
    if isinstance(data, TensorDataset):
        return check_dataset(data, arg)
    return first_batch(data, arg)


def resolve_fit_arguments(model: PrunableNet, train: Any, *, epochs: int | None, batch_size: int, lr: float,
                          val: Any, seed: int, engine: Engine | str, kl_scale: float | KLScale | str,
                          guide: Callable | None, weight_decay: float, noise_lr: float | None,
                          num_data: int | None) -> FitArguments:
    """Check every argument of :func:`~pyro_prune.inference.fit` (a ``ValueError`` or
    ``TypeError`` naming the first bad one) and resolve the engine, the KL weight, the guide
    and the data-set size."""
    if not isinstance(model, PrunableNet):
        raise TypeError(f"model must be a PrunableNet, got {type(model).__name__}")
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0):
        raise ValueError(f"epochs must be an int >= 0 or None (chosen from the data), got {epochs!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    check_number(lr, "lr", positive=True)
    if noise_lr is not None:
        check_number(noise_lr, "noise_lr", positive=True)
    check_number(weight_decay, "weight_decay", minimum=0.0)
    check_seed(seed)
    train = as_dataset(train, "train")
    val = as_dataset(val, "val") if val is not None else None
    x_train, y_train = _labelled(train, "train")
    check_model_data(model, x_train, y_train, "train")
    if val is not None:
        check_model_data(model, *_labelled(val, "val"), "val")
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
    kl_value = model.resolve_kl_scale(kl_scale, num_data=num_data)
    kl_spec = check_kl_scale(kl_scale)
    custom_guide = guide is not None and guide != model.guide
    if custom_guide:
        check_guide(model, guide, x_train[:2], y_train[:2])
    if engine is Engine.AUTO:
        engine = Engine.PYRO if custom_guide else Engine.FAST
    if engine is Engine.FAST and custom_guide:
        raise ValueError("engine='fast' works with the model's own guide only; use engine='pyro'")
    return FitArguments(train=train, val=val, sample=(x_train[:2], y_train[:2]), num_data=num_data, engine=engine,
                        kl_scale=kl_value, kl_spec=kl_spec, guide=guide if guide is not None else model.guide,
                        custom_guide=custom_guide)


def schedule_name(schedule: Any) -> str | None:
    """The schedule's settings as text (its ``repr`` when it defines one, else its class)."""
    if schedule is None:
        return None
    if type(schedule).__repr__ is object.__repr__:
        return type(schedule).__name__
    return repr(schedule)


def guide_name(guide: Callable, custom: bool) -> str:
    """The guide as the run's record names it."""
    if not custom:
        return "model.guide"
    if isinstance(guide, types.FunctionType):  # a guide function: its own name
        return guide.__name__
    return type(getattr(guide, "__self__", guide)).__name__
