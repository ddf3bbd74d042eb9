"""The data sets' public types: task, split, normalisation, metadata and the dataset itself."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

__all__ = ["CorruptFileError", "DatasetInfo", "LabeledDataset", "Normalization", "Split", "Task"]


class Task(str, Enum):
    """What the targets are: class indices or real values."""

    CLASSIFICATION = "classification"
    REGRESSION = "regression"


class Split(str, Enum):
    """Which part of a data set. ``VAL`` is only produced by :func:`train_val_split`."""

    TRAIN = "train"
    TEST = "test"
    VAL = "val"


class CorruptFileError(ValueError):
    """A data file exists but fails validation: truncated, not the expected format, or a
    checksum that differs from the published one. The message names the file."""


@dataclass(frozen=True)
class Normalization:
    """The affine map the loader applied, so that it can be undone.

    Inputs: ``x = (raw / input_scale - input_mean) / input_std``, with one mean / std per
    channel for images (channel axis 1) or per feature for tabular data.
    Targets (regression only): ``y = (raw - target_mean) / target_std``.
    ``statistics`` says where the numbers come from (published constants or the train split).
    """

    input_mean: tuple[float, ...]
    input_std: tuple[float, ...]
    input_scale: float = 1.0
    target_mean: float | None = None
    target_std: float | None = None
    statistics: str = "train split"

    def denormalize_targets(self, y: Tensor) -> Tensor:
        """Map normalised targets or predictions back to the original units."""
        if self.target_mean is None or self.target_std is None:
            raise ValueError("this normalization has no target statistics (classification data)")
        return y * self.target_std + self.target_mean

    def as_dict(self) -> dict[str, Any]:
        """Plain ``dict`` view (JSON friendly)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class DatasetInfo:
    """Metadata of a loaded data set.

    Attributes:
        name: canonical name, e.g. ``"mnist"`` or ``"uci/yacht"``.
        split: :class:`Split` of these examples.
        task: :class:`Task`.
        input_shape: shape of one input, e.g. ``(1, 28, 28)`` (``(784,)`` with ``flatten``).
        num_classes: number of classes (classification) or ``None``.
        target_dim: number of regression targets (targets have shape ``[N, target_dim]``);
            ``None`` for classification, whose targets are class indices of shape ``[N]``.
        normalization: the :class:`Normalization` applied, or ``None`` when
            ``normalize=False`` (images then lie in [0, 1], tabular data is raw).
        source_files: the files the examples were read from.
        split_index: the UCI split used, else ``None``.
        class_names: names of the classes, if known.
    """

    name: str
    split: Split
    task: Task
    input_shape: tuple[int, ...]
    num_classes: int | None
    target_dim: int | None
    normalization: Normalization | None
    source_files: tuple[Path, ...] = ()
    split_index: int | None = None
    class_names: tuple[str, ...] | None = None

    @property
    def input_dim(self) -> int:
        """Number of input values per example (product of ``input_shape``)."""
        return math.prod(self.input_shape)

    @property
    def output_dim(self) -> int:
        """Width of the network output this data needs: classes, or regression targets."""
        if self.task is Task.CLASSIFICATION:
            assert self.num_classes is not None
            return self.num_classes
        assert self.target_dim is not None
        return self.target_dim


class LabeledDataset(TensorDataset):
    """A ``TensorDataset(inputs, targets)`` that carries its :class:`DatasetInfo`.

    ``inputs`` are float32 ``[N, *info.input_shape]``; ``targets`` are int64 class indices
    ``[N]`` (classification) or float32 ``[N, target_dim]`` (regression). Indexing gives
    ``(input, target)`` pairs, so it plugs into a ``DataLoader`` unchanged.
    """

    info: DatasetInfo

    def __init__(self, inputs: Tensor, targets: Tensor, info: DatasetInfo) -> None:
        if not isinstance(info, DatasetInfo):
            raise TypeError(f"info must be a DatasetInfo, got {type(info).__name__}")
        if tuple(inputs.shape[1:]) != tuple(info.input_shape):
            raise ValueError(
                f"inputs have per-example shape {tuple(inputs.shape[1:])}, "
                f"but info.input_shape is {info.input_shape}"
            )
        if info.task is Task.CLASSIFICATION:
            if targets.dtype != torch.int64 or targets.dim() != 1:
                raise ValueError("classification targets must be int64 of shape [N]")
        elif targets.dim() != 2 or targets.shape[1] != info.target_dim:
            raise ValueError(f"regression targets must have shape [N, {info.target_dim}]")
        super().__init__(inputs, targets)
        self.info = info

    @property
    def inputs(self) -> Tensor:
        return self.tensors[0]

    @property
    def targets(self) -> Tensor:
        return self.tensors[1]

    def __repr__(self) -> str:
        return (
            f"LabeledDataset(name={self.info.name!r}, split={self.info.split.value!r}, "
            f"n={len(self)}, input_shape={self.info.input_shape}, task={self.info.task.value})"
        )


# --------------------------------------------------------------------------------------------
# Checksums and file reading
