"""The user's own data for ``pyro-prune fit --data``: a function or a saved tensor file.

``--data`` takes a named data set (``digits``, ``mnist``, ...; :mod:`pyro_prune.data`) or
the user's data, in one of two forms:

``module.path:function``
    ``function()`` is called with no arguments (on every rank under ``torchrun``) and returns
    ``(train, test)`` or a mapping with the keys ``"train"`` and ``"test"`` and optionally
    ``"val"``, ``"num_classes"``, ``"input_shape"``, ``"task"`` (``"classification"`` or
    ``"regression"``), ``"num_data"`` (the training examples, for a stream without
    ``len()``) and ``"name"``. ``train``, ``test`` and ``val`` are each a
    ``torch.utils.data.Dataset``, an ``IterableDataset`` or a ``DataLoader`` of
    ``(input, target)`` pairs, or an ``(inputs, targets)`` pair of tensors (read as a
    ``TensorDataset``, as :func:`~pyro_prune.inference.fit` reads one). The module is imported from ``PYTHONPATH`` or the current
    folder.
``path/to/file.pt``
    A file written by ``torch.save`` holding the same mapping with ``(inputs, targets)``
    tensor pairs as ``"train"`` and ``"test"`` (read with ``weights_only=True``).

What is not given is inferred: ``input_shape`` from the first training example; integer
targets make a classification task with ``num_classes`` = 1 + the largest label (of the
training and test tensors, or of the test set for other data sets: give ``num_classes``
when the test set lacks a class), float targets of shape ``[D]`` a regression task with
``D`` outputs. Everything wrong is a :class:`UserDataError` naming the problem in one line.
"""

from __future__ import annotations

import importlib
import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset, TensorDataset

from pyro_prune._checks import as_dataset

__all__ = ["UserData", "UserDataError", "is_user_data", "load_user_data", "random_split_of",
           "to_tensors"]

_FUNCTION_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_TENSOR_SUFFIXES = (".pt", ".pth")
_KEYS = {"train", "test", "val", "num_classes", "input_shape", "task", "num_data", "name"}


class UserDataError(ValueError):
    """The user's data cannot be used: the message names the problem (one line)."""


@dataclass
class UserData:
    """The user's data sets and what a model needs to know about them."""

    name: str
    train: Any
    test: Any
    val: Any
    input_shape: tuple[int, ...]
    output_dim: int
    task: str  # "classification" | "regression"
    num_data: int | None = None


def is_user_data(spec: str) -> bool:
    """Whether ``--data spec`` names the user's data (``module:function`` or a tensor file)."""
    return bool(_FUNCTION_SPEC.match(spec)) or spec.endswith(_TENSOR_SUFFIXES) or (
        os.sep in spec and Path(spec).is_file())


def load_user_data(spec: str) -> UserData:
    """The :class:`UserData` of ``spec`` (see the module docstring), or a :class:`UserDataError`."""
    if _FUNCTION_SPEC.match(spec):
        raw = _call(spec)
    else:
        raw = _read_file(spec)
    return _describe(spec, raw)


def _call(spec: str) -> Any:
    module_name, function_name = spec.split(":")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:  # the console script does not add it
        sys.path.append(cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise UserDataError(f"data {spec!r}: cannot import module {module_name!r} ({err})") from None
    except Exception as err:  # the module's own code failed while importing
        raise UserDataError(f"data {spec!r}: importing {module_name!r} raised "
                            f"{type(err).__name__}: {err}") from None
    function = getattr(module, function_name, None)
    if function is None:
        raise UserDataError(f"data {spec!r}: module {module_name!r} has no attribute {function_name!r}")
    if not callable(function):
        raise UserDataError(f"data {spec!r}: {module_name}.{function_name} is a "
                            f"{type(function).__name__}, not a function")
    try:
        return function()
    except Exception as err:
        raise UserDataError(f"data {spec!r}: {function_name}() raised {type(err).__name__}: {err}") from None


def _read_file(spec: str) -> dict[str, Any]:
    import pickle

    path = Path(spec)
    if not path.is_file():
        raise UserDataError(f"data file {spec!r} not found")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as err:
        raise UserDataError(f"data file {spec!r} is not a tensor file torch.load can read safely "
                            f"({' '.join(str(err).split())[:200]})") from None
    if not isinstance(raw, Mapping) or not {"train", "test"} <= set(raw):
        raise UserDataError(f"data file {spec!r} must hold a dict with 'train' and 'test' "
                            f"(inputs, targets) pairs")
    return dict(raw)


def _describe(spec: str, raw: Any) -> UserData:
    if isinstance(raw, Mapping):
        unknown = sorted(set(map(str, raw)) - _KEYS)
        if unknown:
            raise UserDataError(f"data {spec!r}: unknown keys {unknown}; allowed: {sorted(_KEYS)}")
        if not {"train", "test"} <= set(raw):
            raise UserDataError(f"data {spec!r}: the mapping needs 'train' and 'test'")
        parts = dict(raw)
    elif isinstance(raw, (tuple, list)) and len(raw) == 2:
        parts = {"train": raw[0], "test": raw[1]}
    else:
        raise UserDataError(f"data {spec!r} must give (train, test) or a dict with 'train' and "
                            f"'test', got {type(raw).__name__}")
    for key in ("train", "test", "val"):  # an (inputs, targets) pair becomes a TensorDataset
        if key in parts:
            try:
                parts[key] = as_dataset(parts[key], key)
            except (TypeError, ValueError) as err:
                raise UserDataError(f"data {spec!r}: {err}") from None
    x, y = _first_example(spec, parts["train"], "train")
    _first_example(spec, parts["test"], "test")
    task = parts.get("task") or ("regression" if y.is_floating_point() else "classification")
    if task not in ("classification", "regression"):
        raise UserDataError(f"data {spec!r}: task must be 'classification' or 'regression', got {task!r}")
    input_shape = parts.get("input_shape") or tuple(x.shape)
    try:
        input_shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError):
        raise UserDataError(f"data {spec!r}: input_shape must be a tuple of ints, got "
                            f"{parts.get('input_shape')!r}") from None
    if task == "classification":
        if y.is_floating_point() or y.dim() != 0:
            raise UserDataError(f"data {spec!r}: classification targets must be integer class "
                                f"indices (one per example), got {y.dtype} of shape {tuple(y.shape)}")
        output_dim = parts.get("num_classes") or _num_classes(spec, parts)
    else:
        if y.dim() != 1:
            raise UserDataError(f"data {spec!r}: regression targets must have shape [D] per "
                                f"example (e.g. [1]), got {tuple(y.shape)}")
        output_dim = int(y.shape[0])
    if isinstance(output_dim, bool) or not isinstance(output_dim, int) or output_dim < 1:
        raise UserDataError(f"data {spec!r}: num_classes must be a positive int, got {output_dim!r}")
    num_data = parts.get("num_data")
    if num_data is not None and (isinstance(num_data, bool) or not isinstance(num_data, int)
                                 or num_data < 1):
        raise UserDataError(f"data {spec!r}: num_data must be a positive int, got {num_data!r}")
    name = str(parts.get("name") or spec)
    return UserData(name=name, train=parts["train"], test=parts["test"], val=parts.get("val"),
                    input_shape=input_shape, output_dim=output_dim, task=task, num_data=num_data)


