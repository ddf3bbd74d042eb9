"""Pyro models with structure gates: layers, ready networks and :func:`bayesianize`."""

from __future__ import annotations

from pyro_prune.models.base import KLScale, Likelihood, PrunableNet
from pyro_prune.models.bayesianize import bayesianize
from pyro_prune.models.gate import StructureGate, StructureMask
from pyro_prune.models.layers import GateKind, WeightPrior
from pyro_prune.models.lenet import LeNet5
from pyro_prune.models.mlp import MLP
from pyro_prune.models.noise import MultiplicativeNoise, NoiseMode, StochasticModule, noise_mode

__all__ = [
    "GateKind",
    "KLScale",
    "LeNet5",
    "Likelihood",
    "MLP",
    "MultiplicativeNoise",
    "NoiseMode",
    "PrunableNet",
    "StochasticModule",
    "StructureGate",
    "StructureMask",
    "WeightPrior",
    "bayesianize",
    "noise_mode",
]
