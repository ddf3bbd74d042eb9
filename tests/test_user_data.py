"""``pyro-prune fit --data`` with the user's own data: a ``module:function`` or a tensor file."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import TensorDataset

from pyro_prune import cli
from pyro_prune.user_data import is_user_data, load_user_data, to_tensors

#: the error cases and other forms of the contract, beside docs/scale_out.md's ``my_data.py``
MODULE = '''
import torch
from torch.utils.data import DataLoader, TensorDataset

from {docs} import Digits


def make_loaders():
    return {{"train": DataLoader(Digits("train"), batch_size=16, shuffle=True),
            "test": DataLoader(Digits("test"), batch_size=100), "num_classes": 10,
            "name": "my digits"}}


def regression():
    x = torch.randn(40, 3)
    return {{"train": TensorDataset(x, x[:, :2]), "test": TensorDataset(x[:8], x[:8, :2])}}


def inferred():
    return Digits("train"), Digits("test")


def pairs():
    train, test = Digits("train"), Digits("test")
    return (train.x, train.y), [test.x, test.y]


def broken():
    raise RuntimeError("no such bucket")


def wrong_type():
    return 42


def not_datasets():
    return [1, 2, 3], [4]


def unpaired():
    return TensorDataset(torch.zeros(4, 2)), TensorDataset(torch.zeros(4, 2))


def unknown_key():
    return {{"train": Digits("train"), "test": Digits("test"), "classes": 10}}


NOT_A_FUNCTION = 3
'''


@pytest.fixture
def user_module(user_data_module, tmp_path) -> str:
    """A module of :data:`MODULE` on ``sys.path``; its ``make_datasets`` is the docs' one."""
    name = f"{user_data_module}_more"
    (tmp_path / f"{name}.py").write_text(MODULE.format(docs=user_data_module))
    return name


def test_what_names_the_users_data() -> None:
    assert is_user_data("mypkg.mydata:make_datasets") and is_user_data("data/set.pt")
    for named in ("digits", "mnist", "fashion-mnist", "uci/boston", "cifar10"):
        assert not is_user_data(named)


def test_shapes_and_classes_are_inferred_or_given(user_module) -> None:
    data = load_user_data(f"{user_module.removesuffix('_more')}:make_datasets")
    assert (data.input_shape, data.output_dim, data.task) == ((1, 8, 8), 10, "classification")
    inferred = load_user_data(f"{user_module}:inferred")  # classes from the test set's labels
    assert (inferred.input_shape, inferred.output_dim, inferred.name) == ((1, 8, 8), 10, f"{user_module}:inferred")
    loaders = load_user_data(f"{user_module}:make_loaders")
    assert (loaders.input_shape, loaders.output_dim, loaders.name) == ((1, 8, 8), 10, "my digits")
    pairs = load_user_data(f"{user_module}:pairs")  # (inputs, targets) pairs: TensorDatasets
    assert isinstance(pairs.train, TensorDataset) and isinstance(pairs.test, TensorDataset)
    assert (pairs.input_shape, pairs.output_dim, len(pairs.train)) == ((1, 8, 8), 10, 1438)
    reg = load_user_data(f"{user_module}:regression")
    assert (reg.input_shape, reg.output_dim, reg.task) == ((3,), 2, "regression")
    # a sample of a map-style set as tensors: seeded, the requested size
    first, again = (to_tensors(data.test, 50, seed=1) for _ in range(2))
    assert first.tensors[0].shape == (50, 1, 8, 8) and torch.equal(first.tensors[1], again.tensors[1])
    assert len(to_tensors(loaders.test, 150)) == 150


@pytest.mark.parametrize("spec, message", [
    ("no_such_module_xyz:make", "cannot import module 'no_such_module_xyz'"),
    ("{m}:missing", "has no attribute 'missing'"),
    ("{m}:NOT_A_FUNCTION", "is a int, not a function"),
    ("{m}:broken", "broken() raised RuntimeError: no such bucket"),
    ("{m}:wrong_type", "must give (train, test) or a dict with 'train' and 'test', got int"),
    ("{m}:not_datasets", "train is a list of 3 items: give two tensors, (inputs, targets)"),
    ("{m}:unpaired", "train must give (input, target) pairs of tensors"),
    ("{m}:unknown_key", "unknown keys ['classes']"),
    ("missing_file.pt", "data file 'missing_file.pt' not found"),
])
def test_bad_data_is_one_line_exit_2(spec, message, user_module, tmp_path, error_line) -> None:
    spec = spec.format(m=user_module)
    assert cli.main(["fit", "--data", spec, "--out", str(tmp_path / "run")]) == 2
    line = error_line()
    assert line.startswith("pyro-prune fit: error:") and message in line, line
    assert not (tmp_path / "run" / "config.json").exists()


