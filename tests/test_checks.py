"""Argument checks at the entry points (pyro_prune._checks): every bad input names itself."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from pyro.infer.autoguide import AutoDelta
from torch.utils.data import TensorDataset

from pyro_prune import inspect as pa
from pyro_prune._checks import (
    SEED_MAX,
    as_dataset,
    check_bool,
    check_count,
    check_counts,
    check_inputs,
    check_int,
    check_number,
    check_output_dir,
    check_output_file,
    check_seed,
    data_fingerprint,
)
from pyro_prune.inference import evaluate, fit
from pyro_prune.models import MLP, LeNet5
from pyro_prune.models.noise import MultiplicativeNoise
from pyro_prune.reduction import get_criterion

NAN = float("nan")


@pytest.mark.parametrize("value", [True, False])
def test_check_bool_passes_a_bool(value: bool) -> None:
    assert check_bool(value, "flag") is value


@pytest.mark.parametrize(("value", "shown"), [(1, "int 1"), (0, "int 0"), ("yes", "str 'yes'"), (None, "NoneType None"),
                                              (torch.tensor(True), "Tensor tensor(True)")])
def test_check_bool_refuses_anything_else_naming_it(value: object, shown: str) -> None:
    with pytest.raises(TypeError, match=rf"^flag must be a bool \(True or False\), got {re.escape(shown)}$"):
        check_bool(value, "flag")


@pytest.mark.parametrize(("value", "ok"), [(0, True), (SEED_MAX, True), (-1, False),
                                           (SEED_MAX + 1, False), (True, False), (1.0, False)])
def test_check_seed(value: object, ok: bool) -> None:
    if ok:
        assert check_seed(value) == value
    else:
        with pytest.raises((TypeError, ValueError), match="seed"):
            check_seed(value)


@pytest.mark.parametrize("value", [NAN, math.inf, -math.inf, "1", None])
def test_check_number_refuses_non_finite(value: object) -> None:
    with pytest.raises((TypeError, ValueError), match="lr"):
        check_number(value, "lr")


def test_check_number_and_int_ranges() -> None:
    assert check_number(2, "x", positive=True) == 2.0
    with pytest.raises(ValueError, match="positive"):
        check_number(0.0, "x", positive=True)
    with pytest.raises(ValueError, match=">= 0"):
        check_number(-1e-9, "x", minimum=0.0)
    with pytest.raises(ValueError, match="1 <= n <= 3"):
        check_int(4, "n", minimum=1, maximum=3)


def test_data_fingerprint_sees_every_byte() -> None:
    x = torch.zeros(50, 4)
    y = x.clone()
    y[37, 2] = 1e-30
    assert data_fingerprint(x) == data_fingerprint(x.clone())
    assert data_fingerprint(x) != data_fingerprint(y)
    assert data_fingerprint(x) != data_fingerprint(x.double())
    assert data_fingerprint(x) != data_fingerprint(x.reshape(100, 2))


def test_output_paths(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert check_output_dir(tmp_path / "a" / "b", "--out").is_dir()
    with pytest.raises(ValueError, match="is a file"):
        check_output_dir(afile, "--out")
    with pytest.raises(ValueError, match="lies under .*afile"):
        check_output_dir(afile / "sub", "--out")
    with pytest.raises(ValueError, match="is a folder"):
        check_output_file(tmp_path, "--output")
    assert check_output_file(tmp_path / "new" / "m.pt2", "--output").parent.is_dir()


# ============================================================================ entry points
X = torch.randn(48, 12, generator=torch.Generator().manual_seed(0))
Y = torch.arange(48) % 3


def _mlp(**kw: Any) -> MLP:
    torch.manual_seed(0)
    return MLP(12, [6], 3, **kw)


BAD_DATA: dict[str, tuple[Any, str]] = {
    "label -100": (TensorDataset(X, torch.full((48,), -100)), r"0\.\.2 .*from -100"),
    "label = classes": (TensorDataset(X, Y + 1), r"0\.\.2 .*to 3"),
    "int32 labels": (TensorDataset(X, Y.int()), "int64 .*found dtype=torch.int32"),
    "bool labels": (TensorDataset(X, Y.bool()), "found dtype=torch.bool"),
    "float labels": (TensorDataset(X, Y.float()), "found dtype=torch.float32"),
    "2-d labels": (TensorDataset(X, Y[:, None]), r"shape \[N\], found .*\(48, 1\)"),
    "wrong width": (TensorDataset(X[:, :11], Y), r"shape \(48, 11\)"),
    "3-d inputs": (TensorDataset(X.repeat(1, 2).reshape(48, 2, 12), Y), "do not fit the model"),
    "float64 inputs": (TensorDataset(X.double(), Y), "dtype torch.float32, found torch.float64"),
    "uint8 inputs": (TensorDataset(X.to(torch.uint8), Y), "floating-point"),
    "nan input": (TensorDataset(torch.where(X > 2, NAN, X), Y), "NaN or infinite"),
    "inf input": (TensorDataset(torch.where(X > 2, math.inf, X), Y), "NaN or infinite"),
    "empty": (TensorDataset(X[:0], Y[:0]), "empty"),
    "length mismatch": (TensorDataset(X, Y[:40]) if False else None, ""),
}
BAD_DATA.pop("length mismatch")  # TensorDataset itself refuses tensors of unequal length


@pytest.mark.parametrize("case", list(BAD_DATA))
@pytest.mark.parametrize("entry", ["fit", "evaluate", "to_inference_data"])
def test_bad_data_is_named_at_every_entry_point(case: str, entry: str) -> None:
    data, match = BAD_DATA[case]
    calls: dict[str, Callable[[], Any]] = {
        "fit": lambda: fit(_mlp(), data, epochs=1, progress=False),
        "evaluate": lambda: evaluate(_mlp(), data),
        "to_inference_data": lambda: pa.to_inference_data(_mlp(), data=data, num_samples=2),
    }
    if entry == "to_inference_data" and case in ("nan input", "inf input", "uint8 inputs", "empty"):
        match = "."  # its own data check words these differently; any clear ValueError will do
    with pytest.raises(ValueError, match=match):
        calls[entry]()


def test_a_pair_of_tensors_is_read_as_a_tensor_dataset() -> None:
    from torch.utils.data import DataLoader

    for pair in ((X, Y), [X, Y]):
        data = as_dataset(pair, "train")
        assert isinstance(data, TensorDataset)
        assert data.tensors[0] is X and data.tensors[1] is Y  # the same tensors, not copies
    # the forms that were accepted before pass as they are
    for data in (TensorDataset(X, Y), DataLoader(TensorDataset(X, Y), batch_size=4)):
        assert as_dataset(data, "train") is data
    with pytest.raises(TypeError, match="val must be a TensorDataset"):
        as_dataset(DataLoader(TensorDataset(X, Y)), "val", tensors_only=True)


#: an (inputs, targets) pair gone wrong: the error, and what its message says after the name
BAD_PAIRS: dict[str, tuple[Any, type[Exception], str]] = {
    "lone tensor": (X, TypeError, r" is a single tensor, inputs without targets: give \(inputs, targets\)"),
    "one tensor": ((X,), ValueError, r" is a tuple of one tensor, inputs without targets"),
    "three tensors": ((X, Y, Y), ValueError, r" is a tuple of 3 items: give two tensors"),
    "lengths differ": ((X, Y[:40]), ValueError, r": 48 inputs but 40 targets \(the first dimension"),
    "an array": ((X.numpy(), Y), TypeError, r"\[0\] is a ndarray, not a torch Tensor"),
    "targets a list": ((X, Y.tolist()), TypeError, r"\[1\] is a list, not a tensor"),
    "examples": ([(X[0], Y[0]), (X[1], Y[1])], TypeError, r"\[0\] is a tuple, not a tensor: a list of examples"),
    "pair in a list": ([(X, Y)], ValueError, r" is a list holding one tuple: give the pair \(inputs, targets\) itself"),
    "0-d targets": ((X, torch.tensor(1)), ValueError, r"\[1\] is a 0-dimensional tensor"),
    "a dict": ({"x": X, "y": Y}, TypeError, r" must be .*\(inputs, targets\) pair of tensors, got dict"),
}


def _entries() -> dict[str, tuple[str, Callable[[Any], Any]]]:
    """Every public function that takes labelled data: the argument's name and a call."""
    from pyro_prune.inference import post_training_curve
    from pyro_prune.predictive import evaluate_predictive, log_predictive_density
    from pyro_prune.reduction import log_posterior

    return {
        "fit": ("train", lambda d: fit(_mlp(), d, epochs=1, progress=False)),
        "fit val": ("val", lambda d: fit(_mlp(), TensorDataset(X, Y), val=d, epochs=1, progress=False)),
        "evaluate": ("dataset", lambda d: evaluate(_mlp(), d)),
        "to_inference_data": ("data", lambda d: pa.to_inference_data(_mlp(), data=d, num_samples=2)),
        "evaluate_predictive": ("dataset", lambda d: evaluate_predictive(_mlp(), d, draws=2)),
        "log_predictive_density": ("dataset", lambda d: log_predictive_density(_mlp(), d, draws=2)),
        "log_posterior": ("dataset", lambda d: log_posterior(_mlp(), d)),
        "post_training_curve": ("test", lambda d: post_training_curve(_mlp(), TensorDataset(X, Y), d, "snr",
                                                                      fractions=[0.0], progress=False)),
    }


