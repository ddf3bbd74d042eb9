"""Ops the structure analysis follows: padding, resizing, in-place activations and residual
adds, ``expand_as``/``view_as``/``reshape_as``, on both tracers (``torch.fx``, and
``torch.export`` for a network with a shape check fx cannot trace).

Each network is written as its authors write it; the test checks that the layers before the
op are gated, and that removing 40% of every gate converts into a smaller network with the
same outputs.
"""

from __future__ import annotations

import warnings

import foreign_networks as foreign
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyro_prune.convert import count_params, shrink, to_deterministic
from pyro_prune.graph import structure_graph
from pyro_prune.models import bayesianize


def _gated_layers(model: nn.Module) -> set[str]:
    """The layers whose rows some gate removes (module paths without the wrapper's prefix)."""
    return {row.removeprefix("module.") for g in structure_graph(model).gates.values() for row in g.rows}


def _prune_and_convert(model: nn.Module, plain: nn.Module, x: Tensor) -> nn.Module:
    for gate in model.gates().values():  # type: ignore[operator]
        n = gate.num_structures
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            gate.prune(torch.arange(n) < max(1, int(0.4 * n)))
    model.eval()
    det = to_deterministic(model, example_input=x[:2])
    with torch.no_grad():
        torch.testing.assert_close(det(x), model.predict(x), rtol=1e-5, atol=1e-5)
    assert count_params(det) < count_params(plain)
    return det


def _weight(det: nn.Module, layer: str) -> Tensor:
    """The weight of ``layer`` in a converted network (wrapped or not)."""
    (w,) = [v for k, v in det.state_dict().items() if k.removeprefix("module.") == f"{layer}.weight"]
    return w


def _run(net: nn.Module, x: Tensor, gated: set[str]) -> nn.Module:
    torch.manual_seed(0)
    model = bayesianize(net.eval(), example_input=x[:2])
    assert gated <= _gated_layers(model), _gated_layers(model)
    return _prune_and_convert(model, net, x)


class _Export(nn.Module):
    """A shape check as authors write them: torch.fx cannot trace it, so torch.export does."""

    def check(self, x: Tensor) -> None:
        if x.shape[-1] % 2:
            raise ValueError("the images need an even width")


# ---------------------------------------------------------------------- padding
class _PaddedConvs(_Export):
    """Two convolutions with an explicit padding between them (TensorFlow-style "same")."""

    def __init__(self, pad: nn.Module | None, mode: str = "constant", export: bool = False) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 8, 3), nn.Conv2d(8, 8, 3)
        self.pad, self.mode, self.export = pad, mode, export
        self.fc = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        if self.export:
            self.check(x)
        h = torch.relu(self.conv1(x))
        h = self.pad(h) if self.pad is not None else F.pad(h, (1, 2, 0, 1), mode=self.mode)
        return self.fc(torch.relu(self.conv2(h)).mean((2, 3)))


@pytest.mark.parametrize("export", [False, True], ids=["fx", "export"])
@pytest.mark.parametrize(("pad", "mode"), [
    (None, "constant"), (None, "reflect"), (None, "replicate"), (None, "circular"),
    (nn.ZeroPad2d((0, 1, 0, 1)), ""), (nn.ConstantPad2d(1, 0.0), ""), (nn.ReflectionPad2d(1), ""),
    (nn.ReplicationPad2d((1, 0, 1, 0)), ""),
], ids=["F.pad-constant", "F.pad-reflect", "F.pad-replicate", "F.pad-circular", "ZeroPad2d",
        "ConstantPad2d-0", "ReflectionPad2d", "ReplicationPad2d"])
def test_a_padding_between_layers_moves_with_their_channels(pad: nn.Module | None, mode: str, export: bool) -> None:
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    det = _run(_PaddedConvs(pad, mode, export), x, {"conv1", "conv2"})
    assert _weight(det, "conv2").shape[1] < 8  # the padded channels went too


