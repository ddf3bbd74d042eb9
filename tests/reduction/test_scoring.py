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


def test_gate_inputs_read_a_transposed_producer_weight_by_its_structure_axis() -> None:
    """Hugging Face's ``Conv1D`` (GPT-2) stores its weight ``[in, out]``: a structure's row is
    a column of it (every criterion reads the gate inputs, BMRS too)."""
    tf = pytest.importorskip("transformers")
    from pyro_prune.reduction.scoring import gate_inputs

    torch.manual_seed(0)
    lm = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=12, n_embd=16, n_layer=1, n_head=4,
                                          n_positions=16, bos_token_id=1, eos_token_id=1))
    model = bayesianize(lm, example_input=torch.randint(0, 12, (2, 8)))
    name = next(n for n, g in model.gates().items() if g.producer_name == "module.transformer.h.0.mlp.c_fc")
    weight = model.net.get_submodule("module.transformer.h.0.mlp.c_fc").weight
    assert weight.shape == (16, 64)
    torch.testing.assert_close(gate_inputs(model, name)["weight"], weight.detach().T)
