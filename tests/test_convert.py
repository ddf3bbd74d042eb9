"""Tests of pyro_prune.convert: physically smaller deterministic and Bayesian networks."""

from __future__ import annotations

import copy
import io
import time
import warnings
from collections.abc import Callable

import pytest
import torch
from pyro.nn import PyroModule
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from pyro_prune.convert import (
    ChannelScale,
    UnsupportedOpError,
    compression,
    count_macs,
    count_params,
    shrink,
    supported_ops,
    to_deterministic,
)
from pyro_prune.graph import cached_analysis
from pyro_prune.inference import fit
from pyro_prune.models import (
    MLP,
    LeNet5,
    MultiplicativeNoise,
    PrunableNet,
    ResNet,
    StructureGate,
    ViT,
    bayesianize,
)
from pyro_prune.models.noise import StochasticModule
from pyro_prune.reduction import structure_removals

pytestmark = [
    pytest.mark.filterwarnings("ignore:pruning would empty:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The TorchScript type system:UserWarning"),
]


# ---------------------------------------------------------------------- models
class PlainCNN(nn.Module):
    """An ordinary torch CNN with BatchNorm, functional ops and flatten -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 4 * 4, 12)
        self.head = nn.Linear(12, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = nn.functional.max_pool2d(torch.relu(self.bn2(self.conv2(x))), 2)
        x = torch.relu(self.fc(x.flatten(1)))
        return self.head(x)


def make_mlp() -> PrunableNet:
    return MLP(12, [10, 8, 6], 3)


def make_lenet() -> PrunableNet:
    return LeNet5(1, 4, 8)


def make_cnn() -> PrunableNet:
    return bayesianize(PlainCNN())


def make_resnet() -> PrunableNet:
    return ResNet(3, 4, widths=(8, 12, 16), blocks_per_stage=2, image_size=8)


def make_vit() -> PrunableNet:
    return ViT(8, 4, 2, 4, dim=16, depth=2, heads=4, mlp_dim=24)


ARCHS: dict[str, Callable[[], PrunableNet]] = {
    "mlp": make_mlp, "lenet5": make_lenet, "bayesianized_cnn": make_cnn,
    "resnet": make_resnet, "vit": make_vit,
}
INPUT_SHAPES = {"mlp": (12,), "lenet5": (1, 8, 8), "bayesianized_cnn": (1, 8, 8),
                "resnet": (3, 8, 8), "vit": (2, 8, 8)}


def randomize(model: PrunableNet, gen: torch.Generator) -> PrunableNet:
    """Non-trivial BatchNorm statistics and noise posteriors (so folding is tested)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=gen))
                m.bias.copy_(torch.randn(m.num_features, generator=gen))
            if isinstance(m, MultiplicativeNoise):
                m.loc.copy_(-3 * torch.rand(m.num_structures, generator=gen))
                m.log_scale.copy_(-1 - 3 * torch.rand(m.num_structures, generator=gen))
    return model.eval()


def prune_random(model: PrunableNet, gen: torch.Generator, frac: float = 0.5) -> None:
    for g in model.gates().values():
        g.prune(torch.rand(g.num_structures, generator=gen) < frac)


def prune_all_but_one(model: PrunableNet, gen: torch.Generator) -> None:
    """Every gate keeps a single structure (the most aggressive pattern)."""
    for g in model.gates().values():
        keep = int(torch.randint(g.num_structures, (1,), generator=gen))
        remove = torch.ones(g.num_structures, dtype=torch.bool)
        remove[keep] = False
        g.prune(remove)


def prune_learned(model: PrunableNet, gen: torch.Generator, shape: tuple[int, ...]) -> None:
    """A few steps of fit on random data, then push the lowest E[theta] down and apply BMRS_N."""
    x = torch.randn(96, *shape, generator=gen)
    out = model.predict(x[:1]).shape[-1]
    y = torch.randint(out, (96,), generator=gen)
    fit(model, TensorDataset(x, y), epochs=1, batch_size=32, lr=1e-2, progress=False, seed=0)
    with torch.no_grad():
        for g in model.noise_layers().values():
            order = torch.argsort(g.expected_theta())  # learned ranking, least important first
            k = int(torch.randint(1, g.num_structures, (1,), generator=gen))
            g.loc[order[:k]] = -18.0
            g.log_scale[order[:k]] = 1.0
    removed = structure_removals(model, "bmrs_n")
    assert sum(int(r.sum()) for r in removed.values()) > 0
    for name, remove in removed.items():
        model.gates()[name].prune(remove)
    model.eval()


