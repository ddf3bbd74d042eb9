"""The divergence check of fit: what counts as diverged (a loss or likelihood rising far
above its best, a classifier at chance whose likelihood is worse than uniform) and what does
not (a Bayesian network whose KL / N dominates the loss on a small data set), and a warning
that names the epoch and the values it compares."""

from __future__ import annotations

import math
import warnings
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from pyro_prune.data import load_dataset
from pyro_prune.inference import fit
from pyro_prune.inference.divergence import DivergenceWarning, divergence_reason, warn_if_diverging
from pyro_prune.models import MLP, LeNet5, bayesianize

TEN_CLASSES = (0.102, math.log(10))


@pytest.fixture(scope="module")
def digits() -> TensorDataset:
    return load_dataset("digits", "train")


def _rows(*values: tuple[float, float, float]) -> list[dict[str, Any]]:
    """History rows ``(loss, train_loss, train_accuracy)`` for epochs 1, 2, ..."""
    return [{"epoch": i + 1, "loss": loss, "train_loss": nll, "train_accuracy": acc}
            for i, (loss, nll, acc) in enumerate(values)]


@pytest.mark.parametrize(("rows", "final", "expected"), [
    # the loss per example 1000x its best: diverged, the best epoch named by number (2), not by loss
    (_rows((13.5, 2.0, 0.6), (13.1, 1.5, 0.7), (4.2e4, 900.0, 0.3)), False,
     "loss 4.2e+04 per example, up from 13.1 at epoch 2, its best"),
    # KL / N of 300 hides a likelihood that blew up: judged on the likelihood term
    (_rows((300.0, 0.5, 0.9), (298.0, 0.4, 0.9), (310.0, 2500.0, 0.5)), False,
     "negative log likelihood 2.5e+03 per example on the training data, up from 0.4 at epoch 2, its best"),
    (_rows((2.8e6, 1600.0, 0.11),), False, "loss 2.8e+06 per example in its first epoch"),
    # at chance at the end after the likelihood was worse than uniform
    (_rows((2938.0, 67.9, 0.16), (99.7, 2.69, 0.099), (117.0, 2.45, 0.102)), True,
     "training accuracy 0.102, no better than chance (majority class 0.102), after the negative log "
     "likelihood reached 67.9 per example at epoch 1 (predicting uniformly costs log C = 2.3)"),
    # slow, not diverged: at chance with a likelihood at log C, however large KL / N makes the loss
    (_rows((396.4, 2.295, 0.104),), True, None),
    (_rows((396.4, 2.30, 0.10), (395.0, 2.29, 0.11), (393.3, 2.21, 0.12)), True, None),
    # the same at chance before the last epoch: only the end is judged on accuracy
    (_rows((2938.0, 67.9, 0.16), (99.7, 2.69, 0.099)), False, None),
    # healthy regression with a negative likelihood (a small obs_scale): no ratio of negatives
    ([{"epoch": 1, "loss": 5.0, "train_loss": -1.5}, {"epoch": 2, "loss": 3.0, "train_loss": -0.8}], True, None),
])
def test_what_counts_as_diverged(rows: list[dict[str, Any]], final: bool, expected: str | None) -> None:
    chance = None if "train_accuracy" not in rows[0] else TEN_CLASSES
    assert divergence_reason(rows, chance, final=final) == expected


def test_the_warning_names_the_epoch_the_losses_and_the_learning_rates() -> None:
    rows = _rows((13.5, 2.0, 0.6), (13.1, 1.5, 0.7), (14.0, 1.4, 0.72), (4.2e4, 900.0, 0.3))
    for i in range(1, len(rows)):
        with warnings.catch_warnings():
            warnings.simplefilter("error", DivergenceWarning)
            warn_if_diverging(rows[:i], TEN_CLASSES, final=False, lr=1e-3, noise_lr=0.03)
    with pytest.warns(DivergenceWarning) as caught:
        warn_if_diverging(rows, TEN_CLASSES, final=False, lr=1e-3, noise_lr=0.03)
    assert str(caught[0].message) == (
        "training diverged at epoch 4: loss 4.2e+04 per example, up from 13.1 at epoch 2, its best; "
        "lower lr (now 0.001) or noise_lr (now 0.03)")
    assert rows[-1]["diverged"] is True
    rows.append({"epoch": 5, "loss": 5e4, "train_loss": 1e3, "train_accuracy": 0.1})
    with warnings.catch_warnings():  # once per run
        warnings.simplefilter("error", DivergenceWarning)
        warn_if_diverging(rows, TEN_CLASSES, final=True, lr=1e-3)


@pytest.mark.parametrize(("make", "epochs", "seed"), [
    # a seed whose one epoch ends at 0.102 training accuracy with a likelihood of 2.29 nats < log 10
    (lambda: LeNet5(1, 10, 8, weights="gaussian"), 1, 3),
    (lambda: MLP(64, [50], 10, weights="gaussian"), 2, 0),
    (lambda: bayesianize(nn.Sequential(nn.Flatten(), nn.Linear(64, 100), nn.ReLU(), nn.Linear(100, 10)),
                         weights="gaussian"), 2, 0),
], ids=["lenet5", "mlp", "bayesianized-torch"])
def test_gaussian_weights_on_digits_fit_without_a_warning(digits: TensorDataset, make: Any, epochs: int,
                                                          seed: int) -> None:
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DivergenceWarning)
        result = fit(make(), digits, epochs=epochs, seed=seed, progress=False)
    last = result.history[-1]
    assert "diverged" not in last
    assert last["loss"] > 5 * last["train_loss"]  # KL / N is most of the loss per example
    assert last["train_loss"] < 1.05 * math.log(10)  # the likelihood term near uniform's or better


