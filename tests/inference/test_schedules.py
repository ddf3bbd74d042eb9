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


def _kl_history(result) -> list[float]:
    return [r["kl_scale"] for r in result.history]


def test_kl_warmup_raises_the_weight_geometrically_from_the_elbos_to_the_training_weight() -> None:
    train = load_dataset("digits", "train")
    torch.manual_seed(0)
    model = MLP(64, [16], 10)
    schedule = ContinuousPruning(finetune_epochs=1, kl_warmup_epochs=3)
    result = fit(model, train, epochs=5, batch_size=64, lr=1e-2, schedule=schedule, progress=False)
    k = len(train) / 16  # "auto" = "paper": num_data / num_structures
    assert result.config["kl_scale"] == pytest.approx(k)
    assert _kl_history(result) == pytest.approx([1.0, k ** (1 / 3), k ** (2 / 3), k, k, 1.0])
    assert "kl_warmup_epochs=3" in result.config["schedule"]


def test_kl_warmup_on_a_hugging_face_network_follows_the_geometric_schedule() -> None:
    """A network the package did not write (GPT-2 from a tiny config, random weights):
    ContinuousPruning(kl_warmup_epochs=2) with the defaults otherwise (kl_scale "auto",
    10 fine-tuning epochs at the ELBO's weight) warms the noise's weight up as on the MLP."""
    import foreign_networks as foreign
    from torch.utils.data import TensorDataset

    from pyro_prune.models import bayesianize

    torch.manual_seed(0)
    ids = foreign.token_ids(204)
    model = bayesianize(foreign.hf_gpt2(), example_input=ids[:2])
    train = TensorDataset(ids, torch.arange(204) % foreign.CLASSES)
    result = fit(model, train, epochs=3, schedule=ContinuousPruning(kl_warmup_epochs=2), progress=False)
    k = len(train) / model.num_structures()  # "auto" = "paper": num_data / num_structures
    assert result.config["kl_scale"] == pytest.approx(k) and k == pytest.approx(3.0)  # 204 / 68
    assert _kl_history(result) == pytest.approx([1.0, k ** 0.5, k] + [1.0] * 10)
    assert [r["phase"] for r in result.history] == ["prune"] * 3 + ["finetune"] * 10


def test_kl_warmup_warms_every_stochastic_module_to_its_own_training_weight() -> None:
    """Gaussian weights keep the ELBO's weight 1 under "auto"; the noise is warmed up to its own."""
    train = load_dataset("digits", "train")
    torch.manual_seed(0)
    model = MLP(64, [16], 10, weights="gaussian")
    seen: list[dict[str, float]] = []

    class Recording(ContinuousPruning):
        def on_epoch_start(self, ctx, epoch: int, *, epochs=None) -> None:
            super().on_epoch_start(ctx, epoch, epochs=epochs)
            seen.append({n: float(m.kl_scale) for n, m in ctx.model.stochastic_modules().items()})

    fit(model, train, epochs=3, batch_size=64, lr=1e-2, progress=False,
        schedule=Recording(finetune_epochs=0, kl_warmup_epochs=2))
    k = len(train) / 16
    noise = set(model.noise_layers())
    assert noise and set(seen[0]) - noise  # noise and Gaussian layers
    for epoch, weights in enumerate(seen):
        for name, w in weights.items():
            full = k if name in noise else 1.0
            assert w == pytest.approx(full ** min(epoch / 2, 1.0)), (epoch, name)


@pytest.mark.parametrize(("epochs", "expected_powers"), [(1, [1.0]), (2, [0.0, 1.0]), (3, [0.0, 0.5, 1.0])])
def test_kl_warmup_never_takes_the_last_training_epoch(epochs, expected_powers) -> None:
    train = load_dataset("digits", "train")
    torch.manual_seed(0)
    model = MLP(64, [16], 10)
    schedule = ContinuousPruning(finetune_epochs=0, kl_warmup_epochs=5)
    result = fit(model, train, epochs=epochs, batch_size=128, lr=1e-2, schedule=schedule, progress=False)
    k = result.config["kl_scale"]
    assert schedule.warmup_epochs(epochs) == max(0, min(5, epochs - 1))
    assert _kl_history(result) == pytest.approx([k ** p for p in expected_powers])


