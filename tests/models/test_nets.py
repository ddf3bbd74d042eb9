from __future__ import annotations

import json

import pytest
import torch
from pyro import poutine
from torch import nn

from pyro_prune.models import (
    CNN,
    FCN,
    MLP,
    LeNet5,
    MultiplicativeNoise,
    PrunableNet,
    ResNet,
    ViT,
    bayesianize,
)


def test_mlp_structure_and_sites() -> None:
    net = MLP(16, [8, 6], 3, num_data=100)
    assert list(net.noise_layers()) == ["fc1_gate", "fc2_gate"]
    assert net.net.fc1_gate.producer_name == "fc1"
    x, y = torch.randn(10, 16), torch.randint(0, 3, (10,))
    tr = poutine.trace(net).get_trace(x, y)
    assert {"fc1_gate.theta", "fc2_gate.theta", "obs"} <= set(tr.nodes)
    # the likelihood of a minibatch is scaled to the data set
    assert tr.nodes["obs"]["scale"] == pytest.approx(10.0)
    guide_tr = poutine.trace(net.guide).get_trace(x, y)
    assert {n for n, s in guide_tr.nodes.items()
            if s["type"] == "sample" and not s["is_observed"] and not n.endswith("_plate")} == {
        "fc1_gate.theta", "fc2_gate.theta"}


@pytest.mark.parametrize("image_size,flat", [(28, 16 * 5 * 5), (8, 16 * 2 * 2), (32, 16 * 6 * 6)])
def test_lenet5_shapes(image_size: int, flat: int) -> None:
    net = LeNet5(1, 10, image_size).eval()
    assert net.net.fc1.in_features == flat
    out = net.predict(torch.randn(3, 1, image_size, image_size))
    assert out.shape == (3, 10)
    assert [m.num_structures for m in net.noise_layers().values()] == [6, 16, 120, 84]


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="hidden"):
        MLP(4, [], 2)
    with pytest.raises(ValueError, match="likelihood"):
        MLP(4, 3, 2, likelihood="poisson")
    with pytest.raises(ValueError, match="weights"):
        MLP(4, 3, 2, weights="laplace")
    with pytest.raises(ValueError, match="image_size"):
        LeNet5(1, 10, 4)


def test_gaussian_likelihood_has_learned_noise() -> None:
    net = MLP(3, 5, 1, likelihood="gaussian", obs_scale=0.5)
    x, y = torch.randn(4, 3), torch.randn(4, 1)
    tr = poutine.trace(net).get_trace(x, y)
    assert torch.allclose(tr.nodes["obs"]["fn"].base_dist.scale, torch.tensor(0.5))
    nll = net.nll(net.predict(x), y)
    assert nll.shape == (4,)


class _PlainCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 2 * 2, 7)
        self.head = nn.Linear(7, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = torch.relu(self.fc(x.flatten(1)))
        return self.head(x)


def test_bayesianize_places_gates_after_batchnorm_and_skips_the_output_layer() -> None:
    plain = _PlainCNN().eval()
    net = bayesianize(plain)
    assert isinstance(net, PrunableNet)
    gates = net.noise_layers()
    assert set(gates) == {"bn1_gate", "conv2_gate", "fc_gate"}
    assert gates["bn1_gate"].producer_name == "conv1"
    assert gates["bn1_gate"].num_structures == 4 and gates["bn1_gate"].dim == 1
    assert gates["fc_gate"].num_structures == 7 and gates["fc_gate"].dim == -1
    # the original module is untouched and, with theta -> 1, outputs agree
    for g in gates.values():
        with torch.no_grad():
            g.log_scale.fill_(-20.0)
    net.eval()
    x = torch.randn(2, 1, 4, 4)
    torch.testing.assert_close(net.predict(x), plain(x), rtol=1e-4, atol=1e-4)
    assert not any(isinstance(m, MultiplicativeNoise) for m in plain.modules())


def test_bayesianize_errors() -> None:
    with pytest.raises(TypeError, match="module"):
        bayesianize("not a module")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="noise_on"):
        bayesianize(_PlainCNN(), noise_on=(nn.ReLU,))

    class Untraceable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:
                return self.fc(x)
            return x

    with pytest.raises(ValueError, match="traceable"):
        bayesianize(Untraceable())
    with pytest.raises(ValueError, match="no layer"):
        bayesianize(nn.Sequential(nn.Linear(3, 2)))


@pytest.mark.parametrize("make", [
    lambda **kw: MLP(12, [6, 5], 3, **kw),
    lambda **kw: LeNet5(1, 4, 8, **kw),
    lambda **kw: ResNet(1, 3, widths=(4, 8), blocks_per_stage=1, image_size=8, **kw),
    lambda **kw: ViT(image_size=8, patch_size=4, num_classes=3, dim=8, heads=2, depth=1, mlp_dim=6, **kw),
], ids=["mlp", "lenet5", "resnet", "vit"])
def test_config_records_the_noise_settings_and_rebuilds_the_model(make) -> None:
    net = make(init_loc=-3.0, init_log_scale=-2.0)
    assert net.config["init_loc"] == -3.0 and net.config["init_log_scale"] == -2.0
    rebuilt = type(net)(**net.config)
    assert rebuilt.config == net.config
    for name, gate in net.noise_layers().items():
        other = rebuilt.noise_layers()[name]
        for (pname, p), (_, q) in zip(gate.named_parameters(), other.named_parameters(), strict=True):
            assert torch.equal(p, q), f"{name}.{pname}"
        for (bname, b), (_, c) in zip(gate.named_buffers(), other.named_buffers(), strict=True):
            assert torch.equal(b, c), f"{name}.{bname}"


@pytest.mark.parametrize("make", [
    lambda: MLP(12, [6, 5], 3, weights="gaussian", gate="mask"),
    lambda: LeNet5(1, 4, 8),
    lambda: ResNet(1, 3, widths=(4, 8), blocks_per_stage=1, image_size=8, weights="gaussian"),
    lambda: ViT(image_size=8, patch_size=4, num_classes=3, dim=8, heads=2, depth=1, mlp_dim=6),
    lambda: FCN(12, 3, hidden=(5,)),
    lambda: CNN(1, 3, 8, channels=(2, 3), hidden=(4,)),
], ids=["mlp", "lenet5", "resnet", "vit", "fcn", "cnn"])
def test_ready_networks_record_their_input_shape_and_plain_config(make) -> None:
    net = make()
    x = net.example_input(3)
    assert x.shape == (3, *net.input_shape) and net.predict(x).shape[0] == 3
    assert json.loads(json.dumps(net.config)) == net.config  # enums by value: plain JSON
    assert type(net)(**net.config).config == net.config


def test_example_input_needs_an_input_shape() -> None:
    net = PrunableNet(nn.Sequential(nn.Linear(3, 4), MultiplicativeNoise(4), nn.Linear(4, 2)))
    with pytest.raises(ValueError, match="no input_shape"):
        net.example_input()
    net.record_config((3,), width=4)
    assert net.example_input(2).shape == (2, 3) and net.config == {"width": 4}


def test_regression_mlp_rebuilds_with_its_initial_observation_noise() -> None:
    net = MLP(4, [3], 1, likelihood="gaussian", obs_scale=0.25)
    rebuilt = type(net)(**net.config)
    torch.testing.assert_close(rebuilt.obs_scale, torch.tensor(0.25))
    assert rebuilt.config == net.config
