"""fit's reliability: resuming compares everything that changes the result (data too), and a
diverging run stops or warns clearly on every kernel path."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import TensorDataset

from pyro_prune.data import load_dataset
from pyro_prune.inference import ContinuousPruning, fit
from pyro_prune.inference.fit import DivergenceWarning
from pyro_prune.models import FCN, MLP
from pyro_prune.models import noise_kernels_jit as jit

X = torch.randn(96, 10, generator=torch.Generator().manual_seed(0))
Y = torch.arange(96) % 3


def _fit(tmp_path: Path, data: TensorDataset | None = None, **kw: Any) -> Any:
    torch.manual_seed(0)
    settings: dict[str, Any] = dict(epochs=2, batch_size=32, lr=1e-2, progress=False,
                                    checkpoint_dir=tmp_path)
    return fit(MLP(10, [6], 3), data or TensorDataset(X, Y), **{**settings, **kw})


def _other_data() -> TensorDataset:
    x = X.clone()
    x[17, 3] += 1e-3  # one value of 960: same size, same shapes
    return TensorDataset(x, Y)


@pytest.mark.parametrize(("change", "key"), [
    ({"data": "other"}, "data"),
    ({"kl_scale": "elbo"}, "kl_scale"),
    ({"weight_decay": 1e-4}, "weight_decay"),
    ({"noise_lr": 0.1}, "noise_lr"),
    ({"schedule": ContinuousPruning("snr")}, "schedule"),
    ({"per_example_noise": False}, "per_example_noise"),
    ({"val": TensorDataset(X[:10], Y[:10])}, "val_data"),
])
def test_resuming_with_other_settings_or_data_is_refused(tmp_path: Path, change: dict[str, Any],
                                                         key: str) -> None:
    _fit(tmp_path, epochs=1)
    kwargs = dict(change)
    data = _other_data() if kwargs.pop("data", None) == "other" else None
    with pytest.raises(ValueError, match=f"other settings: .*{key}: checkpoint"):
        _fit(tmp_path, data, **kwargs)


class _Killed(BaseException):
    pass


def test_resuming_with_the_same_settings_continues_bit_exactly(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    fit_module = importlib.import_module("pyro_prune.inference.fit")  # the module, not the function

    real = fit_module.save_checkpoint

    def save_then_die(*args: Any, **kwargs: Any) -> None:
        real(*args, **kwargs)
        raise _Killed  # killed right after the first epoch's checkpoint

    monkeypatch.setattr(fit_module, "save_checkpoint", save_then_die)
    with pytest.raises(_Killed):
        _fit(tmp_path / "a")
    monkeypatch.undo()
    first = fit_module.load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    resumed = _fit(tmp_path / "a")
    straight = _fit(tmp_path / "b")
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    assert first["epoch"] == 1 and resumed.history[0]["loss"] == first["history"][0]["loss"]
    for (name, a), b in zip(resumed.model.state_dict().items(), straight.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


# ============================================================================ divergence
@pytest.fixture(scope="module")
def digits() -> TensorDataset:
    return load_dataset("digits", "train")


@pytest.mark.parametrize("compiled", [True, False], ids=["numba", "torch"])
@pytest.mark.parametrize(("lr", "noise_lr"), [(100.0, None), (1e-2, 100.0)])
def test_a_diverging_run_stops_with_the_nan_message(digits: TensorDataset, compiled: bool, lr: float,
                                                    noise_lr: float | None) -> None:
    if compiled and not jit.available():
        pytest.skip("numba is not installed (the 'fast' extra)")
    old = jit.set_enabled(compiled)
    try:
        torch.manual_seed(0)
        with pytest.raises(FloatingPointError,
                           match=r"loss became (nan|inf) at epoch \d+, step \d+; lower lr \(now "):
            fit(MLP(64, [50], 10), digits, epochs=3, lr=lr, noise_lr=noise_lr, kl_scale="paper",
                progress=False)
    finally:
        jit.set_enabled(old)


@pytest.mark.parametrize(("lr", "epochs", "match"), [
    (10.0, 1, r"at epoch 1: loss 2\.8e\+06 per example in its first epoch; lower lr \(now 10\)"),
    (1.0, 3, r"at epoch 3: training accuracy 0\.10\d, no better than chance \(majority class 0\.102\), "
             r"after the negative log likelihood reached 67\.9 per example at epoch 1"),
])
def test_a_huge_finite_loss_warns(digits: TensorDataset, lr: float, epochs: int, match: str) -> None:
    torch.manual_seed(0)
    with pytest.warns(DivergenceWarning, match=match):
        result = fit(FCN(64, 10, hidden=(100, 100)), digits, epochs=epochs, lr=lr, progress=False)
    assert result.history[-1]["diverged"] is True


def test_a_healthy_run_does_not_warn(digits: TensorDataset) -> None:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DivergenceWarning)
        result = fit(FCN(64, 10, hidden=(100, 100)), digits, epochs=2, lr=1e-3, progress=False)
    assert result.history[-1]["train_accuracy"] > 0.5 and "diverged" not in result.history[-1]
