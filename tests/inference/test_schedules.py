from __future__ import annotations

import pytest
import torch

from pyro_prune.data import load_dataset
from pyro_prune.inference import ContinuousPruning, evaluate, fit, post_training_curve
from pyro_prune.models import MLP
from pyro_prune.reduction import structure_removals


@pytest.fixture(scope="module")
def trained():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    torch.manual_seed(0)
    model = MLP(64, [24], 10)
    fit(model, train, epochs=8, batch_size=32, lr=3e-2, kl_scale="paper", progress=False)
    return model, train, test


def _df_positive_fraction(model, criterion: str) -> float:
    total = sum(int(g.kept.sum()) for g in model.gates().values())
    return sum(int(m.sum()) for m in structure_removals(model, criterion).values()) / total


@pytest.mark.parametrize("criterion, stop", [("bmrs_n_code", "bmrs_n_code"), ("snr", "bmrs_n"),
                                             ("bmrs_u", "bmrs_u")])
def test_post_training_curve_records_points_and_its_own_stopping_point(trained, criterion, stop) -> None:
    model, train, test = trained
    before = {n: g.kept.clone() for n, g in model.gates().items()}
    curve = post_training_curve(model, train, test, criterion, fractions=[0.0, 0.5, 0.9],
                                batch_size=64, lr=1e-2, progress=False)
    assert [p["fraction"] for p in curve] == [0.0, 0.5, 0.9]
    assert all(torch.equal(g.kept, before[n]) for n, g in model.gates().items())  # copies only
    comps = [p["compression"] for p in curve]
    assert comps[0] == 0.0 and comps[0] < comps[1] < comps[2]
    # no removal, no fine-tuning: the first point is the model itself
    assert curve[0]["accuracy"] == pytest.approx(evaluate(model, test)["accuracy"])
    expected = _df_positive_fraction(model, stop)
    for p in curve:
        assert p["stop_fraction"] == pytest.approx(expected)
        assert p["before_stop"] == (p["fraction"] <= expected)


def test_post_training_curve_rejects_fractions_out_of_range(trained) -> None:
    model, train, test = trained
    with pytest.raises(ValueError, match="fractions"):
        post_training_curve(model, train, test, "snr", fractions=[1.0], progress=False)


def test_post_training_curve_fine_tunes_with_the_given_fit_options(trained, monkeypatch) -> None:
    import importlib

    fit_module = importlib.import_module("pyro_prune.inference.fit")  # the module, not the function
    model, train, test = trained
    seen = []
    real_fit = fit_module.fit

    def spy(m, *args, **kwargs):
        result = real_fit(m, *args, **kwargs)
        seen.append((kwargs.get("kl_scale"), {g.kl_scale for g in m.noise_layers().values()}))
        return result

    monkeypatch.setattr(fit_module, "fit", spy)
    post_training_curve(model, train, test, "snr", fractions=[0.0, 0.5], batch_size=64,
                        progress=False, fit_kwargs={"kl_scale": "paper"})
    paper = len(train) / model.num_structures()
    # one fine-tuning (none at fraction 0), with the paper's KL weight on every noise layer
    assert [k for k, _ in seen] == ["paper"]
    assert sorted(seen[0][1]) == pytest.approx([paper])


@pytest.mark.parametrize("hidden", [(4,), (6, 5)])
def test_prune_to_compression_raises_and_restores_when_the_target_is_out_of_reach(hidden) -> None:
    from pyro_prune.convert import compression
    from pyro_prune.inference import prune_to_compression

    torch.manual_seed(0)
    model = MLP(10, hidden, 3)
    model.gates()[next(iter(model.gates()))].prune(torch.arange(hidden[0]) == 0)
    before = {n: g.kept.clone() for n, g in model.gates().items()}
    # every hidden layer down to one neuron still leaves the input and output weights
    with pytest.raises(ValueError, match="cannot be reached"):
        prune_to_compression(model, "l2", 0.99)
    assert all(torch.equal(g.kept, before[n]) for n, g in model.gates().items())
    reached = prune_to_compression(model, "l2", 0.3)
    assert reached >= 0.3 and compression(model) == reached


class _StopAt(ContinuousPruning):
    """The default schedule, interrupted before epoch ``stop`` (as a killed run would be)."""

    def __init__(self, stop: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.stop = stop

    def on_epoch_start(self, ctx, epoch: int) -> None:
        if epoch == self.stop:
            raise KeyboardInterrupt
        super().on_epoch_start(ctx, epoch)


@pytest.mark.parametrize(("finetune_kl_scale", "expected"), [("elbo", 1.0), (None, "paper"), (2.5, 2.5)])
def test_fine_tuning_fits_the_reduced_network_at_its_own_kl_weight(finetune_kl_scale, expected) -> None:
    """Default: the training epochs are tempered ("auto" = "paper"), the fine-tuning epochs
    fit the reduced network's posterior at the ELBO's weight."""
    train = load_dataset("digits", "train")
    torch.manual_seed(0)
    model = MLP(64, [16], 10)
    kwargs = {} if finetune_kl_scale == "elbo" else {"finetune_kl_scale": finetune_kl_scale}
    schedule = ContinuousPruning(finetune_epochs=2, **kwargs)
    result = fit(model, train, epochs=2, batch_size=64, lr=1e-2, schedule=schedule, progress=False)
    paper = len(train) / 16
    expected = paper if expected == "paper" else expected
    assert result.config["kl_scale"] == pytest.approx(paper)  # the training weight
    assert [r["phase"] for r in result.history] == ["prune", "prune", "finetune", "finetune"]
    assert [r["kl_scale"] for r in result.history[2:]] == [pytest.approx(expected)] * 2
    assert [g.kl_scale for g in model.noise_layers().values()] == [pytest.approx(expected)]
    assert f"finetune_kl_scale={schedule.finetune_kl_scale!r}" in result.config["schedule"]


def test_a_run_resumed_in_its_fine_tuning_phase_keeps_the_fine_tuning_weight(tmp_path) -> None:
    train = load_dataset("digits", "train")
    torch.manual_seed(0)
    model = MLP(64, [16], 10)
    with pytest.raises(KeyboardInterrupt):  # killed before its second fine-tuning epoch
        fit(model, train, epochs=1, batch_size=64, lr=1e-2, schedule=_StopAt(3, finetune_epochs=2),
            checkpoint_dir=tmp_path, progress=False)
    resumed = MLP(64, [16], 10)
    result = fit(resumed, train, epochs=1, batch_size=64, lr=1e-2, schedule=ContinuousPruning(finetune_epochs=2),
                 checkpoint_dir=tmp_path, progress=False)
    assert len(result.history) == 3 and result.history[-1]["kl_scale"] == 1.0
    assert {g.kl_scale for g in resumed.noise_layers().values()} == {1.0}


@pytest.mark.parametrize("bad", ["cold", -1.0, float("nan"), True])
def test_finetune_kl_scale_rejects_what_is_not_a_kl_weight(bad) -> None:
    with pytest.raises((ValueError, TypeError), match="finetune_kl_scale"):
        ContinuousPruning(finetune_kl_scale=bad)
