from __future__ import annotations

import importlib
import math

import pytest
import torch
from torch.utils.data import TensorDataset

from pyro_prune.data import load_dataset, train_val_split
from pyro_prune.inference import ContinuousPruning, evaluate, fit, load_checkpoint
from pyro_prune.inference.fit import _flush_denormal_enabled
from pyro_prune.models import MLP


@pytest.fixture(scope="module")
def digits() -> tuple[TensorDataset, TensorDataset]:
    train = load_dataset("digits", split="train")
    test = load_dataset("digits", split="test")
    return train, test


def test_fit_learns_digits_and_records_history(digits) -> None:
    train, test = digits
    net = MLP(64, [32], 10)
    result = fit(net, train, epochs=6, batch_size=64, lr=3e-3, val=test, progress=False, seed=0)
    assert len(result.history) == 6
    row = result.history[-1]
    for key in ("epoch", "loss", "val_loss", "val_accuracy", "kept", "compression", "train_accuracy"):
        assert key in row
    assert row["val_accuracy"] > 0.9
    losses = [r["loss"] for r in result.history]
    assert losses[-1] < losses[0]
    assert result.model is net and net.num_data == len(train)


def test_fit_is_reproducible_per_seed(digits) -> None:
    train, _ = digits
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        net = MLP(64, [16], 10)
        runs.append(fit(net, train, epochs=2, batch_size=128, progress=False, seed=7).history[-1]["loss"])
    assert runs[0] == runs[1]


def test_continuous_pruning_is_monotone_and_finetunes(digits) -> None:
    train, test = digits
    torch.manual_seed(0)
    net = MLP(64, [64, 64], 10)
    sched = ContinuousPruning("snr", every=1, finetune_epochs=2)
    result = fit(net, train, epochs=6, batch_size=16, lr=3e-2, val=test, schedule=sched,
                 kl_scale="paper", progress=False)
    hist = result.history
    assert len(hist) == 8
    assert [r["phase"] for r in hist[-2:]] == ["finetune", "finetune"]
    assert all(r["removed"] == 0 for r in hist[-2:])
    kept = [sum(r["kept"].values()) for r in hist]
    assert all(a >= b for a, b in zip(kept, kept[1:]))
    assert kept[-1] < 128  # noise-dominated structures (SNR < 1) went
    assert hist[-1]["compression"] > 0
    assert hist[-1]["val_accuracy"] > 0.85


def test_bmrs_n_removes_exactly_the_structures_with_non_negative_df() -> None:
    from pyro_prune.inference import structure_removals
    from pyro_prune.reduction import delta_f_lognormal

    net = MLP(4, [6], 2)
    gate = net.net.fc1_gate
    with torch.no_grad():
        # three structures whose posterior sits on the lower bound, three that matter
        gate.loc.copy_(torch.tensor([-25.0, -0.1, -22.0, -0.5, -30.0, -1.0]))
        gate.log_scale.copy_(torch.tensor([-1.0, -4.0, 0.0, -3.0, 0.5, -2.0]))
    remove = structure_removals(net, "bmrs_n")["fc1_gate"]
    df = delta_f_lognormal(gate.loc.detach(), gate.scale.detach())
    assert remove.tolist() == (df >= 0).tolist() == [True, False, True, False, True, False]


def test_rerunning_a_finished_run_restores_it(digits, tmp_path) -> None:
    train, _ = digits
    sched_kwargs = dict(criterion="bmrs_n", every=1, finetune_epochs=1)
    torch.manual_seed(0)
    full = fit(MLP(64, [16], 10), train, epochs=3, batch_size=128, seed=1, progress=False,
               schedule=ContinuousPruning(**sched_kwargs))
    torch.manual_seed(0)
    net = MLP(64, [16], 10)
    first = fit(net, train, epochs=3, batch_size=128, seed=1, progress=False,
                schedule=ContinuousPruning(**sched_kwargs), checkpoint_dir=tmp_path)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["epoch"] == 4
    # a second call finds the finished checkpoint: nothing left to train, same model back
    torch.manual_seed(5)
    net2 = MLP(64, [16], 10)
    resumed = fit(net2, train, epochs=3, batch_size=128, seed=1, progress=False,
                  schedule=ContinuousPruning(**sched_kwargs), checkpoint_dir=tmp_path)
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in first.history]
    assert [r["loss"] for r in first.history] == pytest.approx([r["loss"] for r in full.history])
    torch.testing.assert_close(net2.state_dict()["net.fc1.weight"], net.state_dict()["net.fc1.weight"])