def test_a_non_zero_border_belongs_to_no_channel_and_keeps_the_layer_before_it() -> None:
    """A constant border of 1 is not zero where a removed channel is: removing that channel
    would change the next layer's output, so the layer before the padding gets no gate."""
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    net = _PaddedConvs(nn.ConstantPad2d(1, 1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        model = bayesianize(net.eval(), example_input=x[:2])
    assert "conv1" not in _gated_layers(model) and "conv2" in _gated_layers(model)
    _prune_and_convert(model, net, x)


# ---------------------------------------------------------------------- resizing
class _UpsampleSkip(_Export):
    """A decoder step as in a UNet: resize the coarse map, add the skip connection."""

    def __init__(self, module: bool, export: bool) -> None:
        super().__init__()
        self.down, self.mid = nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False) if module else None
        self.out, self.fc = nn.Conv2d(8, 6, 3, padding=1), nn.Linear(6, 3)
        self.export = export

    def forward(self, x: Tensor) -> Tensor:
        if self.export:
            self.check(x)
        h = torch.relu(self.down(x))
        m = torch.relu(self.mid(h))
        m = self.up(m) if self.up is not None else F.interpolate(m, size=x.shape[-2:], mode="nearest")
        return self.fc(torch.relu(self.out(m)).mean((2, 3)))


@pytest.mark.parametrize("export", [False, True], ids=["fx", "export"])
@pytest.mark.parametrize("module", [False, True], ids=["F.interpolate", "nn.Upsample"])
def test_resizing_a_feature_map_moves_with_its_channels(module: bool, export: bool) -> None:
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    _run(_UpsampleSkip(module, export), x, {"down", "mid", "out"})


# ---------------------------------------------------------------------- in place
class _SmallResNet(_Export):
    def __init__(self, export: bool) -> None:
        super().__init__()
        self.stem, self.relu = nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(inplace=True)
        self.layer1, self.layer2 = foreign.BasicBlock(8), foreign.BasicBlock(8)
        self.fc = nn.Linear(8, 3)
        self.export = export

    def forward(self, x: Tensor) -> Tensor:
        if self.export:
            self.check(x)
        x = self.layer2(self.layer1(self.relu(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@pytest.mark.parametrize("export", [False, True], ids=["fx", "export"])
def test_in_place_relus_and_residual_adds_are_followed(export: bool) -> None:
    """``nn.ReLU(inplace=True)`` and ``out += identity``: torch.export writes them as
    ``relu_`` and ``add_``, which before pinned every channel of the network."""
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    _run(_SmallResNet(export), x, {"stem", "layer1.conv1", "layer2.conv1"})


class _InPlaceCalls(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3, self.head = nn.Linear(5, 12), nn.Linear(12, 10), nn.Linear(10, 8), nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu_(self.fc1(x))
        h = F.relu_(self.fc2(h))
        return self.head(self.fc3(h).relu_())


def test_in_place_relu_calls_are_followed_by_fx() -> None:
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    _run(_InPlaceCalls(), x, {"fc1", "fc2", "fc3"})


# ---------------------------------------------------------------------- *_as
def test_the_reference_squeeze_excite_block_prunes_the_channels_it_scales() -> None:
    """``y.expand_as(x)`` and ``view(b, c)`` with ``c`` read from ``x.size()``: the channels
    of the convolutions it scales are gated and sliced (before, they silently got no gate)."""
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    det = _run(foreign.SENet(), x, {"conv1", "conv2", "se1.fc.0", "se2.fc.0"})
    assert _weight(det, "conv2").shape[:2] == (20, 10)


class _AsOps(_Export):
    def __init__(self, export: bool) -> None:
        super().__init__()
        self.conv, self.gate, self.fc = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(1, 8, 3, padding=1), nn.Linear(8, 3)
        self.export = export

    def forward(self, x: Tensor) -> Tensor:
        if self.export:
            self.check(x)
        h = torch.relu(self.conv(x))
        s = torch.sigmoid(self.gate(x)).mean((2, 3), keepdim=True)
        h = (h * s.expand_as(h)).view_as(h)
        return self.fc(h.flatten(2).mean(-1).reshape_as(s.flatten(1)))


@pytest.mark.parametrize("export", [False, True], ids=["fx", "export"])
def test_expand_as_view_as_and_reshape_as_are_followed(export: bool) -> None:
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    _run(_AsOps(export), x, {"conv", "gate"})


# ---------------------------------------------------------------------- indexing by tensors
class _LastStep(_Export):
    """[N, T, F] sequences padded with all-zero steps at the end; the classifier reads the last
    real step (``h[arange(n), last]`` as decoder classifiers pool), or one step picked by
    ``index_select``, or after ``roll`` and ``flip``."""

    def __init__(self, how: str, export: bool) -> None:
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(6, 12), nn.Linear(12, 10), nn.Linear(10, 3)
        self.how, self.export = how, export

    def forward(self, x: Tensor) -> Tensor:
        if self.export:
            self.check(x)
        h = torch.relu(self.fc2(torch.relu(self.fc1(x))))
        if self.how == "getitem":
            last = (x.abs().sum(-1) > 0).sum(1) - 1
            h = h[torch.arange(x.shape[0], device=x.device), last]
        elif self.how == "index_select":
            h = h.index_select(1, torch.tensor([0], device=x.device)).squeeze(1)
        else:
            h = torch.roll(h, 1, dims=1).flip(1)[:, 0]
        return self.head(h)


def _sequences() -> Tensor:
    x = torch.randn(6, 5, 6, generator=torch.Generator().manual_seed(0))
    x[:3, -2:] = 0  # padding steps
    return x


@pytest.mark.parametrize("export", [False, True], ids=["fx", "export"])
@pytest.mark.parametrize("how", ["getitem", "index_select", "roll_flip"])
def test_selecting_steps_by_index_tensors_keeps_the_channels_prunable(how: str, export: bool) -> None:
    """Index tensors along the step axis move no channel: the layer before is gated (before,
    fx failed with an IndexError on ``h[arange(n), last]`` and export left it ungated)."""
    x = _sequences()  # 6 features: an even width for the check
    _run(_LastStep(how, export), x, {"fc1", "fc2"})


class _PickFeatures(nn.Module):
    """Keeps 8 of 12 features by an index buffer: indices into the channel axis."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(5, 12), nn.Linear(8, 10), nn.Linear(10, 3)
        self.register_buffer("idx", torch.tensor([0, 1, 2, 3, 8, 9, 10, 11]))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x))[:, self.idx])))


def test_indices_into_the_channel_axis_keep_those_channels() -> None:
    """The indices refer to the channels before slicing, so the layer they read keeps its
    channels; the rest of the network is gated and converts."""
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    net = _PickFeatures().eval()
    model = bayesianize(net, example_input=x[:2])
    assert _gated_layers(model) == {"fc2"}
    _prune_and_convert(model, net, x)


# ---------------------------------------------------------------------- clamping
class _Clamped(_Export):
    """ReLU6 and a ReLU written with ``clamp``, as in quantisation-friendly mobile code."""

    def __init__(self, export: bool) -> None:
        super().__init__()
        self.conv1, self.conv2, self.conv3 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 3)
        self.export = export

    def forward(self, x: Tensor) -> Tensor:
        if self.export:
            self.check(x)
        h = torch.clamp(self.conv1(x), min=0.0, max=6.0)
        h = self.conv2(h).clamp_min(0)
        h = torch.clip(self.conv3(h), -1.0, 1.0)
        return self.fc(h.mean((2, 3)))


@pytest.mark.parametrize("export", [False, True], ids=["fx", "export"])
def test_clamping_with_numbers_is_an_activation(export: bool) -> None:
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    _run(_Clamped(export), x, {"conv1", "conv2", "conv3"})


def test_a_clamp_that_does_not_hold_zero_folds_its_constant_into_the_next_bias() -> None:
    """``clamp(min=0.5)`` turns a removed (zero) channel into 0.5 whatever the input: the
    next layer's column of it is folded into its bias (``b += 0.5 W[:, c]``), so the rows of
    the layer before go and the converted network still equals the model."""

    class _Floor(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2, self.head = nn.Linear(5, 12), nn.Linear(12, 10), nn.Linear(10, 3)

        def forward(self, x: Tensor) -> Tensor:
            return self.head(torch.relu(self.fc2(self.fc1(x).clamp(min=0.5))))

    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    net = _Floor().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        model = bayesianize(net, example_input=x[:2])
    assert "fc2" in _gated_layers(model)
    det = _prune_and_convert(model, net, x)
    assert _weight(det, "fc1").shape[0] < 12 and _weight(det, "fc2").shape[0] < 10
    assert _weight(det, "fc2").shape[1] == _weight(det, "fc1").shape[0]


# ---------------------------------------------------------------------- constants folded into a bias
class _Exp(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.exp(x) + 1.0


@pytest.mark.parametrize("activation", [nn.Sigmoid, nn.Softplus, nn.Hardsigmoid, _Exp])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_maps_that_move_zero_fold_removed_neurons_into_the_next_bias(activation: type, dtype: torch.dtype) -> None:
    """A removed neuron is 0 after its gate and ``f(0) != 0`` after a sigmoid-like map, the
    same for every input: the next Linear layer's column of it goes into its bias, with or
    without a bias of its own, and every hidden layer shrinks (before, none did)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 12), activation(), nn.Linear(12, 10, bias=False), activation(),
                        nn.Linear(10, 3)).to(dtype).eval()
    x = torch.randn(8, 6, dtype=dtype)
    model = bayesianize(net, example_input=x[:2])
    assert {"0", "2"} <= _gated_layers(model)
    assert all(g.can_shrink for g in structure_graph(model).gates.values())
    det = _prune_and_convert(model, net, x)
    assert _weight(det, "0").shape[0] < 12 and _weight(det, "2").shape == (_weight(det, "2").shape[0], _weight(det, "0").shape[0])
    assert _weight(det, "2").shape[0] < 10 and _weight(det, "4").shape[1] == _weight(det, "2").shape[0]
    assert count_params(det) == count_params(model)


class _TokenMixer(nn.Module):
    """Per-token features through a sigmoid, then a Linear layer over them (``[B, T, F]``)."""

    def __init__(self) -> None:
        super().__init__()
        self.up, self.down, self.head = nn.Linear(4, 16), nn.Linear(16, 8), nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.down(torch.sigmoid(self.up(x)))).mean(1))


def test_a_constant_column_of_token_features_folds_into_the_bias() -> None:
    x = torch.randn(5, 7, 4, generator=torch.Generator().manual_seed(0))
    net = _TokenMixer().eval()
    model = bayesianize(net, example_input=x[:2])
    det = _prune_and_convert(model, net, x)
    assert _weight(det, "up").shape[0] < 16 and _weight(det, "down").shape[1] == _weight(det, "up").shape[0]


class _ConvSigmoid(nn.Module):
    """Conv channels through a sigmoid into a convolution (``conv2``: not folded, its zero
    border makes a constant channel vary) or, padded and flattened, into a Linear layer."""

    def __init__(self, into_conv: bool) -> None:
        super().__init__()
        self.into_conv = into_conv
        self.conv1 = nn.Conv2d(2, 6, 3)
        self.conv2 = nn.Conv2d(6, 4, 3, padding=1)
        self.fc = nn.Linear(6 * 6 * 6 if not into_conv else 4 * 4 * 4, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.sigmoid(self.conv1(x))
        h = self.conv2(h) if self.into_conv else F.pad(h, (1, 1, 1, 1))
        return self.fc(h.flatten(1))


@pytest.mark.parametrize("into_conv", [False, True])
def test_constant_channels_fold_into_a_linear_layer_not_into_a_convolution(into_conv: bool) -> None:
    """Flattened (and zero-padded: border 0, inside 0.5), each column of a removed channel
    holds its own constant and folds into the Linear layer's bias; into a convolution with
    zero padding the channel is not constant there, so ``conv1`` keeps its channels."""
    x = torch.randn(4, 2, 6, 6, generator=torch.Generator().manual_seed(1))
    net = _ConvSigmoid(into_conv).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        model = bayesianize(net, example_input=x[:2])
    det = _prune_and_convert(model, net, x)
    assert (_weight(det, "conv1").shape[0] == 6) is into_conv


# ---------------------------------------------------------------------- transposed convolutions
class _DoubleConv(nn.Sequential):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                         nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class _UNet(nn.Module):
    """A UNet as in common PyTorch code: max-pool down, ``nn.ConvTranspose2d`` up, padding to
    the skip's size, ``torch.cat`` with it."""

    def __init__(self, groups: int = 1) -> None:
        super().__init__()
        self.inc, self.down = _DoubleConv(1, 8), nn.Sequential(nn.MaxPool2d(2), _DoubleConv(8, 16))
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2, groups=groups)
        self.conv, self.outc = _DoubleConv(16, 8), nn.Conv2d(8, 3, 1)

    def forward(self, x: Tensor) -> Tensor:
        x1 = self.inc(x)
        u = self.up(self.down(x1))
        dy, dx = x1.size()[2] - u.size()[2], x1.size()[3] - u.size()[3]
        u = F.pad(u, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.outc(self.conv(torch.cat([x1, u], dim=1))).mean((2, 3))


def test_a_unet_prunes_its_transposed_convolution_and_the_layer_before_it() -> None:
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    det = _run(_UNet(), x, {"up", "down.1.3", "inc.0", "conv.0"})
    assert _weight(det, "up").shape[:2] == (10, 5)  # [in, out, 2, 2]: 16 -> 10 in, 8 -> 5 out


def test_a_grouped_transposed_convolution_keeps_its_channels_and_the_rest_prunes() -> None:
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    net = _UNet(groups=2)
    model = bayesianize(net.eval(), example_input=x[:2])
    assert "up" not in _gated_layers(model) and "inc.0" in _gated_layers(model)
    _prune_and_convert(model, net, x)


class _ClampInPlace(nn.Module):
    """``h.clamp_(min=0.5)`` without assigning its result: fx's graph keeps reading ``h``'s
    node, whose zeros are not the result's."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(5, 12), nn.Linear(12, 10), nn.Linear(10, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(x)
        h.clamp_(min=0.5)
        return self.head(torch.relu(self.fc2(h)))


def test_an_in_place_clamp_that_leaves_out_zero_keeps_the_channels_before_it() -> None:
    """The analysis itself refuses the op (not only the conversion check after it)."""
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    net = _ClampInPlace().eval()
    with pytest.warns(RuntimeWarning, match=r"\['fc1'\] get no gate: their channels reach ops the converter "
                                            r"cannot trace \(\['Tensor\.clamp_"):
        model = bayesianize(net, example_input=x[:2])
    assert _gated_layers(model) == {"fc2"}
    _prune_and_convert(model, net, x)


@pytest.mark.filterwarnings("ignore:pruning would empty")
def test_the_default_recipe_prunes_a_unet_and_converts_it() -> None:
    """``fit`` with ``ContinuousPruning()`` and nothing else (the epochs chosen for the data
    set's size) on the UNet above: its transposed convolution, padding and skip concatenation
    prune, and the converted network equals the model."""
    from torch.utils.data import TensorDataset

    from pyro_prune.inference import ContinuousPruning, fit

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(192, 1, 8, 8, generator=gen)
    y = (x[:, :, :4].mean((1, 2, 3)) > 0).long() + (x[:, :, :, :4].mean((1, 2, 3)) > 0).long()
    torch.manual_seed(0)
    net = _UNet().eval()
    model = bayesianize(net, example_input=x[:2])
    result = fit(model, TensorDataset(x, y), batch_size=32, lr=1e-2, progress=False, seed=0,
                 schedule=ContinuousPruning())
    assert "removed" in str(result.report) and not all(bool(g.kept.all()) for g in model.gates().values())
    model.eval()
    det = to_deterministic(model, example_input=x[:2])
    with torch.no_grad():
        torch.testing.assert_close(det(x), model.predict(x), rtol=1e-5, atol=1e-5)
    assert count_params(det) < count_params(net) // 2


def test_constants_are_computed_as_the_converted_network_runs_dropout() -> None:
    """A model left in training mode: the dropout between the sigmoid and the next layer is
    the identity in the converted network, so the folded constant is ``sigmoid(0)``, not a
    draw of the dropout."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 12), nn.Sigmoid(), nn.Dropout(0.5), nn.Linear(12, 3))
    x = torch.randn(8, 6)
    model = bayesianize(net.eval(), example_input=x[:2])
    model.train()
    for gate in model.gates().values():
        gate.prune(torch.arange(gate.num_structures) < 5)
    det = to_deterministic(model, example_input=x[:2])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(det(x), model.predict(x), rtol=1e-5, atol=1e-5)
    assert _weight(det, "0").shape[0] == 7


def test_a_transformer_with_a_sigmoid_feed_forward_folds_its_removed_neurons() -> None:
    """A tiny Hugging Face BERT configured with ``hidden_act="sigmoid"``: its intermediate
    neurons go through ``sigmoid`` into the output projection, which folds the removed ones
    into its bias; the converted network is smaller and equals the model."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=foreign.VOCAB, hidden_size=16, num_hidden_layers=1,
                                  num_attention_heads=4, intermediate_size=32, hidden_act="sigmoid",
                                  max_position_embeddings=16, num_labels=3)
    torch.manual_seed(0)
    net = transformers.BertForSequenceClassification(cfg).eval()
    ids = foreign.token_ids(6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        model = bayesianize(net, example_input=ids[:2])
    ffn = "bert.encoder.layer.0.intermediate.dense"
    assert ffn in _gated_layers(model)
    det = _prune_and_convert(model, net, ids)
    assert _weight(det, ffn).shape[0] < 32
    assert _weight(det, "bert.encoder.layer.0.output.dense").shape[1] == _weight(det, ffn).shape[0]


class _SigmoidClassifier(nn.Module):
    """An MLP classifier with sigmoid hidden units, as an author writes one."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(10, 48)
        self.act = nn.Sigmoid()
        self.out = nn.Linear(48, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.act(self.hidden(x)))


def test_the_default_recipe_prunes_a_sigmoid_network_and_converts_it() -> None:
    """``fit`` with ``ContinuousPruning()`` and nothing else on a sigmoid MLP: the neurons it
    removes leave the converted network (before, none could), which equals the model."""
    from torch.utils.data import TensorDataset

    from pyro_prune.inference import ContinuousPruning, fit

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(384, 10, generator=gen)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    torch.manual_seed(0)
    net = _SigmoidClassifier().eval()
    model = bayesianize(net, example_input=x[:2])
    fit(model, TensorDataset(x, y), progress=False, seed=0, schedule=ContinuousPruning())
    kept = int(model.gates()["hidden_gate"].kept.sum())
    assert kept < 48
    model.eval()
    det = to_deterministic(model, example_input=x[:2])
    with torch.no_grad():
        torch.testing.assert_close(det(x), model.predict(x), rtol=1e-5, atol=1e-5)
    assert _weight(det, "hidden").shape[0] == kept
    assert count_params(det) == count_params(model) < count_params(net)


# ---------------------------------------------------------------------- einsum
class _EinsumAttention(_Export):
    """Multi-head self-attention with ``einsum`` as research code writes it (spaces, heads on
    their own axis, a fused qkv projection), a feed-forward block and a mean-pooled head."""

    def __init__(self, dim: int = 16, heads: int = 4, export: bool = False) -> None:
        super().__init__()
        self.heads, self.export = heads, export
        self.to_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim)
        self.ff = nn.Sequential(nn.Linear(dim, 32), nn.GELU(), nn.Linear(32, dim))
        self.head = nn.Linear(dim, 3)

    def forward(self, x: Tensor) -> Tensor:
        if self.export:
            self.check(x)
        b, n, d = x.shape
        q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2) for t in self.to_qkv(x).chunk(3, dim=-1))
        dots = torch.einsum("b h i d, b h j d -> b h i j", q, k) * q.shape[-1] ** -0.5
        out = torch.einsum("b h i j, b h j d -> b i h d", dots.softmax(dim=-1), v)
        x = x + self.to_out(out.reshape(b, n, d))
        x = x + self.ff(x)
        return self.head(x.mean(1))