def test_a_run_resumed_during_kl_warmup_continues_it_as_if_never_stopped(tmp_path) -> None:
    train = load_dataset("digits", "train")

    def run(schedule, folder, model=None):
        torch.manual_seed(0)
        model = MLP(64, [16], 10) if model is None else model
        return model, fit(model, train, epochs=4, batch_size=64, lr=1e-2, schedule=schedule,
                          checkpoint_dir=folder, progress=False)

    full, straight = run(ContinuousPruning(finetune_epochs=1, kl_warmup_epochs=3), tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):  # killed before its third (warm-up) epoch
        run(_StopAt(3, finetune_epochs=1, kl_warmup_epochs=3), tmp_path / "resumed")
    resumed_model, resumed = run(ContinuousPruning(finetune_epochs=1, kl_warmup_epochs=3), tmp_path / "resumed")
    assert _kl_history(resumed) == pytest.approx(_kl_history(straight))
    assert [r["removed"] for r in resumed.history] == [r["removed"] for r in straight.history]
    assert [r["loss"] for r in resumed.history] == pytest.approx([r["loss"] for r in straight.history], rel=1e-5)


def test_kl_warmup_in_a_loop_of_ones_own() -> None:
    """Without fit: the hooks take the model; the training weight is the one set before."""
    torch.manual_seed(0)
    model = MLP(64, [16], 10)
    model.set_kl_scale(8.0)
    schedule = ContinuousPruning(finetune_epochs=1, kl_warmup_epochs=3)
    weights = []
    for epoch in range(1, 7):
        schedule.on_epoch_start(model, epoch, epochs=5)
        weights.append(float(next(iter(model.noise_layers().values())).kl_scale))
    assert weights == pytest.approx([1.0, 2.0, 4.0, 8.0, 8.0, 1.0])


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3"])
def test_kl_warmup_epochs_rejects_what_is_not_a_count(bad) -> None:
    with pytest.raises((ValueError, TypeError), match="kl_warmup_epochs"):
        ContinuousPruning(kl_warmup_epochs=bad)


def test_the_default_criterion_follows_the_posterior_in_a_loop_of_ones_own(caplog) -> None:
    """ContinuousPruning() decides with bmrs on the network's own posterior and with bmrs_u4
    (said once, in one line) once a Gaussian autoguide is attached; a named criterion stays."""
    import pyro
    from pyro.infer.autoguide import AutoNormal

    from pyro_prune.inference import attach_guide, detach_guide, init_to_model

    torch.manual_seed(0)
    pyro.clear_param_store()
    model = MLP(8, [6], 3)
    x, y = torch.randn(4, 8), torch.arange(4) % 3
    guide = AutoNormal(model, init_loc_fn=init_to_model(model))
    guide(x, y)
    default, named = ContinuousPruning(), ContinuousPruning("bmrs")
    default.on_epoch_end(model, 1)
    assert default.criterion.name == "bmrs"
    attach_guide(model, guide)
    with caplog.at_level("INFO", logger="pyro_prune"):
        default.on_epoch_end(model, 2)
        default.on_epoch_end(model, 3)
        named.on_epoch_end(model, 3)
    assert default.criterion.name == "bmrs_u4" and named.criterion.name == "bmrs"
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("criterion: ")]
    assert said == ["criterion: bmrs_u4, the default under a Gaussian autoguide (AutoNormal: logit-normal "
                    "posteriors, whose density vanishes at the edge where bmrs's reduced prior sits; "
                    "ContinuousPruning(criterion=...) to choose)"]
    detach_guide(model)
    default.on_epoch_end(model, 4)
    assert default.criterion.name == "bmrs"
    assert not ContinuousPruning(log_prior_odds=0.0).default_criterion  # options of bmrs: bmrs it stays
