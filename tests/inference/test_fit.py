from __future__ import annotations

import math

import pyro
import pytest
import torch
from torch.utils.data import TensorDataset

from pyro_prune.data import train_val_split
from pyro_prune.inference import ContinuousPruning, evaluate, fit
from pyro_prune.inference.elbo import fast_elbo_loss, pyro_elbo_loss
from pyro_prune.models import MLP


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
    from pyro_prune.reduction import delta_f_lognormal, structure_removals

    net = MLP(4, [6], 2)
    gate = net.net.fc1_gate
    with torch.no_grad():
        # three structures whose posterior sits on the lower bound, three that matter
        gate.loc.copy_(torch.tensor([-25.0, -0.1, -22.0, -0.5, -30.0, -1.0]))
        gate.log_scale.copy_(torch.tensor([-1.0, -4.0, 0.0, -3.0, 0.5, -2.0]))
    remove = structure_removals(net, "bmrs_n")["fc1_gate"]
    df = delta_f_lognormal(gate.loc.detach(), gate.scale.detach())
    assert remove.tolist() == (df >= 0).tolist() == [True, False, True, False, True, False]


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
    with pytest.raises(ValueError, match=r"train is a list holding one tuple: give the pair \(inputs, targets\) itself"):
        fit(net, [(x, y)], epochs=1)
    with pytest.raises(TypeError, match="train must be a torch Dataset, IterableDataset or DataLoader, or an "):
        fit(net, {"train": (x, y)}, epochs=1)
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


def test_kl_scale_auto_tempers_noisy_classifiers_only(digits) -> None:
    train, _ = digits
    noisy = MLP(64, [16, 8], 10)
    assert fit(noisy, train, epochs=0, progress=False).config["kl_scale"] == pytest.approx(len(train) / 24)
    assert all(g.kl_scale == pytest.approx(len(train) / 24) for g in noisy.noise_layers().values())
    bayesian = MLP(64, [16], 10, weights="gaussian", gate="mask")  # no structure noise: the ELBO
    assert fit(bayesian, train, epochs=0, progress=False).config["kl_scale"] == 1.0
    assert fit(noisy, train, epochs=0, progress=False, kl_scale="elbo").config["kl_scale"] == 1.0
    x = train.tensors[0]
    targets = TensorDataset(x, x.flatten(1)[:, :2].clone())  # a regression with noise gates: the ELBO
    regression = MLP(64, [16, 8], 2, likelihood="gaussian")
    assert fit(regression, targets, epochs=0, progress=False).config["kl_scale"] == 1.0
    assert all(g.kl_scale == 1.0 for g in regression.noise_layers().values())
    assert regression.resolve_kl_scale("paper", num_data=240) == pytest.approx(10.0)  # named: as asked


@pytest.mark.parametrize("kl_scale", ["auto", "paper", 3.0])
def test_a_named_kl_weight_tempers_the_structures_noise_not_the_gaussian_weights(digits, kl_scale) -> None:
    """Gaussian weights beside noise keep the ELBO's weight under a named KL weight, and the
    loss is the expected log likelihood plus each module's KL at its own weight."""
    train, _ = digits
    torch.manual_seed(0)
    net = MLP(64, [16, 8], 10, weights="gaussian")
    result = fit(net, train, epochs=0, progress=False, kl_scale=kl_scale)
    noise_weight = 3.0 if kl_scale == 3.0 else len(train) / 24
    weights_weight = 3.0 if kl_scale == 3.0 else 1.0
    assert result.config["kl_scale"] == pytest.approx(noise_weight)
    noise = net.noise_layers()
    assert noise and all(m.kl_scale == pytest.approx(noise_weight) for m in noise.values())
    others = [m for n, m in net.stochastic_modules().items() if n not in noise]
    assert others and all(m.kl_scale == pytest.approx(weights_weight) for m in others)
    # both engines weight each module's KL by its own weight: the loss exceeds the
    # untempered one (the same draws) by sum_m (weight_m - 1) KL_m
    x, y = train.tensors[0][:10], train.tensors[1][:10]
    weights = {n: m.kl_scale for n, m in net.stochastic_modules().items()}
    kl = {n: float(m.kl_divergence().detach()) / m.kl_scale for n, m in net.stochastic_modules().items()}
    tempering = sum((weights[n] - 1.0) * kl[n] for n in kl)
    engines = {"pyro": lambda: pyro_elbo_loss(net, x, y),
               "fast": lambda: fast_elbo_loss(net, x, y, per_example=False)[0]}
    for loss_of in engines.values():
        losses = []
        for spec in (kl_scale, 1.0):
            net.set_kl_scale(spec)
            torch.manual_seed(1)
            pyro.set_rng_seed(1)
            losses.append(float(loss_of().detach()))
        assert losses[0] - losses[1] == pytest.approx(tempering, rel=1e-3)


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
