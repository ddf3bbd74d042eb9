from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from torch.utils.data import TensorDataset

from pyro_prune.data import load_dataset
from pyro_prune.inference import BayesFactorPruning, PruneMethod, fit, plot_learning_curves
from pyro_prune.inference.bayes_factor import (
    BayesFactor,
    LogPosterior,
    apply_masks,
    bayes_factor,
    candidate_masks,
    layer_sparsity,
    log_posterior,
    prune_count,
    sparsity,
)
from pyro_prune.models import CNN, FCN
from pyro_prune.models.fcn import prunable_layers, weight_masks

SPARSITIES = [0.0, 0.25, 0.5, 0.75, 0.9, 0.99]


@pytest.fixture(scope="module")
def digits() -> tuple[TensorDataset, TensorDataset]:
    return load_dataset("digits", split="train"), load_dataset("digits", split="test")


def _small_fcn(seed: int = 0, **kw) -> FCN:
    torch.manual_seed(seed)
    return FCN(64, 10, hidden=(32, 24, 16), **kw)


def _small_cnn(seed: int = 0) -> CNN:
    torch.manual_seed(seed)
    return CNN(1, 10, 8, channels=(4, 8), hidden=(16, 16, 12))


def _data(n: int = 64, dtype=torch.float32, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 64, generator=g, dtype=dtype)
    y = torch.randint(0, 10, (n,), generator=g)
    return TensorDataset(x, y)


# ------------------------------------------------------------------------- candidates
def test_prune_count_rounds_and_never_empties_a_layer() -> None:
    assert prune_count(100, 0.25) == 25
    assert prune_count(288, 0.99) == 285  # round(285.12)
    assert prune_count(7, 0.5) == round(3.5) == 4
    with pytest.warns(RuntimeWarning, match="empty"):
        assert prune_count(10, 0.99) == 9
    with pytest.raises(ValueError, match="target_sparsity"):
        prune_count(10, 1.0)


def _expected(r: float, n: int) -> int:
    return min(round(r * n), n - 1)  # a layer is never emptied (CNN conv1 has 36 weights here)


@pytest.mark.filterwarnings("ignore:sparsity 0.99 of a layer")
@pytest.mark.parametrize("make", [_small_fcn, _small_cnn], ids=["fcn", "cnn"])
@pytest.mark.parametrize("method", list(PruneMethod))
@pytest.mark.parametrize("r", SPARSITIES)
def test_candidate_has_exactly_the_target_sparsity_in_every_layer(make, method, r) -> None:
    net = make()
    before = {n: p.detach().clone() for n, p in net.state_dict().items()}
    masks = candidate_masks(net, r, method, generator=torch.Generator().manual_seed(0))
    layers = prunable_layers(net)
    assert list(masks) == list(layers)
    for name, mask in masks.items():
        n = layers[name].weight.numel()
        assert int((~mask).sum()) == _expected(r, n), name
    for k, v in net.state_dict().items():  # nothing changed in the model
        assert torch.equal(v, before[k])
    apply_masks(net, masks)
    assert sparsity(net) == pytest.approx(
        sum(_expected(r, m.weight.numel()) for m in layers.values())
        / sum(m.weight.numel() for m in layers.values()))
    for name, value in layer_sparsity(net).items():
        w = layers[name].weight
        assert int((w == 0).sum()) == _expected(r, w.numel())
        assert value == pytest.approx(_expected(r, w.numel()) / w.numel())


def test_magnitude_candidate_prunes_the_smallest_weights() -> None:
    net = _small_fcn()
    masks = candidate_masks(net, 0.6, "magnitude")
    for name, layer in prunable_layers(net).items():
        w = layer.weight.detach().abs()
        pruned, kept = w[~masks[name]], w[masks[name]]
        assert pruned.max() <= kept.min()
        # the same set as sorting all magnitudes
        k = round(0.6 * w.numel())
        assert set(w.flatten().argsort()[:k].tolist()) == set((~masks[name]).flatten().nonzero().flatten().tolist())


