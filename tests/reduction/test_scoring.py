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


def _head_of_row(rows: int, heads: int, head_dim: int = 4) -> torch.Tensor:
    """GPT-2's fused ``c_attn`` rows: q, k and v blocks, ``head_dim`` rows per head in each."""
    return torch.arange(rows) % (heads * head_dim) // head_dim


def _expected_head_df(layer: nn.Module, heads: int, noise: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Per head, the Gaussian dF summed over its q, k and v rows of ``layer`` (weights and
    bias), and the joint dF (plus the head's noise dF), computed from the layer directly."""
    from pyro_prune.reduction import delta_f_gaussian, delta_f_lognormal

    loc = torch.cat([layer.weight_loc.detach(), layer.bias_loc.detach()[:, None]], 1).double()
    scale = torch.cat([layer.weight_scale.detach(), layer.bias_scale.detach()[:, None]], 1).double()
    per_row = delta_f_gaussian(loc, scale, prior_scale=layer.prior_scale, dim=1)
    owner = _head_of_row(loc.shape[0], heads)
    weights = torch.stack([per_row[owner == h].sum() for h in range(heads)])
    noise_df = delta_f_lognormal(noise.loc.detach().double(), noise.scale.detach().double())
    return weights, weights + noise_df


def test_a_head_owns_its_qkv_rows_in_weight_criteria_also_after_shrink() -> None:
    """Tiny Hugging Face GPT-2 (fused ``c_attn`` Conv1D) with Gaussian weights: the joint and
    Gaussian BMR of a head sum the dF of its q, k and v rows; after a head is removed and the
    network shrunk, the rows, the KL links and the scores describe the new layout (the same
    as a fresh analysis of a copy)."""
    import copy

    import foreign_networks as foreign

    from pyro_prune.convert import shrink
    from pyro_prune.graph import structure_rows

    torch.manual_seed(0)
    x = foreign.token_ids(4)
    model = bayesianize(foreign.hf_gpt2(1).eval(), example_input=x[:2], weights="gaussian")
    name = "gates.transformer_h_0_attn_c_proj_head_gate"
    gate = model.gates()[name]
    qkv = model.net.get_submodule("module.transformer.h.0.attn.c_attn")
    with torch.no_grad():  # posteriors away from their start, different per row and head
        qkv.weight_log_scale.uniform_(-3.0, 0.5)
        qkv.weight_loc.mul_(torch.linspace(0.1, 3.0, 48)[:, None])
        gate.loc.copy_(torch.tensor([-1.0, -12.0, -3.0, -6.0]))
    for heads, layer in ((4, qkv), (3, None)):
        if layer is None:  # remove head 1, shrink, and score the smaller network
            gate.prune(torch.tensor([False, True, False, False]))
            model, _ = shrink(model, example_input=x[:2])
            gate = model.gates()[name]
            layer = model.net.get_submodule("module.transformer.h.0.attn.c_attn")
            assert layer.weight_loc.shape[0] == 36 and gate.num_structures == 3
        weights_df, joint_df = _expected_head_df(layer, heads, gate)
        gaussian = structure_scores(model, "gaussian_bmr")[name].double()
        joint = structure_scores(model, "bmrs_joint")[name].double()
        torch.testing.assert_close(-gaussian, weights_df, rtol=1e-5, atol=1e-3)
        torch.testing.assert_close(-joint, joint_df, rtol=1e-5, atol=1e-3)
        # the KL link: row -> head, as the graph of this layout (and of a fresh copy) reads it
        (link,) = [lk for g, lk in zip(layer._output_gates, layer._gate_rows) if g is gate]
        assert link is not None and link[0].tolist() == _head_of_row(3 * 4 * heads, heads).tolist()
        fresh = copy.deepcopy(model)
        assert structure_rows(fresh, name)["module.transformer.h.0.attn.c_attn"].tolist() == link[0].tolist()
    # after shrinking, removing another head still takes exactly its rows out of the KL
    from pyro_prune.models.bayesian import BayesianLayer, gaussian_kl

    def weights_kl() -> float:
        return sum(float(m.kl_divergence()) for m in model.modules() if isinstance(m, BayesianLayer))

    with torch.no_grad():
        loc, scale, prior_scale = layer.weight_posterior()
        rows_kl = gaussian_kl(loc, scale, prior_scale).sum(-1) * layer.kl_scale
        before = weights_kl()
    gate.prune(torch.tensor([False, False, True]))
    with torch.no_grad():
        after = weights_kl()
    assert before - after == pytest.approx(float(rows_kl[_head_of_row(36, 3) == 2].sum()), rel=1e-5)


def test_a_heads_weight_norm_is_that_of_its_qkv_rows_with_point_weights() -> None:
    """Point weights (GPT-2's Conv1D stores [in, out]): the L2 criterion of a head is the
    norm of its q, k and v weight rows together."""
    import foreign_networks as foreign

    torch.manual_seed(0)
    x = foreign.token_ids(4)
    model = bayesianize(foreign.hf_gpt2(1).eval(), example_input=x[:2])
    c_attn = model.net.get_submodule("module.transformer.h.0.attn.c_attn")
    rows = c_attn.weight.detach().T  # [48, 16]: q, k and v rows
    owner = _head_of_row(48, 4)
    expected = torch.stack([rows[owner == h].norm() for h in range(4)])
    scores = structure_scores(model, "l2")["gates.transformer_h_0_attn_c_proj_head_gate"]
    torch.testing.assert_close(scores, expected)
