r"""Posterior predictive draws of a model and its guide, with a pruning mask applied for the call.

Two engines (:class:`~pyro_prune.predictive.Engine`, the switch ``fit`` has too):

* ``engine="pyro"`` — through :class:`pyro.infer.Predictive`: the guide's sites are drawn
  ``draws`` times (in chunks of ``draw_chunk`` draws), then the model is replayed on each
  draw for every chunk of ``data_chunk`` inputs, so memory stays bounded by
  ``draw_chunk x parameters + draws x data_chunk x outputs``. One draw of the weights (and
  of the structure noise) is shared by all inputs: this is the predictive of the Pyro
  program, valid for any guide (``AutoNormal``, ...).
* ``engine="fast"`` — :meth:`PrunableNet.sample_outputs` (``NoiseMode.REPARAM``): every
  input gets its own draw, by the local reparameterisation trick for Bayesian layers. For
  each input the draws follow the exact predictive marginal ``p(f(x_n) | data)`` (for
  Linear layers; conv layers drop spatial correlations), but draws are not shared across
  inputs. Everything that only needs per-input marginals — the W2 distances, the
  neuron scores — can use it; it is much faster (no tracing, batched draws). It works with
  the model's own mean-field guide only.
* ``engine="auto"`` — ``"fast"`` with the model's own (or its fitted) guide, ``"pyro"`` with
  any other.

The keyword was ``method=`` before; every function of :mod:`pyro_prune.predictive` (and
:func:`~pyro_prune.inference.w2_prune`) still accepts it for one release, with a
``DeprecationWarning``; passing both ``engine=`` and ``method=`` is a ``TypeError``.

Both return ``[draws, N, ...]`` of the backbone's output: probabilities (``output="probs"``,
the default for classification) or logits, the mean (regression default), or observation
samples (``"obs"``: class labels, or ``mean + sigma * eps``). A pruning ``mask`` — a dict
gate name -> kept bool tensor — is applied temporarily (:func:`apply_mask`).

Common random numbers: every function takes a ``seed`` and draws in a fixed order that
does not depend on the mask (the random streams consumed are the same whichever structures
are kept), so two calls with the same seed and different masks use the same posterior draws.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from pyro_prune._checks import check_count, check_inputs
from pyro_prune._deprecation import renamed_keywords
from pyro_prune._enums import Engine, parse_enum
from pyro_prune.models.base import Likelihood, PrunableNet, check_prunable
from pyro_prune.models.noise import NoiseMode, noise_mode
from pyro_prune.reduction.neuron_scores import NeuronScore, ScoreRecorder

__all__ = [
    "DEFAULT_DRAWS",
    "Mask",
    "Output",
    "PredictiveRun",
    "apply_mask",
    "empty_mask",
    "kept_mask",
    "posterior_predictive",
    "predictive_run",
]

#: a pruning mask: gate name -> kept bool tensor
Mask = Mapping[str, Tensor]

#: default number of posterior draws per input for W2 estimates and neuron scores
DEFAULT_DRAWS = 32


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


def _resolve_output(model: PrunableNet, output: Output | str) -> Output:
    out = parse_enum(Output, output, "output")
    if out is Output.AUTO:
        return Output.PROBS if model.likelihood is Likelihood.CATEGORICAL else Output.MEAN
    if out is Output.PROBS and model.likelihood is not Likelihood.CATEGORICAL:
        raise ValueError("output='probs' needs a categorical model")
    return out  # type: ignore[return-value]


def _resolve_engine(model: PrunableNet, engine: Engine | str, guide: Callable | None) -> Engine:
    """``FAST`` or ``PYRO``: ``AUTO`` is ``FAST`` with the model's own (or fitted) guide."""
    engine = parse_enum(Engine, engine, "engine")
    own_guide = guide is None or guide == model.guide or guide is _fitted_guide(model)
    if engine is Engine.AUTO:
        return Engine.FAST if own_guide else Engine.PYRO
    if engine is Engine.FAST and not own_guide:
        raise ValueError("engine='fast' works with the model's own guide only; use engine='pyro'")
    return engine


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


def kept_mask(model: PrunableNet) -> dict[str, Tensor]:
    """The current ``kept`` of every gate (copies): :meth:`PrunableNet.kept_mask`."""
    return check_prunable(model).kept_mask()


