r"""Posterior predictive draws, Wasserstein-2 distances and W2 neuron scores.

The predictive check of the pipeline: how far does pruning move the posterior predictive?

Posterior predictive draws (:func:`posterior_predictive`) come two ways:

* ``method="pyro"`` — through :class:`pyro.infer.Predictive`: the guide's sites are drawn
  ``draws`` times (in chunks of ``draw_chunk`` draws), then the model is replayed on each
  draw for every chunk of ``data_chunk`` inputs, so memory stays bounded by
  ``draw_chunk x parameters + draws x data_chunk x outputs``. One draw of the weights (and
  of the structure noise) is shared by all inputs: this is the predictive of the Pyro
  program, valid for any guide (``AutoNormal``, ...).
* ``method="fast"`` — :meth:`PrunableNet.sample_outputs` (``NoiseMode.REPARAM``): every
  input gets its own draw, by the local reparameterisation trick for Bayesian layers. For
  each input the draws follow the exact predictive marginal ``p(f(x_n) | data)`` (for
  Linear layers; conv layers drop spatial correlations), but draws are not shared across
  inputs. Everything that only needs per-input marginals — the W2 of this module, the
  neuron scores — can use it; it is much faster (no tracing, batched draws). It works with
  the model's own mean-field guide only.

Both return ``[draws, N, ...]`` of the backbone's output: probabilities (``output="probs"``,
the default for classification) or logits, the mean (regression default), or observation
samples (``"obs"``: class labels, or ``mean + sigma * eps``). A pruning ``mask`` — a dict
gate name -> kept bool tensor — is applied temporarily (:func:`apply_mask`).

Common random numbers: every function here takes a ``seed`` and draws in a fixed order that
does not depend on the mask (the random streams consumed are the same whichever structures
are kept), so two calls with the same seed and different masks use the same posterior draws.
The W2 between the full and a pruned network is then a property of the pruning, not of Monte
Carlo noise: identical networks give exactly 0.

Wasserstein-2 (:func:`wasserstein2`) between two empirical distributions of equal weight per
sample, per input:

* 1-D outputs: exact, from the quantile functions, ``W2^2 = int_0^1 (F_p^-1(u) - F_q^-1(u))^2 du``
  (sorted samples when the counts are equal);
* multivariate outputs: the exact optimal transport cost with squared Euclidean ground cost
  (POT's network simplex, ``ot.emd2``), ``O(S^3 log S)`` per input; the functions below use
  ``draws=32`` by default (``S x S = 1024`` costs per input), which with common random numbers
  resolves shifts well below the spread of the predictive;
* :func:`wasserstein2_gaussian`: the closed form between Gaussians (a test oracle).

Over a data set the per-input distances are aggregated by the root mean square,
``W2_data = sqrt(mean_n W2(p(.|x_n), q(.|x_n))^2)``: the W2 between the joint distributions of
``(x, f(x))`` under couplings that keep the input fixed.

:func:`w2_shift` gives ``W2(p_full, p_pruned)`` and the normalised shift
``W2(p_full, p_pruned) / W2(p_full, p_empty)``, where ``p_empty`` is the fully pruned network
(every structure of every gate removed, so the output is the output layer's bias only).
It applies after any criterion (BMRS, SNR, W2 search, ...).

:func:`neuron_w2` scores every structure by ``W2(p_z, delta_0)^2 = Var[z] + E[z]^2 = E[z^2]``
of its activation ``z`` over the inputs and the posterior draws (Kuboň, "Practical
Neuron-level Pruning Framework for Bayesian Neural Networks", TU Delft 2025): the squared
distance between the neuron's output distribution and the point mass at zero that removing
it would put there. ``z`` is the gate's output passed through the elementwise activation
that follows it (e.g. ``ReLU``; none if another op follows); a conv channel's score averages
over its positions.
"""

from __future__ import annotations

import contextlib
import enum
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from pyro_prune._checks import check_inputs
from pyro_prune._enums import parse_enum
from pyro_prune.models.base import Likelihood, PrunableNet, check_prunable
from pyro_prune.models.gate import StructureGate
from pyro_prune.models.noise import NoiseMode, noise_mode

__all__ = [
    "LpdComparison",
    "Method",
    "NeuronScore",
    "Output",
    "PredictiveRun",
    "W2Shift",
    "aggregate_w2",
    "apply_mask",
    "compare_lpd",
    "empty_mask",
    "evaluate_predictive",
    "kept_mask",
    "log_predictive_density",
    "neuron_w2",
    "posterior_predictive",
    "predictive_w2",
    "predictive_run",
    "w2_shift",
    "wasserstein2",
    "wasserstein2_1d",
    "wasserstein2_gaussian",
]

Mask = Mapping[str, Tensor]

#: default number of posterior draws per input for W2 estimates and neuron scores
DEFAULT_DRAWS = 32