def pruned_model(arch: str, pattern: str, seed: int = 0) -> PrunableNet:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = randomize(ARCHS[arch](), gen)
    if pattern == "random":
        prune_random(model, gen)
    elif pattern == "all_but_one":
        prune_all_but_one(model, gen)
    elif pattern == "learned":
        prune_learned(model, gen, INPUT_SHAPES[arch])
    return model.eval()


def unpruned_count(model: PrunableNet) -> int:
    dense = ARCHS_BY_TYPE[type(model).__name__]() if type(model).__name__ in ARCHS_BY_TYPE else None
    assert dense is not None
    return count_params(dense)


ARCHS_BY_TYPE = {"MLP": make_mlp, "LeNet5": make_lenet, "BayesianizedNet": make_cnn,
                 "ResNet": make_resnet, "ViT": make_vit}


# ---------------------------------------------------------------------- exactness
@pytest.mark.parametrize("pattern", ["random", "all_but_one", "learned"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_converted_network_equals_predict(arch: str, pattern: str) -> None:
    model = pruned_model(arch, pattern).double()
    det = to_deterministic(model)
    assert isinstance(det, nn.Module) and not det.training
    assert not any(isinstance(m, (PyroModule, StructureGate, StochasticModule)) for m in det.modules())
    x = torch.randn(5, *INPUT_SHAPES[arch], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(det(x), model.predict(x), rtol=1e-5, atol=1e-8)
    # physically smaller: the converted module has exactly the counted parameters
    assert count_params(det) == count_params(model) < unpruned_count(model)
    assert compression(model) == pytest.approx(1 - count_params(det) / unpruned_count(model))


@pytest.mark.parametrize("arch", ["mlp", "lenet5", "bayesianized_cnn"])
def test_removed_structures_are_sliced_out_of_plain_chains(arch: str) -> None:
    """Without residual ties, every layer keeps exactly the structures its gate keeps."""
    model = pruned_model(arch, "random", seed=3)
    det = to_deterministic(model)
    modules = dict(det.named_modules())
    for gate in model.gates().values():
        producer = modules[gate.producer_name]
        width = producer.out_features if isinstance(producer, nn.Linear) else producer.out_channels
        assert width == int(gate.kept.sum())


def test_float32_conversion_is_within_rounding() -> None:
    model = pruned_model("lenet5", "random")
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(to_deterministic(model)(x), model.predict(x), rtol=1e-5, atol=1e-5)


def test_residual_channels_are_tied_by_the_union_rule() -> None:
    """A residual channel goes only when every gate feeding the add removed it."""
    model = randomize(ResNet(3, 4, widths=(8,), blocks_per_stage=2, image_size=8),
                      torch.Generator().manual_seed(0))
    stream = ["stem_gate", "stages.0.0.bn2_gate", "stages.0.1.bn2_gate"]
    gates = model.gates()
    # channel 0: removed by all three; channel 1: removed by two of three
    for name in stream:
        remove = torch.zeros(8, dtype=torch.bool)
        remove[0] = True
        remove[1] = name != "stages.0.1.bn2_gate"
        gates[name].prune(remove)
    det = to_deterministic(model.double())
    assert det.get_submodule("stem_conv").out_channels == 7
    assert det.get_submodule("stages.0.0.conv2").out_channels == 7
    assert det.get_submodule("stages.0.1.conv1").in_channels == 7
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(det(x), model.predict(x), rtol=1e-6, atol=1e-9)
    # the gates after BatchNorm fold into BN's affine parameters: no scale modules left
    assert not any(isinstance(m, ChannelScale) for m in det.modules())
    # the kept-but-removed member (channel 1 of the first two) is exactly zero after its BN
    bn = det.get_submodule("stages.0.0.bn2")
    assert float(bn.weight.detach()[0]) == 0.0 and float(bn.bias.detach()[0]) == 0.0
    shrunk, _ = shrink(model)
    assert shrunk.gates()["stages.0.0.bn2_gate"].num_structures == 7
    assert not bool(shrunk.gates()["stages.0.0.bn2_gate"].kept[0])


def test_vit_heads_slice_qkv_rows_and_projection_columns() -> None:
    model = randomize(make_vit(), torch.Generator().manual_seed(0))
    remove = torch.tensor([True, False, True, False])
    model.gates()["blocks.0.attn.head_gate"].prune(remove)
    det = to_deterministic(model)
    head_dim = 16 // 4
    for proj in ("q", "k", "v"):
        assert det.get_submodule(f"blocks.0.attn.{proj}").out_features == 2 * head_dim
        assert det.get_submodule(f"blocks.1.attn.{proj}").out_features == 16
    assert det.get_submodule("blocks.0.attn.proj").in_features == 2 * head_dim
    # the surviving rows are those of heads 1 and 3
    q = model.net.blocks[0].attn.q.weight
    kept_rows = torch.cat([q[4:8], q[12:16]])
    torch.testing.assert_close(det.get_submodule("blocks.0.attn.q").weight, kept_rows)


@pytest.mark.parametrize("arch", ["bayesianized_cnn", "resnet"])
def test_batchnorm_folding_into_convolutions(arch: str) -> None:
    model = pruned_model(arch, "random", seed=4).double()
    det = to_deterministic(model, fold_batchnorm=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in det.modules())
    x = torch.randn(3, *INPUT_SHAPES[arch], dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(det(x), model.predict(x), rtol=1e-6, atol=1e-9)
    plain = to_deterministic(model)
    assert count_macs(det, INPUT_SHAPES[arch]) == count_macs(plain, INPUT_SHAPES[arch])
    n_bn = sum(m.num_features for m in plain.modules() if isinstance(m, nn.BatchNorm2d))
    n_new_bias = sum(m.out_channels for n, m in plain.named_modules()
                     if isinstance(m, nn.Conv2d) and m.bias is None)
    assert count_params(det) == count_params(plain) - 2 * n_bn + n_new_bias


@pytest.mark.parametrize("arch", ["lenet5", "resnet", "vit"])
def test_channel_multiple_rounds_widths_and_keeps_outputs(arch: str) -> None:
    model = pruned_model(arch, "random", seed=8).double()
    det = to_deterministic(model, channel_multiple=4)
    exact = dict(to_deterministic(model).named_modules())
    x = torch.randn(3, *INPUT_SHAPES[arch], dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(det(x), model.predict(x), rtol=1e-6, atol=1e-9)
    for name, m in det.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            width = m.out_features if isinstance(m, nn.Linear) else m.out_channels
            full = model.net.get_submodule(name)
            full_width = getattr(full, "out_features", None) or full.out_channels
            exact_m = exact[name]
            exact_width = getattr(exact_m, "out_features", None) or exact_m.out_channels
            assert exact_width <= width <= full_width
            assert width % 4 == 0 or width == full_width  # capped at the full width (or pinned)
    assert count_params(det) >= count_params(model)
    with pytest.raises(ValueError, match="channel_multiple"):
        to_deterministic(model, channel_multiple=0)


@pytest.mark.parametrize("arch", ["lenet5", "bayesianized_cnn", "resnet"])
def test_channels_last_keeps_outputs_in_either_input_layout(arch: str) -> None:
    model = pruned_model(arch, "random", seed=9).double()
    det = to_deterministic(model, fold_batchnorm=True, channels_last=True)
    convs = [m for m in det.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    x = torch.randn(3, *INPUT_SHAPES[arch], dtype=torch.float64)
    with torch.no_grad():
        expected = model.predict(x)
        torch.testing.assert_close(det(x), expected, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(det(x.contiguous(memory_format=torch.channels_last)), expected,
                                   rtol=1e-6, atol=1e-9)
    restored = to_deterministic(model, fold_batchnorm=True)
    restored.load_state_dict(det.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(restored(x), expected, rtol=1e-6, atol=1e-9)


class _GeluGateAdd(nn.Module):
    """A gate whose E[theta] cannot be folded: after GELU and before a residual add."""

    def __init__(self) -> None:
        super().__init__()
        from pyro_prune.models.layers import make_gate

        self.fc1 = nn.Linear(5, 6)
        self.act = nn.GELU()
        self.fc1_gate = make_gate(6, -1)
        self.skip = nn.Linear(5, 6)
        self.out = nn.Linear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.fc1_gate(self.act(self.fc1(x))) + self.skip(x))


def test_unfoldable_gate_becomes_a_fixed_scale() -> None:
    model = PrunableNet(_GeluGateAdd())
    model.name_sites()
    randomize(model, torch.Generator().manual_seed(0))
    model.gates()["fc1_gate"].prune(torch.tensor([True, False, False, True, False, False]))
    det = to_deterministic(model, example_input=(5,))
    scales = [m for m in det.modules() if isinstance(m, ChannelScale)]
    assert len(scales) == 1 and scales[0].scale.numel() == 6  # tied with skip: nothing removed
    x = torch.randn(4, 5)
    with torch.no_grad():
        torch.testing.assert_close(det(x), model.predict(x), rtol=1e-5, atol=1e-6)


class _DepthwiseNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.dw = nn.Conv2d(6, 6, 3, padding=1, groups=6)
        self.dw_bn = nn.BatchNorm2d(6)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        x = torch.relu(self.dw_bn(self.dw(x)))
        return self.fc(self.pool(x).flatten(1))


def test_depthwise_convolution_ties_its_input_and_output_channels() -> None:
    model = randomize(bayesianize(_DepthwiseNet()), torch.Generator().manual_seed(0))
    gates = model.gates()
    gates["bn_gate"].prune(torch.tensor([True, True, False, False, False, False]))
    gates["dw_bn_gate"].prune(torch.tensor([True, False, True, False, False, False]))
    det = to_deterministic(model.double(), example_input=(2, 5, 5))
    # channel c of `conv` feeds only channel c of `dw`, so both go when the gate after `dw`
    # removed c (channels 0, 2); channel 1 stays: `dw` still outputs its bias there
    assert det.get_submodule("dw").out_channels == 4 and det.get_submodule("dw").groups == 4
    assert det.get_submodule("conv").out_channels == 4
    assert det.get_submodule("fc").in_features == 4
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(det(x), model.predict(x), rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------------- counts
def test_mlp_hand_counts() -> None:
    model = MLP(20, [8, 6], 3)
    gates = model.gates()
    gates["fc1_gate"].prune(torch.tensor([1, 0, 1, 0, 1, 0, 0, 0], dtype=torch.bool))  # 5 of 8 kept
    gates["fc2_gate"].prune(torch.tensor([1, 1, 0, 1, 1, 0], dtype=torch.bool))  # 2 of 6 kept
    full = (20 * 8 + 8) + (8 * 6 + 6) + (6 * 3 + 3)  # 243
    kept = (20 * 5 + 5) + (5 * 2 + 2) + (2 * 3 + 3)  # 126
    assert count_params(model) == kept
    assert count_params(to_deterministic(model)) == kept
    assert compression(model) == pytest.approx(1 - kept / full)
    assert count_macs(model, (20,)) == 20 * 5 + 5 * 2 + 2 * 3
    assert count_macs(MLP(20, [8, 6], 3), (20,)) == 20 * 8 + 8 * 6 + 6 * 3


def test_lenet5_hand_counts() -> None:
    model = LeNet5(1, 10, 28)
    gates = model.gates()
    for name, keep in (("conv1_gate", 3), ("conv2_gate", 10), ("fc1_gate", 50), ("fc2_gate", 40)):
        remove = torch.ones(gates[name].num_structures, dtype=torch.bool)
        remove[:keep] = False
        gates[name].prune(remove)
    full = (6 * 25 + 6) + (16 * 6 * 25 + 16) + (400 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10)
    assert full == 61706  # the classic LeNet-5 count
    assert compression(LeNet5(1, 10, 28)) == 0.0
    kept = (
        (3 * 1 * 25 + 3)  # conv1: 3 filters of 1x5x5
        + (10 * 3 * 25 + 10)  # conv2: 10 filters of 3x5x5
        + (10 * 5 * 5 * 50 + 50)  # fc1: 10 channels x 5x5 inputs -> 50
        + (50 * 40 + 40) + (40 * 10 + 10)
    )
    assert count_params(model) == kept == count_params(to_deterministic(model))
    assert compression(model) == pytest.approx(1 - kept / full)
    full_macs = 6 * 28 * 28 * 25 + 16 * 10 * 10 * 6 * 25 + 400 * 120 + 120 * 84 + 84 * 10
    kept_macs = 3 * 28 * 28 * 25 + 10 * 10 * 10 * 3 * 25 + 250 * 50 + 50 * 40 + 40 * 10
    assert count_macs(LeNet5(1, 10, 28), (1, 28, 28)) == full_macs == 416520
    assert count_macs(model, (1, 28, 28)) == kept_macs


def test_resnet_hand_counts_with_tied_residual_channels() -> None:
    model = ResNet(3, 10, widths=(4, 6), blocks_per_stage=1, image_size=8)
    gates = model.gates()

    def prune(name: str, remove: list[int]) -> None:
        gates[name].prune(torch.tensor(remove, dtype=torch.bool))

    # the stem and stage 0's second gate meet at an add: only channel 0 is removed by both
    prune("stem_gate", [1, 1, 0, 0])
    prune("stages.0.0.bn2_gate", [1, 0, 1, 0])
    prune("stages.0.0.bn1_gate", [0, 1, 1, 0])  # 2 kept
    prune("stages.1.0.bn1_gate", [1, 1, 1, 0, 0, 0])  # 3 kept
    # stage 1's second gate and its shortcut meet at an add: channels 0, 4, 5 removed by both
    prune("stages.1.0.bn2_gate", [1, 1, 0, 0, 1, 1])
    prune("stages.1.0.shortcut.bn_gate", [1, 0, 0, 0, 1, 1])
    a, b1, c1, out = 3, 2, 3, 3  # tied stem/stage-0 group, stage 0 inner, stage 1 inner, tied output group

    def counts(a: int, b1: int, c1: int, out: int) -> tuple[int, int]:
        """(parameters, MACs at 3x8x8): 3x3 convolutions without bias, BatchNorm 2 per channel."""
        params = (9 * 3 * a + 2 * a  # stem
                  + 9 * a * b1 + 2 * b1 + 9 * b1 * a + 2 * a  # stage 0 (identity shortcut)
                  + 9 * a * c1 + 2 * c1 + 9 * c1 * out + 2 * out  # stage 1, stride 2
                  + a * out + 2 * out  # 1x1 shortcut
                  + out * 10 + 10)  # classifier
        macs = (64 * 27 * a + 64 * 9 * a * b1 + 64 * 9 * b1 * a  # 8x8 positions
                + 16 * 9 * a * c1 + 16 * 9 * c1 * out + 16 * a * out  # 4x4 positions
                + out * 10)
        return params, macs

    full_params, full_macs = counts(4, 4, 6, 6)
    kept_params, kept_macs = counts(a, b1, c1, out)
    assert (full_params, full_macs) == (1090, 34428)
    assert count_params(ResNet(3, 10, widths=(4, 6), image_size=8)) == full_params
    assert count_macs(ResNet(3, 10, widths=(4, 6), image_size=8), (3, 8, 8)) == full_macs
    det = to_deterministic(model)
    assert count_params(model) == count_params(det) == kept_params == 434
    assert count_macs(model, (3, 8, 8)) == count_macs(det, (3, 8, 8)) == kept_macs == 14862
    assert compression(model) == pytest.approx(1 - kept_params / full_params)


def test_vit_mac_count_includes_attention_matmuls() -> None:
    model = ViT(8, 4, 1, 10, dim=16, depth=1, heads=4, mlp_dim=24)
    model.gates()["blocks.0.attn.head_gate"].prune(torch.tensor([True, False, False, True]))
    mlp_remove = torch.zeros(24, dtype=torch.bool)
    mlp_remove[:10] = True
    model.gates()["blocks.0.mlp.fc1_gate"].prune(mlp_remove)
    tokens, dim, heads, head_dim, hidden = 2 * 2 + 1, 16, 2, 4, 14
    expected = (
        dim * 4 * (1 * 4 * 4)  # patch embedding: 4 patches x 16 filters x (1x4x4)
        + 3 * tokens * dim * heads * head_dim  # q, k, v projections
        + 2 * heads * tokens * tokens * head_dim  # q @ k^T and attn @ v
        + tokens * heads * head_dim * dim  # output projection
        + 2 * tokens * dim * hidden  # MLP fc1, fc2
        + dim * 10  # classifier
    )
    assert count_macs(model, (1, 8, 8)) == expected


def test_conv_mac_count_respects_stride_padding_and_groups() -> None:
    conv = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2), nn.BatchNorm2d(8))
    # output 8 x 4 x 4 positions, each (4 / 2) * 3 * 3 multiply-accumulates; BN counts 0
    assert count_macs(conv, (4, 8, 8)) == 8 * 4 * 4 * 2 * 9
    assert count_params(conv) == 8 * 2 * 9 + 8 + 2 * 8


def test_compression_is_cached_fast_and_follows_architecture_changes() -> None:
    model = MLP(784, [100] * 7, 10)
    prune_random(model, torch.Generator().manual_seed(0), 0.3)
    first = compression(model)
    analysis = cached_analysis(model)
    times = []
    for i in range(7):
        # a new kept pattern every call, so the cached analysis (not the memo) is timed
        model.gates()[f"fc{i + 1}_gate"].prune(torch.arange(100) == 50 + i)
        t0 = time.perf_counter()
        compression(model)
        times.append(time.perf_counter() - t0)
    assert sorted(times)[3] < 0.02  # median; about a millisecond unloaded
    assert cached_analysis(model) is analysis
    assert compression(model) > first
    model.net.out = nn.Linear(100, 10)  # a new module: the analysis is rebuilt
    compression(model)
    assert cached_analysis(model) is not analysis
    assert compression(MLP(4, 3, 2)) == 0.0


# ---------------------------------------------------------------------- export
@pytest.mark.parametrize("arch", list(ARCHS))
def test_converted_module_scripts_exports_and_round_trips(arch: str) -> None:
    model = pruned_model(arch, "random", seed=5)
    det = to_deterministic(model)
    x = torch.randn(3, *INPUT_SHAPES[arch])
    with torch.no_grad():
        ref = det(x)
        torch.testing.assert_close(torch.jit.script(det)(x), ref)
        # the CPU deployment path: frozen, oneDNN kernels with prepacked weights, fusions
        deployed = torch.jit.optimize_for_inference(torch.jit.script(copy.deepcopy(det).eval()))
        torch.testing.assert_close(deployed(x), ref, rtol=1e-4, atol=1e-5)
        if arch in ("lenet5", "vit"):  # torch.export is slow to start; two architectures suffice
            torch.testing.assert_close(torch.export.export(det, (x,)).module()(x), ref)
    buf = io.BytesIO()
    torch.save(det.state_dict(), buf)
    again = to_deterministic(model)
    with torch.no_grad():
        for p in again.parameters():
            p.add_(1.0)
    buf.seek(0)
    again.load_state_dict(torch.load(buf, weights_only=True))
    with torch.no_grad():
        torch.testing.assert_close(again(x), ref)


@pytest.mark.parametrize("arch", ["lenet5", "resnet", "vit"])
def test_onnx_export(arch: str) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator

    model = pruned_model(arch, "random", seed=6)
    det = to_deterministic(model)
    x = torch.randn(2, *INPUT_SHAPES[arch])
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(det, (x,), buf, dynamo=False, input_names=["x"], output_names=["y"])
    proto = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(proto)
    got = ReferenceEvaluator(proto).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), det(x), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------- shrink
@pytest.mark.parametrize("arch", list(ARCHS))
def test_shrink_keeps_the_posterior_and_can_train(arch: str) -> None:
    model = pruned_model(arch, "random", seed=7)
    small, guide = shrink(model)
    assert type(small) is type(model) and small is not model
    assert guide == small.guide
    x = torch.randn(6, *INPUT_SHAPES[arch], generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(small.predict(x), model.predict(x), rtol=1e-5, atol=1e-6)
    # still Bayesian: the surviving noise posteriors are the original ones
    assert small.noise_layers()
    for name, g in small.noise_layers().items():
        old = model.noise_layers()[name]
        assert g.loc.shape == g.kept.shape == (g.num_structures,)
        assert set(g.loc.tolist()) <= set(old.loc.tolist())
    assert count_params(small) == count_params(model)
    assert count_params(to_deterministic(small)) == count_params(model)
    assert compression(small) <= compression(model)
    y = torch.randint(small.predict(x).shape[-1], (6,))
    result = fit(small, TensorDataset(x, y), epochs=1, batch_size=3, progress=False)
    assert len(result.history) == 1 and torch.isfinite(torch.tensor(result.history[0]["loss"]))


def test_shrink_bayesian_weights() -> None:
    model = randomize(LeNet5(1, 3, 8, weights="gaussian"), torch.Generator().manual_seed(0))
    prune_random(model, torch.Generator().manual_seed(1))
    small, _ = shrink(model)
    conv2 = small.net.conv2
    kept1, kept2 = model.gates()["conv1_gate"].kept, model.gates()["conv2_gate"].kept
    assert conv2.weight_loc.shape == conv2.weight_log_scale.shape == (int(kept2.sum()), int(kept1.sum()), 5, 5)
    torch.testing.assert_close(conv2.weight_log_scale,
                               model.net.conv2.weight_log_scale[kept2][:, kept1])
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(small.predict(x), model.predict(x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(to_deterministic(model)(x), model.predict(x), rtol=1e-5, atol=1e-6)
    # the linked layers still mask their KL with the sliced gates
    assert torch.isfinite(small.kl_divergence())


# ---------------------------------------------------------------------- errors
class _CumsumAfterGate(nn.Module):
    """A hand-gated network (bayesianize puts no gate where nothing can be removed)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 5)
        self.a_gate = MultiplicativeNoise(5)
        self.b = nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(torch.cumsum(self.a_gate(self.a(x)), dim=-1))


class _CumsumOnOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 5)
        self.b = nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cumsum(self.b(torch.relu(self.a(x))), dim=-1)


def test_unsupported_op_on_a_gated_tensor_names_the_op() -> None:
    model = PrunableNet(_CumsumAfterGate())
    with pytest.raises(UnsupportedOpError, match=r"torch\.cumsum.*a_gate"):
        to_deterministic(model, example_input=(4,))
    with pytest.raises(ValueError, match="cumsum"):
        compression(model)


def test_unsupported_op_on_an_ungated_tensor_is_allowed() -> None:
    model = bayesianize(_CumsumOnOutput())
    model.gates()["a_gate"].prune(torch.tensor([True, False, True, False, False]))
    det = to_deterministic(model, example_input=(4,))
    assert det.get_submodule("a").out_features == 3
    x = torch.randn(3, 4)
    with torch.no_grad():
        torch.testing.assert_close(det(x), model.predict(x))


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="model"):
        to_deterministic(nn.Linear(2, 2))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="model"):
        compression(nn.Linear(2, 2))  # type: ignore[arg-type]
    model = make_mlp()
    with pytest.raises(ValueError, match="guide"):
        to_deterministic(model, guide=lambda x, y=None: None)
    with pytest.raises(TypeError, match="example_input"):
        to_deterministic(model, example_input="12")
    with pytest.raises(ValueError, match="input_shape"):
        count_macs(model, (0, 3))
    ops = supported_ops()
    assert "torch.nn.functional.relu" in ops["functions"] and "reshape" in ops["methods"]
    assert "torch.functional.einsum" in ops["functions"]
