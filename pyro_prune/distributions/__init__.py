r"""Truncated log-normal and log-uniform distributions of multiplicative noise.

A structure (neuron, conv channel) is multiplied by noise :math:`\theta > 0`. Following
Neklyudov et al. (2017), *Structured Bayesian Pruning via Log-Normal Multiplicative Noise*
(NeurIPS), everything lives in log space, :math:`x = \log\theta \in [A, B]` with
:math:`A = \log a` and :math:`B = \log b` (defaults ``log_low=-20``, ``log_high=0``):

* prior :math:`p(\theta) = \mathrm{LogU}_{[A,B]}`: :math:`x \sim \mathcal U(A, B)`;
* posterior :math:`q(\theta) = \mathrm{LogN}_{[A,B]}(\mu, \sigma^2)`: :math:`x` is
  :math:`\mathcal N(\mu, \sigma^2)` truncated to :math:`[A, B]`.

With :math:`\alpha = (A-\mu)/\sigma`, :math:`\beta = (B-\mu)/\sigma` and
:math:`Z = \Phi(\beta) - \Phi(\alpha)` the closed forms are

.. math::

    \mathrm{KL}(q\,\|\,p) &= \log(B-A) - \log Z - \log\sigma - \tfrac12\log(2\pi e)
        - \frac{\alpha\phi(\alpha) - \beta\phi(\beta)}{2Z},\\
    \mathbb E[\theta^k] &= e^{k\mu + k^2\sigma^2/2}\,
        \frac{\Phi(\beta - k\sigma) - \Phi(\alpha - k\sigma)}{Z}.

Layout: :mod:`~pyro_prune.distributions.special` holds the special functions and the
cancellation-free log-mass primitive every closed form is written around (its docstring has
the numerics); :mod:`~pyro_prune.distributions.truncated_lognormal` and
:mod:`~pyro_prune.distributions.truncated_loguniform` hold one distribution each (on the shared
base :mod:`~pyro_prune.distributions.log_bounded`), and
:mod:`~pyro_prune.distributions.kl` registers their closed-form KL with
:func:`torch.distributions.kl.kl_divergence`.

References: Neklyudov et al. (2017); Wright, Igel & Selvan (2024), *BMRS: Bayesian Model
Reduction for Structured Pruning* (NeurIPS), which uses these distributions for BMRS.
"""

from __future__ import annotations

from pyro_prune.distributions import kl as _kl  # noqa: F401  (registers the closed-form KL)
from pyro_prune.distributions.special import log_diff_ndtr, ndtri_exp
from pyro_prune.distributions.truncated_lognormal import TruncatedLogNormal
from pyro_prune.distributions.truncated_loguniform import TruncatedLogUniform

__all__ = [
    "TruncatedLogNormal",
    "TruncatedLogUniform",
    "log_diff_ndtr",
    "ndtri_exp",
]