class Method(enum.Enum):
    """How posterior predictive draws are made (see the module docstring)."""

    #: :class:`pyro.infer.Predictive` on the model and guide; one weight draw for all inputs
    PYRO = "pyro"
    #: ``NoiseMode.REPARAM`` (local reparameterisation): one draw per input, batched
    FAST = "fast"


class NeuronScore(enum.Enum):
    """What a structure's W2 score measures (see :func:`neuron_w2`)."""

    #: ``E[z^2] = W2(p_z, delta_0)^2`` of the activation ``z`` (Kuboň 2025)
    ACTIVATION = "activation"
    #: ``E[||z w_out||^2] = E[z^2] sum_k E[w_kj^2]``: the W2 to zero of the signal the
    #: structure sends into the next layer (its activation times its outgoing weights)
    CONTRIBUTION = "contribution"


class Output(enum.Enum):
    """Which quantity a predictive draw returns."""

    #: ``PROBS`` for classification, ``MEAN`` for regression
    AUTO = "auto"
    #: the backbone's output (logits for classification)
    LOGITS = "logits"
    #: softmax probabilities (classification)
    PROBS = "probs"
    #: the backbone's output (the mean for regression)
    MEAN = "mean"
    #: a draw of the observation: a class label, or ``mean + sigma * eps``
    OBS = "obs"


_enum = parse_enum


