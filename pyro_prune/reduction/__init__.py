r"""Reduction operators: which structures to remove, decided from the posterior.

Bayesian model reduction (BMR; Friston & Penny 2011, *Post hoc Bayesian model selection*,
NeuroImage; Friston et al. 2018) scores a *reduced* prior :math:`\tilde p` against the prior
:math:`p` used in training, using only the fitted posterior :math:`q`. The change in log
evidence is

.. math::

    \Delta F = \log \int q(\theta)\, \frac{\tilde p(\theta)}{p(\theta)}\, d\theta,

and a structure is removed when :math:`\Delta F \ge 0` (the reduced model, in which the
structure is switched off, is at least as probable): no threshold to tune. This package
provides

* :func:`delta_f_lognormal` — BMRS\ :sub:`N` of Wright, Igel & Selvan (2024), *BMRS: Bayesian
  Model Reduction for Structured Pruning* (NeurIPS), for log-normal multiplicative noise
  (Neklyudov et al., 2017) with a reduced prior concentrated at the lower bound;
* :func:`delta_f_loguniform` — BMRS\ :sub:`U` (same paper), reduced prior
  :math:`\mathrm{LogU}[-p_2\ln 2, -p_1\ln 2]`;
* :func:`delta_f_gaussian` — BMR of Gaussian weights towards a spike at zero (Friston & Penny
  2011; Beckers et al. 2024, *Principled pruning of Bayesian neural networks through
  variational free energy minimization*, IEEE OJSP), summed over a structure's weights;
* baseline scores: :func:`expected_theta` and :func:`snr` of the noise (Neklyudov et al.
  2017), :func:`l2_norm` of the incoming weights and :func:`gradient_score`;
* a registry of named pruning criteria, :func:`get_criterion` / :data:`CRITERIA`.

All functions act elementwise on tensors of any (broadcast) batch shape. The
:math:`\Delta F` operators evaluate in the dtype of their inputs (they are the hot path),
using the cancellation-free log-mass primitive of :mod:`pyro_prune.distributions`;
:func:`expected_theta` and :func:`snr` compute in float64 and cast back. Accuracy (tested):
float64 relative error below 1e-10 against quadrature of the BMR identity and against the
closed forms at 80 digits, over ``loc`` in [-30, 10] and ``log(scale)`` in [-20, 5];
float32 absolute error below ~5e-6 * max(1, |dF|). Large inputs without gradients are
evaluated in cache-sized blocks (``benchmarks/reduction_speed.py`` measures the throughput:
about 1.7e7 structures/s for BMRS_N in float32 on one core of a 2-core Xeon).

Criteria (:data:`CRITERIA`): ``bmrs`` (the library's default: BMRS_N with prior odds
:math:`\sqrt{2\pi}:1` for removal, ``log_prior_odds`` = :data:`BMRS_LOG_PRIOR_ODDS`),
``bmrs_n`` (plain BMR, ``log_prior_odds = 0``), ``bmrs_n_code`` (the authors' code, which
drops the :math:`-\frac12\log 2\pi`: the same preset as ``bmrs``), ``bmrs_u`` (= ``bmrs_u8``),
``bmrs_u4``, ``bmrs_u_off`` (a reduced prior over the whole off range :math:`[A, -8\ln 2]`),
``bmrs_joint`` (:func:`delta_f_joint`: noise and Gaussian incoming weights together) and
``gaussian_bmr`` are threshold-free (remove where the log posterior odds
:math:`\Delta F + \texttt{log\_prior\_odds} \ge 0`, score = minus them; every one takes
``log_prior_odds``, see :func:`log_posterior_odds`); ``snr`` (remove below 1) and
``e_theta`` (below 0.1) are the thresholded baselines of Neklyudov et al. (2017); ``l2``
and ``grad`` only rank (prune them to a target with ``fraction=``). Why ``bmrs`` is the
default, with measurements: ``docs/defaults.md``.

The package, one concept per module, in the order a reduction uses them:

* :mod:`~pyro_prune.reduction.lognormal`, :mod:`~pyro_prune.reduction.loguniform`,
  :mod:`~pyro_prune.reduction.gaussian`, :mod:`~pyro_prune.reduction.joint`: the dF
  operators, one per reduced-prior family;
* :mod:`~pyro_prune.reduction.baselines`: :math:`E[\theta]`, SNR, magnitude and gradient;
* :mod:`~pyro_prune.reduction.criteria`: the registry of named criteria and
  ``log_prior_odds``;
* :mod:`~pyro_prune.reduction.scoring`: a criterion applied to the gates of a model
  (:func:`structure_removals`, :func:`structure_scores`) and the one global ranking
  (:func:`global_ranking`);
* :mod:`~pyro_prune.reduction.weight_pruning`, :mod:`~pyro_prune.reduction.bayes_factors`,
  :mod:`~pyro_prune.reduction.bayes_factor_pruning`: Bayes-factor pruning of single weights
  during training (Mathew & Rowe, arXiv 2308.02451);
* :mod:`~pyro_prune.reduction.neuron_scores`: the W2 neuron score (Kuboň 2025), recorded
  while :mod:`pyro_prune.predictive` draws (:func:`~pyro_prune.predictive.neuron_w2`).

Every public name of these modules is exported here, except the schedule
:class:`~pyro_prune.reduction.bayes_factor_pruning.BayesFactorPruning` (and its
``LikelihoodData``): a fit hook, built on :mod:`pyro_prune.inference.schedules`, it is imported
from its module (or from :mod:`pyro_prune` itself), so that the reduction stage loads without
the training loop.
"""


