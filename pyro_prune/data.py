"""Data sets: one loader for the benchmark sets used by the pruning papers.

Everything goes through :func:`load_dataset`, which returns a :class:`LabeledDataset`: a
:class:`torch.utils.data.TensorDataset` of ``(inputs, targets)`` with an ``.info``
(:class:`DatasetInfo`) describing the task, the shapes and the normalisation that was applied.

    >>> from pyro_prune.data import load_dataset, train_val_split
    >>> train = load_dataset("digits", "train")           # embedded, needs no files
    >>> train.inputs.shape, train.info.num_classes
    (torch.Size([1438, 1, 8, 8]), 10)
    >>> fit_set, val_set = train_val_split(train, val_fraction=0.2, seed=0)

Known names (see :func:`available_datasets`):

==========================  ===========================================================
``digits``                  scikit-learn's bundled 8x8 digits (1797 images, 1x8x8), a
                            fixed stratified 80/20 split (seed 0): 1438 train, 359 test.
``mnist``                   IDX files in ``<root>/mnist/`` (60000 / 10000, 1x28x28).
``fashion-mnist``           IDX files in ``<root>/fashion-mnist/`` (60000 / 10000).
``cifar10``                 python pickle batches in ``<root>/cifar10/cifar-10-batches-py/``
                            or ``<root>/cifar-10-batches-py/`` (50000 / 10000, 3x32x32).
``uci/<name>``              UCI regression sets in ``<root>/uci/<name>/`` with the standard
                            Hernandez-Lobato & Adams (2015) splits, chosen by ``split_index``.
==========================  ===========================================================

``root`` defaults to the environment variable ``PYRO_PRUNE_DATA``. IDX files may be gzip
compressed (``*.gz``, as published) or uncompressed. Nothing is ever downloaded at import;
``download=True`` (or :func:`download_dataset`) fetches the published files of MNIST,
Fashion-MNIST and CIFAR-10 with ``urllib`` and checks their md5 against the published values.
Every file is checked while it is read (IDX magic numbers, sizes, counts, label ranges, UCI
split partitions); ``verify=True`` also compares files with their published md5. A damaged
file raises :class:`CorruptFileError` (a ``ValueError``) naming it.

Normalisation (``normalize=True``):

* images: pixels are scaled to [0, 1] and then standardised per channel,
  ``x = (pixel / 255 - mean_c) / std_c``, with the standard training-set constants
  (MNIST 0.1307 / 0.3081, Fashion-MNIST 0.2860 / 0.3530, CIFAR-10 per channel); digits use
  ``pixel / 16`` and the mean / std of its fixed training split;
* UCI: every feature and the target are standardised with the mean and (population) standard
  deviation of the *training* rows of the chosen split, as in the PBP protocol
  (Hernandez-Lobato & Adams, ICML 2015); a constant feature gets std 1. The statistics are kept
  in ``info.normalization`` so predictions can be mapped back with
  :meth:`Normalization.denormalize_targets` (an RMSE in original units is ``rmse * target_std``).

Validation split: :func:`train_val_split` holds out a seeded, stratified fraction of a training
set (the BMRS paper, Wright et al. NeurIPS 2024, uses 80/20 of the training set).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import logging
import math
import os
import pickle
import shutil
import tarfile
import urllib.error
import urllib.request
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import TensorDataset

__all__ = [
    "ENV_VAR",
    "CorruptFileError",
    "DatasetInfo",
    "LabeledDataset",
    "Normalization",
    "Split",
    "Task",
    "available_datasets",
    "download_dataset",
    "load_dataset",
    "resolve_root",
    "train_val_split",
]

logger = logging.getLogger(__name__)

ENV_VAR = "PYRO_PRUNE_DATA"
"""Environment variable naming the folder that holds the data sets."""


# --------------------------------------------------------------------------------------------
# Public types
# --------------------------------------------------------------------------------------------


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
# --------------------------------------------------------------------------------------------

# Published md5 values, keyed by path relative to the data root.
_KNOWN_MD5: dict[str, str] = {
    "mnist/train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "mnist/train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "mnist/t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "mnist/t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    "fashion-mnist/train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "fashion-mnist/train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "fashion-mnist/t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "fashion-mnist/t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    "cifar10/cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
    "cifar-10-batches-py/data_batch_1": "c99cafc152244af753f735de768cd75f",
    "cifar-10-batches-py/data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "cifar-10-batches-py/data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "cifar-10-batches-py/data_batch_4": "634d18415352ddfa80567beed471001a",
    "cifar-10-batches-py/data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "cifar-10-batches-py/test_batch": "40351d587109b95175f43aff81a1287e",
}

_REDOWNLOAD_HINT = "delete it and re-download (download=True), or check the path"


def _md5(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _verify_md5(path: Path, key: str) -> None:
    """Compare ``path`` with the published md5 stored under ``key`` in ``_KNOWN_MD5``."""
    expected = _KNOWN_MD5.get(key)
    if expected is None:
        warnings.warn(
            f"{path}: no published checksum is known for this file (only the published "
            "archives are checksummed); only its structure was checked",
            UserWarning,
            stacklevel=4,
        )
        return
    got = _md5(path)
    if got != expected:
        raise CorruptFileError(
            f"{path}: md5 {got} differs from the published {expected}; the file is corrupt "
            f"or not the original, {_REDOWNLOAD_HINT}"
        )


def _read_maybe_gzip(path: Path) -> bytes:
    """Whole content of ``path``, decompressed when it ends in ``.gz``."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise CorruptFileError(
            f"{path}: cannot be decompressed ({exc}); the gzip file is truncated or corrupt, "
            f"{_REDOWNLOAD_HINT}"
        ) from exc


