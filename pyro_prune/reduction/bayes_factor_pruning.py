"""Bayes-factor pruning during training (Mathew & Rowe, arXiv 2308.02451).

The network (e.g. :class:`~pyro_prune.models.FCN`, :class:`~pyro_prune.models.CNN`) has a
Gaussian prior ``w ~ N(0, sigma^2)`` on its weights and is trained to the MAP. After every
epoch a *candidate* pruning ``w -> w'`` is made, layer by layer, to the target sparsity
``r``, and the Bayes factor of the pruned against the unpruned network decides whether it
is applied:

    log BF = [log p(D | w') + log p(w')] - [log p(D | w) + log p(w)]

(the ratio of the two posterior densities; ``p(D)`` cancels). Everything is in natural-log
units (nats). The pruning is applied when ``BF >= beta``, i.e. ``log BF >= log beta``, with
the threshold ``beta`` given as a Bayes factor: ``threshold=1`` accepts every pruning that
does not lower the posterior density. Applied prunings are permanent: the pruned weights
stay exactly zero for the rest of training (see :class:`BayesFactorPruning`).

Definitions used here (the paper leaves them open):

* **Candidate.** In each ``nn.Linear`` / ``nn.Conv2d`` layer (weights only, not biases;
  :func:`~pyro_prune.models.fcn.prunable_layers`) exactly ``k = round(r * numel)`` weights
  end up pruned (Python's ``round``, as ``torch.nn.utils.prune``; at most ``numel - 1``,
  a layer is never emptied). Weights pruned earlier count towards ``k``; the rest are
  taken from the kept weights either uniformly at random (:attr:`PruneMethod.RANDOM`,
  a seeded ``torch.Generator``) or with the smallest ``|w|`` (:attr:`PruneMethod.MAGNITUDE`).
  Once a layer is at its target there is no candidate for it, so with masks the
  pruning of a run is applied at most once per layer.
* **Likelihood.** ``log p(D | w) = sum_{n=1}^{N} log p(y_n | x_n, w)`` over the *whole
  training set*, evaluated at the end of the epoch in ``no_grad`` batches, for both the
  pruned and the unpruned weights. The running minibatch loss of the epoch is not used:
  it mixes the weights of every step of the epoch (and the early steps' weights fit worse),
  so comparing a pruned network's exact likelihood with it would bias the Bayes factor
  towards accepting. Evaluating both on the same data with the same end-of-epoch weights
  makes the comparison exact; it costs two forward passes over the training set per
  candidate. Models with stochastic gates are evaluated at ``E[theta]``.
* **Prior.** ``log p(w)`` is the model's :meth:`~pyro_prune.models.PrunableNet.log_prior`
  (``None`` = flat prior, contributing 0). The pruned network is a point in the same
  parameter space with some coordinates at zero, so for the Gaussian prior
  ``log p(w') - log p(w) = sum_{pruned} w_i^2 / (2 sigma^2) >= 0``. (Dropping the pruned
  coordinates from the prior instead would add ``0.5 log(2 pi sigma^2)`` per weight, an
  artefact of comparing densities of different dimension.)

What to expect. ``log BF = Delta log-likelihood + sum_pruned w^2 / (2 sigma^2)``: the
likelihood lost over all ``N`` training examples against the prior gained (a few hundred
nats for ``sigma = 1``). Near the MAP every pruning lowers the log posterior, so the gate
at ``beta = 1`` opens only for prunings that cost (almost) nothing. On the FCN with 10,000
MNIST / Fashion-MNIST examples (``benchmarks/bayes_factor_table.py``) it opened for
magnitude pruning to 25 % (log BF up to +12 and +153 nats) and never for 50-99 % or for
random pruning (log BF from -10^2 to -2 10^4 nats), so those runs stay dense. The paper's
Bayes variants reach the target sparsity, which a full-data Bayes factor at ``beta = 1``
does not reproduce. ``log_threshold`` sets a tolerance in nats (e.g. ``-eps * N``), and
``likelihood="batch"`` (:class:`LikelihoodData`) evaluates the likelihood on ``B``
training examples drawn at each decision, a likelihood tempered by ``B / N`` against which
the prior ratio weighs more; that is the gate that reaches the paper's sparsities.

The Laplace gate (``evidence="laplace"``, the default when the curvature backend is
installed). A ratio of posterior densities at a point is not a Bayes factor: it has no
Occam factor, so a pruning pays its lost likelihood with nothing but the prior density
gained at zero. :class:`EvidenceKind` ``LAPLACE`` compares the Laplace marginal
likelihoods (:mod:`pyro_prune.laplace`) of the pruned and the current network,

    log BF = [log p(D | w') - log p(D | w)] + [log Occam(w') - log Occam(w)],

with ``log Occam = log N(w_kept; 0, s^2 I) + (d/2) log 2 pi - (1/2) log det(H + I/s^2)`` over
the ``d`` kept weights: each removed weight with curvature ``h`` and value ``w`` adds about
``(1/2) log(1 + s^2 h) + w^2/(2 s^2)`` to the Occam term, so a pruning passes when the
removed weights were poorly determined by the data (large ``s^2 h`` bought little fit).

The two non-Bayesian baselines of the paper, *Random* and *Magnitude*, are the same schedule
with ``gate=False``: the candidate is applied every epoch regardless of the Bayes factor
(which is still computed and logged), i.e. the network is pruned to ``r`` after the first
epoch and trained on with the pruned weights held at zero.
"""