def test_random_candidate_is_seeded_and_ignores_magnitude() -> None:
    net = FCN(64, 10, hidden=(256,))
    a = candidate_masks(net, 0.5, "random", generator=torch.Generator().manual_seed(1))
    b = candidate_masks(net, 0.5, "random", generator=torch.Generator().manual_seed(1))
    c = candidate_masks(net, 0.5, "random", generator=torch.Generator().manual_seed(2))
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not torch.equal(a["fc1"], c["fc1"])
    w = net.net.fc1.weight.detach().abs()
    # a uniform random half has about the mean magnitude (the magnitude half is far below)
    assert float(w[~a["fc1"]].mean()) == pytest.approx(float(w.mean()), rel=0.05)
    magnitude = candidate_masks(net, 0.5, "magnitude")
    assert w[~magnitude["fc1"]].mean() < 0.6 * w.mean()


@pytest.mark.parametrize("method", list(PruneMethod))
def test_candidates_extend_an_existing_pruning(method) -> None:
    net = _small_fcn()
    first = candidate_masks(net, 0.5, "random", generator=torch.Generator().manual_seed(0))
    apply_masks(net, first)
    second = candidate_masks(net, 0.8, method, generator=torch.Generator().manual_seed(5))
    for name, layer in prunable_layers(net).items():
        assert not bool((second[name] & ~first[name]).any())  # monotone: pruned stay pruned
        assert int((~second[name]).sum()) == round(0.8 * layer.weight.numel())
        if method is PruneMethod.MAGNITUDE:  # smallest among the still-kept weights
            w = layer.weight.detach().abs()
            newly = ~second[name] & first[name]
            assert w[newly].max() <= w[second[name]].min()
    # at (or below) the current sparsity there is nothing left to prune
    same = candidate_masks(net, 0.3, method)
    assert all(torch.equal(same[n], first[n]) for n in same)


def test_apply_masks_zeroes_weights_and_adam_state_and_is_monotone() -> None:
    net = _small_fcn()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x, y = _data().tensors
    F.cross_entropy(net.net(x), y).backward()
    opt.step()
    masks = candidate_masks(net, 0.5, "magnitude")
    assert apply_masks(net, masks, opt) == sum(int((~m).sum()) for m in masks.values())
    for name, layer in prunable_layers(net).items():
        assert bool((layer.weight[~masks[name]] == 0).all())
        state = opt.state[layer.weight]
        assert bool((state["exp_avg"][~masks[name]] == 0).all())
        assert bool((state["exp_avg_sq"][~masks[name]] == 0).all())
        assert torch.equal(weight_masks(net)[name], masks[name])
    with pytest.raises(ValueError, match="monotone"):
        apply_masks(net, {n: torch.ones_like(m) for n, m in masks.items()})
    with pytest.raises(ValueError, match="does not have"):
        apply_masks(net, {"nope": masks["fc1"]})


# ------------------------------------------------------------------------- Bayes factor
@pytest.mark.parametrize("method", list(PruneMethod))
def test_bayes_factor_equals_the_difference_of_the_two_log_posteriors(method) -> None:
    """log BF = log joint(pruned) - log joint(full), each computed directly (Pyro trace)."""
    data = _data(n=80, dtype=torch.float64)
    x, y = data.tensors
    net = _small_fcn(seed=3, prior_scale=0.3).double()
    masks = candidate_masks(net, 0.5, method, generator=torch.Generator().manual_seed(0))
    state = copy.deepcopy(net.state_dict())
    bf = bayes_factor(net, masks, data, batch_size=32)  # several batches
    for k, v in net.state_dict().items():  # the model is restored
        assert torch.equal(v, state[k])

    def log_joint(model):
        model.num_data = len(x)
        return float(poutine.trace(model).get_trace(x, y).log_prob_sum().detach())

    pruned = copy.deepcopy(net)
    apply_masks(pruned, masks)
    assert bf.log_bayes_factor == pytest.approx(log_joint(pruned) - log_joint(net), rel=1e-10, abs=1e-8)
    assert bf.full.log_joint == pytest.approx(log_joint(net), rel=1e-12)
    # the prior ratio of a pruning in the same parameter space: sum w_pruned^2 / (2 sigma^2)
    removed = sum(float((layer.weight.detach()[~masks[n]] ** 2).sum()) for n, layer in prunable_layers(net).items())
    assert bf.pruned.log_prior - bf.full.log_prior == pytest.approx(removed / (2 * 0.3**2), rel=1e-9)
    # and the likelihood part is the plain cross-entropy over every example
    nll = float(F.cross_entropy(net.net(x), y, reduction="sum").detach())
    assert bf.full.log_likelihood == pytest.approx(-nll, rel=1e-12)
    assert bf.full.mean_nll == pytest.approx(nll / len(x))