def _parse_idx_ubyte(buf: bytes, path: Path, ndim: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes with ``ndim`` dimensions.

    Header: magic ``0x0000 08 ndim`` (2049 for labels, 2051 for images), then ``ndim``
    big-endian uint32 sizes, then the row-major data.
    """
    expected_magic = (0x08 << 8) | ndim
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise CorruptFileError(
            f"{path}: only {len(buf)} bytes, shorter than the {header}-byte IDX header; "
            f"the file is truncated or corrupt, {_REDOWNLOAD_HINT}"
        )
    magic = int.from_bytes(buf[:4], "big")
    if magic != expected_magic:
        raise CorruptFileError(
            f"{path}: IDX magic number {magic}, expected {expected_magic} "
            f"({'labels' if ndim == 1 else 'images'}); wrong or corrupt file, {_REDOWNLOAD_HINT}"
        )
    dims = tuple(int.from_bytes(buf[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    count = math.prod(dims)
    if len(buf) < header + count:
        raise CorruptFileError(
            f"{path}: header announces shape {dims} ({header + count} bytes) but the content "
            f"has {len(buf)} bytes; the file is truncated, {_REDOWNLOAD_HINT}"
        )
    if len(buf) > header + count:
        raise CorruptFileError(
            f"{path}: {len(buf) - header - count} unexpected bytes after the data of shape "
            f"{dims}; the file is corrupt, {_REDOWNLOAD_HINT}"
        )
    return np.frombuffer(buf, dtype=np.uint8, count=count, offset=header).reshape(dims)


def _images_to_float(pixels: np.ndarray, scale: float) -> Tensor:
    """uint8 (or small-integer) array -> float32 tensor in [0, 1]; one conversion, in place."""
    out = torch.from_numpy(pixels.astype(np.float32))
    out.div_(scale)
    return out


def _standardize_channels(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> None:
    """In place: ``x[:, c] = (x[:, c] - mean[c]) / std[c]`` for ``x`` of shape [N, C, ...]."""
    shape = (1, len(mean)) + (1,) * (x.dim() - 2)
    x.sub_(torch.tensor(mean, dtype=x.dtype).view(shape))
    x.div_(torch.tensor(std, dtype=x.dtype).view(shape))


# --------------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------------


def _fetch(url: str, dest: Path, timeout: float = 60.0) -> None:
    """Download ``url`` to ``dest`` (urllib only). Replaced in the tests."""
    request = urllib.request.Request(url, headers={"User-Agent": "pyro_prune"})
    with urllib.request.urlopen(request, timeout=timeout) as response, open(dest, "wb") as out:
        shutil.copyfileobj(response, out, length=1 << 20)


def _download_file(urls: Sequence[str], dest: Path, md5_key: str) -> None:
    """Fetch ``dest`` from the first mirror that serves it with the published md5."""
    expected = _KNOWN_MD5[md5_key]
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")
    failures: list[str] = []
    bad_checksum = False
    for url in urls:
        logger.info("downloading %s -> %s", url, dest)
        try:
            _fetch(url, partial)
        except (OSError, urllib.error.URLError) as exc:
            failures.append(f"{url}: {exc}")
            partial.unlink(missing_ok=True)
            continue
        got = _md5(partial)
        if got != expected:
            bad_checksum = True
            failures.append(f"{url}: md5 {got} differs from the published {expected}")
            partial.unlink(missing_ok=True)
            continue
        os.replace(partial, dest)
        return
    detail = "; ".join(failures)
    if bad_checksum:
        raise CorruptFileError(f"{dest}: download failed the md5 checksum check ({detail})")
    raise OSError(f"{dest}: could not be downloaded from any mirror ({detail})")


# --------------------------------------------------------------------------------------------
# Sources: one small class per file format, registered by name
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Options:
    split: Split
    root: Path | None
    split_index: int
    normalize: bool
    verify: bool


_Loaded = tuple[Tensor, Tensor, DatasetInfo]


class _Source:
    """Base of the registry entries: one per data set (or per file format)."""

    name: str
    needs_root: bool = True
    can_download: bool = False

    def load(self, opts: _Options) -> _Loaded:
        raise NotImplementedError

    def download(self, root: Path) -> None:
        raise ValueError(
            f"data set {self.name!r} cannot be downloaded automatically; place its files "
            f"under the data root as described in pyro_prune.data"
        )


def _missing(path: Path, name: str, can_download: bool) -> FileNotFoundError:
    hint = (
        "pass download=True to fetch it"
        if can_download
        else "copy the files there (no automatic download for this data set)"
    )
    return FileNotFoundError(
        f"{path} not found for data set {name!r}; check root= / ${ENV_VAR}, or {hint}"
    )


_DIGIT_NAMES = tuple(str(i) for i in range(10))


class _DigitsSource(_Source):
    """scikit-learn's bundled UCI optical digits (8x8, values 0..16); no files needed."""

    name = "digits"
    needs_root = False
    test_fraction = 0.2
    seed = 0

    def load(self, opts: _Options) -> _Loaded:
        from sklearn.datasets import load_digits  # imported lazily: sklearn is slow to import

        bunch = load_digits()
        labels = np.asarray(bunch.target, dtype=np.int64)
        pixels = np.asarray(bunch.data).reshape(-1, 1, 8, 8)
        train_idx, test_idx = _split_indices(labels, self.test_fraction, self.seed, True)
        idx = train_idx if opts.split is Split.TRAIN else test_idx
        x = _images_to_float(pixels[idx], 16.0)
        normalization = None
        if opts.normalize:
            train_pixels = pixels[train_idx].astype(np.float64) / 16.0
            mean, std = float(train_pixels.mean()), float(train_pixels.std())
            _standardize_channels(x, (mean,), (std,))
            normalization = Normalization((mean,), (std,), input_scale=16.0)
        info = DatasetInfo(
            name=self.name,
            split=opts.split,
            task=Task.CLASSIFICATION,
            input_shape=(1, 8, 8),
            num_classes=10,
            target_dim=None,
            normalization=normalization,
            class_names=_DIGIT_NAMES,
        )
        return x, torch.from_numpy(labels[idx].copy()), info


@dataclass(frozen=True)
class _IdxSource(_Source):
    """MNIST-style IDX files: ``<root>/<folder>/{train,t10k}-{images-idx3,labels-idx1}-ubyte``."""

    name: str
    folder: str
    mirrors: tuple[str, ...]
    mean: float
    std: float
    class_names: tuple[str, ...]
    counts: tuple[tuple[Split, int], ...] = ((Split.TRAIN, 60000), (Split.TEST, 10000))
    can_download: bool = True

    @staticmethod
    def _stems(split: Split) -> tuple[str, str]:
        prefix = "train" if split is Split.TRAIN else "t10k"
        return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"

    def _find(self, root: Path, stem: str) -> Path:
        folder = root / self.folder
        dotted = stem.replace("-idx", ".idx")  # some copies name them train-images.idx3-ubyte
        for candidate in (f"{stem}.gz", stem, f"{dotted}.gz", dotted):
            path = folder / candidate
            if path.is_file():
                return path
        raise _missing(folder / f"{stem}.gz", self.name, self.can_download)

    def load(self, opts: _Options) -> _Loaded:
        assert opts.root is not None
        image_stem, label_stem = self._stems(opts.split)
        image_path = self._find(opts.root, image_stem)
        label_path = self._find(opts.root, label_stem)
        if opts.verify:
            for path in (label_path, image_path):
                _verify_md5(path, f"{self.folder}/{path.name}")

        labels = _parse_idx_ubyte(_read_maybe_gzip(label_path), label_path, ndim=1)
        expected_n = dict(self.counts)[opts.split]
        if labels.shape[0] != expected_n:
            raise CorruptFileError(
                f"{label_path}: {labels.shape[0]} labels, but the {self.name} "
                f"{opts.split.value} split has {expected_n}; wrong or corrupt file"
            )
        if labels.max(initial=0) >= len(self.class_names):
            raise CorruptFileError(
                f"{label_path}: label {int(labels.max())} outside 0..{len(self.class_names) - 1}"
            )
        buf = _read_maybe_gzip(image_path)
        images = _parse_idx_ubyte(buf, image_path, ndim=3)
        if images.shape[0] != labels.shape[0]:
            raise CorruptFileError(
                f"{image_path}: {images.shape[0]} images but {label_path.name} has "
                f"{labels.shape[0]} labels; the counts must match"
            )
        if images.shape[1:] != (28, 28):
            raise CorruptFileError(f"{image_path}: images are {images.shape[1:]}, expected 28x28")
        x = _images_to_float(images, 255.0).unsqueeze_(1)
        del buf, images
        normalization = None
        if opts.normalize:
            _standardize_channels(x, (self.mean,), (self.std,))
            normalization = Normalization(
                (self.mean,), (self.std,), input_scale=255.0, statistics="published constants"
            )
        info = DatasetInfo(
            name=self.name,
            split=opts.split,
            task=Task.CLASSIFICATION,
            input_shape=(1, 28, 28),
            num_classes=len(self.class_names),
            target_dim=None,
            normalization=normalization,
            source_files=(image_path, label_path),
            class_names=self.class_names,
        )
        return x, torch.from_numpy(labels.astype(np.int64)), info

    def download(self, root: Path) -> None:
        for split in (Split.TRAIN, Split.TEST):
            for stem in self._stems(split):
                try:
                    self._find(root, stem)
                    continue
                except FileNotFoundError:
                    pass
                filename = f"{stem}.gz"
                _download_file(
                    [mirror + filename for mirror in self.mirrors],
                    root / self.folder / filename,
                    f"{self.folder}/{filename}",
                )


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that only builds what a CIFAR-10 batch holds: dicts, lists, bytes, arrays."""

    _ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


def _entry(batch: dict[Any, Any], key: str) -> Any:
    if key.encode() in batch:
        return batch[key.encode()]
    return batch.get(key)


_CIFAR_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


class _CifarSource(_Source):
    """CIFAR-10 python version: pickle dicts with ``data`` uint8 [n, 3072] and ``labels``."""

    name = "cifar10"
    can_download = True
    folder = "cifar-10-batches-py"
    archive = "cifar10/cifar-10-python.tar.gz"
    urls = ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",)
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)

    def _batch_dir(self, root: Path) -> Path:
        for candidate in (root / "cifar10" / self.folder, root / self.folder):
            if candidate.is_dir():
                return candidate
        raise _missing(root / "cifar10" / self.folder, self.name, self.can_download)

    @staticmethod
    def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
        try:
            with open(path, "rb") as f:
                batch = _CifarUnpickler(f, encoding="bytes").load()
        except Exception as exc:  # damaged pickles fail in many ways (frame sizes, opcodes)
            raise CorruptFileError(
                f"{path}: not a readable CIFAR-10 batch ({exc}); the file is truncated or "
                f"corrupt, {_REDOWNLOAD_HINT}"
            ) from exc
        if not isinstance(batch, dict):
            raise CorruptFileError(f"{path}: expected a pickled dict, got {type(batch).__name__}")
        data, labels = _entry(batch, "data"), _entry(batch, "labels")
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
            raise CorruptFileError(f"{path}: 'data' must be a uint8 array of shape [n, 3072]")
        if data.shape[1] != 3 * 32 * 32:
            raise CorruptFileError(f"{path}: 'data' rows have {data.shape[1]} values, not 3072")
        if data.shape[0] == 0:
            raise CorruptFileError(f"{path}: the batch holds no images")
        if labels is None or not hasattr(labels, "__len__") or len(labels) != data.shape[0]:
            count = len(labels) if hasattr(labels, "__len__") else 0
            raise CorruptFileError(f"{path}: {count} labels for {data.shape[0]} images")
        try:
            raw_labels = np.asarray(labels)
        except (ValueError, TypeError) as exc:
            raise CorruptFileError(f"{path}: labels are not a list of integers ({exc})") from exc
        if raw_labels.dtype.kind not in "iu" or raw_labels.ndim != 1:
            raise CorruptFileError(
                f"{path}: labels must be integers 0..9, found {raw_labels.dtype} values of "
                f"shape {raw_labels.shape}"
            )
        label_array = raw_labels.astype(np.int64)
        if label_array.min() < 0 or label_array.max() > 9:
            raise CorruptFileError(
                f"{path}: labels outside 0..9 (from {label_array.min()} to {label_array.max()})"
            )
        return data, label_array

    def load(self, opts: _Options) -> _Loaded:
        assert opts.root is not None
        folder = self._batch_dir(opts.root)
        names = (
            [f"data_batch_{i}" for i in range(1, 6)]
            if opts.split is Split.TRAIN
            else ["test_batch"]
        )
        paths = [folder / n for n in names]
        for path in paths:
            if not path.is_file():
                raise _missing(path, self.name, self.can_download)
            if opts.verify:
                _verify_md5(path, f"{self.folder}/{path.name}")
        batches = [self._read_batch(p) for p in paths]
        sizes = {p.name: b[0].shape[0] for p, b in zip(paths, batches)}
        if len(set(sizes.values())) > 1:
            raise CorruptFileError(
                f"{folder}: the training batches differ in size ({sizes}); one is truncated, "
                f"{_REDOWNLOAD_HINT}"
            )
        pixels = np.concatenate([b[0] for b in batches]) if len(batches) > 1 else batches[0][0]
        labels = np.concatenate([b[1] for b in batches])
        del batches
        # each row: 1024 red, then 1024 green, then 1024 blue values, each 32x32 row-major
        x = _images_to_float(pixels.reshape(-1, 3, 32, 32), 255.0)
        del pixels
        normalization = None
        if opts.normalize:
            _standardize_channels(x, self.mean, self.std)
            normalization = Normalization(
                self.mean, self.std, input_scale=255.0, statistics="published constants"
            )
        info = DatasetInfo(
            name=self.name,
            split=opts.split,
            task=Task.CLASSIFICATION,
            input_shape=(3, 32, 32),
            num_classes=10,
            target_dim=None,
            normalization=normalization,
            source_files=tuple(paths),
            class_names=_CIFAR_CLASSES,
        )
        return x, torch.from_numpy(labels), info

    def download(self, root: Path) -> None:
        try:
            self._batch_dir(root)
            return
        except FileNotFoundError:
            pass
        archive = root / self.archive
        if not archive.is_file():
            _download_file(self.urls, archive, self.archive)
        else:
            _verify_md5(archive, self.archive)
        _safe_extract(archive, archive.parent)
        self._batch_dir(root)


def _safe_extract(archive: Path, dest: Path) -> None:
    """Extract a .tar.gz, refusing links, devices and paths that leave ``dest``."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            for member in members:
                parts = PurePosixPath(member.name).parts
                if (
                    member.name.startswith("/")
                    or ".." in parts
                    or not (member.isfile() or member.isdir())
                ):
                    raise CorruptFileError(f"{archive}: refusing unsafe member {member.name!r}")
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:  # pragma: no cover - Python < 3.11.4
                tar.extractall(dest, members=members)
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise CorruptFileError(
            f"{archive}: cannot be extracted ({exc}); truncated or corrupt, {_REDOWNLOAD_HINT}"
        ) from exc


@dataclass(frozen=True)
class _UciSource(_Source):
    """A UCI regression set in the layout of the PBP / dropout-uncertainty benchmark."""

    name: str
    folder: str
    rows: int | None = None
    features: int | None = None

    def _read_table(self, path: Path) -> np.ndarray:
        """A whitespace-separated table of finite numbers as float64 (at least 1-D)."""
        if not path.is_file():
            raise _missing(path, self.name, False)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # numpy only warns about an empty file
                table = np.loadtxt(path, dtype=np.float64, ndmin=1)
        except (ValueError, UserWarning) as exc:
            raise CorruptFileError(f"{path}: not a numeric table ({exc}); corrupt file") from exc
        bad = np.argwhere(~np.isfinite(table))
        if bad.size:  # one nan / inf token would turn a whole standardised column into NaN
            where = (f"line {bad[0][0] + 1}, column {bad[0][1] + 1}" if table.ndim == 2
                     else f"line {bad[0][0] + 1}")
            raise CorruptFileError(
                f"{path}: {len(bad)} value(s) are NaN or infinite (first at {where}: "
                f"{table[tuple(bad[0])]}); corrupt file"
            )
        return table

    def _read_indices(self, path: Path) -> np.ndarray:
        """One non-negative integer per line, none repeated."""
        values = self._read_table(path)
        if values.ndim != 1 or not np.all(values == np.round(values)):
            raise CorruptFileError(f"{path}: expected one integer per line")
        if values.size and values.min() < 0:
            raise CorruptFileError(f"{path}: negative index {int(values.min())}")
        if np.unique(values).size != values.size:
            raise CorruptFileError(f"{path}: repeated indices")
        return values.astype(np.int64)

    def n_splits(self, folder: Path) -> int:
        path = folder / "n_splits.txt"
        if path.is_file():
            return int(self._read_indices(path)[0])
        return len(list(folder.glob("index_train_*.txt")))

    def load(self, opts: _Options) -> _Loaded:
        assert opts.root is not None
        folder = opts.root / "uci" / self.folder
        if not folder.is_dir():
            raise _missing(folder, self.name, False)
        n_splits = self.n_splits(folder)
        if not 0 <= opts.split_index < n_splits:
            raise ValueError(
                f"split_index={opts.split_index} is out of range for {self.name!r}, which has "
                f"n_splits={n_splits} (valid: 0..{n_splits - 1})"
            )
        data_path = folder / "data.txt"
        data = self._read_table(data_path)
        if data.ndim != 2:
            raise CorruptFileError(f"{data_path}: expected a table with one example per row")
        if self.rows is not None and data.shape[0] != self.rows:
            raise CorruptFileError(f"{data_path}: {data.shape[0]} rows, expected {self.rows}")
        features = self._read_indices(folder / "index_features.txt")
        target = self._read_indices(folder / "index_target.txt")
        if self.features is not None and features.size != self.features:
            raise CorruptFileError(
                f"{folder / 'index_features.txt'}: {features.size} features, "
                f"expected {self.features}"
            )
        if target.size != 1 or np.any(features >= data.shape[1]) or target[0] >= data.shape[1]:
            raise CorruptFileError(f"{folder}: feature / target column indices do not fit data.txt")
        if features.size == 0:
            raise CorruptFileError(f"{folder / 'index_features.txt'}: no feature columns")
        if target[0] in features:  # the target would leak into the inputs
            raise CorruptFileError(
                f"{folder / 'index_features.txt'}: names the target column {int(target[0])} "
                f"(index_target.txt) as a feature"
            )
        k = opts.split_index
        train_path, test_path = folder / f"index_train_{k}.txt", folder / f"index_test_{k}.txt"
        train_rows, test_rows = self._read_indices(train_path), self._read_indices(test_path)
        for path, rows in ((train_path, train_rows), (test_path, test_rows)):
            if rows.size == 0 or rows.min() < 0 or rows.max() >= data.shape[0]:
                raise CorruptFileError(f"{path}: row indices outside 0..{data.shape[0] - 1}")
            if np.unique(rows).size != rows.size:
                raise CorruptFileError(f"{path}: repeated row indices")
        if np.intersect1d(train_rows, test_rows).size:
            raise CorruptFileError(f"{train_path} and {test_path} share rows")

        rows = train_rows if opts.split is Split.TRAIN else test_rows
        x = data[np.ix_(rows, features)]
        y = data[rows, target[0]][:, None]
        normalization = None
        if opts.normalize:
            x_train = data[np.ix_(train_rows, features)]
            y_train = data[train_rows, target[0]]
            x_mean, x_std = x_train.mean(axis=0), x_train.std(axis=0)
            # a constant column (e.g. two in naval) gets std 1: its computed std is 0 or a
            # rounding residue such as 1e-16, which would blow it up to +-1
            x_std = np.where(np.ptp(x_train, axis=0) > 0, x_std, 1.0)
            y_mean, y_std = float(y_train.mean()), float(y_train.std())
            if np.ptp(y_train) == 0:
                raise CorruptFileError(f"{data_path}: the target is constant on the train split")
            x = (x - x_mean) / x_std
            y = (y - y_mean) / y_std
            normalization = Normalization(
                tuple(float(v) for v in x_mean),
                tuple(float(v) for v in x_std),
                target_mean=y_mean,
                target_std=y_std,
            )
        info = DatasetInfo(
            name=self.name,
            split=opts.split,
            task=Task.REGRESSION,
            input_shape=(int(features.size),),
            num_classes=None,
            target_dim=1,
            normalization=normalization,
            source_files=(data_path, train_path if opts.split is Split.TRAIN else test_path),
            split_index=k,
        )
        return (
            torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
            torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32)),
            info,
        )


_FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# (folder, rows, features, short aliases)
_UCI_TABLE: tuple[tuple[str, int, int, tuple[str, ...]], ...] = (
    ("boston-housing", 506, 13, ("boston",)),
    ("concrete", 1030, 8, ()),
    ("energy", 768, 8, ()),
    ("kin8nm", 8192, 8, ()),
    ("naval-propulsion-plant", 11934, 16, ("naval",)),
    ("power-plant", 9568, 4, ("power",)),
    ("protein-tertiary-structure", 45730, 9, ("protein",)),
    ("wine-quality-red", 1599, 11, ("wine",)),
    ("yacht", 308, 6, ()),
)


def _build_registry() -> tuple[dict[str, _Source], dict[str, str]]:
    sources: list[_Source] = [
        _DigitsSource(),
        _IdxSource(
            name="mnist",
            folder="mnist",
            mirrors=(
                "https://ossci-datasets.s3.amazonaws.com/mnist/",
                "http://yann.lecun.com/exdb/mnist/",
            ),
            mean=0.1307,
            std=0.3081,
            class_names=_DIGIT_NAMES,
        ),
        _IdxSource(
            name="fashion-mnist",
            folder="fashion-mnist",
            mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
            mean=0.2860,
            std=0.3530,
            class_names=_FASHION_CLASSES,
        ),
        _CifarSource(),
    ]
    aliases = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist"}
    aliases["cifar-10"] = "cifar10"
    for folder, rows, features, short in _UCI_TABLE:
        sources.append(
            _UciSource(name=f"uci/{folder}", folder=folder, rows=rows, features=features)
        )
        for alias in short:
            aliases[f"uci/{alias}"] = f"uci/{folder}"
    return {s.name: s for s in sources}, aliases


