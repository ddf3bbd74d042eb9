"""The structure graph answers what every gate selects, for any network."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from pyro_prune.graph import structure_graph, warn_cannot_shrink
from pyro_prune.models import MLP, PrunableNet, ResNet, ViT, bayesianize
from pyro_prune.models.noise import MultiplicativeNoise


class _ConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(x))).mean((2, 3))
        return self.out(torch.tanh(self.fc(h)))


def test_producers_consumers_activations_and_kinds() -> None:
    model = bayesianize(_ConvBN(), example_input=torch.randn(2, 1, 6, 6))
    g = structure_graph(model).gates
    assert g["bn_gate"].producer == "conv" and g["bn_gate"].kind == "channel"
    assert g["bn_gate"].consumers == ("fc",)
    z = torch.tensor([-1.0, 2.0])
    torch.testing.assert_close(g["bn_gate"].activation(z), torch.relu(z))
    assert g["fc_gate"].producer == "fc" and g["fc_gate"].kind == "neuron"
    assert g["fc_gate"].consumers == ("out",)
    torch.testing.assert_close(g["fc_gate"].activation(z), torch.tanh(z))
    assert all(info.can_shrink for info in g.values())


def test_attention_heads_are_blocks_and_the_mlp_is_neurons() -> None:
    vit = ViT(8, 4, 1, 10, dim=8, depth=1, heads=2, mlp_dim=8)
    g = structure_graph(vit).gates
    assert g["blocks.0.attn.head_gate"].kind == "head"
    assert g["blocks.0.mlp.fc1_gate"].kind == "neuron" and g["blocks.0.mlp.fc1_gate"].producer == "blocks.0.mlp.fc1"


class _ResidualWithLayerNorm(nn.Module):
    """A hand-gated residual stream pinned by LayerNorm: its gate can never shrink anything."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.a_gate = MultiplicativeNoise(6)
        self.b = nn.Linear(6, 6)
        self.b_gate = MultiplicativeNoise(6)
        self.norm = nn.LayerNorm(6)
        self.out = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a_gate(self.a(x))
        return self.out(self.norm(h + self.b_gate(self.b(torch.relu(h)))))


def test_gates_that_cannot_shrink_are_found_and_warned_about_once() -> None:
    model = PrunableNet(_ResidualWithLayerNorm())
    assert structure_graph(model, (4,)).cannot_shrink() == ["a_gate", "b_gate"]
    with pytest.warns(RuntimeWarning, match="cannot shrink"):
        warn_cannot_shrink(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_cannot_shrink(model)  # once per model
    assert not structure_graph(MLP(5, (4,), 2)).cannot_shrink()


class _PinnedResidualAndHiddenLayer(nn.Module):
    """A residual stream pinned by LayerNorm (its gates cannot shrink anything) around a
    hidden layer whose gate can."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.a_gate = MultiplicativeNoise(6)
        self.hidden = nn.Linear(6, 5)
        self.hidden_gate = MultiplicativeNoise(5)
        self.b = nn.Linear(5, 6)
        self.b_gate = MultiplicativeNoise(6)
        self.norm = nn.LayerNorm(6)
        self.out = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a_gate(self.a(x))
        z = torch.relu(self.hidden_gate(self.hidden(h)))
        return self.out(self.norm(h + self.b_gate(self.b(z))))


def test_gates_that_cannot_shrink_are_left_out_of_the_counts_with_one_warning() -> None:
    from pyro_prune.convert import compression
    from pyro_prune.inference import pruning_report
    from pyro_prune.inference.loop import pruning_summary

    model = PrunableNet(_PinnedResidualAndHiddenLayer())
    model.input_shape = (4,)
    model.gates()["hidden_gate"].prune(torch.tensor([True, True, False, False, False]))
    model.gates()["a_gate"].prune(torch.tensor([True, False, False, False, False, False]))
    with pytest.warns(RuntimeWarning, match=r"2 gate\(s\) cannot shrink.*left out of structure counts"):
        summary = pruning_summary(model)
    assert summary["kept"] == {"hidden_gate": 3}
    assert summary["compression"] == pytest.approx(2 * (6 + 1 + 6) / (30 + 35 + 36 + 12 + 14))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reported once per model
        report = pruning_report(model, "bmrs_n")
        compression(model)
    assert [(c.kind, c.removed, c.total) for c in report.counts] == [("linear neurons", 2, 5)]
    # a residual stream without LayerNorm shrinks when all its members go: counted
    resnet = ResNet(3, 10, widths=(4, 6), image_size=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sum(c.total for c in pruning_report(resnet, "bmrs_n").counts) == resnet.num_structures()


def test_producer_names_are_read_from_the_graph() -> None:
    vit = ViT(8, 4, 1, 10, dim=8, depth=1, heads=2, mlp_dim=8)
    gates = vit.gates()
    assert gates["blocks.0.attn.head_gate"].producer_name == "blocks.0.attn.heads"  # its rows view
    assert structure_graph(vit).gates["blocks.0.attn.head_gate"].rows == (
        "blocks.0.attn.q", "blocks.0.attn.k", "blocks.0.attn.v")
    model = bayesianize(_ConvBN(), example_input=torch.randn(2, 1, 6, 6))
    assert model.gates()["bn_gate"].producer_name == "conv"
    from pyro_prune.models import StructureMask

    assert StructureMask(3).producer_name is None  # outside a model
    with pytest.raises(AttributeError):
        gates["blocks.0.mlp.fc1_gate"].producer_name = "blocks.0.mlp.fc2"  # type: ignore[misc]


class _Untraceable(nn.Module):
    """A gated layer followed by an op the converter does not know (torch.cumsum)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.fc_gate = MultiplicativeNoise(6)
        self.out = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.cumsum(self.fc_gate(self.fc(x)), dim=-1))


def test_an_untraceable_network_has_no_producers_and_is_traced_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import pyro_prune.graph.structure as structure

    model = PrunableNet(_Untraceable())
    model.input_shape = (4,)
    calls = []
    real = structure.structure_graph
    monkeypatch.setattr(structure, "structure_graph", lambda *a, **k: calls.append(1) or real(*a, **k))
    gate = model.gates()["fc_gate"]
    assert gate.producer_name is None and gate.producer_name is None
    assert len(calls) == 1  # the failure is remembered for this architecture
    model.input_shape = (4,)  # unchanged: still remembered
    assert gate.producer_name is None and len(calls) == 1