from __future__ import annotations

from pyro_prune.reduction.baselines import expected_theta, gradient_score, l2_norm, snr
from pyro_prune.reduction.bayes_factors import (
    BayesFactor,
    EvidenceBayesFactor,
    EvidenceKind,
    LogPosterior,
    bayes_factor,
    default_evidence,
    laplace_bayes_factor,
    log_posterior,
)
from pyro_prune.reduction.criteria import (
    BMRS_LOG_PRIOR_ODDS,
    CRITERIA,
    Criterion,
    CriterionInput,
    get_criterion,
    log_posterior_odds,
    register_criterion,
)
from pyro_prune.reduction.gaussian import delta_f_gaussian
from pyro_prune.reduction.joint import delta_f_joint
from pyro_prune.reduction.lognormal import delta_f_lognormal, delta_f_lognormal_released_code
from pyro_prune.reduction.loguniform import delta_f_loguniform
from pyro_prune.reduction.neuron_scores import NeuronScore, ScoreRecorder
from pyro_prune.reduction.scoring import (
    as_criterion,
    gate_criterion,
    gate_inputs,
    global_ranking,
    structure_decisions,
    structure_removals,
    structure_scores,
)
from pyro_prune.reduction.weight_pruning import (
    PruneMethod,
    apply_masks,
    candidate_masks,
    layer_sparsity,
    prune_count,
    sparsity,
)

__all__ = [
    # dF operators and baselines
    "delta_f_gaussian",
    "delta_f_joint",
    "delta_f_lognormal",
    "delta_f_lognormal_released_code",
    "delta_f_loguniform",
    "expected_theta",
    "gradient_score",
    "l2_norm",
    "snr",
    # criteria
    "BMRS_LOG_PRIOR_ODDS",
    "CRITERIA",
    "Criterion",
    "CriterionInput",
    "get_criterion",
    "log_posterior_odds",
    "register_criterion",
    # criteria applied to a model
    "as_criterion",
    "gate_criterion",
    "gate_inputs",
    "global_ranking",
    "structure_decisions",
    "structure_removals",
    "structure_scores",
    # Bayes factors of weight prunings
    "BayesFactor",
    "EvidenceBayesFactor",
    "EvidenceKind",
    "LogPosterior",
    "PruneMethod",
    "apply_masks",
    "bayes_factor",
    "candidate_masks",
    "default_evidence",
    "laplace_bayes_factor",
    "layer_sparsity",
    "log_posterior",
    "prune_count",
    "sparsity",
    # the W2 neuron score
    "NeuronScore",
    "ScoreRecorder",
]
