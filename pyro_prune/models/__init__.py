"""Pyro models with structure gates: layers, ready networks and :func:`bayesianize`."""

from __future__ import annotations

from pyro_prune.models.base import KLScale, Likelihood, PrunableNet
from pyro_prune.models.bayesian import (
    BayesianConv1d,
    BayesianConv2d,
    BayesianConv3d,
    BayesianLinear,
    bayesian_weights,
    link_output_gates,
    register_bayesian_layer,
)
from pyro_prune.models.bayesianize import bayesianize
from pyro_prune.models.fcn import CNN, FCN, MAPNet, autodelta_init, with_sample_priors
from pyro_prune.models.gate import StructureGate, StructureMask
from pyro_prune.models.layers import GateKind, WeightPrior
from pyro_prune.models.lenet import LeNet5
from pyro_prune.models.mlp import MLP
from pyro_prune.models.noise import MultiplicativeNoise, NoiseMode, StochasticModule, noise_mode
from pyro_prune.models.resnet import BasicBlock, ResNet
from pyro_prune.models.vit import ViT

__all__ = [
    "BayesianConv1d",
    "BayesianConv2d",
    "BayesianConv3d",
    "BayesianLinear",
    "bayesian_weights",
    "link_output_gates",
    "register_bayesian_layer",
    "CNN",
    "FCN",
    "MAPNet",
    "autodelta_init",
    "with_sample_priors",
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
    "BasicBlock",
    "ResNet",
    "ViT",
]