def test_bayes_factor_threshold_is_given_as_a_bayes_factor() -> None:
    def make(log_bf: float) -> BayesFactor:
        full = LogPosterior(log_likelihood=-10.0, log_prior=-5.0, num_data=4)
        pruned = LogPosterior(log_likelihood=-10.0 + log_bf, log_prior=-5.0, num_data=4)
        return BayesFactor(full=full, pruned=pruned)

    assert make(0.0).accepts(1.0) and not make(-1e-9).accepts(1.0)
    assert make(math.log(3.0) + 1e-12).accepts(3.0) and not make(math.log(3.0) - 1e-12).accepts(3.0)
    assert make(-2.0).accepts(math.exp(-2.5))
    with pytest.raises(ValueError, match="threshold"):
        make(0.0).accepts(0.0)
    assert make(-2000.0).accepts(log_threshold=-2000.0) and not make(-2000.0).accepts(log_threshold=-1999.0)
    with pytest.raises(ValueError, match="not both"):
        make(0.0).accepts(2.0, log_threshold=-1.0)
    with pytest.raises(ValueError, match="log_threshold"):
        make(0.0).accepts(log_threshold=float("nan"))


def _factor(delta_lik: float, delta_prior: float, n: int = 1000) -> BayesFactor:
    full = LogPosterior(log_likelihood=-300.0, log_prior=-50.0, num_data=n)
    pruned = LogPosterior(log_likelihood=-300.0 + delta_lik, log_prior=-50.0 + delta_prior, num_data=n)
    return BayesFactor(full=full, pruned=pruned)


@pytest.mark.parametrize("delta_lik, delta_prior, log_beta", [
    (-200.0, 30.0, 0.0), (-5.0, 0.5, 0.0), (-200.0, 30.0, 10.0), (-1e5, 150.0, math.log(3.0)),
])
def test_break_even_examples_is_where_the_tempered_factor_meets_the_threshold(
        delta_lik, delta_prior, log_beta) -> None:
    bf = _factor(delta_lik, delta_prior)
    assert bf.tempered_log_bayes_factor(bf.num_data) == pytest.approx(bf.log_bayes_factor)
    assert bf.tempered_log_bayes_factor(0) == pytest.approx(delta_prior)
    b_star = bf.break_even_examples(log_threshold=log_beta)
    assert 0 < b_star < bf.num_data
    assert bf.tempered_log_bayes_factor(b_star) == pytest.approx(log_beta, abs=1e-9)
    # fewer examples accept, more reject
    assert bf.tempered_log_bayes_factor(0.99 * b_star) > log_beta > bf.tempered_log_bayes_factor(1.01 * b_star)
    assert bf.break_even_examples(math.exp(log_beta)) == pytest.approx(b_star)


def test_break_even_examples_edge_cases() -> None:
    assert _factor(-10.0, -1.0).break_even_examples() == 0.0  # the prior alone falls short
    assert _factor(0.0, 1.0).break_even_examples() == math.inf  # no likelihood cost
    assert _factor(0.0, -1.0).break_even_examples() == 0.0  # never accepts
    assert _factor(2.0, -1.0).break_even_examples() == math.inf  # more data helps
    with pytest.raises(ValueError, match="num_examples"):
        _factor(-1.0, 1.0).tempered_log_bayes_factor(-1)
    with pytest.raises(ValueError, match="num_examples"):
        _factor(-1.0, 1.0).tempered_log_bayes_factor(float("nan"))


