"""The layer registry: recognition by isinstance, register_layer, slicing, widths."""

from __future__ import annotations

import pytest
import torch
from pyro.nn import PyroModule
from torch import nn

from pyro_prune.convert import (
    LayerRole,
    count_params,
    layer_slicer,
    layer_widths,
    register_layer,
    resize_layers,
    to_deterministic,
)
from pyro_prune.convert.layers import registered_layers, slice_layer_
from pyro_prune.models import bayesianize


class _ScaledLinear(nn.Linear):
    """A subclass, as libraries write them (no registration needed)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2.0 * super().forward(x)


class _Dense(nn.Module):
    """A layer of its own: weight stored [in, out]."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.n_in, self.n_out = n_in, n_out
        self.w = nn.Parameter(torch.randn(n_in, n_out) / n_in**0.5)
        self.b = nn.Parameter(torch.randn(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w + self.b


@pytest.mark.parametrize("layer", [nn.Linear(3, 4), _ScaledLinear(3, 4), PyroModule[nn.Linear](3, 4),
                                   nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4)])
def test_layers_are_recognised_through_their_class_hierarchy(layer: nn.Module) -> None:
    slicer = layer_slicer(layer)
    assert slicer is not None
    assert slicer.num_out(layer) == 4
    assert slicer.role is (LayerRole.PER_CHANNEL if isinstance(layer, nn.BatchNorm2d) else LayerRole.PRODUCER)
    assert layer_slicer(nn.ReLU()) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_slicing_keeps_the_selected_rows_and_columns(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    layer = nn.Linear(5, 6).to(dtype)
    w, b = layer.weight.detach().clone(), layer.bias.detach().clone()
    rows, cols = torch.tensor([0, 2, 5]), torch.tensor([1, 4])
    scale = torch.tensor([2.0, 3.0, 4.0], dtype=dtype)
    slice_layer_(layer, cols, rows, row_scale=torch.ones(6, dtype=dtype).index_copy(0, rows, scale))
    assert (layer.in_features, layer.out_features) == (2, 3)
    torch.testing.assert_close(layer.weight, w[rows][:, cols] * scale[:, None])
    torch.testing.assert_close(layer.bias, b[rows] * scale)


@pytest.mark.parametrize("make", [lambda: nn.ConvTranspose1d(5, 6, 3), lambda: nn.ConvTranspose2d(5, 6, 2, stride=2)],
                         ids=["ConvTranspose1d", "ConvTranspose2d"])
def test_a_transposed_convolution_is_sliced_on_its_weight_s_second_axis(make) -> None:
    """Its weight is ``[in, out, *kernel]``: output channels are its second axis."""
    torch.manual_seed(0)
    layer = make()
    x = torch.randn(2, 5, *([4] * (layer.weight.dim() - 2)))
    rows, cols = torch.tensor([0, 2, 5]), torch.tensor([1, 4])
    want = layer(x * torch.zeros(5).index_fill(0, cols, 1.0).reshape(1, 5, *([1] * (x.dim() - 2))))[:, rows]
    slice_layer_(layer, cols, rows)
    assert (layer.in_channels, layer.out_channels) == (2, 3)
    torch.testing.assert_close(layer(x[:, cols]), want)


def test_register_layer_teaches_bayesianize_and_the_converter_a_custom_layer() -> None:
    register_layer(_Dense, out_axis=-1, tensors={"w": (1, 0), "b": (0, None)}, out_size="n_out",
                   in_size="n_in", scaled=("w", "b"))
    assert _Dense in registered_layers()
    torch.manual_seed(0)
    net = nn.Sequential(_Dense(5, 12), nn.ReLU(), _Dense(12, 7), nn.Tanh(), _Dense(7, 3))
    model = bayesianize(net, example_input=torch.randn(2, 5))
    assert set(model.gates()) == {"0_gate", "2_gate"}
    model.gates()["0_gate"].prune(torch.arange(12) < 5)
    model.gates()["2_gate"].prune(torch.arange(7) == 3)
    model.eval()
    det = to_deterministic(model)
    assert det.get_submodule("0").w.shape == (5, 7) and det.get_submodule("2").w.shape == (7, 6)
    assert count_params(det) == 5 * 7 + 7 + 7 * 6 + 6 + 6 * 3 + 3
    x = torch.randn(9, 5)
    with torch.no_grad():
        torch.testing.assert_close(det(x), model.predict(x))


def test_register_layer_rejects_bad_specifications() -> None:
    with pytest.raises(TypeError, match="layer_type"):
        register_layer(int, out_axis=-1, out_size="n")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tensors"):
        register_layer(_Dense, out_axis=-1, out_size="n_out", tensors={"w": (1, 0, 2)})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="out_axis"):
        register_layer(_Dense, out_axis="last", out_size="n_out")  # type: ignore[arg-type]


def test_widths_rebuild_a_pruned_architecture_before_loading_its_weights() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 2))
    model = bayesianize(net, example_input=torch.randn(2, 6))
    model.gates()["0_gate"].prune(torch.arange(10) % 3 == 0)
    model.eval()
    det = to_deterministic(model)
    widths = layer_widths(det)
    assert widths["0"] == [6, 6] and widths["2"] == [8, 6]
    fresh = resize_layers(nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 8), nn.ReLU(),
                                        nn.Linear(8, 2)), widths)
    fresh.load_state_dict(det.state_dict())
    x = torch.randn(4, 6)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), det(x))
    with pytest.raises(ValueError, match="grow"):
        resize_layers(fresh, {"0": [20, 6]})
