"""LeNet-5 with a gate on every conv channel and hidden neuron."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from pyro_prune._checks import check_counts
from pyro_prune.models.base import Likelihood, PrunableNet
from pyro_prune.models.layers import GateKind, WeightPrior, make_conv2d, make_gate, make_linear

__all__ = ["LeNet5"]


class LeNet5(PrunableNet):
    """LeNet-5: two 5x5 conv layers (6 and 16 filters) with ReLU and 2x2 max-pool, then
    fully connected 120 -> 84 -> classes; a gate on every conv channel and hidden neuron.

    The first convolution pads by 2 (so 28x28 inputs keep their size, as in the classic
    network on MNIST); the second pads by 2 only when its input is smaller than 10x10 (the
    8x8 digits), so that every image size from 8 up works. The flattened size is
    computed from ``image_size``.

    Each convolution's gate sits after its ReLU and max-pool, on a quarter of the conv
    output's elements. It is the same model as a gate between the convolution and its
    ReLU: a gate multiplies channel ``c`` of example ``n`` by ``theta_nc >= 0`` (a positive
    noise draw or posterior mean, times the 0/1 ``kept`` mask), and ReLU and max-pool commute
    with a non-negative per-channel factor, ``pool(relu(theta x)) = theta pool(relu(x))``
    (exactly in floating point too: multiplying by a positive number preserves order and
    sign). The noise products and their gradients, the largest cost of a training step
    after the convolutions, then run on ``[N, 6, 14, 14]`` and ``[N, 16, 5, 5]`` instead of
    ``[N, 6, 28, 28]`` and ``[N, 16, 10, 10]`` (28x28 inputs).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 28,
        *,
        likelihood: Likelihood | str = Likelihood.CATEGORICAL,
        weights: WeightPrior | str = WeightPrior.POINT,
        gate: GateKind | str = GateKind.NOISE,
        prior_scale: float = 1.0,
        num_data: int | None = None,
        **noise_kwargs: float,
    ) -> None:
        check_counts(in_channels=in_channels, num_classes=num_classes, image_size=image_size)
        if image_size < 8:
            raise ValueError(f"image_size must be >= 8 for LeNet5, got {image_size}")
        after_pool1 = image_size // 2
        pad2 = 2 if after_pool1 < 10 else 0
        after_pool2 = (after_pool1 + 2 * pad2 - 4) // 2
        if after_pool2 < 1:
            raise ValueError(f"image_size={image_size} is too small for LeNet5")
        flat = 16 * after_pool2 * after_pool2
        kw = {"prior_scale": prior_scale}
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            conv1=make_conv2d(in_channels, 6, 5, weights, padding=2, **kw),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv1_gate=make_gate(6, 1, gate, **noise_kwargs),
            conv2=make_conv2d(6, 16, 5, weights, padding=pad2, **kw),
            relu2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),
            conv2_gate=make_gate(16, 1, gate, **noise_kwargs),
            flatten=nn.Flatten(),
            fc1=make_linear(flat, 120, weights, **kw),
            fc1_gate=make_gate(120, -1, gate, **noise_kwargs),
            relu3=nn.ReLU(),
            fc2=make_linear(120, 84, weights, **kw),
            fc2_gate=make_gate(84, -1, gate, **noise_kwargs),
            relu4=nn.ReLU(),
            out=make_linear(84, num_classes, weights, **kw),
        )
        super().__init__(nn.Sequential(layers), likelihood=likelihood, num_data=num_data)
        self.record_config((in_channels, image_size, image_size), in_channels=in_channels,
                           num_classes=num_classes, image_size=image_size, likelihood=self.likelihood,
                           weights=WeightPrior(weights), gate=GateKind(gate), prior_scale=prior_scale,
                           **noise_kwargs)
