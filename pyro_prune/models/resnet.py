"""A small ResNet (BasicBlocks with BatchNorm) with a gate after every BatchNorm.

He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016), in the CIFAR
layout: a 3x3 stem, stages of :class:`BasicBlock` s (the first block of every later stage
downsamples by stride 2 and has a 1x1 convolution + BatchNorm shortcut), global average
pooling and a Linear classifier.

Every convolution is followed by a BatchNorm and the BatchNorm by a structure gate over
its channels (multiplicative noise by default): a gate before BatchNorm would be normalised
away. The gates on the two sides of each residual add (the block's second BatchNorm, and the
shortcut's BatchNorm or the previous block's output) select the same channels of the
residual stream; the conversion (:mod:`pyro_prune.convert`) ties them, so a residual channel
is physically removed only when every gate feeding the add removed it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor, nn

from pyro_prune._checks import check_count, check_counts
from pyro_prune._enums import parse_enum
from pyro_prune.models.base import Likelihood, PrunableNet
from pyro_prune.models.layers import GateKind, WeightPrior, make_gate, make_linear

__all__ = ["BasicBlock", "ResNet"]


def _conv(in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int,
          weights: WeightPrior, prior_scale: float) -> nn.Module:
    """A bias-free convolution (the BatchNorm after it has the bias), point or Bayesian."""
    if weights is WeightPrior.POINT:
        return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
    from pyro_prune.models.bayesian import BayesianConv2d

    return BayesianConv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                          bias=False, prior_scale=prior_scale)


class BasicBlock(nn.Module):
    """``relu(gate2(bn2(conv2(relu(gate1(bn1(conv1(x))))))) + shortcut(x))``.

    ``shortcut`` is the identity, or ``gate(bn(conv1x1(x)))`` when the block changes the
    width or downsamples. Each gate's ``producer_name`` (the convolution whose filters it
    selects) is read from the structure graph.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, *,
                 weights: WeightPrior = WeightPrior.POINT, gate: GateKind = GateKind.NOISE,
                 prior_scale: float = 1.0, noise_kwargs: dict | None = None) -> None:
        super().__init__()
        kw = noise_kwargs or {}
        self.conv1 = _conv(in_channels, out_channels, 3, stride, 1, weights, prior_scale)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn1_gate = make_gate(out_channels, 1, gate, **kw)
        self.relu1 = nn.ReLU()
        self.conv2 = _conv(out_channels, out_channels, 3, 1, 1, weights, prior_scale)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.bn2_gate = make_gate(out_channels, 1, gate, **kw)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(OrderedDict(
                conv=_conv(in_channels, out_channels, 1, stride, 0, weights, prior_scale),
                bn=nn.BatchNorm2d(out_channels),
                bn_gate=make_gate(out_channels, 1, gate, **kw),
            ))
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1_gate(self.bn1(self.conv1(x))))
        out = self.bn2_gate(self.bn2(self.conv2(out)))
        return self.relu2(out + self.shortcut(x))


class _ResNetBackbone(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, widths: Sequence[int],
                 blocks_per_stage: int, *, weights: WeightPrior, gate: GateKind,
                 prior_scale: float, noise_kwargs: dict) -> None:
        super().__init__()
        self.stem_conv = _conv(in_channels, widths[0], 3, 1, 1, weights, prior_scale)
        self.stem_bn = nn.BatchNorm2d(widths[0])
        self.stem_gate = make_gate(widths[0], 1, gate, **noise_kwargs)
        self.stem_relu = nn.ReLU()
        stages = []
        prev = widths[0]
        for i, width in enumerate(widths):
            blocks = []
            for j in range(blocks_per_stage):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(prev, width, stride, weights=weights, gate=gate,
                                         prior_scale=prior_scale, noise_kwargs=noise_kwargs))
                prev = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = make_linear(prev, num_classes, weights, prior_scale=prior_scale)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem_relu(self.stem_gate(self.stem_bn(self.stem_conv(x))))
        x = self.stages(x)
        return self.fc(self.flatten(self.pool(x)))


class ResNet(PrunableNet):
    """A small CIFAR-style ResNet of BasicBlocks with a gate after every BatchNorm.

    ``ResNet(3, 10, widths=(16, 32, 64), blocks_per_stage=1)`` has a 16-channel stem, three
    stages of one block each (16, 32 and 64 channels; stride 2 and a 1x1 shortcut in the
    last two) and 10 classes. Module paths: ``stem_conv``/``stem_bn``/``stem_gate``,
    ``stages.<i>.<j>.{conv1,bn1,bn1_gate,conv2,bn2,bn2_gate,shortcut.{conv,bn,bn_gate}}``,
    ``fc``. Each gate's ``producer_name`` is the convolution whose filters it selects.

    Args:
        in_channels, num_classes: image channels and number of classes.
        widths: channels of the stem / of each stage.
        blocks_per_stage: BasicBlocks per stage.
        image_size: side of the (square) input images, used for ``input_shape`` (any size
            works: the network pools globally).
        likelihood, weights, gate, prior_scale, num_data, noise_kwargs: as in
            :class:`~pyro_prune.models.MLP` (``weights="gaussian"`` makes every convolution
            and the classifier Bayesian).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        widths: Sequence[int] = (16, 32, 64),
        blocks_per_stage: int = 1,
        *,
        image_size: int = 32,
        likelihood: Likelihood | str = Likelihood.CATEGORICAL,
        weights: WeightPrior | str = WeightPrior.POINT,
        gate: GateKind | str = GateKind.NOISE,
        prior_scale: float = 1.0,
        num_data: int | None = None,
        **noise_kwargs: float,
    ) -> None:
        check_counts(in_channels=in_channels, num_classes=num_classes,
                     blocks_per_stage=blocks_per_stage, image_size=image_size)
        if isinstance(widths, (int, str)) or len(list(widths)) == 0:
            raise ValueError(f"widths must be a non-empty sequence of positive ints, got {widths!r}")
        widths = [check_count(w, "widths") for w in widths]
        weights_kind = parse_enum(WeightPrior, weights, "weights")
        gate_kind = parse_enum(GateKind, gate, "gate")
        backbone = _ResNetBackbone(in_channels, num_classes, widths, blocks_per_stage,
                                   weights=weights_kind, gate=gate_kind, prior_scale=prior_scale,
                                   noise_kwargs=dict(noise_kwargs))
        super().__init__(backbone, likelihood=likelihood, num_data=num_data)
        self.record_config((in_channels, image_size, image_size), in_channels=in_channels,
                           num_classes=num_classes, widths=widths, blocks_per_stage=blocks_per_stage,
                           image_size=image_size, likelihood=self.likelihood, weights=weights_kind,
                           gate=gate_kind, prior_scale=prior_scale, **noise_kwargs)