_REGISTRY, _ALIASES = _build_registry()


def available_datasets() -> tuple[str, ...]:
    """Canonical names accepted by :func:`load_dataset` (aliases such as ``uci/boston`` too)."""
    return tuple(_REGISTRY)


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------


def resolve_root(root: str | os.PathLike[str] | None = None) -> Path | None:
    """``root`` if given, else ``$PYRO_PRUNE_DATA``, else ``None``."""
    if root is None:
        env = os.environ.get(ENV_VAR, "").strip()
        return Path(env).expanduser() if env else None
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a path or None, got {type(root).__name__}")
    return Path(root).expanduser()


def _lookup(name: object, root: Path | None) -> _Source:
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, got {type(name).__name__}")
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key in _REGISTRY:
        return _REGISTRY[key]
    # any other folder in the same UCI layout, e.g. a user's own split of a UCI set
    if key.startswith("uci/") and root is not None:
        folder = name.strip()[4:]
        if folder and "/" not in folder and (root / "uci" / folder / "data.txt").is_file():
            return _UciSource(name=f"uci/{folder}", folder=folder)
    raise ValueError(
        f"unknown data set name={name!r}; known names: {', '.join(available_datasets())} "
        f"(aliases: {', '.join(sorted(_ALIASES))})"
    )