@pytest.mark.parametrize("export", [False, True], ids=["fx", "export"])
def test_einsum_attention_prunes_its_heads_and_feed_forward(export: bool) -> None:
    """The heads reach the output projection through two einsums: they are gated (q, k and
    v rows go with their head) and the converted network is smaller and equal."""
    x = torch.randn(6, 4, 16, generator=torch.Generator().manual_seed(0))
    net = _EinsumAttention(export=export)
    model = bayesianize(net.eval(), example_input=x[:2])
    assert {"to_qkv", "to_out", "ff.0", "ff.2"} <= _gated_layers(model), _gated_layers(model)
    assert any("head" in name for name in model.gates())
    det = _prune_and_convert(model, net, x)
    assert _weight(det, "to_qkv").shape[0] < 3 * 16 and _weight(det, "to_out").shape[1] < 16


# ---------------------------------------------------------------------- unflatten
class _HandWrittenAttention(_Export):
    """Multi-head self-attention as a ViT written by hand: ``q @ k.transpose(-2, -1)``, sizes
    from the input and the head count, the output projection after ``reshape(b, n, -1)``."""

    def __init__(self, dim: int = 16, heads: int = 4, export: bool = False, width_from_input: bool = False) -> None:
        super().__init__()
        self.heads, self.export, self.width_from_input = heads, export, width_from_input
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.fc = nn.Linear(dim, 3)

    def forward(self, x: Tensor) -> Tensor:
        if self.export:
            self.check(x)
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = self.scores(q, k).softmax(dim=-1)
        width = d if self.width_from_input else -1  # Swin's reshape(B_, N, C), C read from the input
        x = x + self.proj((attn @ v).transpose(1, 2).reshape(b, n, width))
        return self.fc(x.mean(1))

    def scores(self, q: Tensor, k: Tensor) -> Tensor:
        """The attention logits ``[batch, heads, queries, keys]``."""
        return q @ k.transpose(-2, -1) * q.size(-1) ** -0.5


