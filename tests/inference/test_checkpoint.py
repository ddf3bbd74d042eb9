"""Resumable training: checkpoints written by fit, read back, refused when they do not fit."""

from __future__ import annotations

import importlib

import pytest
import torch

from pyro_prune.inference import ContinuousPruning, fit, load_checkpoint
from pyro_prune.models import MLP


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
    fit_mod = importlib.import_module("pyro_prune.inference.fit")  # the module, not the function
    orig_save = fit_mod.save_checkpoint

    def save_then_stop(*args, **kwargs):
        orig_save(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            raise Stop

    monkeypatch.setattr(fit_mod, "save_checkpoint", save_then_stop)
    with pytest.raises(Stop):
        fit(net, train, epochs=4, batch_size=128, seed=2, progress=False,
            checkpoint_dir=tmp_path, schedule=StopAfter(2))
    monkeypatch.setattr(fit_mod, "save_checkpoint", orig_save)
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
