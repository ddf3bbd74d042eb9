from __future__ import annotations

import pytest
import torch

from pyro_prune.data import load_dataset
from pyro_prune.inference import evaluate, fit, post_training_curve, structure_removals
from pyro_prune.models import MLP


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
