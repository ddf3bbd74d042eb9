"""The Bayes factor of a candidate pruning against the network as it is.

Two kinds (:class:`EvidenceKind`): the ratio of the two unnormalised posterior densities at
the point weights (:func:`bayes_factor`, as Mathew & Rowe, arXiv 2308.02451, write it) and
the ratio of the two Laplace evidences (:func:`laplace_bayes_factor`, with the Occam factor
of the weights removed). The definitions, and what to expect of each, are in
:mod:`~pyro_prune.reduction.bayes_factor_pruning`.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from pyro_prune._checks import as_dataset
from pyro_prune._enums import HessianStructure
from pyro_prune.models.base import Likelihood, PrunableNet, correct_and_counted
from pyro_prune.models.fcn import MAPNet, prunable_layers, weight_masks

__all__ = ["BayesFactor", "EvidenceBayesFactor", "EvidenceKind", "LogPosterior", "bayes_factor",
           "default_evidence", "laplace_bayes_factor", "log_posterior"]


class EvidenceKind(enum.Enum):
    """What the Bayes factor of a candidate pruning compares.

    * ``LAPLACE``: the Laplace log marginal likelihoods of the pruned and the current
      network (:func:`pyro_prune.laplace.log_evidence`): each model's likelihood at its
      weights plus its Occam factor, the pruned one re-linearised at the pruned weights with
      the pruned weights out of the parameter vector. A Bayes factor proper.
    * ``POINT``: the ratio of the two unnormalised posterior densities at the point weights,
      ``p(D | w') p(w') / (p(D | w) p(w))``, as the paper writes it.
    """

    LAPLACE = "laplace"
    POINT = "point"


def default_evidence() -> EvidenceKind:
    """``LAPLACE`` when the curvature backend is installed, else ``POINT``."""
    from pyro_prune.laplace import backend_available

    return EvidenceKind.LAPLACE if backend_available() else EvidenceKind.POINT


@dataclass(frozen=True)
class LogPosterior:
    """Unnormalised log posterior of a network's weights on a data set (nats).

    Attributes:
        log_likelihood: ``sum_n log p(y_n | x_n, w)`` over the whole data set.
        log_prior: ``log p(w)`` (0 for a flat prior).
        num_data: number of examples.
        accuracy: classification accuracy (``None`` for regression).
    """

    log_likelihood: float
    log_prior: float
    num_data: int
    accuracy: float | None = None

    @property
    def log_joint(self) -> float:
        """``log p(D | w) + log p(w) = log p(w | D) + log p(D)``."""
        return self.log_likelihood + self.log_prior

    @property
    def mean_nll(self) -> float:
        """Mean negative log likelihood per example (the ``train_loss`` of the history)."""
        return -self.log_likelihood / self.num_data


@dataclass(frozen=True)
class BayesFactor:
    """The Bayes factor of a candidate pruning (``pruned`` vs ``full``), in nats."""

    full: LogPosterior
    pruned: LogPosterior

    @property
    def log_bayes_factor(self) -> float:
        """``log BF = log p(D|w') + log p(w') - log p(D|w) - log p(w)``."""
        return self._delta_log_likelihood + self._delta_log_prior

    @property
    def _delta_log_likelihood(self) -> float:
        """``Delta l = log p(D|w') - log p(D|w)``."""
        return self.pruned.log_likelihood - self.full.log_likelihood

    @property
    def _delta_log_prior(self) -> float:
        """``Delta pi = log p(w') - log p(w)``."""
        return self.pruned.log_prior - self.full.log_prior

    @property
    def num_data(self) -> int:
        """``N``, the number of examples the likelihoods were evaluated on."""
        return self.full.num_data

    def tempered_log_bayes_factor(self, num_examples: float) -> float:
        r"""``log BF`` with the likelihood tempered to ``B = num_examples`` examples' worth.

        .. math::

            \log \mathrm{BF}_B = \frac{B}{N} \left[\log p(D|w') - \log p(D|w)\right]
                + \log p(w') - \log p(w),

        the power-posterior Bayes factor: the expected ``log BF`` of a gate that evaluates
        the likelihood on ``B`` examples drawn from these ``N`` (``likelihood="batch"``).
        ``B = N`` gives :attr:`log_bayes_factor`.
        """
        if not (isinstance(num_examples, (int, float)) and not isinstance(num_examples, bool)
                and math.isfinite(num_examples) and num_examples >= 0):
            raise ValueError(f"num_examples must be a finite number >= 0, got {num_examples!r}")
        return num_examples / self.num_data * self._delta_log_likelihood + self._delta_log_prior

    def break_even_examples(self, threshold: float | None = None, *,
                            log_threshold: float | None = None) -> float:
        r"""The most examples ``B*`` whose tempered Bayes factor still reaches the threshold.

        Pruning usually lowers the likelihood (``Delta l < 0``) and raises the prior
        (``Delta pi > 0``: zeroed weights are at the prior's mode), so the tempered factor
        :meth:`tempered_log_bayes_factor` falls linearly in ``B`` and a gate that looks at
        ``B`` examples accepts (in expectation) exactly when ``B <= B*`` with

        .. math:: B^* = N \frac{\log\beta - \Delta\pi}{\Delta l}.

        ``0`` when even ``B = 0`` (the prior ratio alone) falls short, ``inf`` when pruning
        does not lower the likelihood and some ``B`` accepts (then every larger one does).
        It places the likelihood-batch gate between the full-data extreme (``B = N``) and
        the prior alone (``B = 0``).
        """
        log_beta = _log_threshold(threshold, log_threshold)
        delta_lik, delta_prior = self._delta_log_likelihood, self._delta_log_prior
        if delta_lik >= 0:
            return math.inf if delta_lik > 0 or delta_prior >= log_beta else 0.0
        return max(0.0, self.num_data * (log_beta - delta_prior) / delta_lik)

    def accepts(self, threshold: float | None = None, *, log_threshold: float | None = None) -> bool:
        """``BF >= threshold`` (a Bayes factor, > 0; default 1), i.e. ``log BF >= log threshold``.

        ``log_threshold`` gives ``log beta`` directly instead (needed below ``beta ~ 1e-308``,
        where the float underflows: log Bayes factors of pruning are often thousands of nats).
        """
        return self.log_bayes_factor >= _log_threshold(threshold, log_threshold)


def _log_threshold(threshold: object, log_threshold: object) -> float:
    """``log beta`` from either ``threshold`` (beta; ``None``: 1) or ``log_threshold``.

    Giving both, even ``threshold=1``, is an error naming both: one of them would be ignored.
    """
    if log_threshold is None:
        return math.log(_check_threshold(1.0 if threshold is None else threshold))
    if threshold is not None:
        raise ValueError(f"give threshold or log_threshold, not both (got threshold={threshold!r} "
                         f"and log_threshold={log_threshold!r})")
    if isinstance(log_threshold, bool) or not isinstance(log_threshold, (int, float)):
        raise TypeError(f"log_threshold must be a number, got {type(log_threshold).__name__}")
    if not math.isfinite(log_threshold):
        raise ValueError(f"log_threshold must be finite, got {log_threshold!r}")
    return float(log_threshold)


def _check_threshold(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"threshold must be a positive number, got {type(value).__name__}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"threshold must be a positive finite Bayes factor, got {value!r}")
    return float(value)


def _log_prior_value(model: PrunableNet) -> float:
    with torch.no_grad():
        value = model.log_prior(dtype=torch.float64) if isinstance(model, MAPNet) else model.log_prior()
    return 0.0 if value is None else float(value)


@torch.no_grad()
def log_posterior(model: PrunableNet, dataset: TensorDataset | Sequence[Tensor], *,
                  batch_size: int = 4096) -> LogPosterior:
    """``log p(D | w)`` over all of ``dataset`` (``no_grad``, in batches) and ``log p(w)``.

    The network is evaluated in ``eval`` mode with every stochastic gate at ``E[theta]``
    (:meth:`~pyro_prune.models.PrunableNet.predict`); sums are accumulated in float64.
    """
    if not isinstance(model, PrunableNet):
        raise TypeError(f"model must be a PrunableNet, got {type(model).__name__}")
    tensors = as_dataset(dataset, "dataset", tensors_only=True).tensors
    if len(tensors) != 2:
        raise TypeError(f"dataset must be a TensorDataset of (inputs, targets), got one of "
                        f"{len(tensors)} tensors")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    x, y = tensors
    if len(x) == 0:
        raise ValueError("dataset is empty")
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    correct, counted = 0.0, 0.0
    categorical = model.likelihood is Likelihood.CATEGORICAL
    try:
        for i in range(0, len(x), batch_size):
            xb, yb = x[i : i + batch_size], y[i : i + batch_size]
            out = model.predict(xb)
            total -= model.nll(out, yb).double().sum()
            if categorical:
                right, count = correct_and_counted(out, yb, model.ignore_index)  # per token with token labels
                correct, counted = correct + float(right.sum()), counted + float(count.sum())
    finally:
        model.train(was_training)
    return LogPosterior(
        log_likelihood=float(total),
        log_prior=_log_prior_value(model),
        num_data=len(x),
        accuracy=(correct / counted if counted else 0.0) if categorical else None,
    )


@torch.no_grad()
def bayes_factor(
    model: PrunableNet,
    masks: Mapping[str, Tensor],
    dataset: TensorDataset | Sequence[Tensor],
    *,
    full: LogPosterior | None = None,
    batch_size: int = 4096,
) -> BayesFactor:
    """Bayes factor of pruning ``model`` to ``masks`` against leaving it as it is.

    The pruned weights are zeroed temporarily (the model, its masks and its weights are
    restored before returning). ``full`` may pass the unpruned model's
    :func:`log_posterior` on ``dataset`` if it was computed already.
    """
    layers = prunable_layers(model)
    saved: dict[str, Tensor] = {}
    try:
        if full is None:
            full = log_posterior(model, dataset, batch_size=batch_size)
        for name, mask in masks.items():
            if name not in layers:
                raise ValueError(f"masks name a layer the model does not have: {name!r}")
            weight = layers[name].weight
            if mask.shape != weight.shape or mask.dtype != torch.bool:
                raise ValueError(
                    f"masks[{name!r}] must be a bool tensor of shape {tuple(weight.shape)}"
                )
            saved[name] = weight.detach().clone()
            weight.mul_(mask)
        pruned = log_posterior(model, dataset, batch_size=batch_size)
    finally:
        for name, value in saved.items():
            layers[name].weight.copy_(value)
    return BayesFactor(full=full, pruned=pruned)


@dataclass(frozen=True)
class EvidenceBayesFactor:
    """The Bayes factor of a candidate pruning as a ratio of Laplace evidences (nats).

    ``current`` and ``pruned`` are :class:`~pyro_prune.laplace.LaplaceEvidence` of the
    network as it is (its earlier prunings fixed at 0) and with the candidate applied.
    """

    current: Any
    pruned: Any

    @property
    def log_bayes_factor(self) -> float:
        """``log p(D | pruned) - log p(D | current)`` (Laplace)."""
        return self.pruned.log_evidence - self.current.log_evidence

    @property
    def delta_log_likelihood(self) -> float:
        """Change of ``log p(D | w*)``: the fit the pruning costs (usually < 0)."""
        return self.pruned.log_likelihood - self.current.log_likelihood

    @property
    def delta_log_occam(self) -> float:
        """Change of the log Occam factor: what dropping the pruned weights' volume gains."""
        return self.pruned.log_occam - self.current.log_occam

    def accepts(self, threshold: float | None = None, *, log_threshold: float | None = None) -> bool:
        """``log BF >= log threshold``."""
        return self.log_bayes_factor >= _log_threshold(threshold, log_threshold)


def _parameter_masks(masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Layer keep-masks (backbone layer names) as parameter masks (``"<layer>.weight"``)."""
    return {f"{name}.weight": mask for name, mask in masks.items() if not bool(mask.all())}


def laplace_bayes_factor(
    model: MAPNet,
    masks: Mapping[str, Tensor],
    dataset: TensorDataset | Sequence[Tensor],
    *,
    current: Any = None,
    hessian: HessianStructure | str = HessianStructure.KRON,
    batch_size: int = 512,
    curvature_subset: int | None = None,
    fit_prior_scale: bool = False,
) -> EvidenceBayesFactor:
    """Laplace-evidence Bayes factor of pruning ``model`` to ``masks`` against its current pruning.

    Both evidences (:func:`pyro_prune.laplace.log_evidence`) use the model's prior
    ``N(0, prior_scale^2)`` on every backbone parameter (the prior it was trained under; not
    refitted) and its likelihood (a Gaussian one at the model's ``obs_scale``); with
    ``fit_prior_scale`` each model's evidence is instead maximised over the prior scale
    (:func:`pyro_prune.laplace.fit_evidence`, type-II maximum likelihood, weights fixed). The current
    network's weights pruned earlier are fixed at 0 (its ``weight_mask``); the candidate's
    evidence is computed at the candidate's weights (re-linearised there). ``current`` may
    pass the current network's evidence if it was computed already. Nothing in the model
    changes.
    """
    from pyro_prune.laplace import fit_evidence, log_evidence

    if not isinstance(model, MAPNet):
        raise TypeError(f'evidence="laplace" needs a MAPNet (a network with a Gaussian prior), '
                        f"got {type(model).__name__}")
    layers = prunable_layers(model)
    for name, mask in masks.items():
        if name not in layers:
            raise ValueError(f"masks name a layer the model does not have: {name!r}")
        if mask.shape != layers[name].weight.shape or mask.dtype != torch.bool:
            raise ValueError(f"masks[{name!r}] must be a bool tensor of shape {tuple(layers[name].weight.shape)}")
    options: dict[str, Any] = dict(prior_scale=model.prior_scale, likelihood=model.likelihood.value,
                                   hessian=hessian, batch_size=batch_size, curvature_subset=curvature_subset)
    if model.likelihood is Likelihood.GAUSSIAN:
        options["obs_scale"] = float(model.obs_scale)
    data = as_dataset(dataset, "dataset", tensors_only=True).tensors
    evidence = log_evidence
    if fit_prior_scale:
        evidence = fit_evidence  # type: ignore[assignment]
        options["fit_obs_scale"] = False
    if current is None:
        current = evidence(model.net, data, mask=_parameter_masks(weight_masks(model)), **options)
    merged = {**weight_masks(model), **dict(masks)}
    pruned = evidence(model.net, data, mask=_parameter_masks(merged), **options)
    return EvidenceBayesFactor(current=current, pruned=pruned)
