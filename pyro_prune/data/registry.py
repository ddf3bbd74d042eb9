"""The data sets by name: the registry of families and the entry points that load or fetch them."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from pyro_prune.data.cifar import CifarSource
from pyro_prune.data.digits import DigitsSource
from pyro_prune.data.files import ENV_VAR, LoadOptions, Source
from pyro_prune.data.idx import FASHION_MNIST, MNIST
from pyro_prune.data.types import LabeledDataset, Split
from pyro_prune.data.uci import UCI_ALIASES, UCI_SOURCES, UciSource

__all__ = ["available_datasets", "download_dataset", "load_dataset", "resolve_root"]


_SOURCES: tuple[Source, ...] = (DigitsSource(), MNIST, FASHION_MNIST, CifarSource(), *UCI_SOURCES)
_REGISTRY: dict[str, Source] = {s.name: s for s in _SOURCES}
_ALIASES: dict[str, str] = {
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    **UCI_ALIASES,
}


def available_datasets() -> tuple[str, ...]:
    """Canonical names accepted by :func:`load_dataset` (aliases such as ``uci/boston`` too)."""
    return tuple(_REGISTRY)


def resolve_root(root: str | os.PathLike[str] | None = None) -> Path | None:
    """``root`` if given, else ``$PYRO_PRUNE_DATA``, else ``None``."""
    if root is None:
        env = os.environ.get(ENV_VAR, "").strip()
        return Path(env).expanduser() if env else None
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a path or None, got {type(root).__name__}")
    return Path(root).expanduser()


def _lookup(name: object, root: Path | None) -> Source:
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
            return UciSource(name=f"uci/{folder}", folder=folder)
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


def _require_root(source: Source, root: Path | None) -> Path:
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
    if split_index != 0 and not isinstance(source, UciSource):
        raise ValueError(f"split_index applies to UCI sets only, not {source.name!r}")
    opts = LoadOptions(
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
