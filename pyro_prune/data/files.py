"""The one reader and checker of data files: checksums, (gzip) reading, downloads, tensors.

Every family module (:mod:`~pyro_prune.data.idx`, :mod:`~pyro_prune.data.cifar`,
:mod:`~pyro_prune.data.uci`, :mod:`~pyro_prune.data.digits`) reads its files through these
functions, so a damaged file always raises :class:`~pyro_prune.data.CorruptFileError` naming it
with the same hint, and a download is always checked against the published md5.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import urllib.error
import urllib.request
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pyro_prune.data.types import CorruptFileError, DatasetInfo, Normalization, Split, Task

logger = logging.getLogger("pyro_prune.data")

ENV_VAR = "PYRO_PRUNE_DATA"
"""Environment variable naming the folder that holds the data sets."""

__all__ = [
    "ENV_VAR",
    "KNOWN_MD5",
    "REDOWNLOAD_HINT",
    "LoadOptions",
    "Loaded",
    "Source",
    "download_file",
    "fetch",
    "images_to_float",
    "loaded_images",
    "md5",
    "missing_file_error",
    "read_maybe_gzip",
    "standardize_channels",
    "verify_md5",
]


# Published md5 values, keyed by path relative to the data root.
KNOWN_MD5: dict[str, str] = {
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

REDOWNLOAD_HINT = "delete it and re-download (download=True), or check the path"


def md5(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_md5(path: Path, key: str) -> None:
    """Compare ``path`` with the published md5 stored under ``key`` in ``KNOWN_MD5``."""
    expected = KNOWN_MD5.get(key)
    if expected is None:
        warnings.warn(
            f"{path}: no published checksum is known for this file (only the published "
            "archives are checksummed); only its structure was checked",
            UserWarning,
            stacklevel=4,
        )
        return
    got = md5(path)
    if got != expected:
        raise CorruptFileError(
            f"{path}: md5 {got} differs from the published {expected}; the file is corrupt "
            f"or not the original, {REDOWNLOAD_HINT}"
        )


def read_maybe_gzip(path: Path) -> bytes:
    """Whole content of ``path``, decompressed when it ends in ``.gz``."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise CorruptFileError(
            f"{path}: cannot be decompressed ({exc}); the gzip file is truncated or corrupt, "
            f"{REDOWNLOAD_HINT}"
        ) from exc


def images_to_float(pixels: np.ndarray, scale: float) -> Tensor:
    """uint8 (or small-integer) array -> float32 tensor in [0, 1]; one conversion, in place."""
    out = torch.from_numpy(pixels.astype(np.float32))
    out.div_(scale)
    return out


def standardize_channels(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> None:
    """In place: ``x[:, c] = (x[:, c] - mean[c]) / std[c]`` for ``x`` of shape [N, C, ...]."""
    shape = (1, len(mean)) + (1,) * (x.dim() - 2)
    x.sub_(torch.tensor(mean, dtype=x.dtype).view(shape))
    x.div_(torch.tensor(std, dtype=x.dtype).view(shape))


def loaded_images(
    pixels: np.ndarray,
    labels: np.ndarray,
    *,
    scale: float,
    name: str,
    split: Split,
    class_names: Sequence[str],
    normalize: bool,
    mean: Sequence[float],
    std: Sequence[float],
    statistics: str = "train split",
    source_files: Sequence[Path] = (),
) -> Loaded:
    """An image classification split as a source loads it: ``(x, y, info)``.

    ``pixels`` (``[N, C, H, W]`` integers in ``0..scale``) become float32 in [0, 1],
    standardised in place with ``mean``/``std`` per channel when ``normalize``; ``labels``
    become an int64 tensor; ``info`` describes the images.
    """
    x = images_to_float(pixels, scale)
    normalization = None
    if normalize:
        standardize_channels(x, mean, std)
        normalization = Normalization(
            tuple(mean), tuple(std), input_scale=scale, statistics=statistics
        )
    info = DatasetInfo(
        name=name,
        split=split,
        task=Task.CLASSIFICATION,
        input_shape=tuple(x.shape[1:]),
        num_classes=len(class_names),
        target_dim=None,
        normalization=normalization,
        source_files=tuple(source_files),
        class_names=tuple(class_names),
    )
    return x, torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)), info


def fetch(url: str, dest: Path, timeout: float = 60.0) -> None:
    """Download ``url`` to ``dest`` (urllib only). Replaced in the tests."""
    request = urllib.request.Request(url, headers={"User-Agent": "pyro_prune"})
    with urllib.request.urlopen(request, timeout=timeout) as response, open(dest, "wb") as out:
        shutil.copyfileobj(response, out, length=1 << 20)


def download_file(urls: Sequence[str], dest: Path, md5_key: str) -> None:
    """Fetch ``dest`` from the first mirror that serves it with the published md5."""
    expected = KNOWN_MD5[md5_key]
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")
    failures: list[str] = []
    bad_checksum = False
    for url in urls:
        logger.info("downloading %s -> %s", url, dest)
        try:
            fetch(url, partial)
        except (OSError, urllib.error.URLError) as exc:
            failures.append(f"{url}: {exc}")
            partial.unlink(missing_ok=True)
            continue
        got = md5(partial)
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


@dataclass(frozen=True)
class LoadOptions:
    split: Split
    root: Path | None
    split_index: int
    normalize: bool
    verify: bool


Loaded = tuple[Tensor, Tensor, DatasetInfo]


class Source:
    """Base of the registry entries: one per data set (or per file format)."""

    name: str
    needs_root: bool = True
    can_download: bool = False

    def load(self, opts: LoadOptions) -> Loaded:
        raise NotImplementedError

    def missing(self, path: Path) -> FileNotFoundError:
        """The error for a file or folder of this data set that is not there."""
        return missing_file_error(path, self.name, self.can_download)

    def download(self, root: Path) -> None:
        raise ValueError(
            f"data set {self.name!r} cannot be downloaded automatically; place its files "
            f"under the data root as described in pyro_prune.data"
        )


def missing_file_error(path: Path, name: str, can_download: bool) -> FileNotFoundError:
    hint = (
        "pass download=True to fetch it"
        if can_download
        else "copy the files there (no automatic download for this data set)"
    )
    return FileNotFoundError(
        f"{path} not found for data set {name!r}; check root= / ${ENV_VAR}, or {hint}"
    )
