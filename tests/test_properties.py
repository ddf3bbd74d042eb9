"""Property-based checks (hypothesis) of the public entry points and the loaders.

Whatever the input (random shapes, dtypes, NaN / inf, corrupt bytes, truncation), an entry
point either works or raises the package's clear error (``ValueError`` / ``TypeError`` naming
the argument, :class:`~pyro_prune.data.CorruptFileError` naming the file, the CLI's exit 2
with one line); never an error from deep inside torch, Pyro or NumPy, and never a silently
wrong result (a result is checked to be finite).
"""

from __future__ import annotations

import io
import math
import pickle
import struct
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch.utils.data import TensorDataset

from pyro_prune.cli import main
from pyro_prune.data import CorruptFileError, LabeledDataset, load_dataset
from pyro_prune.inference import evaluate, fit
from pyro_prune.models import MLP
from pyro_prune.run_folder import UsageError, load_state

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

DTYPES = [torch.float32, torch.float64, torch.int64, torch.int32, torch.uint8, torch.bool]


def _tensor(draw: st.DrawFn, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    if dtype.is_floating_point:
        t = torch.randn(shape, generator=g).to(dtype)
        special = draw(st.sampled_from([None, math.nan, math.inf, -math.inf]))
        if special is not None and t.numel():
            t.view(-1)[draw(st.integers(0, t.numel() - 1))] = special
        return t
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    low = draw(st.sampled_from([-100, -1, 0]))
    return torch.randint(low, 5, shape, generator=g).to(dtype)


@st.composite
def datasets(draw: st.DrawFn) -> TensorDataset:
    """Half the time a good data set with one defect at most, else anything at all."""
    n = draw(st.integers(1, 9))
    if draw(st.booleans()):
        feature_shape = draw(st.sampled_from([(6,), (5,), (2, 3), (1, 6), (7,)]))
        x = _tensor(draw, (n, *feature_shape), draw(st.sampled_from(DTYPES)))
        y_shape = draw(st.sampled_from([(n,), (n, 1), (n, 3)]))
        return TensorDataset(x, _tensor(draw, y_shape, draw(st.sampled_from(DTYPES))))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    x, y = torch.randn(n, 6, generator=g), torch.randint(0, 5, (n,), generator=g)
    defect = draw(st.sampled_from([None, None, "nan", "inf", "label", "float64", "int32", "width"]))
    if defect in ("nan", "inf"):
        x[draw(st.integers(0, n - 1)), draw(st.integers(0, 5))] = math.nan if defect == "nan" else math.inf
    elif defect == "label":
        y[draw(st.integers(0, n - 1))] = draw(st.sampled_from([-100, -1, 5, 2**40]))
    elif defect == "float64":
        x = x.double()
    elif defect == "int32":
        y = y.int()
    elif defect == "width":
        x = x[:, : draw(st.integers(1, 5))]
    return TensorDataset(x, y)


def _valid(ds: TensorDataset, classes: int) -> bool:
    x, y = ds.tensors
    return (x.dtype == torch.float32 and x[0].numel() == 6 and bool(torch.isfinite(x).all())
            and y.dtype == torch.int64 and y.dim() == 1 and int(y.min()) >= 0
            and int(y.max()) < classes)


@SETTINGS
@given(data=datasets(), entry=st.sampled_from(["fit", "evaluate"]))
def test_fit_and_evaluate_accept_good_data_and_name_bad_data(data: TensorDataset, entry: str) -> None:
    torch.manual_seed(0)
    net = MLP(6, [4], 5)
    try:
        if entry == "fit":
            result = fit(net, data, epochs=1, batch_size=4, progress=False)
            metrics = result.history[-1]
        else:
            metrics = evaluate(net, data)
    except (ValueError, TypeError) as err:
        assert not _valid(data, 5), f"refused good data: {err}"
        event("refused")
        assert any(w in str(err) for w in ("train", "dataset", "inputs", "targets")), str(err)
        return
    assert _valid(data, 5), "accepted bad data"
    event("accepted")
    assert math.isfinite(metrics["loss"]) and metrics["loss"] > 0


# ============================================================================ loaders
def _test_split_or_refusal(name: str, root: Path, *, naming: str) -> LabeledDataset | None:
    """The test split of data set ``name`` under ``root``, or ``None`` when the loader refused
    it with a ``CorruptFileError`` whose message contains ``naming`` (recorded as events)."""
    try:
        test = load_dataset(name, "test", root=root)
    except CorruptFileError as err:
        assert naming in str(err)
        event("refused")
        return None
    event("accepted")
    return test


def _mutate(draw: st.DrawFn, data: bytes, tokens: list[bytes]) -> bytes:
    how = draw(st.sampled_from(["truncate", "flip", "token", "garbage"]))
    if how == "truncate":
        return data[: draw(st.integers(0, len(data)))]
    if how == "flip":
        buf = bytearray(data)
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(buf) - 1))
            buf[i] = draw(st.integers(0, 255))
        return bytes(buf)
    if how == "token":
        i = draw(st.integers(0, len(data)))
        return data[:i] + draw(st.sampled_from(tokens)) + data[i:]
    return draw(st.binary(max_size=64))


UCI_FILES = ["data.txt", "index_features.txt", "index_target.txt", "index_train_0.txt"]
UCI_TOKENS = [b" nan", b" inf", b" -inf", b"\n", b" 6", b" -1", b" 0", b"x", b"1e999"]