from __future__ import annotations

import enum
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from pyro_prune._enums import parse_enum
from pyro_prune.inference.schedules import Schedule
from pyro_prune.models.base import Likelihood, PrunableNet
from pyro_prune.models.fcn import MAPNet, ensure_weight_masks, prunable_layers, weight_masks

__all__ = [
    "BayesFactor",
    "BayesFactorPruning",
    "EvidenceBayesFactor",
    "EvidenceKind",
    "LikelihoodData",
    "LogPosterior",
    "PruneMethod",
    "apply_masks",
    "bayes_factor",
    "candidate_masks",
    "default_evidence",
    "laplace_bayes_factor",
    "layer_sparsity",
    "log_posterior",
    "plot_learning_curves",
    "prune_count",
    "sparsity",
]


class LikelihoodData(enum.Enum):
    """The data on which the Bayes factor's likelihood is evaluated.

    * ``FULL``: the whole training set, ``sum_{n=1}^{N} log p(y_n | x_n, w)``: the exact
      Bayes factor of the two networks given all the data.
    * ``BATCH``: ``B`` training examples drawn afresh (seeded) at each decision, the same
      ``B`` for both networks: the Bayes factor given those ``B`` examples, i.e. the full
      one with the likelihood tempered by ``B / N`` (a power posterior). It lets the prior
      ratio, which favours zeroed weights, weigh as much as ``B`` examples' worth of fit;
      with ``B`` = the training batch size it is the gate a training loop that looks at
      its current minibatch applies. Cheaper, and it opens where the full-data factor
      does not (see the module docstring).
    """

    FULL = "full"
    BATCH = "batch"


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


class PruneMethod(enum.Enum):
    """How a candidate pruning picks the weights to zero within a layer."""

    #: uniformly at random among the kept weights
    RANDOM = "random"
    #: the kept weights with the smallest absolute value
    MAGNITUDE = "magnitude"


def _method(value: object) -> PruneMethod:
    return parse_enum(PruneMethod, value, "method")


def _check_sparsity(value: object, arg: str = "target_sparsity") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{arg} must be a number in [0, 1), got {type(value).__name__}")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{arg} must lie in [0, 1), got {value!r}")
    return float(value)


def prune_count(numel: int, target_sparsity: float) -> int:
    """Number of weights a layer of ``numel`` weights has pruned at ``target_sparsity``.

    ``round(target_sparsity * numel)`` (Python rounding, as ``torch.nn.utils.prune``), but at
    most ``numel - 1`` so that a layer is never emptied (with a warning when that binds).
    """
    r = _check_sparsity(target_sparsity)
    k = round(r * numel)
    if k >= numel:
        warnings.warn(
            f"sparsity {r} of a layer with {numel} weights would empty it; keeping one weight",
            RuntimeWarning,
            stacklevel=2,
        )
        k = numel - 1
    return k


