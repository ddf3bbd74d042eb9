"""Building blocks shared by the ready networks: weight layers and structure gates.

A ready network is an ``nn.Sequential`` of named layers in which a *gate* follows every
layer whose output structures may be pruned. The gate is
:class:`~pyro_prune.models.noise.MultiplicativeNoise` (BMRS and its baselines) or a
deterministic :class:`~pyro_prune.models.gate.StructureMask` (pruning a Bayesian network
neuron by neuron). Weights are point estimates or, with ``weights="gaussian"``, Bayesian
with a Gaussian prior (:mod:`pyro_prune.models.bayesian`).
"""

from __future__ import annotations

import difflib
import enum
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from pyro_prune._enums import parse_enum
from pyro_prune.models.gate import StructureGate, StructureMask
from pyro_prune.models.noise import MultiplicativeNoise

__all__ = ["GateKind", "WeightPrior", "check_noise_options", "make_conv2d", "make_gate", "make_linear"]


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


def noise_option_names() -> tuple[str, ...]:
    """The keyword options of :class:`~pyro_prune.models.noise.MultiplicativeNoise` a network
    constructor passes on to its gates (``init_loc``, ``log_low``, ...)."""
    params = inspect.signature(MultiplicativeNoise.__init__).parameters.values()
    return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


def check_noise_options(gate: GateKind | str, options: Mapping[str, Any],
                        own: Sequence[str] = ()) -> GateKind:
    """Check the gate options a network constructor was given before anything is built.

    Raises:
        TypeError: a name that is not an option of
            :class:`~pyro_prune.models.noise.MultiplicativeNoise` (with the closest option,
            or among ``own``, the caller's own keywords: ``example_inputs`` for
            ``bayesianize``'s ``example_input``), or noise options given with ``gate="mask"``,
            whose deterministic gates would ignore them.
    """
    kind = parse_enum(GateKind, gate, "gate")
    names = noise_option_names()
    for key in options:
        if key not in names:
            close = difflib.get_close_matches(key, [*names, *own], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(f"unknown option {key!r}{hint}; the noise gates take {', '.join(names)}")
    if options and kind is GateKind.MASK:
        raise TypeError(f"noise options ({', '.join(options)}) given with gate='mask', whose "
                        "deterministic gates take none")
    return kind


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
    kind = check_noise_options(gate, noise_kwargs)
    if kind is GateKind.NOISE:
        return MultiplicativeNoise(num_structures, dim, **noise_kwargs)
    return StructureMask(num_structures, dim)