def _first_example(spec: str, data: Any, key: str) -> tuple[Tensor, Tensor]:
    """Input and target of the first example of ``data`` (a batch's first row for a loader)."""
    try:
        item = next(iter(data if isinstance(data, DataLoader) else DataLoader(data, batch_size=1)))
    except StopIteration:
        raise UserDataError(f"data {spec!r}: {key} is empty") from None
    except Exception as err:
        raise UserDataError(f"data {spec!r}: reading the first example of {key} raised "
                            f"{type(err).__name__}: {' '.join(str(err).split())[:200]}") from None
    if not (isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(t, Tensor) for t in item)):
        raise UserDataError(f"data {spec!r}: {key} must give (input, target) pairs of tensors, "
                            f"got {type(item).__name__}")
    return item[0][0], item[1][0]


def _num_classes(spec: str, parts: dict[str, Any]) -> int:
    """1 + the largest label of the tensors of train and test, else of the test set."""
    labels = [d.tensors[1] for d in (parts["train"], parts["test"])
              if isinstance(d, TensorDataset) and len(d.tensors) == 2]
    if not labels:
        labels = [y for _, y in _batches(parts["test"])]
    largest = max(int(y.max()) for y in labels if y.numel())
    if largest < 1 or min(int(y.min()) for y in labels if y.numel()) < 0:
        raise UserDataError(f"data {spec!r}: class labels must be 0, 1, ... (at least two classes)")
    return largest + 1


def _batches(data: Any, batch_size: int = 512) -> Any:
    from pyro_prune.inference.batches import eval_batches

    return eval_batches(data, batch_size)


def to_tensors(data: Any, limit: int | None = None, *, seed: int = 0) -> TensorDataset:
    """``data`` as one ``TensorDataset`` of at most ``limit`` examples (all when ``None``).

    A ``TensorDataset`` is returned as it is when it is small enough; a map-style data set
    gives ``limit`` examples drawn at random (seeded), a stream or ``DataLoader`` its first
    ``limit``.
    """
    if isinstance(data, TensorDataset) and len(data.tensors) == 2 and (
            limit is None or len(data) <= limit):
        return data
    if limit is not None and isinstance(data, Dataset) and not isinstance(data, IterableDataset):
        try:
            n = len(data)  # type: ignore[arg-type]
        except TypeError:
            n = None
        if n is not None and n > limit:
            data = random_split_of(data, limit / n, seed)[1]
    xs: list[Tensor] = []
    ys: list[Tensor] = []
    count = 0
    for x, y in _batches(data):
        xs.append(x.cpu())
        ys.append(y.cpu())
        count += len(x)
        if limit is not None and count >= limit:
            break
    if not xs:
        raise ValueError("the data set is empty")
    x_all, y_all = torch.cat(xs), torch.cat(ys)
    if limit is not None:
        x_all, y_all = x_all[:limit], y_all[:limit]
    return TensorDataset(x_all, y_all)


def random_split_of(data: Any, fraction: float, seed: int) -> tuple[Subset, Subset]:
    """``(rest, part)`` of a map-style data set: ``round(fraction * n)`` examples, seeded."""
    n = len(data)
    k = min(max(1, math.floor(fraction * n + 0.5)), n - 1)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    part, rest = sorted(order[:k]), sorted(order[k:])
    return Subset(data, rest), Subset(data, part)