def _parse_split(split: object) -> Split:
    if isinstance(split, Split):
        value = split
    elif isinstance(split, str) and split.strip().lower() in ("train", "test"):
        value = Split(split.strip().lower())
    else:
        raise ValueError(
            f"split={split!r} is not one of 'train', 'test'; a validation set is made from the "
            f"training set with train_val_split(load_dataset(name, 'train'))"
        )
    if value is Split.VAL:
        raise ValueError("split='val' is not stored on disk; use train_val_split on 'train'")
    return value


def _require_root(source: _Source, root: Path | None) -> Path:
    if root is None:
        raise ValueError(
            f"data set {source.name!r} is read from files, but no data folder is set: set the "
            f"environment variable {ENV_VAR} to the folder that holds the data sets, or pass "
            f"root=..."
        )
    return root


def download_dataset(name: str, root: str | os.PathLike[str] | None = None) -> Path:
    """Fetch the published files of ``mnist``, ``fashion-mnist`` or ``cifar10`` into ``root``
    (default ``$PYRO_PRUNE_DATA``) and check their md5. Files already present are kept.
    Returns the data root."""
    resolved = resolve_root(root)
    source = _lookup(name, resolved)
    if not source.needs_root:
        raise ValueError(f"data set {source.name!r} is embedded and needs no download")
    path = _require_root(source, resolved)
    source.download(path)
    return path