def _check_int(value: object, arg: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{arg} must be an int >= {minimum}, got {value!r}")
    return value


_inputs = check_inputs


_check_model = check_prunable


def _resolve_output(model: PrunableNet, output: Output | str) -> Output:
    out = _enum(Output, output, "output")
    if out is Output.AUTO:
        return Output.PROBS if model.likelihood is Likelihood.CATEGORICAL else Output.MEAN
    if out is Output.PROBS and model.likelihood is not Likelihood.CATEGORICAL:
        raise ValueError("output='probs' needs a categorical model")
    return out  # type: ignore[return-value]


def _resolve_method(model: PrunableNet, method: Method | str, guide: Callable | None) -> Method:
    m = _enum(Method, method, "method")
    if m is Method.FAST and guide is not None and guide != model.guide and guide is not _fitted_guide(model):
        raise ValueError("method='fast' works with the model's own guide only; use method='pyro'")
    return m  # type: ignore[return-value]


def _fitted_guide(model: PrunableNet) -> Callable | None:
    """The autoguide :func:`~pyro_prune.inference.fit.fit` trained and attached, if any: its
    posterior is what the fast path's draws (and the default guide) follow."""
    return model.__dict__.get("_fitted_guide")


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator inside the block and restore the caller's state after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# ---------------------------------------------------------------------------- masks
def kept_mask(model: PrunableNet) -> dict[str, Tensor]:
    """The current ``kept`` of every gate (copies): :meth:`PrunableNet.kept_mask`."""
    return _check_model(model).kept_mask()


def empty_mask(model: PrunableNet) -> dict[str, Tensor]:
    """Every structure of every gate removed: the fully pruned network ``p_empty``."""
    return {name: torch.zeros_like(m) for name, m in _check_model(model).kept_mask().items()}


@contextlib.contextmanager
def apply_mask(model: PrunableNet, mask: Mask | None) -> Iterator[PrunableNet]:
    """Temporarily keep only ``kept & mask[gate]`` in the named gates: :meth:`PrunableNet.masked`.

    Unlike :meth:`StructureGate.prune` this may empty a gate (for ``p_empty``) and it is
    undone on exit, so a removed structure comes back only to where it was before.
    """
    with _check_model(model).masked(mask):
        yield model


@contextlib.contextmanager
def _no_data_scaling(model: PrunableNet) -> Iterator[None]:
    """Predictive draws do not need the ``num_data / batch`` likelihood scale."""
    num_data = model.num_data
    model.num_data = None
    try:
        yield
    finally:
        model.num_data = num_data


# ---------------------------------------------------------------------------- structure
def _owner_model(model: PrunableNet | nn.Module) -> PrunableNet | None:
    """``model``, or the model whose backbone ``model`` is (recorded by its gates)."""
    if isinstance(model, PrunableNet):
        return model
    for m in model.modules():
        owner = m.__dict__.get("_owner") if isinstance(m, StructureGate) else None
        if owner is not None and owner[0].net is model:
            return owner[0]  # type: ignore[no-any-return]
    return None


def _gate_info(model: PrunableNet | nn.Module, gate_name: str) -> Any:
    """Gate ``gate_name``'s entry of the structure graph (None when the network cannot be
    traced: no activation or consumer is known then)."""
    from pyro_prune.graph import structure_graph

    owner = _owner_model(model)
    if owner is None:
        return None
    try:
        return structure_graph(owner).gates.get(gate_name)
    except (ValueError, TypeError, RuntimeError):
        return None


def _activation_after(model: PrunableNet | nn.Module, gate_name: str) -> Callable[[Tensor], Tensor] | None:
    """The elementwise activation applied right after gate ``gate_name``, if any."""
    info = _gate_info(model, gate_name)
    return info.activation if info is not None else None


def _consumer_of(model: PrunableNet | nn.Module, gate_name: str) -> nn.Module | None:
    """The one weight layer that reads gate ``gate_name``'s output (through activations,
    pooling and index ops); ``None`` when there is no such single consumer."""
    info = _gate_info(model, gate_name)
    if info is None or len(info.consumers) != 1:
        return None
    owner = _owner_model(model)
    assert owner is not None
    return owner.net.get_submodule(info.consumers[0])


def _outgoing_second_moments(layer: nn.Module, n: int, rows_kept: Tensor | None = None) -> Tensor | None:
    """``sum_k E[w_kj^2]`` over the outgoing weights of each of the ``n`` input structures.

    ``rows_kept`` masks the consumer's removed output structures (their weights send the
    signal nowhere).
    """
    loc = getattr(layer, "weight_loc", None)
    if loc is not None:
        m2 = loc.detach() ** 2 + (2 * cast(Tensor, layer.weight_log_scale).detach()).exp()
    else:
        m2 = cast(Tensor, layer.weight).detach() ** 2
    if getattr(layer, "groups", 1) != 1:
        return None
    if rows_kept is not None and rows_kept.shape == m2.shape[:1]:
        m2 = m2 * rows_kept.to(m2.dtype).reshape(-1, *([1] * (m2.dim() - 1)))
    cols = m2.sum(0)
    cols = cols.sum(tuple(range(1, cols.dim()))) if cols.dim() > 1 else cols  # conv kernels
    if cols.numel() == n:
        return cols
    if cols.dim() == 1 and cols.numel() % n == 0:  # flattened channels feeding a Linear layer
        return cols.reshape(n, -1).sum(-1)
    return None


class _ScoreRecorder:
    """Forward hooks accumulating ``sum z^2`` per structure of every gate."""

    def __init__(self, model: PrunableNet) -> None:
        self.net = model.net
        self.gates = model.gates()
        self.model = model
        self.activations = {n: _activation_after(model, n) for n in self.gates}
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}
        self.handles: list = []

    def _hook(self, name: str) -> Callable:
        gate = self.gates[name]

        def hook(_module: nn.Module, _inp: tuple, out: Tensor) -> None:
            act = self.activations[name]
            z = act(out) if act is not None else out
            dim = gate.dim % z.dim()
            z2 = (z.detach().double() ** 2).movedim(dim, -1).reshape(-1, gate.num_structures)
            self.sums[name] = self.sums.get(name, 0) + z2.sum(0)
            self.counts[name] = self.counts.get(name, 0) + z2.shape[0]

        return hook

    def __enter__(self) -> _ScoreRecorder:
        for name, gate in self.gates.items():
            self.handles.append(gate.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def _rows_kept(self, layer: nn.Module) -> Tensor | None:
        """Kept output structures of ``layer`` (``kept`` of the gates that select its rows)."""
        kept = None
        for gate in self.gates.values():
            if gate.producer_name is not None and self.net is not None \
                    and self.net.get_submodule(gate.producer_name) is layer:
                kept = gate.kept if kept is None else kept & gate.kept
        return kept

    def scores(self, kind: NeuronScore = NeuronScore.ACTIVATION) -> dict[str, Tensor]:
        out = {}
        for name, gate in self.gates.items():
            if name in self.sums:
                s = (self.sums[name] / self.counts[name]).float()
            else:
                s = torch.zeros(gate.num_structures)
            if kind is NeuronScore.CONTRIBUTION:
                consumer = _consumer_of(self.model, name)
                weights = None if consumer is None else _outgoing_second_moments(
                    consumer, gate.num_structures, self._rows_kept(consumer))
                if weights is None:
                    raise ValueError(
                        f"score='contribution' needs the weight layer that reads gate {name!r} "
                        f"(through activations, pooling and flattening only); none was found"
                    )
                s = s * weights.to(s.device, s.dtype)
            out[name] = s * gate.kept.to(s.device, s.dtype)
        return out


# ---------------------------------------------------------------------------- draws
@dataclass
class PredictiveRun:
    """Posterior predictive draws ``[draws, N, ...]`` and (optionally) the neuron scores."""

    samples: Tensor
    scores: dict[str, Tensor] | None = None


def _transform(model: PrunableNet, out: Tensor, output: Output) -> Tensor:
    if output is Output.PROBS:
        return torch.softmax(out, dim=-1)
    if output is Output.OBS:
        if model.likelihood is Likelihood.CATEGORICAL:
            return torch.distributions.Categorical(logits=out).sample()
        return out + model.obs_scale.detach() * torch.randn_like(out)
    return out


def _fast_draws(model: PrunableNet, x: Tensor, draws: int, output: Output,
                rows_per_pass: int) -> Tensor:
    chunks = []
    n = x.shape[0]
    draw_chunk = max(1, min(draws, rows_per_pass // max(1, n)))
    data_chunk = n if draw_chunk > 1 else max(1, min(n, rows_per_pass))
    with noise_mode(model.net, NoiseMode.REPARAM):
        for d0 in range(0, draws, draw_chunk):
            d = min(draw_chunk, draws - d0)
            per_draw = []
            for i in range(0, n, data_chunk):
                xb = x[i : i + data_chunk]
                rep = xb.unsqueeze(0).expand(d, *xb.shape).reshape(d * xb.shape[0], *xb.shape[1:])
                out = model.net(rep)
                out = _transform(model, out, output)
                per_draw.append(out.reshape(d, xb.shape[0], *out.shape[1:]))
            chunks.append(torch.cat(per_draw, dim=1))
    return torch.cat(chunks, dim=0)


def _pyro_draws(model: PrunableNet, guide: Callable, x: Tensor, draws: int, output: Output,
                draw_chunk: int, data_chunk: int, recording: bool) -> Tensor:
    """Latents from the guide through ``Predictive``; the model replayed on every data chunk.

    With ``recording`` (neuron scores) the model is replayed by hand with
    :func:`pyro.poutine.condition` on the same latent draws (``Predictive`` also runs the
    model unconditioned to find its plates, which the score hooks must not see).
    """
    from pyro import poutine
    from pyro.infer import Predictive

    site = "obs" if output is Output.OBS else "_RETURN"
    chunks = []
    with noise_mode(model.net, NoiseMode.SAMPLE), _no_data_scaling(model):
        for d0 in range(0, draws, draw_chunk):
            d = min(draw_chunk, draws - d0)
            latents = Predictive(guide, num_samples=d, return_sites=None)(x[:1])
            latents = {k: v.detach() for k, v in latents.items()}
            per_draw = []
            for i in range(0, x.shape[0], data_chunk):
                xb = x[i : i + data_chunk]
                if recording:
                    values: list[Tensor] = []
                    for j in range(d):
                        conditioned = poutine.condition(model, {k: v[j] for k, v in latents.items()})
                        trace = poutine.trace(conditioned).get_trace(xb)
                        values.append(cast(Tensor, trace.nodes[site]["value"]))
                    out = torch.stack(values)
                elif latents:
                    out = Predictive(model, posterior_samples=latents, return_sites=[site])(xb)[site]
                else:  # no latent variables: the model is deterministic
                    out = Predictive(model, num_samples=d, return_sites=[site])(xb)[site]
                if output is not Output.OBS:
                    out = _transform(model, out, output)
                per_draw.append(out)
            chunks.append(torch.cat(per_draw, dim=1))
    return torch.cat(chunks, dim=0)


@torch.no_grad()
def predictive_run(
    model: PrunableNet,
    data: Tensor | TensorDataset,
    *,
    guide: Callable | None = None,
    draws: int = DEFAULT_DRAWS,
    mask: Mask | None = None,
    method: Method | str = Method.FAST,
    output: Output | str = Output.AUTO,
    seed: int = 0,
    scores: bool = False,
    score: NeuronScore | str = NeuronScore.ACTIVATION,
    draw_chunk: int = 16,
    data_chunk: int = 1024,
    rows_per_pass: int = 32768,
) -> PredictiveRun:
    """Posterior predictive draws and, with ``scores=True``, the W2 neuron scores of one pass.

    See :func:`posterior_predictive` (the draws) and :func:`neuron_w2` (the scores); doing
    both in one pass halves the cost of the iterative W2 search. ``score`` picks the
    :class:`NeuronScore`.
    """
    model = _check_model(model)
    x = _inputs(data)
    draws = _check_int(draws, "draws")
    _check_int(draw_chunk, "draw_chunk")
    _check_int(data_chunk, "data_chunk")
    _check_int(rows_per_pass, "rows_per_pass")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    m = _resolve_method(model, method, guide)
    out_kind = _resolve_output(model, output)
    score_kind = _enum(NeuronScore, score, "score")
    guide = guide if guide is not None else (_fitted_guide(model) or model.guide)
    was_training = model.training
    model.eval()
    recorder = _ScoreRecorder(model) if scores else None
    try:
        with apply_mask(model, mask), _seeded(seed), \
                (recorder if recorder is not None else contextlib.nullcontext()):
            if m is Method.FAST:
                samples = _fast_draws(model, x, draws, out_kind, rows_per_pass)
            else:
                samples = _pyro_draws(model, guide, x, draws, out_kind, draw_chunk, data_chunk,
                                      recording=recorder is not None)
            score_values = recorder.scores(score_kind) if recorder is not None else None
    finally:
        model.train(was_training)
    return PredictiveRun(samples=samples, scores=score_values)


def posterior_predictive(
    model: PrunableNet,
    data: Tensor | TensorDataset,
    *,
    guide: Callable | None = None,
    draws: int = 100,
    mask: Mask | None = None,
    method: Method | str = Method.PYRO,
    output: Output | str = Output.AUTO,
    seed: int = 0,
    draw_chunk: int = 16,
    data_chunk: int = 1024,
) -> Tensor:
    """Posterior predictive draws ``[draws, N, ...]`` of a model and its guide.

    Args:
        model: the :class:`PrunableNet`.
        data: inputs ``[N, ...]`` (or a ``TensorDataset`` whose first tensor they are).
        guide: the guide (default: the autoguide ``fit`` trained, else ``model.guide``);
            ``method="fast"`` needs the default.
        draws: number of posterior draws.
        mask: optional dict gate name -> kept bool tensor, applied temporarily.
        method: ``"pyro"`` (:class:`pyro.infer.Predictive`, one weight draw shared by all
            inputs) or ``"fast"`` (local reparameterisation, independent per-input draws).
        output: ``"auto"``, ``"logits"``, ``"probs"``, ``"mean"`` or ``"obs"``.
        seed: the draws are a function of the seed only (common random numbers); the
            caller's random state is left untouched.
        draw_chunk, data_chunk: chunk sizes of the Pyro path (memory bound).
    """
    return predictive_run(model, data, guide=guide, draws=draws, mask=mask, method=method,
                          output=output, seed=seed, draw_chunk=draw_chunk,
                          data_chunk=data_chunk).samples


def _draws_on_labelled(model: PrunableNet, dataset: TensorDataset, *, guide: Callable | None,
                       draws: int, mask: Mask | None, method: Method | str, seed: int
                       ) -> tuple[Tensor, Tensor]:
    """The network outputs ``[S, N, ...]`` (logits for a classifier, the mean otherwise) of
    ``draws`` posterior draws on a labelled data set, and its targets."""
    if not isinstance(dataset, TensorDataset) or len(dataset.tensors) != 2:
        raise TypeError("dataset must be a TensorDataset of (inputs, targets)")
    x, y = dataset.tensors
    output = Output.LOGITS if model.likelihood is Likelihood.CATEGORICAL else Output.MEAN
    out = predictive_run(model, x, guide=guide, draws=draws, mask=mask, method=method,
                         output=output, seed=seed).samples
    return out, y


@torch.no_grad()
def evaluate_predictive(
    model: PrunableNet,
    dataset: TensorDataset,
    *,
    guide: Callable | None = None,
    draws: int = 100,
    mask: Mask | None = None,
    method: Method | str = Method.FAST,
    seed: int = 0,
    target_scale: float = 1.0,
) -> dict[str, float]:
    r"""Metrics of the posterior predictive (Bayesian model average) on a labelled data set.

    Classification: ``accuracy`` of ``argmax_c mean_s p_s(c | x)`` and ``nll`` =
    ``-mean_n log mean_s p_s(y_n | x_n)``. Regression: ``rmse`` of the predictive mean
    ``mean_s f_s(x)`` and ``ll`` = ``mean_n log mean_s N(y_n | f_s(x_n), sigma^2)``, both in the
    units of ``target_scale * y`` (pass the training targets' standard deviation to report
    standardised UCI targets in their original units; the log likelihood then subtracts
    ``log target_scale``).
    """
    model = _check_model(model)
    if not (isinstance(target_scale, (int, float)) and target_scale > 0):
        raise ValueError(f"target_scale must be a positive number, got {target_scale!r}")
    out, y = _draws_on_labelled(model, dataset, guide=guide, draws=draws, mask=mask, method=method,
                                seed=seed)
    out = out.double()
    log_s = math.log(out.shape[0])
    if model.likelihood is Likelihood.CATEGORICAL:
        log_p = torch.log_softmax(out, -1).logsumexp(0) - log_s  # [N, C]
        return {"accuracy": float((log_p.argmax(-1) == y).double().mean()),
                "nll": float(-log_p.gather(-1, y[:, None]).mean())}
    rmse = float(((out.mean(0) - y.double()) ** 2).mean().sqrt()) * target_scale
    log_lik = _log_lik_draws(model, out, y).logsumexp(0) - log_s
    ll = float(log_lik.mean()) - y.shape[-1] * math.log(target_scale)
    return {"rmse": rmse, "ll": ll}


# ------------------------------------------------------------- log predictive density
def _log_lik_draws(model: PrunableNet, out: Tensor, y: Tensor) -> Tensor:
    """``log p(y_n | x_n, z_s)`` of every draw ``[S, N]`` from the network outputs ``out``."""
    out = out.double()
    if model.likelihood is Likelihood.CATEGORICAL:
        return torch.log_softmax(out, -1).gather(-1, y.expand(out.shape[0], -1)[..., None])[..., 0]
    sigma = model.obs_scale.detach().double()
    return torch.distributions.Normal(out, sigma).log_prob(y.double()).sum(-1)


@torch.no_grad()
def log_predictive_density(
    model: PrunableNet,
    dataset: TensorDataset,
    *,
    guide: Callable | None = None,
    draws: int = 100,
    mask: Mask | None = None,
    method: Method | str = Method.FAST,
    seed: int = 0,
) -> Tensor:
    r"""Pointwise log posterior predictive density of held-out data, ``[N]`` (float64).

    :math:`\mathrm{lpd}_n = \log \frac1S \sum_s p(y_n \mid x_n, z_s)` with ``S = draws``
    posterior draws, formed with logsumexp. Summed over a test set it is the quantity a
    Bayesian model is judged by on new data (PSIS-LOO estimates the same thing from the
    training data, where the test data are not available). ``mask`` removes structures
    temporarily (:func:`apply_mask`); with the same ``seed`` two calls use the same random
    numbers, so their difference is paired.
    """
    model = _check_model(model)
    out, y = _draws_on_labelled(model, dataset, guide=guide, draws=draws, mask=mask, method=method,
                                seed=seed)
    ll = _log_lik_draws(model, out, y)
    return ll.logsumexp(0) - math.log(ll.shape[0])


@dataclass(frozen=True)
class LpdComparison:
    """Test-set log predictive density of a pruned and a full network, paired over test points.

    Attributes:
        n: number of test points.
        pruned, full: ``sum_n lpd_n`` of each network.
        difference: ``pruned - full`` (positive: the pruned network predicts the test data
            better).
        se: standard error of ``difference``: ``sqrt(n * Var_n(lpd_n(pruned) - lpd_n(full)))``
            (the pointwise differences are paired; this is the SE of the sum).
    """

    n: int
    pruned: float
    full: float
    difference: float
    se: float

    @property
    def pruned_mean(self) -> float:
        return self.pruned / self.n

    @property
    def full_mean(self) -> float:
        return self.full / self.n

    def __str__(self) -> str:
        return (f"test log predictive density: pruned {self.pruned:.1f} (mean {self.pruned_mean:.4f}), "
                f"full {self.full:.1f} (mean {self.full_mean:.4f}); difference {self.difference:+.1f} "
                f"+- {self.se:.1f} over {self.n} test points")


def compare_lpd(pruned: Tensor, full: Tensor) -> LpdComparison:
    """Paired comparison of two pointwise log predictive densities on the same test points."""
    if not isinstance(pruned, Tensor) or not isinstance(full, Tensor):
        raise TypeError("pruned and full must be tensors of pointwise log predictive densities")
    if pruned.shape != full.shape or pruned.dim() != 1 or pruned.numel() < 2:
        raise ValueError(
            f"pruned and full must be 1-D, of the same length >= 2 (the same test points), got "
            f"{tuple(pruned.shape)} and {tuple(full.shape)}"
        )
    d = pruned.double() - full.double()
    n = d.numel()
    return LpdComparison(n=n, pruned=float(pruned.double().sum()), full=float(full.double().sum()),
                         difference=float(d.sum()), se=float(math.sqrt(n) * d.std(unbiased=True)))


# ---------------------------------------------------------------------------- W2
def _check_samples(p: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
    for arg, t in (("samples_p", p), ("samples_q", q)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{arg} must be a Tensor, got {type(t).__name__}")
        if t.dim() < 2:
            raise ValueError(f"{arg} must be [draws, ..., event] (at least 2-D), got shape {tuple(t.shape)}")
        if t.shape[0] < 1:
            raise ValueError(f"{arg} has no draws")
        if not t.is_floating_point():
            raise TypeError(f"{arg} must be a floating point tensor, got {t.dtype}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{arg} contains NaN or infinite values")
    if p.shape[-1] != q.shape[-1]:
        raise ValueError(f"event sizes differ: samples_p {p.shape[-1]} vs samples_q {q.shape[-1]}")
    try:
        batch = torch.broadcast_shapes(p.shape[1:-1], q.shape[1:-1])
    except RuntimeError:
        raise ValueError(
            f"batch shapes {tuple(p.shape[1:-1])} and {tuple(q.shape[1:-1])} do not broadcast") from None
    p = p.expand(p.shape[0], *batch, p.shape[-1])
    q = q.expand(q.shape[0], *batch, q.shape[-1])
    return p, q


def wasserstein2_1d(samples_p: Tensor, samples_q: Tensor) -> Tensor:
    r"""Exact W2 between 1-D empirical distributions, along dim 0 (any batch dims after).

    Equal counts: ``sqrt(mean_i (p_(i) - q_(i))^2)`` of the sorted samples. Unequal counts:
    ``W2^2 = int_0^1 (F_p^-1(u) - F_q^-1(u))^2 du`` integrated exactly over the intervals
    between the jumps ``i / S_p`` and ``j / S_q`` of the two quantile step functions.
    """
    p, q = _check_samples(samples_p.unsqueeze(-1), samples_q.unsqueeze(-1))
    p, _ = torch.sort(p[..., 0], dim=0)
    q, _ = torch.sort(q[..., 0], dim=0)
    sp, sq = p.shape[0], q.shape[0]
    if sp == sq:
        return ((p - q) ** 2).mean(0).sqrt()
    # breakpoints as exact fractions k / lcm to avoid rounding
    lcm = sp * sq // math.gcd(sp, sq)
    cuts = sorted(set(range(0, lcm + 1, lcm // sp)) | set(range(0, lcm + 1, lcm // sq)))
    lo = torch.tensor(cuts[:-1], dtype=torch.long)
    hi = torch.tensor(cuts[1:], dtype=torch.long)
    widths = ((hi - lo).double() / lcm).to(p.dtype)
    ip = lo // (lcm // sp)  # index of the quantile on (lo, hi]
    iq = lo // (lcm // sq)
    diff = p.index_select(0, ip) - q.index_select(0, iq)
    w = widths.reshape(-1, *([1] * (p.dim() - 1)))
    return (w * diff**2).sum(0).sqrt()


def wasserstein2(samples_p: Tensor, samples_q: Tensor) -> Tensor:
    r"""W2 between two empirical distributions given as samples ``[draws, *batch, event]``.

    Each sample has equal weight (``1 / S_p`` and ``1 / S_q``). The batch dims (between the
    draws and the event) broadcast; the result has the batch shape. One-dimensional events
    use the exact quantile formula (:func:`wasserstein2_1d`); larger events the exact optimal
    transport cost with squared Euclidean ground cost (``ot.emd2``), ``O(S^3 log S)`` each.
    """
    p, q = _check_samples(samples_p, samples_q)
    if p.shape[-1] == 1:
        return wasserstein2_1d(p[..., 0], q[..., 0]).to(samples_p.dtype)
    import ot

    batch = p.shape[1:-1]
    pf = p.reshape(p.shape[0], -1, p.shape[-1]).detach().double().cpu()
    qf = q.reshape(q.shape[0], -1, q.shape[-1]).detach().double().cpu()
    a = np.full(p.shape[0], 1.0 / p.shape[0])
    b = np.full(q.shape[0], 1.0 / q.shape[0])
    costs = torch.cdist(pf.transpose(0, 1), qf.transpose(0, 1)) ** 2  # [B, S_p, S_q]
    out = np.empty(costs.shape[0])
    for i, m in enumerate(costs.numpy()):
        out[i] = ot.emd2(a, b, m, numItermax=1_000_000)
    w2 = torch.from_numpy(np.sqrt(np.maximum(out, 0.0))).to(samples_p.dtype)
    return w2.reshape(batch)


def _sqrtm_psd(c: Tensor) -> Tensor:
    evals, evecs = torch.linalg.eigh(c)
    return (evecs * evals.clamp_min(0).sqrt().unsqueeze(-2)) @ evecs.transpose(-1, -2)


def wasserstein2_gaussian(m1: Tensor, c1: Tensor, m2: Tensor, c2: Tensor) -> Tensor:
    r"""Closed-form W2 between ``N(m1, C1)`` and ``N(m2, C2)`` (batched over leading dims).

    ``W2^2 = ||m1 - m2||^2 + tr(C1 + C2 - 2 (C2^{1/2} C1 C2^{1/2})^{1/2})``, computed in
    float64 with symmetric eigendecompositions.
    """
    m1, c1, m2, c2 = (torch.as_tensor(t).double() for t in (m1, c1, m2, c2))
    for arg, c in (("C1", c1), ("C2", c2)):
        if c.dim() < 2 or c.shape[-1] != c.shape[-2]:
            raise ValueError(f"{arg} must be a square matrix [..., d, d], got shape {tuple(c.shape)}")
    if m1.shape[-1] != c1.shape[-1] or m2.shape[-1] != c2.shape[-1] or m1.shape[-1] != m2.shape[-1]:
        raise ValueError("means and covariances must have the same dimension d")
    s2 = _sqrtm_psd(c2)
    cross = _sqrtm_psd(s2 @ c1 @ s2)
    trace = (torch.diagonal(c1, dim1=-2, dim2=-1).sum(-1) + torch.diagonal(c2, dim1=-2, dim2=-1).sum(-1)
             - 2 * torch.diagonal(cross, dim1=-2, dim2=-1).sum(-1))
    w2sq = ((m1 - m2) ** 2).sum(-1) + trace
    return w2sq.clamp_min(0).sqrt()


def aggregate_w2(per_input: Tensor) -> float:
    """Root mean square of per-input W2 distances: ``sqrt(mean_n W2_n^2)``."""
    return float((per_input.double() ** 2).mean().sqrt())


def _as_event(samples: Tensor) -> Tensor:
    """``[draws, N]`` -> ``[draws, N, 1]``; ``[draws, N, ...]`` -> ``[draws, N, prod(...)]``."""
    if samples.dim() == 2:
        return samples.unsqueeze(-1)
    return samples.reshape(samples.shape[0], samples.shape[1], -1)


def predictive_w2(p: Tensor, q: Tensor) -> float:
    """W2 between two sets of predictive draws ``[draws, N, ...]``, aggregated over the inputs."""
    if not p.is_floating_point():
        raise ValueError("W2 needs real-valued draws; output='obs' of a categorical model gives labels")
    return aggregate_w2(wasserstein2(_as_event(p), _as_event(q)))


# ---------------------------------------------------------------------------- shift
@dataclass(frozen=True)
class W2Shift:
    """Result of :func:`w2_shift`.

    Attributes:
        w2: ``W2(p_full, p_pruned)`` (root mean square over the inputs).
        w2_empty: ``W2(p_full, p_empty)``, the shift of removing every structure.
        normalized: ``w2 / w2_empty`` (0 = unchanged predictive, 1 = as far as the empty net).
        kept_fraction: kept structures / all structures under the mask.
    """

    w2: float
    w2_empty: float
    normalized: float
    kept_fraction: float


def _kept_fraction(model: PrunableNet, mask: Mask | None) -> float:
    gates = model.gates()
    total = sum(g.num_structures for g in gates.values())
    if total == 0:
        return 1.0
    kept = 0
    for name, g in gates.items():
        k = g.kept if mask is None or name not in mask else g.kept & mask[name].to(g.kept.device)
        kept += int(k.sum())
    return kept / total


def w2_shift(
    model: PrunableNet,
    guide: Callable | None,
    mask: Mask | None,
    data: Tensor | TensorDataset,
    *,
    draws: int = DEFAULT_DRAWS,
    method: Method | str = Method.FAST,
    output: Output | str = Output.AUTO,
    seed: int = 0,
) -> W2Shift:
    """How far a pruning ``mask`` moves the posterior predictive on ``data``.

    ``p_full`` is the model as it is, ``p_pruned`` the model under ``mask`` and ``p_empty``
    the model with every structure removed; all three use the same posterior draws (common
    random numbers, ``seed``). Use it after any criterion, e.g. with
    ``mask = {g: ~remove[g] for g, remove in structure_removals(model, "bmrs_n").items()}``.
    """
    model = _check_model(model)
    if mask is not None:
        model.check_masks(mask)
    kw: dict[str, Any] = dict(guide=guide, draws=draws, method=method, output=output, seed=seed)
    full = predictive_run(model, data, **kw).samples
    pruned = predictive_run(model, data, mask=mask, **kw).samples
    empty = predictive_run(model, data, mask=empty_mask(model), **kw).samples
    w2 = predictive_w2(full, pruned)
    w2_empty = predictive_w2(full, empty)
    normalized = w2 / w2_empty if w2_empty > 0 else (0.0 if w2 == 0 else math.inf)
    return W2Shift(w2=w2, w2_empty=w2_empty, normalized=normalized,
                   kept_fraction=_kept_fraction(model, mask))


def neuron_w2(
    model: PrunableNet,
    guide: Callable | None,
    data: Tensor | TensorDataset,
    *,
    draws: int = DEFAULT_DRAWS,
    mask: Mask | None = None,
    method: Method | str = Method.FAST,
    score: NeuronScore | str = NeuronScore.ACTIVATION,
    seed: int = 0,
) -> dict[str, Tensor]:
    r"""W2 neuron scores per gate; higher = keep; removed structures score 0.

    * ``score="activation"`` (Kuboň 2025): ``E[z^2] = Var[z] + E[z]^2 = W2(p_z, delta_0)^2``
      of the structure's activation ``z``;
    * ``score="contribution"``: ``E[||z w_out||^2] = E[z^2] sum_k E[w_kj^2]``, the squared W2
      between the signal the structure sends into the next layer and zero. Under the
      mean-field posterior ``z`` and the outgoing weights ``w_kj`` are independent, and with
      common draws removing the structure changes the next layer's pre-activations by
      exactly ``z w_out``, so this bounds the shift of the next layer (in W2) from above.
      It matters for Bayesian networks fitted by mean-field VI, whose unused units often
      have large, noisy activations (incoming weights at the prior) but outgoing weights
      pinned at zero (Trippe & Turner 2018, "Overpruning in variational BNNs").

    The expectation runs over the inputs of ``data`` and ``draws`` posterior draws (and over
    the positions of a conv channel; for a conv channel flattened into a Linear layer the
    outgoing weights of all its positions are summed).
    """
    run = predictive_run(model, data, guide=guide, draws=draws, mask=mask, method=method,
                         output=Output.LOGITS if _check_model(model).likelihood is Likelihood.CATEGORICAL
                         else Output.MEAN, seed=seed, scores=True, score=score)
    assert run.scores is not None
    return run.scores