@SETTINGS
@given(st.data())
def test_uci_loader_reads_good_files_and_names_bad_ones(tmp_path_factory: pytest.TempPathFactory,
                                                        write_uci_yacht, data: st.DataObject) -> None:
    root = tmp_path_factory.mktemp("uci")
    rng = np.random.default_rng(1)
    folder = write_uci_yacht(root, rng.normal(size=(308, 7)).round(4), rng, fmt="%.4f")
    name = data.draw(st.sampled_from(UCI_FILES))
    path = folder / name
    path.write_bytes(_mutate(data.draw, path.read_bytes(), UCI_TOKENS))
    try:
        train = load_dataset("uci/yacht", "train", root=root)
    except CorruptFileError as err:
        assert str(folder) in str(err)
        event("refused")
        return
    except FileNotFoundError:
        event("refused: missing")
        return
    event("accepted")
    x, y = train.tensors
    assert bool(torch.isfinite(x).all()) and bool(torch.isfinite(y).all())
    assert x.shape[1] == 6  # the target never leaks into the inputs


def _cifar_batch(n: int, rng: np.random.Generator) -> bytes:
    entry = {b"labels": [int(v) for v in rng.integers(0, 10, n)],
             b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}
    return pickle.dumps(entry, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


@SETTINGS
@given(st.data())
def test_cifar_loader_names_the_bad_batch(tmp_path_factory: pytest.TempPathFactory,
                                          data: st.DataObject) -> None:
    folder = tmp_path_factory.mktemp("cifar") / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    blob = _cifar_batch(3, rng)
    kind = data.draw(st.sampled_from(["bytes", "labels"]))
    if kind == "bytes":
        bad = _mutate(data.draw, blob, [b"\x00", b"N", b"."])
    else:
        labels = data.draw(st.sampled_from([[1.5, 2.0, 3.0], ["a", "b", "c"], [0, 1], [0, 1, 10],
                                            [-1, 0, 1], [[1], [2], [3]], [1, 2, 3]]))
        bad = pickle.dumps({b"labels": labels, b"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8)},
                           protocol=2)
    (folder / "test_batch").write_bytes(bad)
    test = _test_split_or_refusal("cifar10", folder.parent.parent, naming="test_batch")
    if test is None:
        return
    x, y = test.tensors
    assert y.dtype == torch.int64 and int(y.min()) >= 0 and int(y.max()) <= 9
    assert x.shape[1:] == (3, 32, 32) and bool(torch.isfinite(x).all())


def _idx(dims: tuple[int, ...], payload: bytes) -> bytes:
    magic = 0x800 + len(dims)
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + payload


@SETTINGS
@given(st.data())
def test_idx_loader_names_the_bad_file(tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    folder = tmp_path_factory.mktemp("idx") / "mnist"
    folder.mkdir()
    rng = np.random.default_rng(0)
    images = _idx((4, 28, 28), rng.integers(0, 256, 4 * 784, dtype=np.uint8).tobytes())
    labels = _idx((4,), bytes([1, 2, 3, 4]))
    target = data.draw(st.sampled_from(["images", "labels"]))
    blob = images if target == "images" else labels
    bad = _mutate(data.draw, blob, [b"\xff", b"\x00\x00\x00\x00", b"\x0b"])
    (folder / "t10k-images-idx3-ubyte").write_bytes(bad if target == "images" else images)
    (folder / "t10k-labels-idx1-ubyte").write_bytes(bad if target == "labels" else labels)
    test = _test_split_or_refusal("mnist", folder.parent, naming="idx")
    if test is None:
        return
    x, y = test.tensors
    assert len(x) == len(y) and int(y.min()) >= 0 and int(y.max()) <= 9
    assert bool(torch.isfinite(x).all())


# ============================================================================ saved models
@SETTINGS
@given(st.data())
def test_a_damaged_model_file_is_refused_or_loads_exactly(tmp_path_factory: pytest.TempPathFactory,
                                                          data: st.DataObject) -> None:
    from pyro_prune._io import save_torch

    torch.manual_seed(0)
    net = MLP(6, [4], 3)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_torch(net.state_dict(), path)
    path.write_bytes(_mutate(data.draw, path.read_bytes(), [b"\x00", b"PK"]))
    try:
        state = load_state(path, net)
    except UsageError as err:
        assert "model.pt" in str(err)
        event("refused")
        return
    event("accepted")
    own = net.state_dict()  # a change in padding or headers only: the tensors are intact
    assert all(torch.equal(own[k], v) for k, v in state.items())


# ============================================================================ command line
NUMBERS = st.one_of(st.integers(-2**70, 2**70).map(str), st.floats(allow_nan=True).map(str),
                    st.sampled_from(["", "nan", "inf", "-0", "1e309", "0x10", "1,2", "abc", " 3"]))


@SETTINGS
@given(option=st.sampled_from(["--seed", "--epochs", "--lr", "--noise-lr", "--batch-size",
                               "--val-fraction", "--hidden", "--kl-scale", "--train-subset"]),
       value=NUMBERS)
def test_cli_numbers_end_in_one_line(option: str, value: str) -> None:
    """Any value of a numeric option: the argument is refused in one line, or it passes and
    the missing data set is (exit 2, one line, either way; nothing is trained)."""
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        code = main(["fit", "--data", "uci/no-such-set", "--data-root", "/nonexistent",
                     f"{option}={value}", "--no-progress"])
    lines = err.getvalue().strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err.getvalue(), err.getvalue()