@pytest.mark.parametrize("case", list(BAD_PAIRS))
@pytest.mark.parametrize("entry", list(_entries()))
def test_a_bad_pair_is_named_at_every_entry_point(case: str, entry: str) -> None:
    data, error, match = BAD_PAIRS[case]
    arg, call = _entries()[entry]
    if case == "a dict" and entry not in ("fit", "fit val", "evaluate", "post_training_curve"):
        match = match.replace(".*", r"a TensorDataset\(inputs, targets\) or an ")  # read all at once
    with pytest.raises(error, match="^" + re.escape(arg) + match):
        call(data)


@pytest.mark.parametrize("entry", list(_entries()))
def test_a_pair_gives_what_its_tensor_dataset_gives(entry: str) -> None:
    import pyro

    _, call = _entries()[entry]
    results = []
    for data in ((X, Y), TensorDataset(X, Y)):
        pyro.set_rng_seed(0)
        out = call(data)
        results.append(out.history if hasattr(out, "history") else out)
    if entry == "to_inference_data":
        assert results[0].posterior.equals(results[1].posterior)
        assert results[0].log_likelihood.equals(results[1].log_likelihood)
    elif isinstance(results[0], torch.Tensor):
        assert torch.equal(results[0], results[1])
    else:  # fit's history (epoch times aside), the metrics, the curve
        drop = ("epoch_time_s",)
        clean = [[{k: v for k, v in r.items() if k not in drop} for r in res] if isinstance(res, list) else res
                 for res in results]
        assert clean[0] == clean[1]


