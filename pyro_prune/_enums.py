"""The package's enums shared across stages, and turning user arguments into enums with one
error message for all."""

from __future__ import annotations

import enum
from typing import TypeVar

__all__ = ["Engine", "HessianStructure", "parse_enum"]

E = TypeVar("E", bound=enum.Enum)


class Engine(enum.Enum):
    """Plain torch or Pyro: how :func:`~pyro_prune.inference.fit` computes the negative ELBO
    and how :mod:`pyro_prune.predictive` draws from the posterior predictive.

    The same switch in both stages (the predictive called it ``Method`` before; that name
    still imports, with a ``DeprecationWarning``, for one release).
    """

    #: ``FAST`` with the model's own (or its fitted) guide, ``PYRO`` with any other guide
    AUTO = "auto"
    #: plain torch: per-example reparameterised draws of the noise (fit), local
    #: reparameterisation with one draw per input (predictive)
    FAST = "fast"
    #: Pyro: ``TraceMeanField_ELBO`` on the model and its own guide, ``Trace_ELBO`` on a custom
    #: guide (fit, :func:`~pyro_prune.inference.elbo.pyro_elbo_loss`),
    #: :class:`pyro.infer.Predictive` with one weight draw for all inputs (predictive)
    PYRO = "pyro"


class HessianStructure(enum.Enum):
    """Which approximation of the curvature ``H`` enters the Laplace evidence's
    ``log det(H + I/s^2)`` (:mod:`pyro_prune.laplace`, and Bayes-factor pruning's
    ``hessian=``)."""

    #: the diagonal of the GGN
    DIAG = "diag"
    #: Kronecker-factored GGN (K-FAC) per Linear / Conv2d weight, the rest diagonal
    KRON = "kron"
    #: the whole GGN (d x d: small networks only)
    FULL = "full"


def parse_enum(kind: type[E], value: object, arg: str) -> E:
    """``kind(value)``, or a ``ValueError`` naming ``arg`` and the accepted values."""
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"{arg} must be one of {[m.value for m in kind]}, got {value!r}") from None
