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
