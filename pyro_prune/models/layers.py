"""Building blocks shared by the ready networks: weight layers and structure gates.

A ready network is an ``nn.Sequential`` of named layers in which a *gate* follows every
layer whose output structures may be pruned. The gate is
:class:`~pyro_prune.models.noise.MultiplicativeNoise` (BMRS and its baselines) or a
deterministic :class:`~pyro_prune.models.gate.StructureMask` (pruning a Bayesian network
neuron by neuron). Weights are point estimates or, with ``weights="gaussian"``, Bayesian
with a Gaussian prior (:mod:`pyro_prune.models.bayesian`).
"""

from __future__ import annotations

import enum

from torch import nn

from pyro_prune._enums import parse_enum
from pyro_prune.models.gate import StructureGate, StructureMask
from pyro_prune.models.noise import MultiplicativeNoise

__all__ = ["GateKind", "WeightPrior", "make_conv2d", "make_gate", "make_linear"]


class WeightPrior(enum.Enum):
    """How the weights of a ready network are treated."""

    #: point estimates learned by SVI (maximum a posteriori under a flat prior)
    POINT = "point"
    #: Gaussian prior N(0, prior_scale^2) on every weight and bias, mean-field Normal guide
    GAUSSIAN = "gaussian"


class GateKind(enum.Enum):
    """What follows a prunable layer."""

    #: log-normal multiplicative noise with a log-uniform prior (Neklyudov et al. 2017)
    NOISE = "noise"
    #: a deterministic keep/remove mask
    MASK = "mask"




def make_linear(
    in_features: int, out_features: int, weights: WeightPrior | str = WeightPrior.POINT, *, prior_scale: float = 1.0
) -> nn.Module:
    """A Linear layer with point or Gaussian weights."""
    kind = parse_enum(WeightPrior, weights, "weights")
    if kind is WeightPrior.POINT:
        return nn.Linear(in_features, out_features)
    from pyro_prune.models.bayesian import BayesianLinear

    return BayesianLinear(in_features, out_features, prior_scale=prior_scale)


def make_conv2d(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    weights: WeightPrior | str = WeightPrior.POINT,
    *,
    padding: int = 0,
    prior_scale: float = 1.0,
) -> nn.Module:
    """A Conv2d layer with point or Gaussian weights."""
    kind = parse_enum(WeightPrior, weights, "weights")
    if kind is WeightPrior.POINT:
        return nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding)
    from pyro_prune.models.bayesian import BayesianConv2d

    return BayesianConv2d(in_channels, out_channels, kernel_size, padding=padding, prior_scale=prior_scale)


def make_gate(num_structures: int, dim: int, gate: GateKind | str = GateKind.NOISE, **noise_kwargs: float) -> StructureGate:
    """The gate that follows a prunable layer of ``num_structures`` outputs along ``dim``."""
    kind = parse_enum(GateKind, gate, "gate")
    if kind is GateKind.NOISE:
        return MultiplicativeNoise(num_structures, dim, **noise_kwargs)
    return StructureMask(num_structures, dim)
