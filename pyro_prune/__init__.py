"""pyro_prune: Bayesian pruning of neural networks on Pyro."""

from __future__ import annotations

__version__ = "0.1.0"
