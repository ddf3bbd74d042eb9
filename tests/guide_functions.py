"""Hand-written Pyro guides (plain functions, not autoguides) for the tests of custom guides."""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.transforms import AffineTransform, SigmoidTransform


def logit_normal_noise_guide(net: torch.nn.Module) -> Callable[..., None]:
    """A guide of ``net``'s noise sites, Gaussian in the logit of theta, reading one
    ``pyro.param`` per gated layer (``<site>.u_loc``, starting at 0)."""
    layers = list(net.noise_layers().values())

    def guide(x, y=None):
        for layer in layers:
            low, high = math.exp(layer.log_low), math.exp(layer.log_high)
            loc = pyro.param(f"{layer.site_name}.u_loc", torch.zeros(layer.num_structures))
            with pyro.plate(f"{layer.site_name}_plate", layer.num_structures):
                pyro.sample(layer.site_name, dist.TransformedDistribution(
                    dist.Normal(loc, 0.1), [SigmoidTransform(), AffineTransform(low, high - low)]))

    return guide
