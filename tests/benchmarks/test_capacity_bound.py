"""The capacity benchmark's networks of given widths (benchmarks/capacity_bound.py)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

from pyro_prune.convert import compression, count_params
from pyro_prune.data import load_dataset, train_val_split
from pyro_prune.models import MLP, LeNet5

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def capacity(benchmark_module, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # its imports of _common and bmrs_table
    return benchmark_module("capacity_bound")


@pytest.mark.parametrize("widths", [{"fc1_gate": 5, "fc2_gate": 2}, {"fc1_gate": 8, "fc2_gate": 6},
                                    {"fc1_gate": 1, "fc2_gate": 6}])
def test_plain_network_has_exactly_the_widths_and_a_fresh_initialisation(capacity, widths) -> None:
    model = MLP(20, [8, 6], 3, gate="mask")
    torch.manual_seed(0)
    net = capacity.plain_network(capacity.set_widths(model, widths))
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert [tuple(m.weight.shape) for m in linears] == [(widths["fc1_gate"], 20),
                                                        (widths["fc2_gate"], widths["fc1_gate"]),
                                                        (3, widths["fc2_gate"])]
    assert count_params(net) == count_params(model)  # the size compression() counts
    kept = model.net.fc1.weight[: widths["fc1_gate"]]
    assert not torch.equal(linears[0].weight, kept)  # re-initialised, not the model's weights
    bound = 1 / 20 ** 0.5  # PyTorch's default initialisation for the fan-in 20
    assert float(linears[0].weight.detach().abs().max()) <= bound
    assert net.training
    x = torch.randn(4, 20)
    assert net(x).shape == (4, 3)


def test_set_widths_refuses_a_missing_gate_or_a_width_out_of_range(capacity) -> None:
    model = MLP(20, [8, 6], 3, gate="mask")
    with pytest.raises(ValueError, match="every gate"):
        capacity.set_widths(model, {"fc1_gate": 3})
    with pytest.raises(ValueError, match=r"fc2_gate.*\[1, 6\]"):
        capacity.set_widths(model, {"fc1_gate": 3, "fc2_gate": 7})


@pytest.mark.parametrize(("family", "target"), [("all", 0.88), ("fc", 0.869)])
def test_widths_at_compression_is_the_largest_of_the_family_at_the_target(capacity, family, target) -> None:
    model = LeNet5(1, 10, 28, gate="mask")
    widths = capacity.widths_at_compression(model, target, family)
    assert compression(capacity.set_widths(model, widths)) >= target
    if family == "fc":  # the convolutions keep their width
        assert widths["conv1_gate"] == 6 and widths["conv2_gate"] == 16
    params = count_params(model)
    for k in range(1, 121, 7):  # no network of the family is larger at the target
        other = capacity.scaled_widths(model, k / 120, family)
        if compression(capacity.set_widths(model, other)) >= target:
            assert count_params(model) <= params


def test_training_from_scratch_learns_digits(capacity) -> None:
    full = load_dataset("digits", "train")
    train, _ = train_val_split(full, val_fraction=0.2, seed=0)
    test = load_dataset("digits", "test")
    model = capacity.set_widths(MLP(64, [32], 10, gate="mask"), {"fc1_gate": 16})
    run = capacity.train_from_scratch(model, {"train": train, "test": test}, seed=0, epochs=3, lr=1e-2,
                                      batch_size=64)
    again = capacity.train_from_scratch(model, {"train": train, "test": test}, seed=0, epochs=3, lr=1e-2,
                                        batch_size=64)
    assert run["params"] == 64 * 16 + 16 + 16 * 10 + 10
    assert len(run["test_accuracy_per_epoch"]) == 3
    assert run["test_accuracy_per_epoch"] == again["test_accuracy_per_epoch"]  # seeded
    assert run["test_accuracy_per_epoch"][-1] > 0.8