# ---------------------------------------------------------------------------------- masks
def sparsity(model: torch.nn.Module) -> float:
    """Fraction of the prunable weights (all Linear/Conv2d weights) that are pruned (masked)."""
    masks = weight_masks(model)
    layers = prunable_layers(model)
    total = sum(layer.weight.numel() for layer in layers.values())
    pruned = sum(int((~m).sum()) for m in masks.values())
    return pruned / total if total else 0.0


def layer_sparsity(model: torch.nn.Module) -> dict[str, float]:
    """Pruned fraction of each prunable layer's weights (0 for a layer without a mask)."""
    masks = weight_masks(model)
    return {
        name: (float((~masks[name]).sum()) / layer.weight.numel()) if name in masks else 0.0
        for name, layer in prunable_layers(model).items()
    }


def candidate_masks(
    model: torch.nn.Module,
    target_sparsity: float,
    method: PruneMethod | str = PruneMethod.MAGNITUDE,
    *,
    generator: torch.Generator | None = None,
    layers: Sequence[str] | None = None,
) -> dict[str, Tensor]:
    """Keep-masks of the candidate pruning of every prunable layer to ``target_sparsity``.

    Starts from the layer's current ``weight_mask`` (registered if missing) and prunes
    ``prune_count(numel, r) - (already pruned)`` more of its kept weights: the smallest
    ``|w|`` (ties broken by ``torch.topk``) or a uniform random subset drawn with
    ``generator``. Layers already at (or past) the target keep their mask, and so do the
    layers not named in ``layers`` (default: every prunable layer). Nothing in the model is
    changed.
    """
    kind = _method(method)
    r = _check_sparsity(target_sparsity)
    out: dict[str, Tensor] = {}
    masks = ensure_weight_masks(model)
    chosen = _check_layers(model, layers)
    for name, layer in prunable_layers(model).items():
        mask = masks[name]
        need = prune_count(mask.numel(), r) - int((~mask).sum()) if name in chosen else 0
        if need <= 0:
            out[name] = mask.clone()
            continue
        flat_mask = mask.reshape(-1)
        if kind is PruneMethod.MAGNITUDE:
            score = layer.weight.detach().abs().reshape(-1).masked_fill(~flat_mask, float("inf"))
            idx = torch.topk(score, need, largest=False, sorted=False).indices
        else:
            kept_idx = flat_mask.nonzero().squeeze(1)
            pick = torch.randperm(kept_idx.numel(), generator=generator, device="cpu")[:need]
            idx = kept_idx[pick.to(kept_idx.device)]
        new = flat_mask.clone()
        new[idx] = False
        out[name] = new.reshape(mask.shape)
    return out


def _layer_list(layers: Sequence[str] | None) -> list[str] | None:
    """``layers`` as a list of names (``None`` stays ``None``: every layer)."""
    if layers is None:
        return None
    if isinstance(layers, str) or not all(isinstance(n, str) for n in layers) or not layers:
        raise TypeError(f"layers must be a non-empty sequence of layer names or None, got {layers!r}")
    return list(layers)


def _check_layers(model: torch.nn.Module, layers: Sequence[str] | None) -> set[str]:
    """The names of the layers to prune; every prunable layer for ``None``."""
    names = list(prunable_layers(model))
    chosen = _layer_list(layers)
    if chosen is None:
        return set(names)
    unknown = [n for n in chosen if n not in names]
    if unknown:
        raise ValueError(f"unknown layers {unknown}; the prunable layers are {names}")
    return set(chosen)