def test_gaussian_weights_with_a_huge_lr_still_warn(digits: TensorDataset) -> None:
    torch.manual_seed(0)
    with pytest.warns(DivergenceWarning, match=r"at epoch 3: training accuracy 0\.\d+, no better than chance "
                                               r"\(majority class 0\.102\), after the negative log likelihood "
                                               r"reached \d+\.\d+ per example at epoch \d \(predicting uniformly costs "
                                               r"log C = 2\.3\); lower lr \(now 3\)$"):
        result = fit(MLP(64, [50], 10, weights="gaussian"), digits, epochs=3, lr=3.0, noise_lr=None,
                     progress=False)
    assert result.history[-1]["diverged"] is True


def test_parameters_made_nan_by_a_step_stop_with_their_name(digits: TensorDataset) -> None:
    torch.manual_seed(0)
    with pytest.raises(FloatingPointError, match=r"the parameter [\w.]+ became non-finite at epoch \d+, "
                                                 r"step \d+; lower lr \(now 10\)$"), \
            pytest.warns(DivergenceWarning, match="at epoch 1: loss .* per example in its first epoch"):
        fit(MLP(64, [50], 10, weights="gaussian"), digits, epochs=3, lr=10.0, noise_lr=None, progress=False)


def test_the_chance_margin_is_three_standard_errors_or_two_points() -> None:
    from pyro_prune.inference.divergence import at_chance, chance_margin, chance_note

    # the 359 test digits, majority share 0.102: sqrt(0.102 * 0.898 / 359) = 0.0160
    assert chance_margin(0.102, 359) == pytest.approx(3 * math.sqrt(0.102 * 0.898 / 359))
    assert chance_margin(0.102, 359) == pytest.approx(0.0479, abs=1e-4)
    assert chance_margin(0.102, 10_000) == 0.02 and chance_margin(0.102, None) == 0.02
    assert at_chance(0.149, 0.102, 359) and not at_chance(0.151, 0.102, 359)
    assert at_chance(0.121, 0.102, None) and not at_chance(0.123, 0.102, None)
    assert chance_note(None, 0.102, 359, where="test", checks="x") is None
    assert chance_note(0.1, None, 359, where="test", checks="x") is None
    assert chance_note(0.9, 0.102, 359, where="test", checks="x") is None
    assert chance_note(0.1003, 0.102, 359, where="test", checks="the learning rate") == (
        "note: the test accuracy 0.100 is no better than chance (predicting the majority class "
        "scores 0.102; learned means above 0.150 on 359 examples): the network has not learned; "
        "check the learning rate")


def _zeroed(net: MLP) -> MLP:
    """Every weight and bias 0: the hidden units are 0 and stay so (their gradients are 0),
    so only the output bias learns, the class frequencies, whatever the inputs."""
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(("weight", "bias")):
                p.zero_()
    return net


@pytest.mark.parametrize("val", [True, False], ids=["val", "train"])
def test_a_run_at_chance_gets_a_note_and_one_that_learns_none(val: bool, digits: TensorDataset,
                                                               caplog: pytest.LogCaptureFixture,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    test = load_dataset("digits", "test")
    notes, accuracies = {}, {}
    for name in ("zeroed", "learns"):
        torch.manual_seed(0)
        net = MLP(64, [32], 10)
        if name == "zeroed":
            _zeroed(net)
        caplog.clear()
        with caplog.at_level("INFO", logger="pyro_prune"), warnings.catch_warnings():
            warnings.simplefilter("error", DivergenceWarning)  # at chance, not diverged
            result = fit(net, digits, val=test if val else None, epochs=3, batch_size=64, lr=1e-2,
                         seed=0, progress=True)
        where = "val" if val else "train"
        accuracies[name] = result.history[-1][f"{where}_accuracy"]
        notes[name] = result.chance_note
        logged = [r.getMessage() for r in caplog.records if "no better than chance" in r.getMessage()]
        shown = [line for line in capsys.readouterr().err.splitlines() if "no better than chance" in line]
        assert logged == shown == ([] if notes[name] is None else [notes[name]])
    # zeroed: the majority class of the training digits (0.102 of them) and nothing more
    assert accuracies["zeroed"] < 0.11 and accuracies["learns"] > 0.9
    assert notes["learns"] is None
    note = notes["zeroed"]
    assert note is not None
    n, what = (359, "validation") if val else (1438, "training")
    assert note.startswith(f"note: the {what} accuracy {accuracies['zeroed']:.3f} is no better than chance")
    assert f"on {n} examples" in note
    for check in ("lr=0.01", "the guide's start", "kl_scale='auto'"):
        assert check in note