def load_dataset(
    name: str,
    split: str | Split = "train",
    root: str | os.PathLike[str] | None = None,
    *,
    download: bool = False,
    split_index: int = 0,
    normalize: bool = True,
    flatten: bool = False,
    verify: bool = False,
) -> LabeledDataset:
    """Load a data set as a :class:`LabeledDataset` (see the module docstring for names).

    Args:
        name: ``digits``, ``mnist``, ``fashion-mnist``, ``cifar10`` or ``uci/<name>``.
        split: ``"train"`` or ``"test"``.
        root: data folder; default ``$PYRO_PRUNE_DATA``. Not needed for ``digits``.
        download: fetch missing published files (MNIST, Fashion-MNIST, CIFAR-10) first.
        split_index: which standard train/test split of a UCI set (``0 .. n_splits - 1``).
        normalize: standardise inputs (and UCI targets); see :class:`Normalization`.
        flatten: return inputs as ``[N, prod(input_shape)]``.
        verify: check the md5 of files with a published checksum (slower).

    Raises:
        ValueError: unknown name or split, UCI ``split_index`` out of range, no root.
        FileNotFoundError: the files are not where they should be.
        CorruptFileError: a file is truncated, malformed or fails its checksum.
    """
    opts_split = _parse_split(split)
    if isinstance(split_index, bool) or not isinstance(split_index, int):
        raise TypeError(f"split_index must be an int, got {type(split_index).__name__}")
    if split_index < 0:
        raise ValueError(f"split_index must be >= 0, got {split_index}")
    resolved = resolve_root(root)
    source = _lookup(name, resolved)
    if source.needs_root:
        resolved = _require_root(source, resolved)
        if download and source.can_download:
            source.download(resolved)
    if split_index != 0 and not isinstance(source, _UciSource):
        raise ValueError(f"split_index applies to UCI sets only, not {source.name!r}")
    opts = _Options(
        split=opts_split,
        root=resolved,
        split_index=split_index,
        normalize=bool(normalize),
        verify=bool(verify),
    )
    inputs, targets, info = source.load(opts)
    if flatten and inputs.dim() > 2:
        inputs = inputs.reshape(inputs.shape[0], -1)
        info = dataclasses.replace(info, input_shape=(inputs.shape[1],))
    return LabeledDataset(inputs, targets, info)


