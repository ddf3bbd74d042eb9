from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.data import TensorDataset

from pyro_prune.inference import DEFAULT_LAMBDA, fit, w2_prune
from pyro_prune.models import MLP
from pyro_prune.models.bayesian import link_output_gates
from pyro_prune.predictive import apply_mask, posterior_predictive, w2_shift


def _toy_regression(n: int = 128, seed: int = 0) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=gen)
    y = torch.sin(x[:, :1]) + 0.5 * x[:, 1:2] + 0.05 * torch.randn(n, 1, generator=gen)
    return TensorDataset(x, y)


@pytest.fixture(scope="module")
def trained() -> tuple[MLP, TensorDataset]:
    data = _toy_regression()
    torch.manual_seed(0)
    net = MLP(3, [24, 12], 1, likelihood="gaussian", weights="gaussian", gate="mask")
    link_output_gates(net)
    fit(net, data, epochs=30, batch_size=32, lr=1e-2, progress=False, seed=0)
    return net, data


def test_path_costs_and_best_mask(trained) -> None:
    net, data = trained
    before = dict(net.kept_counts())
    res = w2_prune(net, data, batch=4, draws=16)
    assert net.kept_counts() == before  # the search does not prune unless asked
    path = res.path
    assert path[0]["removed"] == 0 and path[0]["w2"] == 0.0
    assert path[0]["cost"] == pytest.approx(DEFAULT_LAMBDA)
    assert [r["removed"] for r in path] == sorted(r["removed"] for r in path)
    for r in path:
        assert r["cost"] == pytest.approx(r["shape_cost"] + res.lam * r["kept_fraction"])
        assert r["prune_ratio"] == pytest.approx(1 - r["kept_fraction"])
        assert min(r["kept_per_gate"].values()) >= 1
    # the search goes down to one structure per gate
    assert path[-1]["kept_per_gate"] == {"fc1_gate": 1, "fc2_gate": 1}
    assert res.best_step == min(range(len(path)), key=lambda i: path[i]["cost"])
    assert {k: int(v.sum()) for k, v in res.mask.items()} == res.best["kept_per_gate"]
    # the last points approach the empty network's shift
    assert path[-1]["shape_cost"] > path[1]["shape_cost"]


def test_lambda_moves_the_chosen_prune_ratio(trained) -> None:
    net, data = trained
    res = w2_prune(net, data, batch=6, draws=8)
    assert res.select(0.0).best_step == 0
    ratios = [res.select(lam).best["prune_ratio"] for lam in (0.1, 0.5, 1.0, 3.0, 100.0)]
    assert ratios == sorted(ratios)
    assert res.select(100.0).best_step == len(res.path) - 1


def test_recorded_w2_equals_w2_shift_and_pruned_predictions_equal_the_masked_ones(trained) -> None:
    net, data = trained
    res = w2_prune(net, data, batch=6, draws=16, seed=3)
    x = data.tensors[0]
    shift = w2_shift(net, None, res.mask, x, draws=16, seed=3)
    assert shift.w2 == pytest.approx(res.best["w2"], rel=1e-5, abs=1e-9)
    assert shift.normalized == pytest.approx(res.best["shape_cost"], rel=1e-5, abs=1e-9)
    pruned = copy.deepcopy(net)
    res.apply(pruned)
    assert pruned.kept_counts() == res.best["kept_per_gate"]
    with apply_mask(net, res.mask):
        masked_mean = net.predict(x)
        masked_draws = posterior_predictive(net, x, draws=4, engine="fast", seed=1)
        masked_pyro = posterior_predictive(net, x, draws=3, engine="pyro", seed=1)
    torch.testing.assert_close(pruned.predict(x), masked_mean)
    # the physically smaller network predicts the same
    from pyro_prune.convert import shrink

    small, _ = shrink(pruned)
    assert small.net.fc1.out_features == res.best["kept_per_gate"]["fc1_gate"]
    torch.testing.assert_close(small.predict(x), masked_mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(posterior_predictive(pruned, x, draws=4, engine="fast", seed=1), masked_draws)
    torch.testing.assert_close(posterior_predictive(pruned, x, draws=3, engine="pyro", seed=1), masked_pyro)


def test_dead_neurons_go_first_at_no_cost() -> None:
    torch.manual_seed(1)
    net = MLP(3, [8], 2, weights="gaussian", gate="mask").eval()
    link_output_gates(net)
    with torch.no_grad():  # neurons 5, 6, 7: zero incoming weights, negative bias -> always 0
        net.net.fc1.weight_loc[5:].zero_()
        net.net.fc1.bias_loc[5:] = -50.0
        net.net.fc1.bias_log_scale[5:] = -8.0
        net.net.fc1.weight_log_scale[5:] = -12.0
    x = torch.randn(40, 3)
    res = w2_prune(net, x, batch=3, draws=8)
    assert sorted(i for _, i in res.order[:3]) == [5, 6, 7]
    assert res.path[1]["w2"] == pytest.approx(0.0, abs=1e-6)
    assert res.best["removed"] >= 3


def test_prune_flag_and_pyro_engine_and_input_subset(trained) -> None:
    net = copy.deepcopy(trained[0])
    x = trained[1].tensors[0]
    res = w2_prune(net, x, batch=0.25, draws=4, engine="pyro", max_inputs=20, prune=True)
    assert len(res.path) <= 6
    assert net.kept_counts() == res.best["kept_per_gate"]


def test_bad_arguments(trained) -> None:
    net, data = trained
    with pytest.raises(ValueError, match="lam"):
        w2_prune(net, data, lam=-1.0)
    with pytest.raises(ValueError, match="batch"):
        w2_prune(net, data, batch=0)
    with pytest.raises(ValueError, match="batch"):
        w2_prune(net, data, batch=1.5)
    with pytest.raises(ValueError, match="max_inputs"):
        w2_prune(net, data, max_inputs=0)
    with pytest.raises(TypeError, match="PrunableNet"):
        w2_prune(torch.nn.Linear(2, 2), data)  # type: ignore[arg-type]


def test_the_old_keyword_method_still_picks_the_engine(trained) -> None:
    net, data = trained
    x = data.tensors[0]
    new = w2_prune(net, x, batch=0.25, draws=4, engine="pyro", max_inputs=20)
    with pytest.warns(DeprecationWarning, match=r"w2_prune\(method=\.\.\.\) is now w2_prune\(engine=\.\.\.\)"):
        old = w2_prune(net, x, batch=0.25, draws=4, method="pyro", max_inputs=20)
    assert [r["w2"] for r in old.path] == [r["w2"] for r in new.path]
    assert [r["w2"] for r in new.path] != [r["w2"] for r in w2_prune(net, x, batch=0.25, draws=4, max_inputs=20).path]
    with pytest.raises(TypeError, match=r"w2_prune\(\) got both engine= and method="):
        w2_prune(net, x, engine="pyro", method="pyro")
