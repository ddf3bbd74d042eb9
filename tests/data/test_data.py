"""Tests of pyro_prune.data on the real data files (under $PYRO_PRUNE_DATA) and on small
files written here in the same formats (CIFAR-10 batches, damaged IDX files, downloads)."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import re
import shutil
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from pyro_prune import data
from pyro_prune.data import (
    ENV_VAR,
    CorruptFileError,
    DatasetInfo,
    LabeledDataset,
    Normalization,
    Split,
    Task,
    available_datasets,
    files,
    load_dataset,
    train_val_split,
)

DATA_ROOT = Path(os.environ[ENV_VAR]) if os.environ.get(ENV_VAR) else None
needs_data = pytest.mark.skipif(
    DATA_ROOT is None,
    reason=f"set {ENV_VAR} to the folder with the real data sets to run this test",
)

# Published facts about the files (data README / the original data set pages).
MNIST_COUNTS = {
    "train": [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
    "test": [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
}
MNIST_MEAN_PIXEL = {"train": 33.318, "test": 33.791}
FASHION_MEAN_PIXEL = {"train": 72.940, "test": 73.147}
SIZES = {"train": 60000, "test": 10000}
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)

# folder, rows, features, short alias
UCI_SETS = [
    ("boston-housing", 506, 13, "boston"),
    ("concrete", 1030, 8, "concrete"),
    ("energy", 768, 8, "energy"),
    ("kin8nm", 8192, 8, "kin8nm"),
    ("naval-propulsion-plant", 11934, 16, "naval"),
    ("power-plant", 9568, 4, "power"),
    ("protein-tertiary-structure", 45730, 9, "protein"),
    ("wine-quality-red", 1599, 11, "wine"),
    ("yacht", 308, 6, "yacht"),
]


# ------------------------------------------------------------------ fixtures (load once)


@pytest.fixture(scope="module")
def mnist_train() -> LabeledDataset:
    return load_dataset("mnist", "train")


@pytest.fixture(scope="module")
def mnist_test() -> LabeledDataset:
    return load_dataset("mnist", "test")


@pytest.fixture(scope="module")
def fashion_train() -> LabeledDataset:
    return load_dataset("fashion-mnist", "train")


@pytest.fixture(scope="module")
def fashion_test() -> LabeledDataset:
    return load_dataset("fashion-mnist", "test")


@pytest.fixture(scope="module")
def digits_split() -> dict[str, LabeledDataset]:
    return {split: load_dataset("digits", split) for split in ("train", "test")}


def _real(*parts: str) -> Path:
    assert DATA_ROOT is not None
    return DATA_ROOT.joinpath(*parts)


def _gunzip(path: Path) -> bytes:
    with gzip.open(path, "rb") as f:
        return f.read()


def _mnist_root(tmp_path: Path, labels: bytes, labels_name: str = "t10k-labels-idx1-ubyte"):
    """A data root with the real t10k images and the given label file content."""
    folder = tmp_path / "mnist"
    folder.mkdir(parents=True)
    shutil.copyfile(
        _real("mnist", "t10k-images-idx3-ubyte.gz"), folder / "t10k-images-idx3-ubyte.gz"
    )
    (folder / labels_name).write_bytes(labels)
    return tmp_path, folder / labels_name


# ------------------------------------------------------------------ MNIST / Fashion-MNIST


@pytest.mark.data
@needs_data
@pytest.mark.parametrize("split", ["train", "test"])
def test_mnist_sizes_counts_and_moments(split, request):
    ds = request.getfixturevalue(f"mnist_{split}")
    assert isinstance(ds, LabeledDataset)
    assert ds.inputs.shape == (SIZES[split], 1, 28, 28)
    assert ds.inputs.dtype == torch.float32 and ds.targets.dtype == torch.int64
    assert ds.targets.shape == (SIZES[split],)
    assert torch.bincount(ds.targets, minlength=10).tolist() == MNIST_COUNTS[split]
    info = ds.info
    assert info.name == "mnist" and info.split is Split(split) and info.task is Task.CLASSIFICATION
    assert info.input_shape == (1, 28, 28) and info.num_classes == 10 and info.output_dim == 10
    assert info.normalization == Normalization(
        (0.1307,), (0.3081,), input_scale=255.0, statistics="published constants"
    )
    # the published mean pixel value, recovered by undoing the normalisation
    raw_mean = ((ds.inputs.sum(dtype=torch.float64) / ds.inputs.numel()) * 0.3081 + 0.1307) * 255
    assert raw_mean.item() == pytest.approx(MNIST_MEAN_PIXEL[split], abs=2e-3)
    if split == "train":
        assert abs(ds.inputs.mean().item()) < 1e-3
        assert ds.inputs.std().item() == pytest.approx(1.0, abs=1e-3)
    else:
        assert abs(ds.inputs.mean().item()) < 0.02
        assert ds.inputs.std().item() == pytest.approx(1.0, abs=0.02)
    assert len(ds) == SIZES[split] and ds[0][0].shape == (1, 28, 28)


@pytest.mark.data
@needs_data
@pytest.mark.parametrize("split", ["train", "test"])
def test_fashion_mnist_sizes_balanced_and_moments(split, request):
    ds = request.getfixturevalue(f"fashion_{split}")
    assert ds.inputs.shape == (SIZES[split], 1, 28, 28)
    per_class = SIZES[split] // 10
    assert torch.bincount(ds.targets, minlength=10).tolist() == [per_class] * 10
    assert ds.info.class_names[0] == "T-shirt/top" and ds.info.class_names[9] == "Ankle boot"
    raw_mean = ((ds.inputs.sum(dtype=torch.float64) / ds.inputs.numel()) * 0.3530 + 0.2860) * 255
    assert raw_mean.item() == pytest.approx(FASHION_MEAN_PIXEL[split], abs=2e-3)
    assert abs(ds.inputs.mean().item()) < 0.02
    assert ds.inputs.std().item() == pytest.approx(1.0, abs=0.02)


@pytest.mark.data
@needs_data
def test_mnist_unnormalised_and_flattened(mnist_test):
    raw = load_dataset("mnist", "test", normalize=False, flatten=True)
    assert raw.info.normalization is None
    assert raw.inputs.shape == (10000, 784) and raw.info.input_shape == (784,)
    assert raw.info.input_dim == 784
    assert raw.inputs.min().item() == 0.0 and raw.inputs.max().item() == 1.0
    # pixels are k/255 exactly, and the normalised copy is the affine image of them
    assert torch.equal(torch.round(raw.inputs * 255) / 255, raw.inputs)
    torch.testing.assert_close(mnist_test.inputs.reshape(10000, -1), (raw.inputs - 0.1307) / 0.3081)


@pytest.mark.data
@needs_data
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_verify_checksums_of_real_files(name):
    ds = load_dataset(name, "test", verify=True)
    assert len(ds) == 10000


@pytest.mark.data
@needs_data
def test_verify_detects_modified_label_file(tmp_path, mnist_test):
    labels = bytearray(_gunzip(_real("mnist", "t10k-labels-idx1-ubyte.gz")))
    labels[8] = (labels[8] + 1) % 10  # first label changed, file still well formed
    root, path = _mnist_root(tmp_path, gzip.compress(bytes(labels)), "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(CorruptFileError, match=re.escape(str(path)) + ".*md5"):
        load_dataset("mnist", "test", root=root, verify=True)
    ds = load_dataset("mnist", "test", root=root)
    assert ds.targets[0].item() == (mnist_test.targets[0].item() + 1) % 10
    assert torch.equal(ds.targets[1:], mnist_test.targets[1:])


@pytest.mark.data
@needs_data
def test_gzip_and_raw_idx_files_read_alike(tmp_path, monkeypatch, mnist_test):
    folder = tmp_path / "mnist"
    folder.mkdir()
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (folder / stem).write_bytes(_gunzip(_real("mnist", f"{stem}.gz")))
    monkeypatch.setenv(ENV_VAR, str(tmp_path))  # root comes from the environment
    ds = load_dataset("mnist", "test")
    assert torch.equal(ds.inputs, mnist_test.inputs)
    assert torch.equal(ds.targets, mnist_test.targets)
    assert {p.name for p in ds.info.source_files} == {
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    }
    with pytest.warns(UserWarning, match="no published checksum"):
        load_dataset("mnist", "test", verify=True)


# ------------------------------------------------------------------ damaged IDX files


@pytest.mark.data
@needs_data
def test_truncated_gzip_label_file(tmp_path):
    blob = _real("mnist", "t10k-labels-idx1-ubyte.gz").read_bytes()
    root, path = _mnist_root(tmp_path, blob[: len(blob) // 2], "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(CorruptFileError, match=re.escape(str(path)) + ".*truncated"):
        load_dataset("mnist", "test", root=root)


@pytest.mark.data
@needs_data
def test_garbage_gzip_label_file(tmp_path):
    garbage = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    root, path = _mnist_root(tmp_path, garbage, "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(CorruptFileError, match=re.escape(str(path)) + ".*gzip"):
        load_dataset("mnist", "test", root=root)


@pytest.mark.data
@needs_data
@pytest.mark.parametrize(
    "damage, message",
    [
        ("truncated", "truncated"),
        ("wrong_magic", "magic number 2051, expected 2049"),
        ("garbage", "magic number"),
        ("trailing", "unexpected bytes"),
        ("short_header", "header"),
        ("fewer_labels", "9999 labels"),
        ("bad_label", "outside 0..9"),
    ],
)
def test_damaged_raw_label_file(tmp_path, damage, message):
    labels = _gunzip(_real("mnist", "t10k-labels-idx1-ubyte.gz"))
    if damage == "truncated":
        blob = labels[:5000]
    elif damage == "wrong_magic":
        blob = (2051).to_bytes(4, "big") + labels[4:]
    elif damage == "garbage":
        blob = np.random.default_rng(1).integers(0, 256, len(labels), dtype=np.uint8).tobytes()
    elif damage == "trailing":
        blob = labels + b"\x00\x01"
    elif damage == "short_header":
        blob = labels[:6]
    elif damage == "fewer_labels":
        blob = labels[:4] + (9999).to_bytes(4, "big") + labels[8:-1]
    else:
        blob = labels[:8] + bytes([10]) + labels[9:]
    root, path = _mnist_root(tmp_path, blob)
    with pytest.raises(CorruptFileError, match=re.escape(str(path)) + ".*" + message):
        load_dataset("mnist", "test", root=root)


@pytest.mark.data
@needs_data
def test_image_count_must_match_labels(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    images = _gunzip(_real("mnist", "t10k-images-idx3-ubyte.gz"))
    short = images[:4] + (9999).to_bytes(4, "big") + images[8:-784]
    (folder / "t10k-images-idx3-ubyte").write_bytes(short)
    shutil.copyfile(
        _real("mnist", "t10k-labels-idx1-ubyte.gz"), folder / "t10k-labels-idx1-ubyte.gz"
    )
    with pytest.raises(CorruptFileError, match="t10k-images-idx3-ubyte: 9999 images"):
        load_dataset("mnist", "test", root=tmp_path)


def test_missing_files_name_the_path_and_download(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"t10k-images-idx3-ubyte\.gz.*download=True"):
        load_dataset("mnist", "test", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="yacht"):
        load_dataset("uci/yacht", root=tmp_path)


# ------------------------------------------------------------------ digits (embedded)


def test_digits_sizes_stratified_and_normalised(digits_split):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    train, test = digits_split["train"], digits_split["test"]
    assert len(train) + len(test) == 1797
    assert (len(train), len(test)) == (1438, 359)
    assert train.inputs.shape == (1438, 1, 8, 8) and train.info.input_shape == (1, 8, 8)
    totals = np.bincount(bunch.target, minlength=10)
    n_test = torch.bincount(test.targets, minlength=10).numpy()
    n_train = torch.bincount(train.targets, minlength=10).numpy()
    np.testing.assert_array_equal(n_train + n_test, totals)
    assert np.all(np.abs(n_test - 0.2 * totals) < 1.0)  # stratified: 20 % of every class
    assert abs(train.inputs.mean().item()) < 1e-5
    assert train.inputs.std().item() == pytest.approx(1.0, abs=1e-3)
    norm = train.info.normalization
    assert norm is not None and norm.input_scale == 16.0 and norm == test.info.normalization


def test_digits_partition_and_determinism(digits_split):
    from sklearn.datasets import load_digits

    raw = {s: load_dataset("digits", s, normalize=False, flatten=True) for s in ("train", "test")}
    rows = torch.cat([raw["train"].inputs, raw["test"].inputs]).numpy() * 16
    labels = torch.cat([raw["train"].targets, raw["test"].targets]).numpy()
    bunch = load_digits()
    # the two splits together are exactly the 1797 digits (as a multiset of (image, label))
    got = np.column_stack([rows, labels])
    want = np.column_stack([bunch.data, bunch.target])
    np.testing.assert_array_equal(got[np.lexsort(got.T)], want[np.lexsort(want.T)])
    assert raw["train"].info.input_shape == (64,)
    again = load_dataset("digits", "test")
    assert torch.equal(again.inputs, digits_split["test"].inputs)
    assert torch.equal(again.targets, digits_split["test"].targets)


def test_digits_needs_no_root(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert len(load_dataset("digits", "test", download=True)) == 359


# ------------------------------------------------------------------ UCI


@pytest.fixture(scope="module", params=UCI_SETS, ids=[u[0] for u in UCI_SETS])
def uci(request):
    if DATA_ROOT is None:
        pytest.skip(f"set {ENV_VAR} to the folder with the real data sets to run this test")
    folder, rows, features, alias = request.param
    base = _real("uci", folder)
    table = np.loadtxt(base / "data.txt")
    cols = np.loadtxt(base / "index_features.txt", dtype=np.int64, ndmin=1)
    target = int(np.loadtxt(base / "index_target.txt"))
    idx_train = np.loadtxt(base / "index_train_0.txt", dtype=np.int64)
    idx_test = np.loadtxt(base / "index_test_0.txt", dtype=np.int64)
    loaded = {
        "train": load_dataset(f"uci/{alias}", "train"),
        "test": load_dataset(f"uci/{folder}", "test"),
        "raw_train": load_dataset(f"uci/{folder}", "train", normalize=False),
    }
    return {
        "folder": folder,
        "rows": rows,
        "features": features,
        "table": table,
        "x": table[:, cols],
        "y": table[:, target],
        "idx_train": idx_train,
        "idx_test": idx_test,
        **loaded,
    }


@pytest.mark.data
def test_uci_shapes_and_split_sizes(uci):
    train, test = uci["train"], uci["test"]
    assert uci["table"].shape[0] == uci["rows"]
    assert len(train) + len(test) == uci["rows"]
    assert (len(train), len(test)) == (uci["idx_train"].size, uci["idx_test"].size)
    assert len(test) == pytest.approx(0.1 * uci["rows"], abs=1)  # the standard 90 / 10 splits
    assert np.intersect1d(uci["idx_train"], uci["idx_test"]).size == 0
    assert train.inputs.shape == (len(train), uci["features"])
    assert train.targets.shape == (len(train), 1) and train.targets.dtype == torch.float32
    info = train.info
    assert info.name == f"uci/{uci['folder']}" and info.task is Task.REGRESSION
    assert info.input_shape == (uci["features"],) and info.target_dim == 1
    assert info.num_classes is None and info.output_dim == 1 and info.split_index == 0


@pytest.mark.data
def test_uci_rows_follow_the_split_files(uci):
    raw = uci["raw_train"]
    idx = uci["idx_train"]
    np.testing.assert_array_equal(raw.inputs.numpy(), uci["x"][idx].astype(np.float32))
    np.testing.assert_array_equal(raw.targets.numpy()[:, 0], uci["y"][idx].astype(np.float32))
    assert raw.info.normalization is None


@pytest.mark.data
def test_uci_normalised_with_train_statistics(uci):
    train, test = uci["train"], uci["test"]
    x_train = uci["x"][uci["idx_train"]]
    constant = np.ptp(x_train, axis=0) == 0
    if uci["folder"] == "naval-propulsion-plant":
        assert constant.sum() == 2  # two columns never change; they must stay finite and 0
    np.testing.assert_allclose(train.inputs.numpy().mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(
        train.inputs.numpy().std(axis=0, dtype=np.float64), np.where(constant, 0.0, 1.0), atol=1e-4
    )
    assert train.targets.double().mean().item() == pytest.approx(0.0, abs=1e-5)
    assert train.targets.double().std(unbiased=False).item() == pytest.approx(1.0, abs=1e-5)
    norm = train.info.normalization
    assert norm == test.info.normalization  # test uses the statistics of the train rows
    assert norm.target_std == pytest.approx(uci["y"][uci["idx_train"]].std())
    y_test = uci["y"][uci["idx_test"]]
    back = norm.denormalize_targets(test.targets.double()).numpy()[:, 0]
    np.testing.assert_allclose(back, y_test, rtol=1e-5, atol=1e-5 * np.abs(y_test).max())
    x_test = (uci["x"][uci["idx_test"]] - np.array(norm.input_mean)) / np.array(norm.input_std)
    np.testing.assert_allclose(test.inputs.numpy(), x_test, rtol=1e-5, atol=1e-5)


@pytest.mark.data
@needs_data
@pytest.mark.parametrize("folder, n_splits", [("yacht", 20), ("protein-tertiary-structure", 5)])
def test_uci_split_index(folder, n_splits):
    last = load_dataset(f"uci/{folder}", "test", split_index=n_splits - 1, normalize=False)
    first = load_dataset(f"uci/{folder}", "test", normalize=False)
    assert last.info.split_index == n_splits - 1
    idx = np.loadtxt(_real("uci", folder, f"index_test_{n_splits - 1}.txt"), dtype=np.int64)
    assert len(last) == idx.size and not torch.equal(last.inputs[:5], first.inputs[:5])
    with pytest.raises(ValueError, match=f"n_splits={n_splits}"):
        load_dataset(f"uci/{folder}", split_index=n_splits)


def test_uci_folder_outside_registry(tmp_path):
    folder = tmp_path / "uci" / "toy"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    table = rng.normal(size=(10, 3))
    np.savetxt(folder / "data.txt", table)
    (folder / "index_features.txt").write_text("0\n1\n")
    (folder / "index_target.txt").write_text("2\n")
    (folder / "index_train_0.txt").write_text("\n".join(map(str, range(8))) + "\n")
    (folder / "index_test_0.txt").write_text("8\n9\n")
    ds = load_dataset("uci/toy", "test", root=tmp_path, normalize=False)
    np.testing.assert_allclose(ds.inputs.numpy(), table[8:, :2].astype(np.float32))
    with pytest.raises(ValueError, match="n_splits=1"):
        load_dataset("uci/toy", root=tmp_path, split_index=1)
    (folder / "index_test_0.txt").write_text("7\n9\n")  # overlaps the train rows
    with pytest.raises(CorruptFileError, match="share rows"):
        load_dataset("uci/toy", root=tmp_path)
    (folder / "index_test_0.txt").write_text("8\nnine\n")
    with pytest.raises(CorruptFileError, match="index_test_0.txt"):
        load_dataset("uci/toy", root=tmp_path)


# ------------------------------------------------------------------ CIFAR-10 (small batches)


def _write_cifar_batch(path: Path, pixels: np.ndarray, labels: np.ndarray, title: str) -> None:
    """Write a batch the way the published files are laid out: a pickled dict with bytes keys,
    b"data" uint8 [n, 3072] (1024 red, 1024 green, 1024 blue values per row), b"labels" a
    list of ints. The published files were written by Python 2 with numpy 1, whose arrays
    refer to numpy.core.multiarray; numpy 2 writes numpy._core, so the name is changed back."""
    entry = {
        b"batch_label": title.encode(),
        b"labels": [int(v) for v in labels],
        b"data": pixels,
        b"filenames": [f"image_{i:05d}.png".encode() for i in range(len(labels))],
    }
    blob = pickle.dumps(entry, protocol=2)
    path.write_bytes(blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))


def _cifar_files(folder: Path, per_batch: int = 6, n_test: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2024)
    folder.mkdir(parents=True)
    out: dict[str, list[np.ndarray]] = {"x_train": [], "y_train": []}
    for i in range(1, 6):
        x = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, per_batch)
        _write_cifar_batch(folder / f"data_batch_{i}", x, y, f"training batch {i} of 5")
        out["x_train"].append(x)
        out["y_train"].append(y)
    x = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    y = rng.integers(0, 10, n_test)
    _write_cifar_batch(folder / "test_batch", x, y, "testing batch 1 of 1")
    meta = {b"label_names": [c.encode() for c in ("airplane", "automobile")], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return {
        "x_train": np.concatenate(out["x_train"]),
        "y_train": np.concatenate(out["y_train"]),
        "x_test": x,
        "y_test": y,
    }


@pytest.mark.parametrize("layout", ["cifar10/cifar-10-batches-py", "cifar-10-batches-py"])
def test_cifar10_reader(tmp_path, layout):
    arrays = _cifar_files(tmp_path / layout)
    raw = load_dataset("cifar10", "train", root=tmp_path, normalize=False)
    assert raw.inputs.shape == (30, 3, 32, 32) and raw.info.input_shape == (3, 32, 32)
    np.testing.assert_array_equal(raw.targets.numpy(), arrays["y_train"])
    x = arrays["x_train"]
    i, c, h, w = 7, 2, 5, 31
    assert raw.inputs[i, c, h, w].item() * 255 == pytest.approx(x[i, c * 1024 + h * 32 + w])
    np.testing.assert_allclose(raw.inputs.numpy().reshape(30, -1) * 255, x, atol=1e-4)

    test = load_dataset("cifar10", "test", root=tmp_path)
    assert test.inputs.shape == (4, 3, 32, 32) and test.info.split is Split.TEST
    assert test.info.class_names[0] == "airplane" and test.info.num_classes == 10
    want = arrays["x_test"].reshape(4, 3, 32, 32) / 255.0
    want = (want - np.array(CIFAR_MEAN)[:, None, None]) / np.array(CIFAR_STD)[:, None, None]
    np.testing.assert_allclose(test.inputs.numpy(), want, rtol=1e-5, atol=1e-5)


def test_cifar10_damaged_batches(tmp_path):
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    _cifar_files(folder)
    with pytest.raises(CorruptFileError, match=re.escape(str(folder / "test_batch")) + ".*md5"):
        load_dataset("cifar10", "test", root=tmp_path, verify=True)

    blob = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(
        CorruptFileError, match=re.escape(str(folder / "test_batch")) + ".*truncated"
    ):
        load_dataset("cifar10", "test", root=tmp_path)

    _write_cifar_batch(folder / "test_batch", np.zeros((2, 3071), np.uint8), np.zeros(2), "t")
    with pytest.raises(CorruptFileError, match="3071 values"):
        load_dataset("cifar10", "test", root=tmp_path)

    _write_cifar_batch(folder / "test_batch", np.zeros((2, 3072), np.uint8), np.zeros(3), "t")
    with pytest.raises(CorruptFileError, match="3 labels for 2 images"):
        load_dataset("cifar10", "test", root=tmp_path)

    class Payload:
        def __reduce__(self):
            return (os.getcwd, ())

    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Payload()}, protocol=2))
    with pytest.raises(CorruptFileError, match="refusing to load global"):
        load_dataset("cifar10", "test", root=tmp_path)

    (folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        load_dataset("cifar10", "train", root=tmp_path)


# ------------------------------------------------------------------ names, splits, roots


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match="name='imagenet'.*digits.*mnist.*uci/yacht"):
        load_dataset("imagenet", root=".")
    with pytest.raises(ValueError, match="uci/boston-housing"):
        load_dataset("uci/no-such-set", root=".")
    with pytest.raises(TypeError, match="name"):
        load_dataset(3)  # type: ignore[arg-type]
    assert set(available_datasets()) >= {
        "digits",
        "mnist",
        "fashion-mnist",
        "cifar10",
        *(f"uci/{u[0]}" for u in UCI_SETS),
    }


@pytest.mark.parametrize("split", ["val", "bogus", "", "TRAINING", Split.VAL])
def test_bad_split(split):
    with pytest.raises(ValueError, match="split"):
        load_dataset("digits", split)


def test_split_accepts_enum_and_case():
    ds = load_dataset("digits", Split.TEST)
    assert torch.equal(ds.targets, load_dataset("digits", " Test ").targets)
    assert ds.info.split is Split.TEST


def test_bad_split_index():
    with pytest.raises(ValueError, match="split_index"):
        load_dataset("digits", split_index=1)
    with pytest.raises(ValueError, match="split_index"):
        load_dataset("uci/yacht", split_index=-1, root=".")
    with pytest.raises(TypeError, match="split_index"):
        load_dataset("uci/yacht", split_index=1.0, root=".")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10", "uci/wine"])
def test_missing_root_explains_env_var(monkeypatch, name):
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(ValueError, match=f"{ENV_VAR}.*root="):
        load_dataset(name)


# ------------------------------------------------------------------ download (no network)


def _serve_from(folder: Path, calls: list[str]):
    def fake_fetch(url: str, dest: Path, timeout: float = 60.0) -> None:
        calls.append(url)
        shutil.copyfile(folder / url.rsplit("/", 1)[-1], dest)

    return fake_fetch


@pytest.mark.data
@needs_data
def test_download_mnist_with_checksums(tmp_path, monkeypatch, mnist_test):
    calls: list[str] = []
    monkeypatch.setattr(files, "fetch", _serve_from(_real("mnist"), calls))
    ds = load_dataset("mnist", "test", root=tmp_path, download=True)
    assert len(calls) == 4 and all(u.startswith("https://") for u in calls)
    for name in ("train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        got = hashlib.md5((tmp_path / "mnist" / name).read_bytes()).hexdigest()
        assert got == files.KNOWN_MD5[f"mnist/{name}"]
    assert torch.equal(ds.inputs, mnist_test.inputs)
    assert torch.equal(ds.targets, mnist_test.targets)
    load_dataset("mnist", "test", root=tmp_path, download=True)  # present: nothing fetched
    assert len(calls) == 4
    assert not list((tmp_path / "mnist").glob("*.part"))


def test_download_checksum_mismatch(tmp_path, monkeypatch):
    def bad_fetch(url: str, dest: Path, timeout: float = 60.0) -> None:
        dest.write_bytes(b"<html>not the file</html>")

    monkeypatch.setattr(files, "fetch", bad_fetch)
    with pytest.raises(CorruptFileError, match="md5.*differs from the published"):
        load_dataset("mnist", "test", root=tmp_path, download=True)
    assert list((tmp_path / "mnist").iterdir()) == []  # nothing half-written is kept


def test_download_network_failure_lists_every_mirror(tmp_path, monkeypatch):
    def offline(url: str, dest: Path, timeout: float = 60.0) -> None:
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(files, "fetch", offline)
    with pytest.raises(OSError, match="ossci-datasets.*yann.lecun.com") as info:
        data.download_dataset("mnist", root=tmp_path)
    assert not isinstance(info.value, CorruptFileError)
    with pytest.raises(ValueError, match="embedded"):
        data.download_dataset("digits", root=tmp_path)
    with pytest.raises(ValueError, match="cannot be downloaded"):
        data.download_dataset("uci/yacht", root=tmp_path)


def _cifar_tarball(tmp_path: Path, members: dict[str, bytes] | None = None) -> Path:
    source = tmp_path / "source"
    _cifar_files(source / "cifar-10-batches-py")
    archive = tmp_path / "served" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source / "cifar-10-batches-py", arcname="cifar-10-batches-py")
        for name, blob in (members or {}).items():
            member = tarfile.TarInfo(name)
            member.size = len(blob)
            tar.addfile(member, io.BytesIO(blob))
    return archive


def test_download_cifar10(tmp_path, monkeypatch):
    archive = _cifar_tarball(tmp_path)
    root = tmp_path / "root"
    calls: list[str] = []
    monkeypatch.setattr(files, "fetch", _serve_from(archive.parent, calls))
    with pytest.raises(CorruptFileError, match="cifar-10-python.tar.gz.*md5"):
        load_dataset("cifar10", "test", root=root, download=True)
    assert not (root / "cifar10" / "cifar-10-python.tar.gz").exists()

    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(files.KNOWN_MD5, "cifar10/cifar-10-python.tar.gz", md5)
    ds = load_dataset("cifar10", "train", root=root, download=True)
    assert ds.inputs.shape == (30, 3, 32, 32)
    assert (root / "cifar10" / "cifar-10-batches-py" / "test_batch").is_file()
    assert len(calls) == 2


def test_download_cifar10_refuses_unsafe_archive(tmp_path, monkeypatch):
    archive = _cifar_tarball(tmp_path, {"../escape.txt": b"outside"})
    monkeypatch.setattr(files, "fetch", _serve_from(archive.parent, []))
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(files.KNOWN_MD5, "cifar10/cifar-10-python.tar.gz", md5)
    with pytest.raises(CorruptFileError, match="unsafe member"):
        data.download_dataset("cifar10", root=tmp_path / "root")
    assert not (tmp_path / "root" / "escape.txt").exists()


# ------------------------------------------------------------------ train_val_split


def _indexed(n: int, n_classes: int) -> TensorDataset:
    ids = torch.arange(n, dtype=torch.float32)[:, None]
    labels = torch.from_numpy(np.random.default_rng(5).integers(0, n_classes, n))
    return TensorDataset(ids, labels)


@pytest.mark.parametrize("n, fraction", [(1000, 0.2), (997, 0.1), (50, 0.5)])
def test_train_val_split_partitions_and_stratifies(n, fraction):
    ds = _indexed(n, 7)
    train, val = train_val_split(ds, val_fraction=fraction, seed=0)
    assert type(train) is TensorDataset and type(val) is TensorDataset
    assert len(val) == round(fraction * n) and len(train) + len(val) == n
    ids_train = train.tensors[0][:, 0].long()
    ids_val = val.tensors[0][:, 0].long()
    assert set(ids_train.tolist()).isdisjoint(ids_val.tolist())
    assert sorted(ids_train.tolist() + ids_val.tolist()) == list(range(n))
    assert torch.all(ids_train.diff() > 0) and torch.all(ids_val.diff() > 0)  # order kept
    assert torch.equal(val.tensors[1], ds.tensors[1][ids_val])  # labels travel with inputs
    totals = torch.bincount(ds.tensors[1], minlength=7).double()
    per_class = torch.bincount(val.tensors[1], minlength=7).double()
    assert torch.all((per_class - fraction * totals).abs() < 1.0)


def test_train_val_split_is_seeded():
    ds = _indexed(500, 3)
    a = train_val_split(ds, seed=11)[1].tensors[0]
    b = train_val_split(ds, seed=11)[1].tensors[0]
    c = train_val_split(ds, seed=12)[1].tensors[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    d = train_val_split(ds, seed=11, stratify=False)[1].tensors[0]
    assert len(d) == 100 and not torch.equal(a, d)


def test_train_val_split_keeps_info(digits_split):
    train, val = train_val_split(digits_split["train"], val_fraction=0.2, seed=0)
    assert isinstance(train, LabeledDataset) and isinstance(val, LabeledDataset)
    assert (len(train), len(val)) == (1150, 288)
    assert train.info == digits_split["train"].info
    assert val.info.split is Split.VAL
    assert val.info == dataclasses.replace(digits_split["train"].info, split=Split.VAL)


@pytest.mark.data
@needs_data
def test_train_val_split_mnist_80_20(mnist_train):
    train, val = train_val_split(mnist_train, val_fraction=0.2, seed=0)
    assert (len(train), len(val)) == (48000, 12000)
    want = torch.tensor(MNIST_COUNTS["train"], dtype=torch.float64) * 0.2
    got = torch.bincount(val.targets, minlength=10).double()
    assert torch.all((got - want).abs() < 1.0)


@pytest.mark.data
@needs_data
def test_train_val_split_regression():
    ds = load_dataset("uci/yacht", "train")
    train, val = train_val_split(ds, val_fraction=0.2, seed=3)
    assert (len(train), len(val)) == (222, 55) and val.info.task is Task.REGRESSION
    joined = torch.cat([train.targets, val.targets]).sort(dim=0).values
    assert torch.equal(joined, ds.targets.sort(dim=0).values)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_train_val_split_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split(_indexed(100, 2), val_fraction=fraction)


def test_train_val_split_rejects_bad_arguments():
    with pytest.raises(TypeError, match="val_fraction"):
        train_val_split(_indexed(100, 2), val_fraction="0.2")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="dataset"):
        train_val_split([1, 2, 3])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="seed"):
        train_val_split(_indexed(100, 2), seed=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        train_val_split(_indexed(3, 2), val_fraction=0.1)


# ------------------------------------------------------------------ containers


def test_labeled_dataset_checks_shapes():
    info = DatasetInfo(
        name="toy",
        split=Split.TRAIN,
        task=Task.REGRESSION,
        input_shape=(3,),
        num_classes=None,
        target_dim=1,
        normalization=Normalization((0.0,) * 3, (1.0,) * 3, target_mean=2.0, target_std=4.0),
    )
    ds = LabeledDataset(torch.zeros(5, 3), torch.ones(5, 1), info)
    x, y = ds[2]
    assert x.shape == (3,) and y.shape == (1,) and "toy" in repr(ds)
    assert torch.equal(info.normalization.denormalize_targets(ds.targets), torch.full((5, 1), 6.0))
    assert info.normalization.as_dict()["target_std"] == 4.0
    with pytest.raises(ValueError, match="input_shape"):
        LabeledDataset(torch.zeros(5, 4), torch.ones(5, 1), info)
    with pytest.raises(ValueError, match="regression targets"):
        LabeledDataset(torch.zeros(5, 3), torch.ones(5), info)
    with pytest.raises(TypeError, match="info"):
        LabeledDataset(torch.zeros(5, 3), torch.ones(5, 1), {"name": "toy"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="target statistics"):
        Normalization((0.0,), (1.0,)).denormalize_targets(torch.zeros(2))