# --------------------------------------------------------------------------------------------
# Validation split
# --------------------------------------------------------------------------------------------


def _split_indices(
    labels: np.ndarray, fraction: float, seed: int, stratify: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (kept, held-out) indices; ``round(fraction * n)`` held out.

    Stratified: each class gives ``fraction`` of its examples, rounded by largest remainder so
    that the total is exact. Uses ``numpy.random.RandomState(seed)``, whose stream NumPy keeps
    fixed across versions, so a split never changes under an upgrade.
    """
    n = len(labels)
    n_held = math.floor(fraction * n + 0.5)
    rng = np.random.RandomState(seed)
    if not stratify:
        held = rng.permutation(n)[:n_held]
    else:
        classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        exact = fraction * counts
        quota = np.floor(exact).astype(np.int64)
        remainder = n_held - int(quota.sum())
        if remainder > 0:  # largest fractional parts first, ties by class order
            order = np.lexsort((np.arange(len(classes)), -(exact - quota)))
            quota[order[:remainder]] += 1
        held_parts = []
        for c in range(len(classes)):
            members = np.flatnonzero(inverse == c)
            held_parts.append(members[rng.permutation(members.size)[: quota[c]]])
        held = np.concatenate(held_parts)
    mask = np.zeros(n, dtype=bool)
    mask[held] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def train_val_split(
    dataset: TensorDataset,
    val_fraction: float = 0.2,
    seed: int = 0,
    stratify: bool = True,
) -> tuple[TensorDataset, TensorDataset]:
    """Split a training set into (train, val), seeded; BMRS (Wright et al., 2024) uses 80/20.

    ``round(val_fraction * N)`` examples go to ``val``. With ``stratify`` and integer class
    targets each class contributes the same fraction (exact up to rounding); regression data
    is split uniformly at random. Both parts keep the original order. A
    :class:`LabeledDataset` gives :class:`LabeledDataset` parts with the same ``info`` (the
    validation part has ``info.split == Split.VAL``); any other ``TensorDataset`` gives
    ``TensorDataset`` parts. The tensors are copied, so the input can be dropped afterwards.
    """
    if not isinstance(dataset, TensorDataset):
        raise TypeError(f"dataset must be a TensorDataset, got {type(dataset).__name__}")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)):
        raise TypeError(f"val_fraction must be a float, got {type(val_fraction).__name__}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    n = len(dataset)
    n_val = math.floor(val_fraction * n + 0.5)
    if n_val < 1 or n_val > n - 1:
        raise ValueError(
            f"val_fraction={val_fraction} of {n} examples leaves an empty train or val part"
        )
    labels = np.zeros(n, dtype=np.int64)
    classification = False
    if len(dataset.tensors) > 1:
        targets = dataset.tensors[1]
        classification = not targets.is_floating_point() and targets.dim() == 1
        if classification:
            labels = targets.detach().cpu().numpy()
    train_idx, val_idx = _split_indices(labels, val_fraction, seed, stratify and classification)

    def part(idx: np.ndarray, split: Split | None) -> TensorDataset:
        index = torch.from_numpy(idx)
        tensors = [t.index_select(0, index.to(t.device)) for t in dataset.tensors]
        if isinstance(dataset, LabeledDataset):
            info = dataset.info if split is None else dataclasses.replace(dataset.info, split=split)
            return LabeledDataset(tensors[0], tensors[1], info)
        return TensorDataset(*tensors)

    return part(train_idx, None), part(val_idx, Split.VAL)
