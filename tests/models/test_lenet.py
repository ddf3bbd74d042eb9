"""LeNet-5's conv gates after ReLU and max-pool: the same model as gates right after the
convolutions (the classic placement), for the same noise draws, in every mode."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from pyro_prune.convert import to_deterministic
from pyro_prune.graph import structure_graph
from pyro_prune.inference.elbo import NoisePlan, _fused_noise
from pyro_prune.models import LeNet5, MultiplicativeNoise, StructureGate

#: the classic order: each conv gate between its convolution and its ReLU
_GATE_FIRST = ("conv1", "conv1_gate", "relu1", "pool1", "conv2", "conv2_gate", "relu2", "pool2")


def _gate_first(net: LeNet5) -> nn.Sequential:
    """The same modules (shared, not copied) with the conv gates right after the convolutions."""
    names = list(_GATE_FIRST) + [n for n, _ in net.net.named_children() if n not in _GATE_FIRST]
    return nn.Sequential(OrderedDict((n, net.net.get_submodule(n)) for n in names))


def _model(gate: str, weights: str, image_size: int) -> LeNet5:
    torch.manual_seed(0)
    net = LeNet5(1, 4, image_size, gate=gate, weights=weights)
    g = torch.Generator().manual_seed(1)
    for m in net.gates().values():
        if isinstance(m, MultiplicativeNoise):
            with torch.no_grad():
                m.loc.copy_(-4 * torch.rand(m.num_structures, generator=g))
                m.log_scale.copy_(-2 * torch.rand(m.num_structures, generator=g))
        remove = torch.zeros(m.num_structures, dtype=torch.bool)
        remove[::3] = True  # removed structures: multiplied by exactly 0
        m.prune(remove)
    return net


def test_gates_follow_relu_and_pool() -> None:
    names = [n for n, _ in LeNet5(1, 10, 28).net.named_children()]
    assert names[:8] == ["conv1", "relu1", "pool1", "conv1_gate", "conv2", "relu2", "pool2", "conv2_gate"]


@pytest.mark.parametrize("image_size", [28, 8])
def test_per_example_draws_give_the_outputs_and_gradients_of_gates_first(image_size: int) -> None:
    net = _model("noise", "point", image_size)
    net.train()
    x = torch.randn(5, 1, image_size, image_size, generator=torch.Generator().manual_seed(2))
    plan = NoisePlan(net)
    outs, grads = [], []
    torch.manual_seed(3)
    assert _fused_noise(plan, len(x)) is not None
    drawn = [m.__dict__["_drawn_theta"] for m in plan.layers]
    assert drawn[0].shape == (5, 6)  # one draw per example and channel
    for forward in (net.net, _gate_first(net)):
        for m, theta in zip(plan.layers, drawn):
            m.__dict__["_drawn_theta"] = theta
        net.zero_grad(set_to_none=True)
        out = forward(x)
        out.square().sum().backward(retain_graph=True)
        outs.append(out)
        grads.append([p.grad.clone() for p in net.parameters()])
    assert torch.equal(outs[0], outs[1])  # ReLU and max-pool commute with theta >= 0 exactly
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("gate", "weights"), [("noise", "point"), ("noise", "gaussian"), ("mask", "gaussian")])
def test_posterior_mean_and_converted_network_equal_gates_first(gate: str, weights: str) -> None:
    net = _model(gate, weights, 28).eval()
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        predicted = net.predict(x)
        assert torch.equal(predicted, _gate_first(net)(x))
    converted = to_deterministic(net)
    assert not any(isinstance(m, StructureGate) for m in converted.modules())
    with torch.no_grad():
        torch.testing.assert_close(converted(x), predicted, rtol=1e-5, atol=1e-5)


def test_structure_graph_keeps_the_convolutions_as_producers() -> None:
    net = LeNet5(1, 10, 28)
    gates = structure_graph(net).gates
    assert (gates["conv1_gate"].kind, gates["conv1_gate"].producer) == ("channel", "conv1")
    assert (gates["conv2_gate"].kind, gates["conv2_gate"].producer) == ("channel", "conv2")
    assert gates["conv1_gate"].consumers == ("conv2",) and gates["conv2_gate"].consumers == ("fc1",)
    assert net.net.conv1_gate.producer_name == "conv1"