@pytest.mark.parametrize("export", [False, True], ids=["fx", "export"])
@pytest.mark.parametrize("width_from_input", [False, True], ids=["minus_one", "width_from_input"])
def test_hand_written_attention_prunes_its_heads_on_both_tracers(export: bool, width_from_input: bool) -> None:
    """The head gate's ``unflatten(-1, (heads, -1))`` counts its axis in its input: traced by
    fx its sizes are rewritten from the input's last axis (before: an IndexError). The
    output's ``reshape(b, n, C)`` with ``C`` read from the block's input (not sliced with the
    heads) becomes ``reshape(b, n, -1)`` (before: left out, 'use -1 there')."""
    x = torch.randn(6, 4, 16, generator=torch.Generator().manual_seed(0))
    net = _HandWrittenAttention(export=export, width_from_input=width_from_input)
    model = bayesianize(net.eval(), example_input=x[:2])
    assert {"qkv", "proj"} <= _gated_layers(model) and any("head" in name for name in model.gates())
    det = _prune_and_convert(model, net, x)
    assert _weight(det, "qkv").shape[0] < 3 * 16 and _weight(det, "proj").shape[1] < 16


@pytest.mark.parametrize("dim", [1, -1])
def test_an_unflatten_module_takes_the_new_sizes(dim: int) -> None:
    """``nn.Unflatten`` after a gated layer: its sizes follow the kept neurons, its ``dim``
    counted in its input (negative too)."""
    net = nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Unflatten(dim, (12, 1)), nn.Flatten(), nn.Linear(12, 3))
    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(0))
    det = _run(net, x, {"0"})
    (unflatten,) = [m for m in det.modules() if isinstance(m, nn.Unflatten)]
    assert unflatten.unflattened_size == (12 - int(0.4 * 12), 1)


