"""Tests of Bayes-factor pruning during training (pyro_prune.reduction.bayes_factor_pruning)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from bayes_factor_nets import small_cnn, small_fcn
from torch.utils.data import TensorDataset

from pyro_prune._enums import HessianStructure
from pyro_prune.inference import fit
from pyro_prune.inspect.plots import plot_learning_curves
from pyro_prune.models.fcn import prunable_layers, weight_masks
from pyro_prune.reduction import (
    EvidenceKind,
    bayes_factor,
    candidate_masks,
    laplace_bayes_factor,
    log_posterior,
    prune_count,
)
from pyro_prune.reduction.bayes_factor_pruning import BayesFactorPruning


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


# every bad argument: the error's type, and its message naming the argument and the bad value
BAD_ARGUMENTS = [
    ({"target_sparsity": 1.0}, ValueError, r"target_sparsity must lie in \[0, 1\), got 1.0"),
    ({"target_sparsity": -0.25}, ValueError, r"target_sparsity must be a finite number >= 0.0, got -0.25"),
    ({"target_sparsity": float("nan")}, ValueError, r"target_sparsity must be a finite number, got nan"),
    ({"target_sparsity": "half"}, TypeError, r"target_sparsity must be a number, got str 'half'"),
    ({"method": "l1"}, ValueError, r"method must be one of \['random', 'magnitude'\], got 'l1'"),
    ({"threshold": -1.0}, ValueError, r"threshold must be a positive finite number, got -1.0"),
    ({"threshold": 0}, ValueError, r"threshold must be a positive finite number, got 0"),
    ({"threshold": "1"}, TypeError, r"threshold must be a number, got str '1'"),
    ({"log_threshold": float("inf")}, ValueError, r"log_threshold must be a finite number, got inf"),
    ({"log_threshold": "-3"}, TypeError, r"log_threshold must be a number, got str '-3'"),
    ({"threshold": 2.0, "log_threshold": -3.0}, ValueError,
     r"give threshold or log_threshold, not both \(got threshold=2.0 and log_threshold=-3.0\)"),
    ({"threshold": 1.0, "log_threshold": -3.0}, ValueError,
     r"give threshold or log_threshold, not both \(got threshold=1.0 and log_threshold=-3.0\)"),
    ({"gate": "yes"}, TypeError, r"gate must be a bool \(True or False\), got str 'yes'"),
    ({"gate": 1}, TypeError, r"gate must be a bool \(True or False\), got int 1"),
    ({"seed": 1.5}, TypeError, r"seed must be an int, got float 1.5"),
    ({"seed": -1}, ValueError, r"seed must be an int with 0 <= seed <= 4294967295, got -1"),
    ({"batch_size": 0}, ValueError, r"batch_size must be a positive int, got 0"),
    ({"batch_size": 64.0}, ValueError, r"batch_size must be a positive int, got 64.0"),
    ({"likelihood": "epoch"}, ValueError, r"likelihood must be one of \['full', 'batch'\], got 'epoch'"),
    ({"likelihood_batch": 0}, ValueError, r"likelihood_batch must be a positive int or None, got 0"),
    ({"likelihood_batch": True}, ValueError, r"likelihood_batch must be a positive int or None, got True"),
    ({"layers": "fc1"}, TypeError, r"layers must be a non-empty sequence of layer names or None, got 'fc1'"),
    ({"layers": []}, TypeError, r"layers must be a non-empty sequence of layer names or None, got \[\]"),
    ({"evidence": "exact"}, ValueError, r"evidence must be one of \['laplace', 'point'\], got 'exact'"),
    ({"hessian": "block"}, ValueError, r"hessian must be one of \[.*'kron'.*\], got 'block'"),
    ({"curvature_subset": 0}, ValueError, r"curvature_subset must be a positive int or None, got 0"),
    ({"curvature_subset": 100.5}, ValueError, r"curvature_subset must be a positive int or None, got 100.5"),
    ({"fit_prior_scale": "yes"}, TypeError, r"fit_prior_scale must be a bool \(True or False\), got str 'yes'"),
]


@pytest.mark.parametrize("bad,error,message", BAD_ARGUMENTS, ids=[",".join(f"{k}={v!r}" for k, v in b.items()) for b, _, _ in BAD_ARGUMENTS])
def test_every_bad_argument_names_itself_and_its_value(bad: dict, error: type, message: str) -> None:
    kwargs = {"target_sparsity": 0.5, "evidence": "point", **bad}
    with pytest.raises(error, match=f"^{message}$"):
        BayesFactorPruning(**kwargs)


def test_good_arguments_are_kept_as_given() -> None:
    sched = BayesFactorPruning(0, "random", log_threshold=-3, gate=False, seed=7, batch_size=64,
                               likelihood="batch", likelihood_batch=32, layers=("fc1",), evidence="point",
                               hessian="diag", curvature_subset=200, fit_prior_scale=True)
    assert (sched.target_sparsity, sched.log_threshold, sched.gate, sched.seed, sched.batch_size) == (0.0, -3.0,
                                                                                                     False, 7, 64)
    assert (sched.likelihood_batch, sched.layers, sched.hessian, sched.curvature_subset) == (32, ["fc1"], HessianStructure.DIAG, 200)
    assert sched.fit_prior_scale is True and sched.evidence is EvidenceKind.POINT
    for hessian in ("kron", HessianStructure.KRON):  # an enum, given as one or by its value
        assert BayesFactorPruning(0.5, evidence="point", hessian=hessian).hessian is HessianStructure.KRON
    with pytest.raises(ValueError, match=r"^hessian must be one of \['diag', 'kron', 'full'\], got 'exact'$"):
        BayesFactorPruning(0.5, evidence="point", hessian="exact")


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


@pytest.mark.parametrize("make", [small_fcn, small_cnn], ids=["fcn", "cnn"])
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
        net = small_fcn(seed=1)
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
    net = small_fcn(seed=1)
    sched = BayesFactorPruning(0.9, "random", threshold=1.0, seed=0, evidence="point")
    hist = fit(net, train, epochs=2, batch_size=64, lr=3e-3, schedule=sched, progress=False).history
    assert all(r["log_bayes_factor"] < 0 and not r["pruned"] for r in hist)
    assert all(r["sparsity"] == 0.0 for r in hist)
    # the same candidate with gate=False is applied
    net = small_fcn(seed=1)
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
        full = fit(small_fcn(seed=5), train, schedule=BayesFactorPruning(0.5, method, gate=gate), **kwargs)
        ckpt = tmp_path / f"{method}-{gate}"
        with pytest.raises(KeyboardInterrupt):
            fit(small_fcn(seed=5), train, schedule=Crash(0.5, method, gate=gate), checkpoint_dir=ckpt, **kwargs)
        net = small_fcn(seed=99)  # other initial weights: everything must come from the checkpoint
        resumed = fit(net, train, schedule=BayesFactorPruning(0.5, method, gate=gate), checkpoint_dir=ckpt, **kwargs)
        keys = ("loss", "log_bayes_factor", "sparsity", "pruned", "train_loss")
        assert [[r[k] for k in keys] for r in resumed.history] == [[r[k] for k in keys] for r in full.history]
        for (k, a), b in zip(full.model.state_dict().items(), net.state_dict().values()):
            assert torch.equal(a, b), k


def test_schedule_state_dict_restores_the_random_stream() -> None:
    net = small_fcn()
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
        runs[sched.label] = fit(small_fcn(), train, epochs=2, batch_size=128, val=test,
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
    net = small_fcn(seed=2)
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
    net = small_cnn()
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
        fit(small_cnn(), train, epochs=1, batch_size=64, schedule=BayesFactorPruning(0.5, layers=["nope"]),
            progress=False)
    with pytest.raises(TypeError, match="layers"):
        BayesFactorPruning(0.5, layers="fc1")


# ------------------------------------------------------------------- the Laplace-evidence gate
def test_laplace_gate_is_the_default_and_records_the_evidence_terms(digits) -> None:
    pytest.importorskip("asdl")
    from pyro_prune.laplace import log_evidence

    train, _ = digits
    sched = BayesFactorPruning(0.5, "magnitude", seed=0)
    assert sched.evidence is EvidenceKind.LAPLACE
    net = small_fcn(seed=3)
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
        net = small_fcn(seed=1)
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