def test_regression_targets_must_match_the_output() -> None:
    torch.manual_seed(0)
    net = MLP(12, [6], 1, likelihood="gaussian")
    with pytest.raises(ValueError, match=r"\[N, 1\], found .*\(48, 3\)"):
        fit(net, TensorDataset(X, torch.randn(48, 3)), epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"found dtype=torch.float32 shape=\(48,\); give the targets as y\[:, None\]"):
        fit(net, TensorDataset(X, torch.randn(48)), epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"dtype=torch.int64 .*; for class labels build the model with likelihood=\"categorical\""):
        fit(net, TensorDataset(X, Y[:, None]), epochs=1, progress=False)


def test_float_targets_for_a_classifier_point_to_the_gaussian_likelihood() -> None:
    with pytest.raises(ValueError, match=r"class labels .*float32 shape=\(48, 1\).*likelihood=\"gaussian\""):
        fit(_mlp(), TensorDataset(X, torch.randn(48, 1)), epochs=1, progress=False)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"seed": -1}, "seed"), ({"seed": 2**40}, "seed"), ({"weight_decay": NAN}, "weight_decay"),
    ({"lr": NAN}, "lr"), ({"noise_lr": math.inf}, "noise_lr"), ({"kl_scale": "foo"}, r"\['elbo', 'paper', 'auto'\]"),
    ({"engine": "gpu"}, r"\['auto', 'fast', 'pyro'\]"),
])
def test_bad_fit_settings(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises((TypeError, ValueError), match=match):
        fit(_mlp(), TensorDataset(X, Y), epochs=1, progress=False, **kwargs)


@pytest.mark.parametrize("make", [
    lambda: MultiplicativeNoise(4, init_log_scale=NAN),
    lambda: get_criterion("snr", threshold=NAN),
    lambda: get_criterion("e_theta").remove(threshold=math.inf, loc=torch.zeros(2), scale=torch.ones(2)),
])
def test_nan_parameters_are_refused(make: Callable[[], Any]) -> None:
    with pytest.raises(ValueError, match="finite"):
        make()


# ============================================================================ guides
def test_a_guide_of_another_model_is_refused() -> None:
    a, b = _mlp(), _mlp()
    data = TensorDataset(X, Y)
    for call in (lambda: fit(a, data, epochs=1, guide=b.guide, progress=False),
                 lambda: pa.to_inference_data(a, guide=b.guide, data=data, num_samples=2),
                 lambda: pa.to_inference_data(a, guide=b.guide, num_samples=2)):
        with pytest.raises(ValueError, match="guide of another MLP"):
            call()
    other = AutoDelta(_mlp(weights="gaussian", gate="mask"))
    with pytest.raises(ValueError, match="autoguide built on another"):
        fit(a, data, epochs=1, guide=other, progress=False)


def test_a_guide_of_another_architecture_is_refused() -> None:
    torch.manual_seed(0)
    images = TensorDataset(torch.randn(8, 1, 28, 28), torch.arange(8) % 10)
    lenet, mlp = LeNet5(1, 10, 28), MLP(784, [10], 10)

    def foreign_guide(x: Any = None, y: Any = None) -> None:  # a plain function: sites only
        mlp.guide(x, y)

    with pytest.raises(ValueError, match="latent sites"):
        fit(lenet, images, epochs=1, guide=foreign_guide, progress=False)


@pytest.mark.parametrize("minimum,or_none", [(1, False), (0, False), (1, True), (3, False)])
def test_check_count_has_one_wording(minimum: int, or_none: bool) -> None:
    assert check_count(minimum, "n", minimum=minimum, or_none=or_none) == minimum
    assert check_count(minimum + 5, "n", minimum=minimum) == minimum + 5
    what = "a positive int" if minimum == 1 else f"an int >= {minimum}"
    tail = " or None" if or_none else ""
    for bad in (minimum - 1, float(minimum), True, "2", None):
        with pytest.raises(ValueError, match=f"^n must be {what}{tail}, got {bad!r}$".replace("(", r"\(")):
            check_count(bad, "n", minimum=minimum, or_none=or_none)


def test_check_counts_names_the_first_bad_keyword() -> None:
    assert check_counts(a=1, b=2) is None
    with pytest.raises(ValueError, match=r"^b must be a positive int, got 0$"):
        check_counts(a=1, b=0, c=-1)


@pytest.mark.parametrize("build", [
    lambda: MLP(4, [0], 2), lambda: LeNet5(1, 10, 0), lambda: MultiplicativeNoise(0),
    lambda: MLP(4, [3.0], 2),  # type: ignore[list-item]
])
def test_models_check_counts_alike(build: Callable[[], Any]) -> None:
    with pytest.raises(ValueError, match="must be a positive int, got"):
        build()


def test_check_inputs_and_check_prunable() -> None:
    from pyro_prune.models.base import check_prunable

    x = torch.randn(5, 3)
    assert check_inputs(x) is x
    assert check_inputs(TensorDataset(x, torch.zeros(5))) is x
    with pytest.raises(ValueError, match="^inputs is empty$"):
        check_inputs(torch.zeros(0, 3), "inputs")
    assert check_inputs((x, torch.zeros(5))) is x  # an (inputs, targets) pair
    with pytest.raises(TypeError, match=r"data\[0\] is a float, not a torch Tensor"):
        check_inputs([1.0, 2.0])
    with pytest.raises(TypeError, match="data must be a Tensor of inputs, a TensorDataset or an "
                                        r"\(inputs, targets\) pair of tensors, got dict"):
        check_inputs({"x": x})
    net = MLP(3, [4], 2)
    assert check_prunable(net) is net
    with pytest.raises(TypeError, match="model must be a PrunableNet, got Linear"):
        check_prunable(torch.nn.Linear(3, 2))