def test_interrupted_run_resumes_where_it_stopped(digits, tmp_path, monkeypatch) -> None:
    train, _ = digits
    torch.manual_seed(0)
    reference = fit(MLP(64, [16], 10), train, epochs=4, batch_size=128, seed=2, progress=False)

    class Stop(Exception):
        pass

    class StopAfter:
        extra_epochs = 0

        def __init__(self, n: int) -> None:
            self.n = n

        def on_fit_start(self, ctx) -> None: ...
        def on_step_end(self, ctx) -> None: ...
        def state_dict(self) -> dict: return {}
        def load_state_dict(self, s) -> None: ...

        def on_epoch_end(self, ctx, epoch: int) -> dict:
            return {}

    torch.manual_seed(0)
    net = MLP(64, [16], 10)
    calls = {"n": 0}
    fit_mod = importlib.import_module("pyro_prune.inference.fit")
    orig_save = fit_mod._save_checkpoint

    def save_then_stop(*args, **kwargs):
        orig_save(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            raise Stop

    monkeypatch.setattr(fit_mod, "_save_checkpoint", save_then_stop)
    with pytest.raises(Stop):
        fit(net, train, epochs=4, batch_size=128, seed=2, progress=False,
            checkpoint_dir=tmp_path, schedule=StopAfter(2))
    monkeypatch.setattr(fit_mod, "_save_checkpoint", orig_save)
    torch.manual_seed(99)  # a different initial state: the checkpoint must override it
    net2 = MLP(64, [16], 10)
    resumed = fit(net2, train, epochs=4, batch_size=128, seed=2, progress=False,
                  checkpoint_dir=tmp_path, schedule=StopAfter(2))
    assert len(resumed.history) == 4
    assert [r["loss"] for r in resumed.history] == pytest.approx(
        [r["loss"] for r in reference.history], rel=1e-5)


def test_checkpoint_from_elsewhere_is_refused(digits, tmp_path) -> None:
    train, _ = digits
    # a fixed KL weight: "auto" resolves to num_data / num_structures, which differs by shape
    kw = dict(epochs=1, progress=False, checkpoint_dir=tmp_path, kl_scale="elbo")
    fit(MLP(64, [16], 10), train, batch_size=128, **kw)
    with pytest.raises(ValueError, match="other settings"):
        fit(MLP(64, [16], 10), train, batch_size=64, **kw)
    with pytest.raises(ValueError, match="does not match"):
        fit(MLP(64, [8], 10), train, batch_size=128, **kw)
    torch.save({"something": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a pyro_prune"):
        load_checkpoint(tmp_path / "other.pt")


def test_bad_input_is_named(digits) -> None:
    train, _ = digits
    net = MLP(64, [8], 10)
    with pytest.raises(ValueError, match="epochs"):
        fit(net, train, epochs=-1)
    with pytest.raises(ValueError, match="batch_size"):
        fit(net, train, epochs=1, batch_size=0)
    with pytest.raises(ValueError, match="lr"):
        fit(net, train, epochs=1, lr=math.nan)
    x, y = train.tensors
    bad = TensorDataset(torch.where(torch.rand_like(x) < 0.01, torch.nan, x), y)
    with pytest.raises(ValueError, match="NaN"):
        fit(net, bad, epochs=1)
    with pytest.raises(ValueError, match="class labels"):
        fit(net, TensorDataset(x, y.float()), epochs=1)
    with pytest.raises(TypeError, match="Dataset"):
        fit(net, [(x, y)], epochs=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="engine"):
        fit(net, train, epochs=1, engine="jax")
    with pytest.raises(ValueError, match="noise_lr"):
        fit(net, train, epochs=1, noise_lr=-1.0)


def test_noise_lr_moves_the_noise_posteriors_faster(digits) -> None:
    """Adam moves a parameter by about lr per step: the noise posteriors' own rate shows."""
    train, _ = digits
    travelled = {}
    for noise_lr in (None, 3e-2):
        torch.manual_seed(0)
        net = MLP(64, [16], 10)
        result = fit(net, train, epochs=2, batch_size=64, lr=1e-3, noise_lr=noise_lr,
                     progress=False, kl_scale="paper")
        gate = next(iter(net.noise_layers().values()))
        travelled[noise_lr] = float((gate.log_scale.detach() + 5.0).abs().max())
        assert result.model is net
    steps = 2 * math.ceil(len(train) / 64)
    assert travelled[None] <= 1.1 * steps * 1e-3 < travelled[3e-2]


def test_one_draw_per_step_trains_too(digits) -> None:
    train, test = digits
    torch.manual_seed(0)
    net = MLP(64, [32], 10)
    result = fit(net, train, epochs=6, batch_size=64, lr=3e-3, val=test, progress=False,
                 per_example_noise=False)
    assert result.history[-1]["val_accuracy"] > 0.9


def test_pyro_engine_trains_too(digits) -> None:
    train, test = digits
    x, y = train.tensors
    small = TensorDataset(x[:400], y[:400])
    torch.manual_seed(0)
    result = fit(MLP(64, [32], 10), small, epochs=4, batch_size=50, lr=3e-3, engine="pyro",
                 val=test, progress=False)
    assert result.history[-1]["val_accuracy"] > 0.6
    assert train_val_split  # the helper is importable from data


class _RecordFlush:
    """A schedule that records whether subnormals are flushed while fit trains."""

    def __init__(self) -> None:
        self.seen: list[bool] = []

    def on_fit_start(self, ctx) -> None:
        pass

    def on_step_end(self, ctx) -> None:
        pass

    def on_epoch_end(self, ctx, epoch: int) -> dict:
        self.seen.append(_flush_denormal_enabled())
        return {}


@pytest.mark.parametrize("flush", [True, False])
def test_fit_flushes_subnormals_while_training_and_restores_the_mode(digits, flush) -> None:
    train, _ = digits
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush subnormal floats")
    assert not _flush_denormal_enabled()
    # a subnormal survives arithmetic outside fit ...
    assert float(torch.tensor([3e-39]) * 2.0) == pytest.approx(6e-39, rel=1e-6)
    rec = _RecordFlush()
    fit(MLP(64, [16], 10), train, epochs=2, batch_size=64, schedule=rec, progress=False,
        flush_denormal=flush)
    assert rec.seen == [flush, flush]  # ... and is flushed to zero inside, when asked
    assert not _flush_denormal_enabled()  # the caller's mode is back
    torch.set_flush_denormal(True)
    try:
        fit(MLP(64, [16], 10), train, epochs=1, batch_size=64, progress=False, flush_denormal=flush)
        assert _flush_denormal_enabled()  # a caller who flushes keeps flushing
    finally:
        torch.set_flush_denormal(False)


def test_kl_scale_auto_tempers_noise_networks_only(digits) -> None:
    train, _ = digits
    noisy = MLP(64, [16, 8], 10)
    assert fit(noisy, train, epochs=0, progress=False).config["kl_scale"] == pytest.approx(len(train) / 24)
    assert all(g.kl_scale == pytest.approx(len(train) / 24) for g in noisy.noise_layers().values())
    bayesian = MLP(64, [16], 10, weights="gaussian", gate="mask")  # no structure noise: the ELBO
    assert fit(bayesian, train, epochs=0, progress=False).config["kl_scale"] == 1.0
    assert fit(noisy, train, epochs=0, progress=False, kl_scale="elbo").config["kl_scale"] == 1.0


@pytest.mark.slow
def test_the_default_recipe_prunes_what_the_data_does_not_need(digits) -> None:
    """``fit`` + ``ContinuousPruning()`` with nothing but epochs, lr and batch size."""
    train, test = digits
    torch.manual_seed(0)
    model = MLP(64, [100, 100], 10)
    schedule = ContinuousPruning()
    result = fit(model, train, epochs=20, lr=1e-2, batch_size=64, progress=False, schedule=schedule)
    assert schedule.criterion.name == "bmrs" and schedule.extra_epochs == 10
    assert result.config["kl_scale"] == pytest.approx(len(train) / 200)  # "auto" -> "paper"
    assert result.last["compression"] > 0.5
    assert evaluate(model, test)["accuracy"] > 0.95
