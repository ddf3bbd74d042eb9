"""CIFAR-10, python version: pickled batches read by a restricted unpickler."""

from __future__ import annotations

import pickle
import tarfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from pyro_prune.data.files import (
    REDOWNLOAD_HINT,
    Loaded,
    LoadOptions,
    Source,
    download_file,
    loaded_images,
    verify_md5,
)
from pyro_prune.data.types import CorruptFileError, Split

__all__ = ["CIFAR_CLASSES", "CifarSource", "CifarUnpickler", "safe_extract"]


class CifarUnpickler(pickle.Unpickler):
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


CIFAR_CLASSES = (
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


class CifarSource(Source):
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
        raise self.missing(root / "cifar10" / self.folder)

    @staticmethod
    def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
        try:
            with open(path, "rb") as f:
                batch = CifarUnpickler(f, encoding="bytes").load()
        except Exception as exc:  # damaged pickles fail in many ways (frame sizes, opcodes)
            raise CorruptFileError(
                f"{path}: not a readable CIFAR-10 batch ({exc}); the file is truncated or "
                f"corrupt, {REDOWNLOAD_HINT}"
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

    def load(self, opts: LoadOptions) -> Loaded:
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
                raise self.missing(path)
            if opts.verify:
                verify_md5(path, f"{self.folder}/{path.name}")
        batches = [self._read_batch(p) for p in paths]
        sizes = {p.name: b[0].shape[0] for p, b in zip(paths, batches)}
        if len(set(sizes.values())) > 1:
            raise CorruptFileError(
                f"{folder}: the training batches differ in size ({sizes}); one is truncated, "
                f"{REDOWNLOAD_HINT}"
            )
        pixels = np.concatenate([b[0] for b in batches]) if len(batches) > 1 else batches[0][0]
        labels = np.concatenate([b[1] for b in batches])
        del batches
        # each row: 1024 red, then 1024 green, then 1024 blue values, each 32x32 row-major
        return loaded_images(
            pixels.reshape(-1, 3, 32, 32), labels, scale=255.0, name=self.name, split=opts.split,
            class_names=CIFAR_CLASSES, normalize=opts.normalize, mean=self.mean, std=self.std,
            statistics="published constants", source_files=paths,
        )

    def download(self, root: Path) -> None:
        try:
            self._batch_dir(root)
            return
        except FileNotFoundError:
            pass
        archive = root / self.archive
        if not archive.is_file():
            download_file(self.urls, archive, self.archive)
        else:
            verify_md5(archive, self.archive)
        safe_extract(archive, archive.parent)
        self._batch_dir(root)


def safe_extract(archive: Path, dest: Path) -> None:
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
            f"{archive}: cannot be extracted ({exc}); truncated or corrupt, {REDOWNLOAD_HINT}"
        ) from exc
