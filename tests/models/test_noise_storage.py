"""The network-wide storage of the noise posteriors (``share_noise_storage``): one flat ``loc``
and one flat ``log_scale`` Parameter for all noise layers, with the values, gradients,
state dicts and training steps of layers owning their Parameters."""

from __future__ import annotations

import io

import pytest
import torch
from foreign_networks import hf_vit
from torch import nn

from pyro_prune.inference.elbo import NoisePlan, fast_elbo_loss
from pyro_prune.inference.optim import make_optimizer
from pyro_prune.models import MLP, LeNet5, MultiplicativeNoise, PrunableNet, bayesianize
from pyro_prune.models.noise import share_noise_storage


class _PlainCNN(nn.Module):
    """A small CNN as its authors would write it (not a network of the project)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc1 = nn.Linear(24, 16)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(torch.relu(self.conv(x))).flatten(1)
        return self.fc2(torch.relu(self.fc1(h)))


NETS = {
    "mlp": (lambda: MLP(12, [10, 8, 6], 3), (12,)),
    "lenet5": (lambda: LeNet5(1, 3, 28), (1, 28, 28)),
    "plain_cnn": (lambda: bayesianize(_PlainCNN(), example_input=torch.zeros(2, 1, 8, 8)), (1, 8, 8)),
    "hf_vit": (lambda: bayesianize(hf_vit(), example_input=torch.zeros(2, 1, 8, 8)), (1, 8, 8)),
}


def _layers(net: PrunableNet) -> list[MultiplicativeNoise]:
    return list(net.noise_layers().values())


def _own(net: PrunableNet) -> PrunableNet:
    """The same network with every noise layer owning its Parameters (the layout before
    shared storage)."""
    for m in _layers(net):
        m.own_storage()
    return net


def _randomised(net: PrunableNet, seed: int) -> PrunableNet:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in _layers(net):
            m.loc.copy_(-3 * torch.rand(m.num_structures, generator=g))
            m.log_scale.copy_(-1 - 2 * torch.rand(m.num_structures, generator=g))
    return net


@pytest.mark.parametrize("name", list(NETS))
def test_a_network_stores_its_noise_in_two_parameters(name: str) -> None:
    make, _ = NETS[name]
    net = make()
    layers = _layers(net)
    assert len(layers) >= 2 and all(m.shares_storage for m in layers)
    storage = layers[0]._parameters["loc"]
    assert all(m._parameters["loc"] is storage for m in layers)
    assert storage.shape == (sum(m.num_structures for m in layers),)
    noise = [p for p in net.parameters() if any(p is m._parameters[k] for m in layers
                                                for k in ("loc", "log_scale"))]
    assert len(noise) == 2
    # each layer's loc is its slice: writes and gradients reach the storage at its offset
    _randomised(net, 0)
    offset = 0
    for m in layers:
        assert m.loc.shape == (m.num_structures,)
        torch.testing.assert_close(m.loc, storage[offset:offset + m.num_structures])
        offset += m.num_structures
    layers[1].kl_divergence().backward()
    grad = storage.grad
    assert grad is not None
    start = layers[1].storage_offset
    assert bool(grad[start:start + layers[1].num_structures].ne(0).any())
    assert bool(grad[:start].eq(0).all()) and bool(grad[start + layers[1].num_structures:].eq(0).all())


@pytest.mark.parametrize("name", list(NETS))
def test_state_dicts_of_either_layout_load_into_the_other(name: str) -> None:
    """Checkpoints written with layers owning their Parameters (the layout before the shared
    storage) load into a network sharing it, and back; same keys, shapes and values."""
    make, _ = NETS[name]
    torch.manual_seed(0)
    old = _randomised(_own(make()), 1)
    assert not any(m.shares_storage for m in _layers(old))
    buffer = io.BytesIO()
    torch.save(old.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    torch.manual_seed(1)
    new = make()
    assert set(new.state_dict()) == set(state)
    assert {k: tuple(v.shape) for k, v in new.state_dict().items()} == {k: tuple(v.shape) for k, v in state.items()}
    new.load_state_dict(state)
    for a, b in zip(_layers(old), _layers(new)):
        torch.testing.assert_close(a.loc, b.loc)
        torch.testing.assert_close(a.log_scale, b.log_scale)
    assert all(m.shares_storage for m in _layers(new))
    # and back: the shared layout's state dict into layers owning their Parameters
    _randomised(new, 2)
    back = _own(make())
    back.load_state_dict(new.state_dict())
    for a, b in zip(_layers(new), _layers(back)):
        torch.testing.assert_close(a.loc, b.loc)
    # a wrong shape is refused with torch's message
    bad = dict(state)
    key = next(k for k in bad if k.endswith(".loc"))
    bad[key] = torch.zeros(1)
    with pytest.raises(RuntimeError, match=f"size mismatch for {key}"):
        new.load_state_dict(bad)


@pytest.mark.parametrize("per_example", [True, False])
@pytest.mark.parametrize("name", list(NETS))
def test_training_steps_equal_those_of_layers_owning_their_parameters(name: str, per_example: bool) -> None:
    """Same seed, same values: three Adam steps of the fast ELBO with the shared storage,
    with layers owning their Parameters, and with a storage the layers fill out of order
    (the noise node then takes slices)."""
    make, shape = NETS[name]
    x = torch.randn(16, *shape, generator=torch.Generator().manual_seed(3))
    y = torch.randint(0, 3, (16,), generator=torch.Generator().manual_seed(4))
    results = []
    for layout in ("shared", "own", "reversed"):
        torch.manual_seed(5)
        net = make()
        if layout == "own":
            _own(net)
        elif layout == "reversed":
            assert share_noise_storage(_layers(net)[::-1])
        net.num_data = 160
        net.train()
        plan = NoisePlan(net)
        optimizer = make_optimizer(net, lr=1e-2, noise_lr=0.03)
        expected = 2 if layout != "own" else 2 * len(_layers(net))
        assert len(optimizer.param_groups[-1]["params"]) == expected
        torch.manual_seed(6)
        losses = []
        for _ in range(3):
            optimizer.zero_grad(set_to_none=True)
            loss, _ = fast_elbo_loss(net, x, y, per_example=per_example, plan=plan)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
        results.append((torch.stack(losses), [m.loc.detach().clone() for m in _layers(net)],
                        [m.log_scale.detach().clone() for m in _layers(net)]))
    for losses, locs, log_scales in results[1:]:
        torch.testing.assert_close(losses, results[0][0])
        for a, b in zip(locs + log_scales, results[0][1] + results[0][2]):
            torch.testing.assert_close(a, b)


def test_shrink_gives_a_network_sharing_its_storage_again() -> None:
    from pyro_prune.convert import shrink

    torch.manual_seed(0)
    net = _randomised(MLP(12, [10, 8], 3), 7)
    layers = _layers(net)
    net.prune({"fc1_gate": torch.arange(10) % 3 == 0})
    small, _ = shrink(net)
    small_layers = _layers(small)
    assert all(m.shares_storage for m in small_layers)
    assert small_layers[0].num_structures == int(layers[0].kept.sum())
    torch.testing.assert_close(small_layers[0].loc, layers[0].loc[layers[0].kept])
    torch.testing.assert_close(small_layers[1].loc, layers[1].loc)
    # the original keeps its storage and values
    assert all(m.shares_storage for m in layers)
