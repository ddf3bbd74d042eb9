r"""Laplace evidence of a deterministic network, and threshold-free BMR from it.

For a network at its MAP weights :math:`w^*` under the isotropic prior
:math:`\mathcal N(0, s^2 I)` over its :math:`d` trainable parameters, with :math:`H` the
generalised Gauss-Newton matrix (GGN) of the negative log likelihood at :math:`w^*` and
:math:`P = H + I/s^2` the posterior precision, the Laplace approximation of the log
marginal likelihood (the *evidence*) is

.. math::

    \log p(D) \approx \log p(D \mid w^*) + \log \mathcal N(w^*; 0, s^2 I)
        + \tfrac d2 \log 2\pi - \tfrac12 \log\det P .

Everything after the likelihood is the log *Occam factor*: the prior volume the data rule
out. For a linear model with a Gaussian likelihood the GGN is the Hessian, the posterior
is Gaussian and the formula is exact (tested against the closed-form Bayesian
linear-regression evidence). A *pruned* model fixes some weights at 0: they leave the
parameter vector, so their rows and columns of :math:`P`, their prior terms and their
:math:`\tfrac12\log 2\pi` go, and the curvature is evaluated at the pruned weights
(re-linearised there). The Bayes factor of a pruning is the difference of the two log
evidences.

Likelihoods: ``"categorical"`` (the network outputs logits; :math:`H` is the GGN of the
softmax cross-entropy, which equals the exact Fisher) and ``"gaussian"`` (the network
outputs means, :math:`y \sim \mathcal N(f(x), \sigma^2 I)`; :math:`H = J^\top J/\sigma^2`).

Structure of :math:`H` (:class:`HessianStructure`): ``"diag"`` (its diagonal),
``"kron"`` (Kronecker factors per ``nn.Linear`` / ``nn.Conv2d`` weight, K-FAC; the biases
and normalisation layers keep their own block / diagonal) and ``"full"`` (the whole
matrix, for small networks). ``log det P`` is a sum of :math:`\log(\lambda_i/\sigma^2 +
1/s^2)` over the eigenvalues :math:`\lambda_i` of the unit-noise curvature: for the
diagonal they are its entries, for a Kronecker block :math:`B \otimes A / N` the products
of the factors' eigenvalues, for the full matrix its eigenvalues. So the evidence is a
closed-form function of :math:`(s, \sigma)` once the curvature is computed, which is how
:func:`fit_evidence` maximises it over the prior scale (and the observation noise).

Curvature backend: ASDL (``asdfghjkl``, Osawa et al.), the curvature library that
laplace-torch uses as one of its backends. laplace-torch itself, BackPACK and curvlinops
all declare a dependency on torchvision, which this package does not allow, while ASDL
needs only torch and numpy; the evidence formulas above are a dozen lines on top of the
curvature and are checked against closed forms in the tests. ASDL handles
``nn.Linear``, ``nn.Conv2d``, ``nn.BatchNorm1d/2d``, ``nn.LayerNorm`` and ``nn.Embedding``;
a network with trainable parameters in any other kind of module is refused with an error
naming the module (:data:`SUPPORTED_LAYERS`). A non-finite curvature entry is reported
(``FloatingPointError`` naming the parameter), never clamped.

Modules: :mod:`~pyro_prune.laplace.curvature` (the GGN from the backend, per parameter
block), :mod:`~pyro_prune.laplace.evidence` (the log evidence, optionally of a pruned
model, and its maximisation over the scales), :mod:`~pyro_prune.laplace.posterior` (the
posterior: marginal variances, joint BMR of rows and column groups, the reduced posterior
mean) and :mod:`~pyro_prune.laplace.removals` (post-hoc BMR of a trained network).

The MAP caveat: the weights passed in are taken as the mode. For a pruned model the kept
weights are the unpruned model's (not refitted), so its evidence is the Laplace evidence
around that point; the gradient term this ignores is second order in the change.
"""

from __future__ import annotations

from pyro_prune.laplace.curvature import (
    KRON_LAYERS,
    SUPPORTED_LAYERS,
    HessianStructure,
    backend_available,
    require_backend,
)
from pyro_prune.laplace.evidence import LaplaceEvidence, fit_evidence, log_evidence
from pyro_prune.laplace.posterior import FLAT_RTOL, LaplacePosterior, laplace_posterior
from pyro_prune.laplace.removals import RemovalStructure, laplace_prune, laplace_removals

__all__ = [
    "FLAT_RTOL",
    "KRON_LAYERS",
    "SUPPORTED_LAYERS",
    "HessianStructure",
    "LaplaceEvidence",
    "LaplacePosterior",
    "RemovalStructure",
    "backend_available",
    "fit_evidence",
    "laplace_posterior",
    "laplace_prune",
    "laplace_removals",
    "log_evidence",
    "require_backend",
]
