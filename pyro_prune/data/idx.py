"""MNIST-style IDX files: MNIST and Fashion-MNIST."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pyro_prune.data.digits import DIGIT_NAMES
from pyro_prune.data.files import (
    REDOWNLOAD_HINT,
    Loaded,
    LoadOptions,
    Source,
    download_file,
    loaded_images,
    read_maybe_gzip,
    verify_md5,
)
from pyro_prune.data.types import CorruptFileError, Split

__all__ = ["FASHION_CLASSES", "FASHION_MNIST", "MNIST", "IdxSource", "parse_idx_ubyte"]


def parse_idx_ubyte(buf: bytes, path: Path, ndim: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes with ``ndim`` dimensions.

    Header: magic ``0x0000 08 ndim`` (2049 for labels, 2051 for images), then ``ndim``
    big-endian uint32 sizes, then the row-major data.
    """
    expected_magic = (0x08 << 8) | ndim
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise CorruptFileError(
            f"{path}: only {len(buf)} bytes, shorter than the {header}-byte IDX header; "
            f"the file is truncated or corrupt, {REDOWNLOAD_HINT}"
        )
    magic = int.from_bytes(buf[:4], "big")
    if magic != expected_magic:
        raise CorruptFileError(
            f"{path}: IDX magic number {magic}, expected {expected_magic} "
            f"({'labels' if ndim == 1 else 'images'}); wrong or corrupt file, {REDOWNLOAD_HINT}"
        )
    dims = tuple(int.from_bytes(buf[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    count = math.prod(dims)
    if len(buf) < header + count:
        raise CorruptFileError(
            f"{path}: header announces shape {dims} ({header + count} bytes) but the content "
            f"has {len(buf)} bytes; the file is truncated, {REDOWNLOAD_HINT}"
        )
    if len(buf) > header + count:
        raise CorruptFileError(
            f"{path}: {len(buf) - header - count} unexpected bytes after the data of shape "
            f"{dims}; the file is corrupt, {REDOWNLOAD_HINT}"
        )
    return np.frombuffer(buf, dtype=np.uint8, count=count, offset=header).reshape(dims)


@dataclass(frozen=True)
class IdxSource(Source):
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
        raise self.missing(folder / f"{stem}.gz")

    def load(self, opts: LoadOptions) -> Loaded:
        assert opts.root is not None
        image_stem, label_stem = self._stems(opts.split)
        image_path = self._find(opts.root, image_stem)
        label_path = self._find(opts.root, label_stem)
        if opts.verify:
            for path in (label_path, image_path):
                verify_md5(path, f"{self.folder}/{path.name}")

        labels = parse_idx_ubyte(read_maybe_gzip(label_path), label_path, ndim=1)
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
        buf = read_maybe_gzip(image_path)
        images = parse_idx_ubyte(buf, image_path, ndim=3)
        if images.shape[0] != labels.shape[0]:
            raise CorruptFileError(
                f"{image_path}: {images.shape[0]} images but {label_path.name} has "
                f"{labels.shape[0]} labels; the counts must match"
            )
        if images.shape[1:] != (28, 28):
            raise CorruptFileError(f"{image_path}: images are {images.shape[1:]}, expected 28x28")
        del buf
        return loaded_images(
            images[:, None], labels, scale=255.0, name=self.name, split=opts.split,
            class_names=self.class_names, normalize=opts.normalize, mean=(self.mean,),
            std=(self.std,), statistics="published constants", source_files=(image_path, label_path),
        )

    def download(self, root: Path) -> None:
        for split in (Split.TRAIN, Split.TEST):
            for stem in self._stems(split):
                try:
                    self._find(root, stem)
                    continue
                except FileNotFoundError:
                    pass
                filename = f"{stem}.gz"
                download_file(
                    [mirror + filename for mirror in self.mirrors],
                    root / self.folder / filename,
                    f"{self.folder}/{filename}",
                )


FASHION_CLASSES = (
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


MNIST = IdxSource(
    name="mnist",
    folder="mnist",
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    mean=0.1307,
    std=0.3081,
    class_names=DIGIT_NAMES,
)
FASHION_MNIST = IdxSource(
    name="fashion-mnist",
    folder="fashion-mnist",
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    mean=0.2860,
    std=0.3530,
    class_names=FASHION_CLASSES,
)