def test_bad_tensor_files_are_one_line_exit_2(tmp_path, error_line) -> None:
    x, y = torch.zeros(6, 4), torch.zeros(6, dtype=torch.long)
    cases = {
        "list.pt": ([x, y], "must hold a dict with 'train' and 'test'"),
        "pairs.pt": ({"train": (x, y), "test": x}, "test is a single tensor, inputs without targets"),
        "lengths.pt": ({"train": (x, y[:5]), "test": (x, y)}, "train: 6 inputs but 5 targets"),
    }
    for name, (payload, message) in cases.items():
        torch.save(payload, tmp_path / name)
        assert cli.main(["fit", "--data", str(tmp_path / name), "--out", str(tmp_path / "r")]) == 2
        assert message in error_line()
    (tmp_path / "garbage.pt").write_bytes(b"not a zip")
    assert cli.main(["fit", "--data", str(tmp_path / "garbage.pt"), "--out", str(tmp_path / "r")]) == 2
    assert "not a tensor file torch.load can read safely" in error_line()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_cuda_without_a_gpu_is_one_line_exit_2(tmp_path, error_line) -> None:
    assert cli.main(["fit", "--data", "digits", "--device", "cuda", "--out", str(tmp_path / "r")]) == 2
    assert "device 'cuda' asked for, but this torch build sees no CUDA device" in error_line()


TINY = ["--model", "mlp", "--hidden", "16", "--epochs", "2", "--finetune-epochs", "0",
        "--num-samples", "4", "--eval-examples", "60", "--no-progress", "--device", "cpu"]


def test_fit_on_the_docs_dataset_function(user_data_module, tmp_path) -> None:
    """The ``my_data.py`` of docs/scale_out.md, as the page runs it."""
    user_module = user_data_module
    out = tmp_path / "run"
    assert cli.main(["fit", "--data", f"{user_module}:make_datasets", *TINY, "--train-subset", "800",
                     "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["input_shape"] == [1, 8, 8] and config["data"]["output_dim"] == 10
    assert config["run"]["data"] == f"{user_module}:make_datasets" and config["device"] == "cpu"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_accuracy"] > 0.7  # all 359 test digits, read through the Dataset
    assert metrics["test_lpd_n"] == 60  # the evaluation's sample of the user's test set
    history = json.loads((out / "history.json").read_text())
    assert "val_accuracy" in history[-1]  # 20% of the 800 held out (a seeded random split)


def test_fit_on_a_tensor_file(tmp_path, capsys) -> None:
    from pyro_prune.data import load_dataset

    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    path = tmp_path / "digits.pt"
    torch.save({"train": (train.tensors[0].flatten(1), train.tensors[1]),
                "test": tuple(t.flatten(1) if t.dim() > 1 else t for t in test.tensors)}, path)
    out = tmp_path / "run"
    assert cli.main(["fit", "--data", str(path), *TINY, "--train-subset", "600",
                     "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["input_shape"] == [64] and config["data"]["output_dim"] == 10
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_accuracy"] > 0.7 and metrics["chance_note"] is None
    shown = capsys.readouterr().out
    assert "run folder" in shown and "no better than chance" not in shown


def test_a_run_at_chance_ends_with_a_note(tmp_path, capsys) -> None:
    """Inputs that are all 0 carry nothing to learn: the network predicts the majority class
    and the summary says so, with what to change on the command line."""
    from pyro_prune.data import load_dataset

    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    path = tmp_path / "blank.pt"
    torch.save({"train": (torch.zeros(len(train), 64), train.tensors[1]),
                "test": (torch.zeros(len(test), 64), test.tensors[1])}, path)
    out = tmp_path / "run"
    assert cli.main(["fit", "--data", str(path), *TINY, "--train-subset", "600", "--lr", "0.001",
                     "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    note = metrics["chance_note"]
    assert metrics["test_accuracy"] < 0.11 and note is not None
    assert note.startswith(f"note: the test accuracy {metrics['test_accuracy']:.3f} is no better than chance")
    assert "on 359 examples" in note and "--lr 0.001" in note and "--kl-scale auto" in note
    shown = capsys.readouterr().out.splitlines()
    assert note in shown and shown.index(note) < len(shown) - 1  # before the run folder's line
    assert cli.main(["report", str(out)]) == 0
    assert note.removeprefix("note: ") in (out / "report.md").read_text()