@torch.no_grad()
def apply_masks(
    model: torch.nn.Module,
    masks: Mapping[str, Tensor],
    optimizer: torch.optim.Optimizer | None = None,
) -> int:
    """Make ``masks`` the model's pruning: set ``weight_mask``, zero the pruned weights.

    Pruning is monotone: a mask that would bring back a pruned weight raises
    ``ValueError``. With ``optimizer``, the per-weight optimizer state of the pruned
    entries (Adam's moment estimates, any state tensor shaped like the weight) is zeroed
    too, so that with masked gradients the optimizer never moves them again.

    Returns the number of newly pruned weights.
    """
    current = ensure_weight_masks(model)
    layers = prunable_layers(model)
    unknown = sorted(set(masks) - set(layers))
    if unknown:
        raise ValueError(f"masks name layers the model does not have: {unknown}")
    newly = 0
    for name, mask in masks.items():
        old = current[name]
        if mask.shape != old.shape or mask.dtype != torch.bool:
            raise ValueError(
                f"masks[{name!r}] must be a bool tensor of shape {tuple(old.shape)}, "
                f"got {mask.dtype} {tuple(mask.shape)}"
            )
        if bool((mask & ~old).any()):
            raise ValueError(f"masks[{name!r}] would restore pruned weights; pruning is monotone")
        newly += int((old & ~mask).sum())
        old.copy_(mask)
        weight = layers[name].weight
        weight.mul_(mask)
        if optimizer is not None:
            for value in optimizer.state.get(weight, {}).values():
                if isinstance(value, Tensor) and value.shape == weight.shape:
                    value.mul_(mask)
    return newly


def _enforce_masks(pairs: Sequence[tuple[Tensor, Tensor]]) -> None:
    with torch.no_grad():
        for weight, mask in pairs:
            weight.mul_(mask)


