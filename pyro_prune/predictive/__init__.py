"""The predictive check (the package's modules follow in the next commit)."""

from pyro_prune.predictive.draws import *  # noqa: F403
from pyro_prune.predictive.draws import __all__  # noqa: F401
