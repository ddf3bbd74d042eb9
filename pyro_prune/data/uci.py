"""UCI regression sets in the layout of the PBP benchmark (Hernandez-Lobato & Adams, 2015)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pyro_prune.data.files import Loaded, LoadOptions, Source
from pyro_prune.data.types import CorruptFileError, DatasetInfo, Normalization, Split, Task

__all__ = ["UCI_ALIASES", "UCI_SOURCES", "UCI_TABLE", "UciSource"]


@dataclass(frozen=True)
class UciSource(Source):
    """A UCI regression set in the layout of the PBP / dropout-uncertainty benchmark."""

    name: str
    folder: str
    rows: int | None = None
    features: int | None = None

    def _read_table(self, path: Path) -> np.ndarray:
        """A whitespace-separated table of finite numbers as float64 (at least 1-D)."""
        if not path.is_file():
            raise self.missing(path)
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

    def load(self, opts: LoadOptions) -> Loaded:
        assert opts.root is not None
        folder = opts.root / "uci" / self.folder
        if not folder.is_dir():
            raise self.missing(folder)
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


# (folder, rows, features, short aliases)
UCI_TABLE: tuple[tuple[str, int, int, tuple[str, ...]], ...] = (
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


#: Every known set, and its short aliases (``uci/boston``).
UCI_SOURCES = tuple(
    UciSource(name=f"uci/{folder}", folder=folder, rows=rows, features=features)
    for folder, rows, features, _ in UCI_TABLE
)
UCI_ALIASES = {
    f"uci/{alias}": f"uci/{folder}" for folder, _, _, short in UCI_TABLE for alias in short
}
