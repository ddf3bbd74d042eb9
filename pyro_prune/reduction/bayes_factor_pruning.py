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
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from pyro_prune._checks import check_bool, check_count, check_number, check_seed
from pyro_prune._enums import HessianStructure, parse_enum
from pyro_prune.inference.schedules import Schedule
from pyro_prune.models.base import PrunableNet
from pyro_prune.models.fcn import MAPNet, ensure_weight_masks, prunable_layers, weight_masks
from pyro_prune.reduction.bayes_factors import (
    EvidenceKind,
    LogPosterior,
    _log_threshold,
    bayes_factor,
    default_evidence,
    laplace_bayes_factor,
    log_posterior,
)
from pyro_prune.reduction.weight_pruning import (
    PruneMethod,
    _check_layers,
    _check_sparsity,
    _enforce_masks,
    _layer_list,
    _method,
    apply_masks,
    candidate_masks,
    layer_sparsity,
    sparsity,
)

__all__ = ["BayesFactorPruning", "LikelihoodData"]


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
        threshold: ``beta`` as a Bayes factor (> 0; default 1); accept when ``log BF >= log beta``.
        log_threshold: ``log beta`` in nats instead of ``threshold`` (e.g. ``-0.001 * N``
            tolerates a loss of 0.001 nats of log posterior per training example).
        gate: use the Bayes factor (True) or prune unconditionally (False, the baselines).
        seed: seed of the generator of random candidates and of the likelihood batches, an
            int in ``[0, 2**32 - 1]`` as ``fit``'s (default: ``fit``'s seed).
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

    Raises:
        TypeError, ValueError: at construction, for a bad argument, naming it and its value
            (the package's shared checks: ``pyro_prune._checks`` and the enums' parser);
            unknown ``layers`` when :func:`fit` starts.
        ImportError: ``evidence="laplace"`` without the curvature backend.
    """

    def __init__(
        self,
        target_sparsity: float,
        method: PruneMethod | str = PruneMethod.MAGNITUDE,
        threshold: float | None = None,
        *,
        log_threshold: float | None = None,
        gate: bool = True,
        seed: int | None = None,
        batch_size: int = 4096,
        likelihood: LikelihoodData | str = LikelihoodData.FULL,
        likelihood_batch: int | None = None,
        layers: Sequence[str] | None = None,
        evidence: EvidenceKind | str | None = None,
        hessian: HessianStructure | str = HessianStructure.KRON,
        curvature_subset: int | None = None,
        fit_prior_scale: bool = False,
    ) -> None:
        # every argument through the package's shared checks, in the order of the signature
        self.target_sparsity = _check_sparsity(check_number(target_sparsity, "target_sparsity", minimum=0.0))
        self.method = _method(method)
        self.log_threshold = _log_threshold(
            None if threshold is None else check_number(threshold, "threshold", positive=True),
            None if log_threshold is None else check_number(log_threshold, "log_threshold"))
        self.gate = check_bool(gate, "gate")
        self.seed = None if seed is None else check_seed(seed)
        self.batch_size = check_count(batch_size, "batch_size")
        self.likelihood = parse_enum(LikelihoodData, likelihood, "likelihood")
        self.likelihood_batch = (None if likelihood_batch is None
                                 else check_count(likelihood_batch, "likelihood_batch", or_none=True))
        self.layers = _layer_list(layers)
        self.evidence = default_evidence() if evidence is None else parse_enum(EvidenceKind, evidence, "evidence")
        self.hessian = parse_enum(HessianStructure, hessian, "hessian")
        self.curvature_subset = (None if curvature_subset is None
                                 else check_count(curvature_subset, "curvature_subset", or_none=True))
        self.fit_prior_scale = check_bool(fit_prior_scale, "fit_prior_scale")
        if self.evidence is EvidenceKind.LAPLACE:
            from pyro_prune.laplace import require_backend

            require_backend()  # a clear ImportError now rather than after the first epoch
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
            f"evidence={self.evidence.value!r}, hessian={self.hessian.value!r})"
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