# ---------------------------------------------------------------------- log posterior and BF
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

    def break_even_examples(self, threshold: float = 1.0, *,
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

    def accepts(self, threshold: float = 1.0, *, log_threshold: float | None = None) -> bool:
        """``BF >= threshold`` (a Bayes factor, > 0), i.e. ``log BF >= log threshold``.

        ``log_threshold`` gives ``log beta`` directly instead (needed below ``beta ~ 1e-308``,
        where the float underflows: log Bayes factors of pruning are often thousands of nats).
        """
        return self.log_bayes_factor >= _log_threshold(threshold, log_threshold)


def _log_threshold(threshold: object, log_threshold: object) -> float:
    """``log beta`` from either ``threshold`` (beta) or ``log_threshold`` (not both)."""
    if log_threshold is None:
        return math.log(_check_threshold(threshold))
    if isinstance(log_threshold, bool) or not isinstance(log_threshold, (int, float)):
        raise TypeError(f"log_threshold must be a number, got {type(log_threshold).__name__}")
    if not math.isfinite(log_threshold):
        raise ValueError(f"log_threshold must be finite, got {log_threshold!r}")
    if threshold != 1.0:
        raise ValueError("give threshold or log_threshold, not both")
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
def log_posterior(model: PrunableNet, dataset: TensorDataset, *, batch_size: int = 4096) -> LogPosterior:
    """``log p(D | w)`` over all of ``dataset`` (``no_grad``, in batches) and ``log p(w)``.

    The network is evaluated in ``eval`` mode with every stochastic gate at ``E[theta]``
    (:meth:`~pyro_prune.models.PrunableNet.predict`); sums are accumulated in float64.
    """
    if not isinstance(model, PrunableNet):
        raise TypeError(f"model must be a PrunableNet, got {type(model).__name__}")
    if not isinstance(dataset, TensorDataset) or len(dataset.tensors) != 2:
        raise TypeError(f"dataset must be a TensorDataset of (inputs, targets), got {type(dataset).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    x, y = dataset.tensors
    if len(x) == 0:
        raise ValueError("dataset is empty")
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = 0
    categorical = model.likelihood is Likelihood.CATEGORICAL
    try:
        for i in range(0, len(x), batch_size):
            xb, yb = x[i : i + batch_size], y[i : i + batch_size]
            out = model.predict(xb)
            total -= model.nll(out, yb).double().sum()
            if categorical:
                correct += int((out.argmax(-1) == yb).sum())
    finally:
        model.train(was_training)
    return LogPosterior(
        log_likelihood=float(total),
        log_prior=_log_prior_value(model),
        num_data=len(x),
        accuracy=correct / len(x) if categorical else None,
    )


@torch.no_grad()
def bayes_factor(
    model: PrunableNet,
    masks: Mapping[str, Tensor],
    dataset: TensorDataset,
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

    def accepts(self, threshold: float = 1.0, *, log_threshold: float | None = None) -> bool:
        """``log BF >= log threshold``."""
        return self.log_bayes_factor >= _log_threshold(threshold, log_threshold)


def _parameter_masks(masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Layer keep-masks (backbone layer names) as parameter masks (``"<layer>.weight"``)."""
    return {f"{name}.weight": mask for name, mask in masks.items() if not bool(mask.all())}


def laplace_bayes_factor(
    model: MAPNet,
    masks: Mapping[str, Tensor],
    dataset: TensorDataset,
    *,
    current: Any = None,
    hessian: str = "kron",
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
    data = dataset.tensors
    evidence = log_evidence
    if fit_prior_scale:
        evidence = fit_evidence  # type: ignore[assignment]
        options["fit_obs_scale"] = False
    if current is None:
        current = evidence(model.net, data, mask=_parameter_masks(weight_masks(model)), **options)
    merged = {**weight_masks(model), **dict(masks)}
    pruned = evidence(model.net, data, mask=_parameter_masks(merged), **options)
    return EvidenceBayesFactor(current=current, pruned=pruned)


# --------------------------------------------------------------------------------- schedule
class BayesFactorPruning(Schedule):
    """Prune to a target sparsity after an epoch when the Bayes factor allows it.

    After every training epoch of :func:`~pyro_prune.inference.fit` (not during a
    schedule's fine-tuning epochs) a candidate pruning of every Linear/Conv2d layer to
    ``target_sparsity`` is drawn (:func:`candidate_masks`) and its Bayes factor against
    the current network is computed on the full training set (:func:`bayes_factor`). With
    ``gate=True`` (Bayes Random / Bayes Magnitude) the candidate is applied iff
    ``BF >= threshold``; with ``gate=False`` (the Random / Magnitude baselines) it is
    always applied.

    Pruned weights stay exactly zero: their ``weight_mask`` buffers are False, their
    gradients are masked before every optimizer step (an optimizer step pre-hook), their
    Adam state is zeroed when they are pruned, and :meth:`on_step_end` multiplies the
    weights by the masks after every step.

    History entries added to each epoch's row: ``sparsity`` (fraction of prunable weights
    pruned after the decision), ``log_bayes_factor`` (nats; ``None`` when there was no
    candidate because every layer is at its target), ``break_even_examples`` (the most
    likelihood examples at which the candidate passes the gate, estimated from the data
    the factor was evaluated on: :meth:`BayesFactor.break_even_examples`; ``None`` with
    ``log_bayes_factor``), ``pruned`` (a pruning was applied this epoch), ``train_loss`` /
    ``train_accuracy`` (mean NLL and accuracy on the full training set of the weights kept
    after the decision), ``log_likelihood``, ``log_prior``, ``log_posterior`` of those
    weights, ``layer_sparsity``. When a pruning
    was applied and :func:`fit` has validation data, ``val_loss`` / ``val_accuracy`` are
    re-evaluated for the pruned weights.

    Args:
        target_sparsity: fraction ``r`` in [0, 1) of each layer's weights to prune.
        method: ``"random"`` or ``"magnitude"`` (:class:`PruneMethod`).
        threshold: ``beta`` as a Bayes factor (> 0); accept when ``log BF >= log beta``.
        log_threshold: ``log beta`` in nats instead of ``threshold`` (e.g. ``-0.001 * N``
            tolerates a loss of 0.001 nats of log posterior per training example).
        gate: use the Bayes factor (True) or prune unconditionally (False, the baselines).
        seed: seed of the generator of random candidates and of the likelihood batches
            (default: ``fit``'s seed).
        batch_size: batch size of the no-grad likelihood evaluations.
        likelihood: ``"full"`` (the whole training set, the default) or ``"batch"``
            (:class:`LikelihoodData`).
        likelihood_batch: ``B`` for ``likelihood="batch"`` (default: ``fit``'s batch size).
        layers: names of the layers to prune (backbone module paths, e.g.
            ``["fc1", "fc2"]``); the others keep every weight. Default: every ``nn.Linear``
            and ``nn.Conv2d``, as in the paper.
        evidence: ``"laplace"`` (the Bayes factor of the two models' Laplace evidences,
            :func:`laplace_bayes_factor`; the model must be a :class:`MAPNet`) or
            ``"point"`` (the paper's ratio of posterior densities at the point weights,
            :func:`bayes_factor`); :class:`EvidenceKind`. Default: ``"laplace"`` when the
            curvature backend is installed (the ``laplace`` extra), else ``"point"``. Both
            use the data chosen by ``likelihood``. With ``"laplace"`` the history also holds
            ``log_evidence_current``, ``log_evidence_pruned``, ``delta_log_likelihood`` and
            ``delta_log_occam`` of every decision (``break_even_examples`` is ``None``).
        hessian: curvature of the Laplace evidence (:class:`~pyro_prune.laplace.HessianStructure`):
            ``"kron"`` (default: K-FAC, the removed single weights entering through their
            posterior marginals), ``"diag"`` (cheaper, but it overstates every weight's
            Occam factor and opened at every sparsity in our runs) or ``"full"`` (small
            networks).
        curvature_subset: the Laplace curvature from this many training examples, scaled
            to the whole data (:func:`pyro_prune.laplace.log_evidence`); ``None``: all.
        fit_prior_scale: compare the two models' evidences each maximised over the prior
            scale (type-II ML at the current weights) instead of at the training prior
            ``prior_scale`` (the default). The history then also records
            ``prior_scale_current`` / ``prior_scale_pruned``.
    """

    def __init__(
        self,
        target_sparsity: float,
        method: PruneMethod | str = PruneMethod.MAGNITUDE,
        threshold: float = 1.0,
        *,
        log_threshold: float | None = None,
        gate: bool = True,
        seed: int | None = None,
        batch_size: int = 4096,
        likelihood: LikelihoodData | str = LikelihoodData.FULL,
        likelihood_batch: int | None = None,
        layers: Sequence[str] | None = None,
        evidence: EvidenceKind | str | None = None,
        hessian: str = "kron",
        curvature_subset: int | None = None,
        fit_prior_scale: bool = False,
    ) -> None:
        self.evidence = default_evidence() if evidence is None else parse_enum(EvidenceKind, evidence, "evidence")
        from pyro_prune.laplace import HessianStructure

        self.hessian = parse_enum(HessianStructure, hessian, "hessian").value
        self.curvature_subset = curvature_subset
        if not isinstance(fit_prior_scale, bool):
            raise TypeError(f"fit_prior_scale must be a bool, got {type(fit_prior_scale).__name__}")
        self.fit_prior_scale = fit_prior_scale
        if self.evidence is EvidenceKind.LAPLACE:
            from pyro_prune.laplace import _asdl

            _asdl()  # a clear ImportError now rather than after the first epoch
        self.target_sparsity = _check_sparsity(target_sparsity)
        self.layers = _layer_list(layers)
        self.method = _method(method)
        self.log_threshold = _log_threshold(threshold, log_threshold)
        if not isinstance(gate, bool):
            raise TypeError(f"gate must be a bool, got {type(gate).__name__}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.likelihood = parse_enum(LikelihoodData, likelihood, "likelihood")
        if likelihood_batch is not None and (isinstance(likelihood_batch, bool)
                                             or not isinstance(likelihood_batch, int)
                                             or likelihood_batch < 1):
            raise ValueError(f"likelihood_batch must be a positive int or None, got {likelihood_batch!r}")
        self.likelihood_batch = likelihood_batch
        self.gate = gate
        self.seed = seed
        self.batch_size = batch_size
        self.generator = torch.Generator()
        if seed is not None:
            self.generator.manual_seed(seed)
        self.accepted_epochs: list[int] = []
        self.candidates = 0
        self._pairs: list[tuple[Tensor, Tensor]] = []
        self._hook: Any = None

    @property
    def label(self) -> str:
        """The paper's name of the method: Random, Bayes Random, Magnitude, Bayes Magnitude."""
        name = self.method.value.capitalize()
        return f"Bayes {name}" if self.gate else name

    def __repr__(self) -> str:
        return (
            f"BayesFactorPruning(target_sparsity={self.target_sparsity}, "
            f"method={self.method.value!r}, log_threshold={self.log_threshold:.6g}, gate={self.gate}, "
            f"seed={self.seed}, likelihood={self.likelihood.value!r}, layers={self.layers!r}, "
            f"evidence={self.evidence.value!r}, hessian={self.hessian!r})"
        )

    # ---------------------------------------------------------------- hooks for fit
    def _refresh(self, model: PrunableNet) -> None:
        layers = prunable_layers(model)
        self._pairs = [
            (layers[name].weight, mask) for name, mask in weight_masks(model).items()
            if not bool(mask.all())
        ]
        _enforce_masks(self._pairs)

    def on_fit_start(self, ctx: Any) -> None:
        if self.evidence is EvidenceKind.LAPLACE and not isinstance(ctx.model, MAPNet):
            raise TypeError(f'evidence="laplace" needs a MAPNet (a network with a Gaussian prior), '
                            f'got {type(ctx.model).__name__}; use evidence="point"')
        ensure_weight_masks(ctx.model)
        _check_layers(ctx.model, self.layers)  # unknown names fail before any training
        if self.seed is None:
            self.generator.manual_seed(int(ctx.seed))
        if self._hook is not None:
            self._hook.remove()
        self._hook = ctx.optimizer.register_step_pre_hook(self._mask_gradients)
        self._model = ctx.model
        self._refresh(ctx.model)

    def _mask_gradients(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        for weight, mask in self._pairs:
            if weight.grad is not None:
                weight.grad.mul_(mask)

    def on_step_end(self, ctx: Any) -> None:
        _enforce_masks(self._pairs)

    def _evidence_data(self, train: TensorDataset, fit_batch: int) -> TensorDataset:
        if self.likelihood is LikelihoodData.FULL:
            return train
        n = len(train)
        size = min(n, self.likelihood_batch or fit_batch)
        index = torch.randperm(n, generator=self.generator)[:size]
        return TensorDataset(*(t[index] for t in train.tensors))

    def on_epoch_end(self, ctx: Any, epoch: int) -> dict[str, Any]:
        model = ctx.model
        full = log_posterior(model, ctx.train, batch_size=self.batch_size)
        kept = full
        log_bf: float | None = None
        break_even: float | None = None
        applied = False
        evidence_terms: dict[str, float] = {}
        if epoch <= ctx.epochs:
            current = weight_masks(model)
            cand = candidate_masks(model, self.target_sparsity, self.method, generator=self.generator,
                                   layers=self.layers)
            if any(not torch.equal(cand[n], current[n]) for n in cand):
                self.candidates += 1
                data = self._evidence_data(ctx.train, int(ctx.batch_size))
                pruned_point: LogPosterior | None = None
                if self.evidence is EvidenceKind.LAPLACE:
                    ebf = laplace_bayes_factor(model, cand, data, hessian=self.hessian,
                                               batch_size=min(self.batch_size, 512),
                                               curvature_subset=self.curvature_subset,
                                               fit_prior_scale=self.fit_prior_scale)
                    log_bf = ebf.log_bayes_factor
                    evidence_terms = {
                        "log_evidence_current": ebf.current.log_evidence,
                        "log_evidence_pruned": ebf.pruned.log_evidence,
                        "delta_log_likelihood": ebf.delta_log_likelihood,
                        "delta_log_occam": ebf.delta_log_occam,
                    }
                    if self.fit_prior_scale:
                        evidence_terms["prior_scale_current"] = ebf.current.prior_scale
                        evidence_terms["prior_scale_pruned"] = ebf.pruned.prior_scale
                else:
                    bf = bayes_factor(model, cand, data, full=full if data is ctx.train else None,
                                      batch_size=self.batch_size)
                    log_bf = bf.log_bayes_factor
                    break_even = bf.break_even_examples(log_threshold=self.log_threshold)
                    pruned_point = bf.pruned if data is ctx.train else None
                if not self.gate or log_bf >= self.log_threshold:
                    apply_masks(model, cand, ctx.optimizer)
                    self._refresh(model)
                    self.accepted_epochs.append(epoch)
                    applied = True
                    kept = (pruned_point if pruned_point is not None
                            else log_posterior(model, ctx.train, batch_size=self.batch_size))
        row: dict[str, Any] = {
            "sparsity": sparsity(model),
            "log_bayes_factor": log_bf,
            "break_even_examples": break_even,
            "pruned": applied,
            "train_loss": kept.mean_nll,
            "log_likelihood": kept.log_likelihood,
            "log_prior": kept.log_prior,
            "log_posterior": kept.log_joint,
            "layer_sparsity": layer_sparsity(model),
            **evidence_terms,
        }
        if kept.accuracy is not None:
            row["train_accuracy"] = kept.accuracy
        if applied and ctx.val is not None:
            row.update({f"val_{k}": v for k, v in ctx.evaluate(ctx.val).items()})
        return row

    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": self.generator.get_state(),
            "accepted_epochs": list(self.accepted_epochs),
            "candidates": self.candidates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])
        self.accepted_epochs = [int(e) for e in state.get("accepted_epochs", [])]
        self.candidates = int(state.get("candidates", 0))
        model = getattr(self, "_model", None)
        if model is not None:
            self._refresh(model)


# ----------------------------------------------------------------------------- plotting
History = Sequence[Mapping[str, Any]]


def plot_learning_curves(
    history: History | Mapping[str, History],
    path: str | os.PathLike,
    *,
    title: str | None = None,
    log_threshold: float | None = 0.0,
) -> Path:
    """Learning curves of Bayes-factor pruning runs, as in the paper's figures (PNG).

    Three panels against the epoch: the loss (``train_loss`` solid, ``val_loss`` dashed:
    mean negative log likelihood), ``log BF`` (symmetric-log axis; filled markers where a
    pruning was applied; ``log_threshold`` = ``log beta`` as a dotted line, ``None`` for
    none) and the ``sparsity``.
    ``history`` is one run's :attr:`FitResult.history` or a mapping ``label -> history``
    to overlay several runs. Drawn with Matplotlib's Agg canvas (no display needed).
    Returns the path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    runs = dict(history) if isinstance(history, Mapping) else {"": history}
    if not runs or any(len(h) == 0 for h in runs.values()):
        raise ValueError("history must hold at least one epoch (for every run)")
    fig = Figure(figsize=(13, 3.8))
    FigureCanvasAgg(fig)
    ax_loss, ax_bf, ax_sp = fig.subplots(1, 3)
    for i, (label, rows) in enumerate(runs.items()):
        color = f"C{i}"
        width = max(0.8, 2.6 - 0.5 * i)  # overlapping runs stay visible
        epochs = [int(r["epoch"]) for r in rows]
        suffix = f" {label}" if label else ""
        for key, style in (("train_loss", "-"), ("val_loss", "--")):
            pts = [(e, r[key]) for e, r in zip(epochs, rows) if r.get(key) is not None]
            if pts:
                ax_loss.plot(*zip(*pts), style, color=color, lw=width, label=f"{key}{suffix}")
        bf = [(e, r["log_bayes_factor"], bool(r.get("pruned"))) for e, r in zip(epochs, rows)
              if r.get("log_bayes_factor") is not None]
        if bf:
            ax_bf.plot([b[0] for b in bf], [b[1] for b in bf], "-", color=color, alpha=0.6,
                       lw=width, label=label or None)
            acc = [b for b in bf if b[2]]
            rej = [b for b in bf if not b[2]]
            if acc:
                ax_bf.plot([b[0] for b in acc], [b[1] for b in acc], "o", color=color)
            if rej:
                ax_bf.plot([b[0] for b in rej], [b[1] for b in rej], "x", color=color)
        sp = [(e, r["sparsity"]) for e, r in zip(epochs, rows) if r.get("sparsity") is not None]
        if sp:
            ax_sp.step(*zip(*sp), where="post", color=color, lw=width, label=label or None)
    if log_threshold is not None:
        ax_bf.axhline(log_threshold, color="k", ls=":", lw=1, label=f"log beta = {log_threshold:.3g}")
    ax_bf.set_yscale("symlog", linthresh=1.0)
    ax_loss.set(xlabel="epoch", ylabel="mean NLL", title="loss")
    ax_bf.set(xlabel="epoch", ylabel="log BF (nats)", title="Bayes factor (o applied, x rejected)")
    ax_sp.set(xlabel="epoch", ylabel="sparsity", title="sparsity", ylim=(-0.02, 1.02))
    for ax in (ax_loss, ax_bf, ax_sp):
        ax.grid(alpha=0.3)
        handles, _ = ax.get_legend_handles_labels()
        if handles:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    from pyro_prune._io import atomic_path

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format=out.suffix[1:].lower() or "png")
    return out
