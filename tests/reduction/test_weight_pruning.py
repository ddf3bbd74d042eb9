"""Tests of candidate weight prunings and of applying them (pyro_prune.reduction.weight_pruning)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from bayes_factor_nets import random_data, small_cnn, small_fcn

from pyro_prune.models import FCN
from pyro_prune.models.fcn import prunable_layers, weight_masks
from pyro_prune.reduction import (
    PruneMethod,
    apply_masks,
    candidate_masks,
    layer_sparsity,
    prune_count,
    sparsity,
)

SPARSITIES = [0.0, 0.25, 0.5, 0.75, 0.9, 0.99]


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
@pytest.mark.parametrize("make", [small_fcn, small_cnn], ids=["fcn", "cnn"])
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
    net = small_fcn()
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
    net = small_fcn()
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
    net = small_fcn()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x, y = random_data().tensors
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
