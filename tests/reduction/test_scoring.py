"""Tests of criteria applied to the gates of a model (pyro_prune.reduction.scoring): the one
global ranking and its tie-break, on a plain-torch network written as its authors would."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pyro_prune.models import MLP, bayesianize
from pyro_prune.models.gate import rank_structures
from pyro_prune.reduction import Criterion, CriterionInput, global_ranking, structure_scores


class _Net(nn.Module):
    """Layers declared in an order that is not alphabetical (zeta before alpha)."""

    def __init__(self, widths: tuple[int, int]) -> None:
        super().__init__()
        self.zeta = nn.Linear(4, widths[0])
        self.alpha = nn.Linear(widths[0], widths[1])
        self.out = nn.Linear(widths[1], 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.alpha(torch.relu(self.zeta(x)))))


def _constant_criterion(value: float) -> Criterion:
    return Criterion("constant", False, lambda *, loc, scale, **_: torch.full_like(loc, value), None,
                     frozenset({CriterionInput.NOISE_POSTERIOR}), default_threshold=0.0)


@pytest.mark.parametrize("widths", [(5, 3), (2, 7)])
def test_ties_go_by_the_order_of_the_gates_in_the_model_then_by_index(widths) -> None:
    torch.manual_seed(0)
    model = bayesianize(_Net(widths), example_input=torch.randn(2, 4))
    assert list(model.gates()) == ["zeta_gate", "alpha_gate"]  # not alphabetical
    order = global_ranking(model, _constant_criterion(0.0))
    assert order == ([("zeta_gate", i) for i in range(widths[0])]
                     + [("alpha_gate", i) for i in range(widths[1])])


@pytest.mark.parametrize("criterion", ["bmrs", "snr", "e_theta"])
def test_global_ranking_is_rank_structures_of_the_scores_and_skips_removed_structures(criterion) -> None:
    torch.manual_seed(1)
    model = MLP(4, [6, 5], 2)
    with torch.no_grad():
        for gate in model.noise_layers().values():
            gate.loc.copy_(torch.linspace(-12.0, 1.0, gate.loc.numel())[torch.randperm(gate.loc.numel())])
    model.prune({"fc1_gate": torch.tensor([True, False, False, False, False, True])})
    order = global_ranking(model, criterion)
    scores = structure_scores(model, criterion)
    assert order == rank_structures(model.kept_mask(), scores)
    assert ("fc1_gate", 0) not in order and ("fc1_gate", 5) not in order
    assert len(order) == 4 + 5
    ranked = [float(scores[name][idx]) for name, idx in order]
    assert ranked == sorted(ranked)  # least important first