def test_batch_gate_log_bf_is_the_tempered_factor_in_expectation(digits) -> None:
    """The mean over random B-example subsets of the batch Bayes factor is the tempered one."""
    x32, y = digits[0].tensors
    train = TensorDataset(x32.double(), y)
    net = _small_fcn(seed=2).double()
    fit(net, train, epochs=1, batch_size=64, lr=3e-3, progress=False)
    cand = candidate_masks(net, 0.5, "magnitude")
    full = bayes_factor(net, cand, train)
    g = torch.Generator().manual_seed(0)
    b, draws = 40, 400
    x = train.tensors[0]
    # per-example likelihood differences once, then subsets of them (exact, and fast)
    per_example = bayes_factor_per_example(net, cand, x, y)
    assert float(per_example.sum()) == pytest.approx(
        full.pruned.log_likelihood - full.full.log_likelihood, rel=1e-9)
    delta_prior = full.pruned.log_prior - full.full.log_prior
    subsets = torch.stack([torch.randperm(len(x), generator=g)[:b] for _ in range(draws)])
    batch_log_bf = per_example[subsets].sum(-1) + delta_prior
    se = float(batch_log_bf.std()) / math.sqrt(draws)
    assert float(batch_log_bf.mean()) == pytest.approx(full.tempered_log_bayes_factor(b), abs=4 * se)
    # and one subset through bayes_factor itself agrees with the per-example sum
    sub = TensorDataset(x[subsets[0]], y[subsets[0]])
    assert bayes_factor(net, cand, sub).log_bayes_factor == pytest.approx(float(batch_log_bf[0]), rel=1e-9)


def bayes_factor_per_example(net, masks, x, y) -> torch.Tensor:
    """``log p(y_n | x_n, w') - log p(y_n | x_n, w)`` for every example."""
    with torch.no_grad():
        before = -F.cross_entropy(net.net(x), y, reduction="none")
        pruned = copy.deepcopy(net)
        apply_masks(pruned, masks)
        after = -F.cross_entropy(pruned.net(x), y, reduction="none")
    return after - before


