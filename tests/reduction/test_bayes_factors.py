"""Tests of the Bayes factor of a pruning (pyro_prune.reduction.bayes_factors)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from bayes_factor_nets import random_data, small_fcn
from pyro import poutine
from torch.utils.data import TensorDataset

from pyro_prune.inference import fit
from pyro_prune.models.fcn import prunable_layers
from pyro_prune.reduction import (
    BayesFactor,
    LogPosterior,
    PruneMethod,
    apply_masks,
    bayes_factor,
    candidate_masks,
    log_posterior,
)


@pytest.mark.parametrize("method", list(PruneMethod))
def test_bayes_factor_equals_the_difference_of_the_two_log_posteriors(method) -> None:
    """log BF = log joint(pruned) - log joint(full), each computed directly (Pyro trace)."""
    data = random_data(n=80, dtype=torch.float64)
    x, y = data.tensors
    net = small_fcn(seed=3, prior_scale=0.3).double()
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
    for both in ({"threshold": 1.0, "log_threshold": -1.0}, {"threshold": 1, "log_threshold": 0.0}):
        with pytest.raises(ValueError, match=r"not both \(got threshold=1(\.0)? and log_threshold="):
            make(0.0).accepts(**both)  # threshold=1 is the default's value, yet given: an error
        with pytest.raises(ValueError, match="not both"):
            make(0.0).break_even_examples(**both)
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
    net = small_fcn(seed=2).double()
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
    net = small_fcn()
    with pytest.raises(TypeError, match="dataset"):
        log_posterior(net, [1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size"):
        log_posterior(net, random_data(), batch_size=0)
    with pytest.raises(TypeError, match="model"):
        log_posterior(torch.nn.Linear(2, 2), random_data())  # type: ignore[arg-type]


# ------------------------------------------------------------------------- the schedule