# ---------------------------------------------------------------------- per-head bias
class _RelativeBiasAttention(_HandWrittenAttention):
    """Windowed attention with a learned relative-position bias per head, gathered from a
    table by a buffer of indices and added to the scores (as Swin writes it)."""

    def __init__(self, dim: int = 16, heads: int = 4, window: int = 4, export: bool = False) -> None:
        super().__init__(dim, heads, export)
        self.table = nn.Parameter(torch.randn(2 * window - 1, heads, generator=torch.Generator().manual_seed(1)))
        coords = torch.arange(window)
        self.register_buffer("index", coords[:, None] - coords[None, :] + window - 1, persistent=False)

    def scores(self, q: Tensor, k: Tensor) -> Tensor:
        n = q.size(-2)
        bias = self.table[self.index.reshape(-1)].reshape(n, n, -1).permute(2, 0, 1)
        return super().scores(q, k) + bias.unsqueeze(0)


@pytest.mark.parametrize("export", [False, True], ids=["fx", "export"])
def test_a_per_head_bias_table_follows_the_heads(export: bool) -> None:
    """The scores add a bias per head gathered from a table: the converted network selects
    the kept heads' bias before the add (the table keeps its columns), and so does the
    smaller Bayesian model (before: the heads got no gate, 'does not run')."""
    x = torch.randn(6, 4, 16, generator=torch.Generator().manual_seed(0))
    net = _RelativeBiasAttention(export=export)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no gate left out
        model = bayesianize(net.eval(), example_input=x[:2])
    assert {"qkv", "proj"} <= _gated_layers(model) and any("head" in name for name in model.gates())
    det = _prune_and_convert(model, net, x)
    assert _weight(det, "qkv").shape[0] < 3 * 16 and _weight(det, "proj").shape[1] < 16
    assert any(n.target is torch.index_select for n in det.graph.nodes)
    small, _ = shrink(model, example_input=x[:2])
    with torch.no_grad():
        torch.testing.assert_close(small.predict(x), model.predict(x), rtol=1e-5, atol=1e-5)