def test_log_posterior_checks_its_arguments() -> None:
    net = _small_fcn()
    with pytest.raises(TypeError, match="dataset"):
        log_posterior(net, [1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size"):
        log_posterior(net, _data(), batch_size=0)
    with pytest.raises(TypeError, match="model"):
        log_posterior(torch.nn.Linear(2, 2), _data())  # type: ignore[arg-type]


# ------------------------------------------------------------------------- the schedule
def test_schedule_arguments_are_validated() -> None:
    with pytest.raises(ValueError, match="target_sparsity"):
        BayesFactorPruning(1.0)
    with pytest.raises(ValueError, match="method"):
        BayesFactorPruning(0.5, "l1")
    with pytest.raises(ValueError, match="threshold"):
        BayesFactorPruning(0.5, threshold=-1.0)
    with pytest.raises(ValueError, match="not both"):
        BayesFactorPruning(0.5, threshold=2.0, log_threshold=-3.0)
    assert BayesFactorPruning(0.5, threshold=math.e**2).log_threshold == pytest.approx(2.0)
    with pytest.raises(TypeError, match="gate"):
        BayesFactorPruning(0.5, gate="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="seed"):
        BayesFactorPruning(0.5, seed=1.5)  # type: ignore[arg-type]
    assert BayesFactorPruning(0.5, "random").label == "Bayes Random"
    assert BayesFactorPruning(0.5, gate=False).label == "Magnitude"


class _CheckZeroBeforeReapply(BayesFactorPruning):
    """Checks after every optimizer step, before the re-masking, that pruned weights are 0."""

    steps_checked = 0

    def on_step_end(self, ctx) -> None:
        for name, mask in weight_masks(ctx.model).items():
            w = prunable_layers(ctx.model)[name].weight
            assert bool((w[~mask] == 0).all()), f"{name} moved after pruning"
        self.steps_checked += 1
        super().on_step_end(ctx)

    def on_epoch_end(self, ctx, epoch):
        row = super().on_epoch_end(ctx, epoch)
        self.val_after = getattr(self, "val_after", []) + [ctx.evaluate(ctx.val)["loss"]]
        return row


@pytest.mark.parametrize("make", [_small_fcn, _small_cnn], ids=["fcn", "cnn"])
def test_baseline_prunes_after_the_first_epoch_and_pruned_weights_stay_zero(make, digits) -> None:
    train, test = digits
    net = make()
    sched = _CheckZeroBeforeReapply(0.75, "magnitude", gate=False)
    result = fit(net, train, epochs=3, batch_size=64, lr=3e-3, val=test, schedule=sched,
                 progress=False, seed=0)
    hist = result.history
    assert [r["pruned"] for r in hist] == [True, False, False]
    assert hist[0]["log_bayes_factor"] is not None
    assert [r["log_bayes_factor"] for r in hist[1:]] == [None, None]  # no candidate left
    assert sched.steps_checked == 3 * math.ceil(len(train) / 64)
    for layer in prunable_layers(net).values():
        k = round(0.75 * layer.weight.numel())
        assert int((layer.weight == 0).sum()) == k
    assert all(r["sparsity"] == pytest.approx(hist[0]["sparsity"]) for r in hist)
    for key in ("epoch", "loss", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                "sparsity", "log_bayes_factor", "break_even_examples", "pruned", "layer_sparsity"):
        assert key in hist[-1], key
    # the val metrics of every epoch, the pruning one too, are those of the pruned network
    assert [r["val_loss"] for r in hist] == pytest.approx(sched.val_after, rel=1e-6)
    assert hist[-1]["train_loss"] == pytest.approx(-hist[-1]["log_likelihood"] / len(train))


def test_gate_applies_a_pruning_exactly_when_bf_passes_the_threshold(digits) -> None:
    train, _ = digits
    decided: list[bool] = []
    for log_beta in (0.0, math.log(1e-3), -1e4):
        net = _small_fcn(seed=1)
        sched = BayesFactorPruning(0.25, "magnitude", log_threshold=log_beta, seed=0, evidence="point")
        hist = fit(net, train, epochs=3, batch_size=64, lr=3e-3, schedule=sched, progress=False).history
        for r in hist:
            if r["log_bayes_factor"] is None:  # nothing left to prune after an acceptance
                assert any(h["pruned"] for h in hist[: r["epoch"] - 1])
                continue
            decided.append(r["pruned"])
            assert r["pruned"] == (r["log_bayes_factor"] >= log_beta)
        assert sched.accepted_epochs == [r["epoch"] for r in hist if r["pruned"]]
    assert True in decided and False in decided  # both branches were exercised
    # a bad pruning is rejected: random 90 % destroys the fit
    net = _small_fcn(seed=1)
    sched = BayesFactorPruning(0.9, "random", threshold=1.0, seed=0, evidence="point")
    hist = fit(net, train, epochs=2, batch_size=64, lr=3e-3, schedule=sched, progress=False).history
    assert all(r["log_bayes_factor"] < 0 and not r["pruned"] for r in hist)
    assert all(r["sparsity"] == 0.0 for r in hist)
    # the same candidate with gate=False is applied
    net = _small_fcn(seed=1)
    sched = BayesFactorPruning(0.9, "random", threshold=1.0, seed=0, gate=False, evidence="point")
    hist2 = fit(net, train, epochs=2, batch_size=64, lr=3e-3, schedule=sched, progress=False).history
    assert hist2[0]["pruned"] and hist2[0]["log_bayes_factor"] == pytest.approx(hist[0]["log_bayes_factor"])


def test_schedule_resumes_from_a_checkpoint_exactly(digits, tmp_path) -> None:
    train, _ = digits

    class Crash(BayesFactorPruning):
        def on_epoch_end(self, ctx, epoch):
            if epoch == 3:
                raise KeyboardInterrupt
            return super().on_epoch_end(ctx, epoch)

    kwargs = dict(epochs=4, batch_size=128, lr=3e-3, seed=2, progress=False)
    for method, gate in (("random", True), ("magnitude", False)):
        full = fit(_small_fcn(seed=5), train, schedule=BayesFactorPruning(0.5, method, gate=gate), **kwargs)
        ckpt = tmp_path / f"{method}-{gate}"
        with pytest.raises(KeyboardInterrupt):
            fit(_small_fcn(seed=5), train, schedule=Crash(0.5, method, gate=gate), checkpoint_dir=ckpt, **kwargs)
        net = _small_fcn(seed=99)  # other initial weights: everything must come from the checkpoint
        resumed = fit(net, train, schedule=BayesFactorPruning(0.5, method, gate=gate), checkpoint_dir=ckpt, **kwargs)
        keys = ("loss", "log_bayes_factor", "sparsity", "pruned", "train_loss")
        assert [[r[k] for k in keys] for r in resumed.history] == [[r[k] for k in keys] for r in full.history]
        for (k, a), b in zip(full.model.state_dict().items(), net.state_dict().values()):
            assert torch.equal(a, b), k


def test_schedule_state_dict_restores_the_random_stream() -> None:
    net = _small_fcn()
    a = BayesFactorPruning(0.5, "random", seed=3)
    candidate_masks(net, 0.5, "random", generator=a.generator)  # advance the stream
    b = BayesFactorPruning(0.5, "random", seed=0)
    b.load_state_dict(a.state_dict())
    ma = candidate_masks(net, 0.5, "random", generator=a.generator)
    mb = candidate_masks(net, 0.5, "random", generator=b.generator)
    assert all(torch.equal(ma[n], mb[n]) for n in ma)


def test_plot_learning_curves_writes_pngs(digits, tmp_path) -> None:
    train, test = digits
    runs = {}
    for gate in (False, True):
        sched = BayesFactorPruning(0.5, "magnitude", gate=gate)
        runs[sched.label] = fit(_small_fcn(), train, epochs=2, batch_size=128, val=test,
                                schedule=sched, progress=False).history
    one = plot_learning_curves(runs["Magnitude"], tmp_path / "one.png", title="one run",
                               log_threshold=None)
    many = plot_learning_curves(runs, tmp_path / "sub" / "many.png")
    for path in (one, many):
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    with pytest.raises(ValueError, match="history"):
        plot_learning_curves([], tmp_path / "empty.png")


def test_batch_likelihood_gate_is_the_bayes_factor_on_the_drawn_examples(digits) -> None:
    train, _ = digits
    net = _small_fcn(seed=2)
    sched = BayesFactorPruning(0.5, "magnitude", seed=4, likelihood="batch", likelihood_batch=48,
                               evidence="point")
    fit(net, train, epochs=1, batch_size=64, lr=3e-3, progress=False)  # train the MAP first
    before = copy.deepcopy(net)
    # replay the schedule's random stream: the candidate is magnitude (no draws), then B indices
    g = torch.Generator().manual_seed(4)
    index = torch.randperm(len(train), generator=g)[:48]
    sub = TensorDataset(*(t[index] for t in train.tensors))
    cand = candidate_masks(before, 0.5, "magnitude")
    expected = bayes_factor(before, cand, sub).log_bayes_factor
    full = bayes_factor(before, cand, train).log_bayes_factor

    from types import SimpleNamespace

    ctx = SimpleNamespace(model=net, train=train, val=None, epochs=1, batch_size=64, seed=0,
                          optimizer=torch.optim.Adam(net.parameters()))
    sched.on_fit_start(ctx)
    row = sched.on_epoch_end(ctx, 1)
    assert row["log_bayes_factor"] == pytest.approx(expected, rel=1e-6)
    # the break-even count estimated from the B examples matches their tempered factor
    assert 0 < row["break_even_examples"] < math.inf
    bf_b = bayes_factor(before, cand, sub)
    assert bf_b.tempered_log_bayes_factor(row["break_even_examples"]) == pytest.approx(0.0, abs=1e-4)
    # tempered: the likelihood loss counts 48 examples instead of all of them
    assert row["log_bayes_factor"] > full
    assert row["pruned"] == (expected >= 0.0)
    if row["pruned"]:  # the row's training metrics are those of the pruned net on all data
        assert row["train_loss"] == pytest.approx(log_posterior(net, train).mean_nll, rel=1e-6)
    with pytest.raises(ValueError, match="likelihood"):
        BayesFactorPruning(0.5, likelihood="epoch")
    with pytest.raises(ValueError, match="likelihood_batch"):
        BayesFactorPruning(0.5, likelihood="batch", likelihood_batch=0)


def test_only_the_named_layers_are_pruned(digits) -> None:
    train, _ = digits
    net = _small_cnn()
    names = list(prunable_layers(net))
    chosen = [n for n in names if n != "conv1"]
    cand = candidate_masks(net, 0.9, "magnitude", layers=chosen)
    assert bool(cand["conv1"].all())
    for n in chosen:
        assert int((~cand[n]).sum()) == prune_count(cand[n].numel(), 0.9)
    sched = BayesFactorPruning(0.9, "magnitude", gate=False, layers=chosen)
    fit(net, train, epochs=1, batch_size=64, lr=3e-3, schedule=sched, progress=False, seed=0)
    assert bool(weight_masks(net)["conv1"].all()) and not bool((net.net.conv1.weight == 0).any())
    assert float((net.net.fc1.weight == 0).float().mean()) == pytest.approx(0.9, abs=1e-3)
    with pytest.raises(ValueError, match="unknown layers \\['conv9'\\]"):
        candidate_masks(net, 0.9, layers=["conv9"])
    with pytest.raises(ValueError, match="unknown layers"):
        fit(_small_cnn(), train, epochs=1, batch_size=64, schedule=BayesFactorPruning(0.5, layers=["nope"]),
            progress=False)
    with pytest.raises(TypeError, match="layers"):
        BayesFactorPruning(0.5, layers="fc1")


# ------------------------------------------------------------------- the Laplace-evidence gate
def test_laplace_gate_is_the_default_and_records_the_evidence_terms(digits) -> None:
    pytest.importorskip("asdl")
    from pyro_prune.inference.bayes_factor import EvidenceKind, laplace_bayes_factor
    from pyro_prune.laplace import log_evidence

    train, _ = digits
    sched = BayesFactorPruning(0.5, "magnitude", seed=0)
    assert sched.evidence is EvidenceKind.LAPLACE
    net = _small_fcn(seed=3)
    fit(net, train, epochs=2, batch_size=64, lr=3e-3, progress=False)  # near the MAP
    cand = candidate_masks(net, 0.5, "magnitude")
    ebf = laplace_bayes_factor(net, cand, train)
    current = log_evidence(net.net, train.tensors, prior_scale=net.prior_scale, hessian="kron")
    pruned = log_evidence(net.net, train.tensors, prior_scale=net.prior_scale, hessian="kron",
                          mask={f"{n}.weight": m for n, m in cand.items()})
    assert ebf.current.log_evidence == pytest.approx(current.log_evidence)
    assert ebf.log_bayes_factor == pytest.approx(pruned.log_evidence - current.log_evidence)
    assert ebf.log_bayes_factor == pytest.approx(ebf.delta_log_likelihood + ebf.delta_log_occam)
    assert ebf.delta_log_occam > 0 > ebf.delta_log_likelihood  # fewer weights: less fit, more Occam
    from pyro_prune.laplace import fit_evidence

    fitted = laplace_bayes_factor(net, cand, train, fit_prior_scale=True)
    best = fit_evidence(net.net, train.tensors, prior_scale=net.prior_scale, hessian="kron")
    assert fitted.current.prior_scale == pytest.approx(best.prior_scale, rel=1e-6)
    assert fitted.current.log_evidence >= current.log_evidence
    hist = fit(net, train, epochs=1, batch_size=64, lr=3e-3, schedule=sched, progress=False).history
    row = hist[0]
    for key in ("log_evidence_current", "log_evidence_pruned", "delta_log_likelihood", "delta_log_occam"):
        assert math.isfinite(row[key]), key
    assert row["log_bayes_factor"] == pytest.approx(row["log_evidence_pruned"] - row["log_evidence_current"])
    assert row["pruned"] == (row["log_bayes_factor"] >= 0.0)


def test_laplace_gate_decides_differently_across_sparsities(digits) -> None:
    """The default (Kronecker) gate accepts a light pruning and refuses a heavy one.

    (The diagonal GGN overstates every weight's Occam factor, det P <= prod P_ii, and on
    this network accepts every sparsity: see docs/laplace.md.)
    """
    pytest.importorskip("asdl")
    train, _ = digits
    decisions = {}
    for r in (0.25, 0.5, 0.9):
        net = _small_fcn(seed=1)
        fit(net, train, epochs=3, batch_size=64, lr=3e-3, progress=False)
        sched = BayesFactorPruning(r, "magnitude", seed=0)
        row = fit(net, train, epochs=1, batch_size=64, lr=3e-3, schedule=sched, progress=False).history[0]
        decisions[r] = row["pruned"]
        assert row["delta_log_occam"] > 0
    assert decisions == {0.25: True, 0.5: False, 0.9: False}


def test_laplace_gate_refuses_what_it_cannot_do(digits) -> None:
    pytest.importorskip("asdl")
    from pyro_prune.models import MLP

    train, _ = digits
    with pytest.raises(ValueError, match="evidence must be one of"):
        BayesFactorPruning(0.5, evidence="exact")
    with pytest.raises(ValueError, match="hessian must be one of"):
        BayesFactorPruning(0.5, hessian="block")
    with pytest.raises(TypeError, match="fit_prior_scale"):
        BayesFactorPruning(0.5, fit_prior_scale="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="MAPNet"):
        fit(MLP(64, (8,), 10), train, epochs=1, batch_size=256, schedule=BayesFactorPruning(0.5),
            progress=False)