def empty_mask(model: PrunableNet) -> dict[str, Tensor]:
    """Every structure of every gate removed: the fully pruned network ``p_empty``."""
    return {name: torch.zeros_like(m) for name, m in check_prunable(model).kept_mask().items()}


@contextlib.contextmanager
def apply_mask(model: PrunableNet, mask: Mask | None) -> Iterator[PrunableNet]:
    """Temporarily keep only ``kept & mask[gate]`` in the named gates: :meth:`PrunableNet.masked`.

    Unlike :meth:`StructureGate.prune` this may empty a gate (for ``p_empty``) and it is
    undone on exit, so a removed structure comes back only to where it was before.
    """
    with check_prunable(model).masked(mask):
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
    for d0 in range(0, draws, draw_chunk):
        d = min(draw_chunk, draws - d0)
        per_draw = []
        for i in range(0, n, data_chunk):
            xb = x[i : i + data_chunk]
            rep = xb.unsqueeze(0).expand(d, *xb.shape).reshape(d * xb.shape[0], *xb.shape[1:])
            with noise_mode(model.net, NoiseMode.REPARAM, examples=rep.shape[0]):
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


@renamed_keywords(method="engine")
@torch.no_grad()
def predictive_run(
    model: PrunableNet,
    data: Tensor | TensorDataset | Sequence[Tensor],
    *,
    guide: Callable | None = None,
    draws: int = DEFAULT_DRAWS,
    mask: Mask | None = None,
    engine: Engine | str = Engine.FAST,
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
    model = check_prunable(model)
    x = check_inputs(data)
    draws = check_count(draws, "draws")
    for value, arg in ((draw_chunk, "draw_chunk"), (data_chunk, "data_chunk"), (rows_per_pass, "rows_per_pass")):
        check_count(value, arg)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    m = _resolve_engine(model, engine, guide)
    out_kind = _resolve_output(model, output)
    score_kind = parse_enum(NeuronScore, score, "score")
    guide = guide if guide is not None else (_fitted_guide(model) or model.guide)
    was_training = model.training
    model.eval()
    recorder = ScoreRecorder(model) if scores else None
    try:
        with apply_mask(model, mask), _seeded(seed), \
                (recorder if recorder is not None else contextlib.nullcontext()):
            if m is Engine.FAST:
                samples = _fast_draws(model, x, draws, out_kind, rows_per_pass)
            else:
                samples = _pyro_draws(model, guide, x, draws, out_kind, draw_chunk, data_chunk,
                                      recording=recorder is not None)
            score_values = recorder.scores(score_kind) if recorder is not None else None
    finally:
        model.train(was_training)
    return PredictiveRun(samples=samples, scores=score_values)


@renamed_keywords(method="engine")
def posterior_predictive(
    model: PrunableNet,
    data: Tensor | TensorDataset | Sequence[Tensor],
    *,
    guide: Callable | None = None,
    draws: int = 100,
    mask: Mask | None = None,
    engine: Engine | str = Engine.PYRO,
    output: Output | str = Output.AUTO,
    seed: int = 0,
    draw_chunk: int = 16,
    data_chunk: int = 1024,
) -> Tensor:
    """Posterior predictive draws ``[draws, N, ...]`` of a model and its guide.

    Args:
        model: the :class:`PrunableNet`.
        data: inputs ``[N, ...]`` (or a ``TensorDataset`` or ``(inputs, targets)`` pair whose
            first tensor they are).
        guide: the guide (default: the autoguide ``fit`` trained, else ``model.guide``);
            ``engine="fast"`` needs the default.
        draws: number of posterior draws.
        mask: optional dict gate name -> kept bool tensor, applied temporarily.
        engine: ``"pyro"`` (:class:`pyro.infer.Predictive`, one weight draw shared by all
            inputs), ``"fast"`` (local reparameterisation, independent per-input draws) or
            ``"auto"`` (see :class:`Engine`).
        output: ``"auto"``, ``"logits"``, ``"probs"``, ``"mean"`` or ``"obs"``.
        seed: the draws are a function of the seed only (common random numbers); the
            caller's random state is left untouched.
        draw_chunk, data_chunk: chunk sizes of the Pyro path (memory bound).
    """
    return predictive_run(model, data, guide=guide, draws=draws, mask=mask, engine=engine,
                          output=output, seed=seed, draw_chunk=draw_chunk,
                          data_chunk=data_chunk).samples
