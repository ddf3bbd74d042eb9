"""Tests of the small ResNet and ViT Pyro models."""

from __future__ import annotations

import pytest
import torch
from pyro import poutine
from torch import nn

from pyro_prune.convert import shrink, to_deterministic
from pyro_prune.models import MultiplicativeNoise, PrunableNet, ResNet, StructureMask, ViT
from pyro_prune.models.bayesian import BayesianConv2d, BayesianLinear
from pyro_prune.models.vit import HeadRows
from pyro_prune.reduction.scoring import gate_inputs, structure_scores


# ---------------------------------------------------------------------- ResNet
def test_resnet_layout_gates_after_every_batchnorm() -> None:
    net = ResNet(3, 10, widths=(16, 32, 64), blocks_per_stage=1)
    assert isinstance(net, PrunableNet)
    gates = net.noise_layers()
    assert list(gates) == [
        "stem_gate",
        "stages.0.0.bn1_gate", "stages.0.0.bn2_gate",
        "stages.1.0.bn1_gate", "stages.1.0.bn2_gate", "stages.1.0.shortcut.bn_gate",
        "stages.2.0.bn1_gate", "stages.2.0.bn2_gate", "stages.2.0.shortcut.bn_gate",
    ]
    bns = [n for n, m in net.net.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == len(gates)  # one gate per BatchNorm
    assert gates["stem_gate"].producer_name == "stem_conv"
    assert gates["stages.1.0.bn2_gate"].producer_name == "stages.1.0.conv2"
    assert gates["stages.2.0.shortcut.bn_gate"].producer_name == "stages.2.0.shortcut.conv"
    for g in gates.values():
        producer = net.net.get_submodule(g.producer_name)
        assert producer.out_channels == g.num_structures and g.dim == 1
    assert isinstance(net.net.stages[0][0].shortcut, nn.Identity)  # same width, stride 1
    assert net.net.stages[1][0].conv1.stride == (2, 2)
    out = net.eval().predict(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert net.predict(torch.randn(1, 3, 16, 16)).shape == (1, 10)  # global pooling


@pytest.mark.parametrize("blocks", [1, 2])
def test_resnet_pyro_sites_and_training_step(blocks: int) -> None:
    net = ResNet(1, 3, widths=(4, 6), blocks_per_stage=blocks, image_size=8, num_data=20)
    x, y = torch.randn(5, 1, 8, 8), torch.randint(0, 3, (5,))
    tr = poutine.trace(net).get_trace(x, y)
    latent = {n for n in tr.stochastic_nodes if not n.endswith("_plate") and n != "data"}
    assert latent == {f"{g}.theta" for g in net.noise_layers()}
    assert tr.observation_nodes == ["obs"]
    loss = -tr.log_prob_sum()
    loss.backward()
    assert net.net.stem_conv.weight.grad is not None


def test_resnet_residual_adds_tie_their_gates_in_the_traced_graph() -> None:
    net = ResNet(3, 10, widths=(8, 16), blocks_per_stage=2, image_size=8)
    from pyro_prune.graph import dependency_analysis

    an = dependency_analysis(net)
    tags = an.tags
    nodes = {n.target: n for n in an.graph.nodes if n.op == "call_module"}

    def group(name: str) -> set[int]:
        t = tags[nodes[name]]
        return set(an.root[t[t >= 0]].tolist())
    # stage 0: the stem and both blocks' second BN share one residual stream
    assert group("stem_gate") == group("stages.0.0.bn2_gate") == group("stages.0.1.bn2_gate")
    # stage 1: the downsampling block's shortcut is tied with its main branch
    assert group("stages.1.0.shortcut.bn_gate") == group("stages.1.0.bn2_gate")
    # the first conv of a block is not tied to anything
    assert group("stages.0.0.bn1_gate").isdisjoint(group("stem_gate"))


def test_resnet_options_and_errors() -> None:
    net = ResNet(1, 2, widths=(4,), image_size=8, weights="gaussian", gate="mask")
    assert isinstance(net.net.stem_conv, BayesianConv2d) and isinstance(net.net.fc, BayesianLinear)
    assert all(isinstance(g, StructureMask) for g in net.gates().values())
    assert net.net.stem_conv._output_gates  # linked: removed filters leave the KL term
    assert net.config["widths"] == [4] and net.input_shape == (1, 8, 8)
    with pytest.raises(ValueError, match="widths"):
        ResNet(3, 10, widths=())
    with pytest.raises(ValueError, match="blocks_per_stage"):
        ResNet(3, 10, blocks_per_stage=0)
    with pytest.raises(ValueError, match="weights"):
        ResNet(3, 10, weights="laplace")


# ---------------------------------------------------------------------- ViT
def test_vit_layout_and_gates() -> None:
    net = ViT(28, 7, 1, 10, dim=32, depth=2, heads=4, mlp_dim=48)
    gates = net.noise_layers()
    assert list(gates) == ["blocks.0.attn.head_gate", "blocks.0.mlp.fc1_gate",
                           "blocks.1.attn.head_gate", "blocks.1.mlp.fc1_gate"]
    head = gates["blocks.0.attn.head_gate"]
    assert head.num_structures == 4 and head.dim == 1
    assert gates["blocks.1.mlp.fc1_gate"].num_structures == 48 and gates["blocks.1.mlp.fc1_gate"].dim == -1
    assert head.producer_name == "blocks.0.attn.heads"
    assert gates["blocks.0.mlp.fc1_gate"].producer_name == "blocks.0.mlp.fc1"
    assert net.net.pos_embedding.shape == (1, 16 + 1, 32)
    assert net.eval().predict(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def test_vit_head_gate_scales_whole_heads() -> None:
    net = ViT(8, 4, 1, 5, dim=16, depth=1, heads=4, mlp_dim=8).eval()
    attn = net.net.blocks[0].attn
    seen = {}
    attn.head_gate.register_forward_hook(lambda m, i, o: seen.update(inp=i[0], out=o))
    net.predict(torch.randn(2, 1, 8, 8))
    assert seen["inp"].shape == (2, 4, 5, 4)  # [batch, heads, tokens, head_dim]
    attn.head_gate.prune(torch.tensor([False, True, False, False]))
    net.predict(torch.randn(2, 1, 8, 8))
    assert torch.all(seen["out"][:, 1] == 0) and torch.all(seen["out"][:, 0] != 0)


def test_vit_head_rows_give_per_head_weights_to_criteria() -> None:
    net = ViT(8, 4, 1, 5, dim=16, depth=1, heads=4, mlp_dim=8)
    attn = net.net.blocks[0].attn
    rows = attn.heads.weight
    assert isinstance(attn.heads, HeadRows) and rows.shape == (4, 3 * 4 * 16)
    torch.testing.assert_close(rows[2, : 4 * 16], attn.q.weight[8:12].reshape(-1))
    torch.testing.assert_close(rows[2, 2 * 4 * 16:], attn.v.weight[8:12].reshape(-1))
    assert not list(attn.heads.parameters())  # a view: no parameters of its own
    inputs = gate_inputs(net, "blocks.0.attn.head_gate")
    assert inputs["weight"].shape == (4, 192)
    assert structure_scores(net, "l2")["blocks.0.attn.head_gate"].shape == (4,)
    gaussian = ViT(8, 4, 1, 5, dim=16, depth=1, heads=4, mlp_dim=8, weights="gaussian")
    loc, scale, prior = gaussian.net.blocks[0].attn.heads.weight_posterior()
    assert loc.shape == scale.shape == (4, 3 * 4 * (16 + 1)) and prior == 1.0
    assert getattr(attn.heads, "weight_posterior", None) is None  # point weights


def test_vit_is_fx_traceable_and_keeps_working_after_removing_heads() -> None:
    net = ViT(8, 4, 1, 5, dim=16, depth=2, heads=4, mlp_dim=8).eval()
    net.gates()["blocks.1.attn.head_gate"].prune(torch.tensor([True, True, False, True]))
    det = to_deterministic(net)
    assert det.get_submodule("blocks.1.attn.v").out_features == 4
    small, _ = shrink(net)
    assert small.gates()["blocks.1.attn.head_gate"].num_structures == 1
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(small.predict(x), net.predict(x), rtol=1e-5, atol=1e-6)
    # the shrunk Pyro model still runs as a Pyro program
    tr = poutine.trace(small.train()).get_trace(x, torch.tensor([0, 1]))
    assert tr.nodes["blocks.1.attn.head_gate.theta"]["value"].shape == (1,)


def test_vit_errors() -> None:
    with pytest.raises(ValueError, match="divisible"):
        ViT(28, 5)
    with pytest.raises(ValueError, match="heads"):
        ViT(28, 7, dim=30, heads=4)
    with pytest.raises(ValueError, match="depth"):
        ViT(28, 7, depth=0)
    assert isinstance(ViT(8, 4, 1, 2, dim=8, heads=2, mlp_dim=4).gates()["blocks.0.mlp.fc1_gate"],
                      MultiplicativeNoise)
