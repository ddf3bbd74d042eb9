"""Resumable training: checkpoints written by fit, read back, refused when they do not fit."""

from __future__ import annotations

import importlib
from collections.abc import Callable

import pytest
import torch

from pyro_prune.inference import ContinuousPruning, fit, load_checkpoint
from pyro_prune.models import MLP


class Stop(Exception):
    """Raised by :func:`_stop_after_saves` to interrupt a run."""


def _stop_after_saves(monkeypatch, saves: int) -> Callable[[], None]:
    """Make ``fit`` raise :class:`Stop` right after its ``saves``-th checkpoint, as a killed
    run would stop; returns the function that undoes it."""
    fit_mod = importlib.import_module("pyro_prune.inference.fit")  # the module, not the function
    orig_save, calls = fit_mod.save_checkpoint, {"n": 0}

    def save_then_stop(*args, **kwargs):
        orig_save(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == saves:
            raise Stop

    monkeypatch.setattr(fit_mod, "save_checkpoint", save_then_stop)
    return lambda: monkeypatch.setattr(fit_mod, "save_checkpoint", orig_save)


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
    undo = _stop_after_saves(monkeypatch, 2)
    with pytest.raises(Stop):
        fit(net, train, epochs=4, batch_size=128, seed=2, progress=False,
            checkpoint_dir=tmp_path, schedule=StopAfter(2))
    undo()
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


@pytest.mark.parametrize("noise_lr", [0.03, None])
def test_optimizer_state_of_layers_owning_their_noise_parameters_resumes(noise_lr: float | None) -> None:
    """An optimizer state saved while every noise layer held its own ``loc``/``log_scale`` (the
    layout before the network-wide storage) loads into the optimizer over the shared storage
    with the same moments, and the next step moves the parameters as it would have."""
    import io

    from pyro_prune.inference.elbo import fast_elbo_loss
    from pyro_prune.inference.optim import load_optimizer_state, make_optimizer
    from pyro_prune.models import MLP

    x = torch.randn(32, 12, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 3, (32,), generator=torch.Generator().manual_seed(2))

    def step(net, optimizer, seed):  # type: ignore[no-untyped-def]
        torch.manual_seed(seed)
        optimizer.zero_grad(set_to_none=True)
        loss, _ = fast_elbo_loss(net, x, y, per_example=False)
        loss.backward()
        optimizer.step()

    torch.manual_seed(0)
    old = MLP(12, [10, 8], 3)
    old.num_data = 320
    for m in old.noise_layers().values():
        m.own_storage()
    old_opt = make_optimizer(old, lr=1e-2, noise_lr=noise_lr)
    for seed in range(3):
        step(old, old_opt, seed)
    buffer = io.BytesIO()
    torch.save({"model": old.state_dict(), "optimizer": old_opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    new = MLP(12, [10, 8], 3)
    new.num_data = 320
    new.load_state_dict(saved["model"])
    new_opt = make_optimizer(new, lr=1e-2, noise_lr=noise_lr)
    with pytest.raises(ValueError):
        new_opt.load_state_dict(saved["optimizer"])  # torch's own loader refuses the layout
    load_optimizer_state(new_opt, saved["optimizer"], new)
    layers_old = list(old.noise_layers().values())
    storage = next(iter(new.noise_layers().values()))._parameters["loc"]
    torch.testing.assert_close(new_opt.state[storage]["exp_avg"],
                               torch.cat([old_opt.state[m.loc]["exp_avg"] for m in layers_old]))
    step(old, old_opt, 3)
    step(new, new_opt, 3)
    for a, b in zip(layers_old, new.noise_layers().values()):
        torch.testing.assert_close(a.loc, b.loc)
        torch.testing.assert_close(a.log_scale, b.log_scale)
    torch.testing.assert_close(old.net.fc1.weight, new.net.fc1.weight)


def _autoguide_fit(train, tmp_path, *, epochs: int, seed: int = 0):
    """A fit under AutoNormal (the guide's parameters are the noise posterior)."""
    import pyro
    from pyro.infer.autoguide import AutoNormal

    from pyro_prune.inference import init_to_model

    torch.manual_seed(seed)
    pyro.clear_param_store()
    net = MLP(64, [16], 10)
    guide = AutoNormal(net, init_loc_fn=init_to_model(net))
    result = fit(net, train, epochs=epochs, batch_size=128, lr=1e-2, seed=2, progress=False, guide=guide,
                 checkpoint_dir=tmp_path, schedule=ContinuousPruning(finetune_epochs=1))
    return net, guide, result


def test_a_run_under_an_autoguide_resumes_with_the_guides_posterior(digits, tmp_path, monkeypatch) -> None:
    """The guide's parameters are saved with the model: an interrupted run continues as if
    never stopped, and a finished one read back predicts as it did. Before, the guide started
    afresh on resume (a finished run read back moved from 92.8% to 91.4% test accuracy)."""
    from pyro_prune.inference import evaluate

    train, test = digits
    reference, _, full = _autoguide_fit(train, tmp_path / "full", epochs=3)
    undo = _stop_after_saves(monkeypatch, 2)
    with pytest.raises(Stop):
        _autoguide_fit(train, tmp_path / "stopped", epochs=3)
    undo()
    net, guide, resumed = _autoguide_fit(train, tmp_path / "stopped", epochs=3, seed=7)  # another start
    assert [r["loss"] for r in resumed.history] == pytest.approx([r["loss"] for r in full.history], rel=1e-5)
    assert evaluate(net, test)["accuracy"] == evaluate(reference, test)["accuracy"]
    read_back, _, again = _autoguide_fit(train, tmp_path / "full", epochs=3, seed=7)  # finished: read back
    assert len(again.history) == 4
    assert evaluate(read_back, test)["accuracy"] == evaluate(reference, test)["accuracy"]
    x = test.tensors[0][:16]
    torch.testing.assert_close(read_back.predict(x), reference.predict(x))


def test_a_checkpoint_without_the_guides_state_is_refused(digits, tmp_path) -> None:
    train, _ = digits
    _autoguide_fit(train, tmp_path, epochs=1)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    del state["guide"]  # as written before the guide's parameters were saved
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match=r"holds no state of the guide AutoNormal .*train again in a new folder"):
        _autoguide_fit(train, tmp_path, epochs=1)
