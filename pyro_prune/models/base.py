"""The Pyro model every pruning method works on: a backbone with stochastic modules.

A :class:`PrunableNet` wraps an ordinary ``nn.Module`` (the *backbone*) in which some
modules are :class:`~pyro_prune.models.noise.StochasticModule` s (multiplicative noise over
structures, Bayesian weight layers). As a Pyro program it is

    model(x, y):  backbone(x) with every stochastic module drawing its prior sites,
                  then  y_n ~ Categorical(logits) or Normal(mean, sigma)  under
                  ``pyro.plate("data", size=num_data, subsample=...)``
    guide(x, y):  every stochastic module draws its sites from its variational posterior.

With ``num_data`` set (``fit`` sets it to the training-set size) the likelihood of a
minibatch is scaled by ``num_data / batch``, so the ELBO is that of the full data set.

Token labels ``[N, T, ...]`` (a language model's next tokens) may hold the ignore label
``ignore_index`` (default ``-100``, as ``torch.nn.functional.cross_entropy`` and Hugging Face
use for padding and prompt tokens): such a token adds nothing to an example's log
likelihood, nor to the accuracy (:func:`correct_and_counted`). An example stays one example
of the ``num_data / batch`` scaling however many of its tokens are ignored.
"""

from __future__ import annotations

import contextlib
import enum
import math
from collections.abc import Iterator, Mapping, Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule
from torch import Tensor, nn

from pyro_prune._enums import parse_enum
from pyro_prune.models.bayesian import BayesianLayer, link_output_gates
from pyro_prune.models.gate import StructureGate
from pyro_prune.models.noise import (
    MultiplicativeNoise,
    NoiseMode,
    StochasticModule,
    noise_mode,
    share_noise_storage,
)

__all__ = ["IGNORE_INDEX", "IgnoringCategorical", "KLScale", "Likelihood", "PrunableNet",
           "categorical_nll", "check_kl_scale", "check_prunable", "correct_and_counted", "correct_totals"]

#: the label a token is ignored by (padding, prompt): ``torch.nn.functional.cross_entropy``'s
IGNORE_INDEX = -100


class IgnoringCategorical(dist.Categorical):
    """A categorical whose ``log_prob`` is 0 at the label ``ignore_index`` (an ignored token).

    Every reader of the observation site (the ELBO, the log-likelihood of the ArviZ export)
    then skips ignored tokens; draws are ordinary labels.
    """

    def __init__(self, logits: Tensor, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__(logits=logits, validate_args=False)  # ignore_index is outside the support
        self.ignore_index = int(ignore_index)

    def expand(self, batch_shape: torch.Size | list[int] | tuple[int, ...],
               _instance: IgnoringCategorical | None = None) -> IgnoringCategorical:
        new = self._get_checked_instance(IgnoringCategorical, _instance)
        new = super().expand(batch_shape, _instance=new)
        new.ignore_index = self.ignore_index
        return new

    def log_prob(self, value: Tensor) -> Tensor:
        ignored = value == self.ignore_index
        return super().log_prob(value.masked_fill(ignored, 0)).masked_fill(ignored, 0.0)


class Likelihood(enum.Enum):
    """The observation model of a :class:`PrunableNet`."""

    CATEGORICAL = "categorical"
    GAUSSIAN = "gaussian"


class KLScale(enum.Enum):
    """Named weightings of the KL term (a temperature of the posterior, see ``docs/defaults.md``).

    * ``ELBO`` (1.0): the evidence lower bound of the full data set, the untempered
      posterior.
    * ``PAPER``: ``num_data / num_structures``, i.e. the per-datum loss becomes
      ``mean cross-entropy + mean KL per structure``, as in the BMRS authors' released
      code. It weights the KL ``num_data / num_structures`` times more than the ELBO
      (a posterior tempered by the likelihood exponent ``num_structures / num_data``) and
      so prunes far more aggressively.
    * ``AUTO`` (the default of :func:`~pyro_prune.inference.fit`): ``PAPER`` for a
      classifier (categorical likelihood) with multiplicative noise on its structures (the
      pruning recipe of the BMRS paper), ``ELBO`` for a regression network (Gaussian
      likelihood: on the UCI sets the paper's weight raised the test RMSE by up to 53% where the
      ELBO's prunes 47 to 94% at the unpruned network's error, ``docs/defaults.md``) and for
      a network without noise (Bayesian weights alone, whose posterior the W2 and
      Bayes-factor methods use).

    A named weight is a weight per structure: in a network with multiplicative noise it
    weights the noise KL only, and Gaussian weights (``weights="gaussian"``) keep the ELBO's
    weight 1: tempering them as well leaves the Bayesian network badly underfitted
    (``docs/defaults.md``). A number weights every KL term: the tempered posterior of the
    whole model.
    """

    ELBO = "elbo"
    PAPER = "paper"
    AUTO = "auto"


class PrunableNet(PyroModule):
    """A Pyro model built on a backbone network with stochastic modules.

    Args:
        net: the backbone; its :class:`StochasticModule` s are the latent variables.
        likelihood: ``"categorical"`` (backbone outputs logits) or ``"gaussian"``
            (backbone outputs the mean; the observation noise ``sigma`` is a learned point
            estimate, ``log_obs_scale``).
        num_data: size of the full training set, for the ``num_data / batch`` scaling
            of the likelihood; ``None`` scales by 1.
        obs_scale: initial observation noise of the Gaussian likelihood.
    """

    #: shape of one input without the batch axis (the ready networks record it), or ``None``
    input_shape: tuple[int, ...] | None = None
    #: the label of an ignored token in token labels ``[N, T, ...]`` (see the module docstring)
    ignore_index: int = IGNORE_INDEX

    def __init__(
        self,
        net: nn.Module,
        *,
        likelihood: Likelihood | str = Likelihood.CATEGORICAL,
        num_data: int | None = None,
        obs_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.likelihood = parse_enum(Likelihood, likelihood, "likelihood")
        if isinstance(net, PyroModule):
            # A user's PyroModule that already ran on its own (a shape search, a trace, its
            # training) marks its context used, and Pyro refuses such a module as a submodule;
            # from here on it runs as part of this model, under this model's context.
            net._pyro_context.used = False
        self.net = net
        self.num_data = num_data
        if self.likelihood is Likelihood.GAUSSIAN:
            if not obs_scale > 0:
                raise ValueError(f"obs_scale must be > 0, got {obs_scale}")
            self.log_obs_scale = nn.Parameter(torch.tensor(math.log(obs_scale)))
        self.name_sites()
        self.share_noise_storage()

    def record_config(self, input_shape: Sequence[int], **config: object) -> None:
        """Record the shape of one input and the constructor's arguments (enums by value).

        ``input_shape`` serves :meth:`example_input` and the structure graph; ``config`` is
        what ``type(net)(**net.config)`` rebuilds the same network from. A network with
        Gaussian weights has each gate linked to the Bayesian layer whose outputs it selects
        (:func:`~pyro_prune.models.link_output_gates`): a removed structure's incoming weights
        then leave the KL term.
        """
        self.input_shape = tuple(input_shape)
        self.config = {k: v.value if isinstance(v, enum.Enum) else v for k, v in config.items()}
        # with the input shape known the structure graph names each gate's producer: a gate
        # selecting a Bayesian layer's outputs masks its rows (their KL and sample sites)
        if any(isinstance(m, BayesianLayer) for m in self.net.modules()):
            link_output_gates(self)

    def example_input(self, batch: int = 2) -> Tensor:
        """A batch of ``batch`` zero inputs of shape ``input_shape``."""
        if self.input_shape is None:
            raise ValueError(f"{type(self).__name__} has no input_shape to build an example input from")
        return torch.zeros(batch, *self.input_shape)

    # ------------------------------------------------------------------ structure
    def name_sites(self) -> None:
        """Name every gate and stochastic module after its module path.

        A noise layer's sample site is ``"<module path>.theta"``; other stochastic modules
        name their own sites from ``site_name`` (``"<module path>.weight"``, ...).
        """
        for name, m in self.net.named_modules():
            if isinstance(m, MultiplicativeNoise):
                m.site_name = f"{name}.theta"
            elif isinstance(m, (StructureGate, StochasticModule)):
                m.site_name = name
            if isinstance(m, StructureGate):
                m._set_owner(self, name)

    def share_noise_storage(self) -> bool:
        """Store the ``loc`` and ``log_scale`` of all noise layers in one flat Parameter each.

        The network does it when it is built (and :func:`~pyro_prune.convert.shrink` on the
        network it returns); see :mod:`pyro_prune.models.noise`. A training step then hands two
        noise tensors to autograd and the optimizer instead of two per layer. Build the
        optimizer after calling it. Returns whether the layers share their storage.
        """
        return share_noise_storage(list(self.noise_layers().values()))

    def gates(self) -> dict[str, StructureGate]:
        """Every structure gate (noise layers and deterministic masks), by module path."""
        return {n: m for n, m in self.net.named_modules() if isinstance(m, StructureGate)}

    def stochastic_modules(self) -> dict[str, StochasticModule]:
        """Every latent-variable module of the backbone, by module path, in order."""
        return {n: m for n, m in self.net.named_modules() if isinstance(m, StochasticModule)}

    def noise_layers(self) -> dict[str, MultiplicativeNoise]:
        """Every :class:`MultiplicativeNoise` of the backbone, by module path, in order."""
        return {n: m for n, m in self.net.named_modules() if isinstance(m, MultiplicativeNoise)}

    def kept_counts(self) -> dict[str, int]:
        """Number of kept structures per gate."""
        return {n: int(m.kept.sum()) for n, m in self.gates().items()}

    def num_structures(self) -> int:
        """Total number of structures over all gates."""
        return sum(m.num_structures for m in self.gates().values())

    # ------------------------------------------------------------------ masks
    def kept_mask(self) -> dict[str, Tensor]:
        """The ``kept`` buffer of every gate, by module path (copies)."""
        return {n: g.kept.clone() for n, g in self.gates().items()}

    def check_masks(self, masks: Mapping[str, Tensor], what: str = "mask") -> dict[str, Tensor]:
        """``masks`` (gate name -> bool tensor of the gate's shape) checked, on the gates' device.

        Raises ``TypeError`` for a non-mapping and ``ValueError`` naming ``what`` for an
        unknown gate or a tensor of another dtype or shape.
        """
        if not isinstance(masks, Mapping):
            raise TypeError(f"{what} must be a dict gate name -> bool tensor, got {type(masks).__name__}")
        gates = self.gates()
        out = {}
        for name, m in masks.items():
            if name not in gates:
                raise ValueError(f"{what} names an unknown gate {name!r}; gates: {list(gates)}")
            m = torch.as_tensor(m)
            if m.dtype != torch.bool or m.shape != gates[name].kept.shape:
                raise ValueError(
                    f"{what}[{name!r}] must be a bool tensor of shape {tuple(gates[name].kept.shape)}, "
                    f"got {m.dtype} of shape {tuple(m.shape)}"
                )
            out[name] = m.to(gates[name].kept.device)
        return out

    @contextlib.contextmanager
    def masked(self, keep: Mapping[str, Tensor] | None, *, restore: bool = False) -> Iterator[PrunableNet]:
        """Temporarily keep only ``kept & keep[gate]`` in the named gates (others unchanged).

        Unlike :meth:`prune` this may empty a gate (the fully pruned network of the W2
        criterion) and it is undone on exit, so a structure comes back exactly to where it
        was. With ``restore=True`` the masks replace ``kept`` instead (removed structures
        may return for the duration, e.g. ``keep`` all True to time the unpruned network).
        ``keep=None`` changes nothing.
        """
        if keep is None:
            yield self
            return
        masks = self.check_masks(keep, "mask")
        gates = self.gates()
        saved = {name: gates[name].kept.clone() for name in masks}
        try:
            for name, m in masks.items():
                gates[name].kept.copy_(m if restore else saved[name] & m)
            yield self
        finally:
            for name, kept in saved.items():
                gates[name].kept.copy_(kept)

    def prune(self, removal: Mapping[str, Tensor]) -> int:
        """Remove the structures where ``removal[gate]`` is True; returns how many were newly removed.

        Monotone and never empties a gate (see :meth:`StructureGate.prune`); gates not named
        are unchanged.
        """
        masks = self.check_masks(removal, "removal")
        gates = self.gates()
        return sum(gates[name].prune(m) for name, m in masks.items())

    def resolve_kl_scale(self, kl_scale: float | KLScale | str, *, num_data: int | None = None) -> float:
        """The weight of the KL term ``kl_scale`` names, as a number (the one check of it).

        ``"auto"`` is ``"paper"`` for a classifier with noise gates, else ``"elbo"`` (a
        regression network, or one without noise); ``"paper"`` is ``num_data /
        num_structures`` (``num_data``: this model's own unless given).
        """
        checked = check_kl_scale(kl_scale)
        if isinstance(checked, float):
            return checked
        kind = KLScale(checked)
        if kind is KLScale.AUTO:
            tempered = self.likelihood is Likelihood.CATEGORICAL and bool(self.noise_layers())
            kind = KLScale.PAPER if tempered else KLScale.ELBO
        if kind is KLScale.ELBO:
            return 1.0
        size = num_data if num_data is not None else self.num_data
        if not size:
            raise ValueError("kl_scale='paper' needs num_data to be set")
        return size / max(1, self.num_structures())

    def kl_scales(self, kl_scale: float | KLScale | str, *, num_data: int | None = None) -> dict[str, float]:
        """The weight of each stochastic module's KL term that ``kl_scale`` names, by module path.

        A number weights every module. A name (:class:`KLScale`) is the weight of the
        structures' noise (:meth:`resolve_kl_scale`); in a network with multiplicative noise
        every other stochastic module (Gaussian weights) keeps the ELBO's weight 1.
        """
        value = self.resolve_kl_scale(kl_scale, num_data=num_data)
        modules = self.stochastic_modules()
        if isinstance(check_kl_scale(kl_scale), float) or not self.noise_layers():
            return dict.fromkeys(modules, value)
        return {n: value if isinstance(m, MultiplicativeNoise) else 1.0 for n, m in modules.items()}

    def set_kl_scale(self, kl_scale: float | KLScale | str) -> float:
        """Set the weight of the KL term of every stochastic module (:meth:`kl_scales`);
        returns the weight of the structures' noise, a number (:meth:`resolve_kl_scale`)."""
        modules = self.stochastic_modules()
        for name, weight in self.kl_scales(kl_scale).items():
            modules[name].kl_scale = weight
        return self.resolve_kl_scale(kl_scale)

    # ------------------------------------------------------------------ Pyro program
    @property
    def obs_scale(self) -> Tensor:
        return self.log_obs_scale.exp()

    def _data_plate(self, batch: int) -> pyro.plate:
        size = self.num_data if self.num_data else batch
        if size < batch:
            raise ValueError(f"num_data={size} is smaller than the batch ({batch})")
        return pyro.plate("data", size=size, subsample=torch.arange(batch))

    def observation(self, out: Tensor) -> dist.TorchDistribution:
        """The per-example distribution of ``y`` given the backbone output.

        Categorical: over the last axis of the logits. Logits ``[N, T, ..., C]`` (a language
        model's) observe labels ``[N, T, ...]``, the token axes an event, so an example's
        log likelihood is the sum over its tokens, those labelled ``ignore_index`` left out
        (:class:`IgnoringCategorical`).
        """
        if self.likelihood is Likelihood.CATEGORICAL:
            if out.dim() > 2:
                return IgnoringCategorical(out, self.ignore_index).to_event(out.dim() - 2)
            return dist.Categorical(logits=out)
        return dist.Normal(out, self.obs_scale).to_event(1)

    def log_prior(self) -> Tensor | None:
        """Log prior density of the point-estimate parameters, or ``None`` (flat prior).

        Subclasses trained to the MAP (e.g. the Bayes-factor networks) return the sum of
        their weights' prior log densities; the Pyro model adds it as a ``pyro.factor``
        so the model's log joint is the log posterior up to a constant.
        """
        return None

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The Pyro model: draws every latent site and observes ``y``."""
        out = self.net(x)
        log_prior = self.log_prior()
        if log_prior is not None:
            pyro.factor("log_prior", log_prior)
        with self._data_plate(x.shape[0]):
            pyro.sample("obs", self.observation(out), obs=y)
        return out

    def guide(self, x: Tensor | None = None, y: Tensor | None = None) -> None:
        """Mean-field guide: each stochastic module draws from its variational posterior."""
        for m in self.stochastic_modules().values():
            m.guide_sample()

    # ------------------------------------------------------------------ plain torch
    def nll(self, out: Tensor, y: Tensor) -> Tensor:
        """Per-example negative log likelihood ``-log p(y_n | out_n)`` (shape ``[batch]``);
        with token labels ``[batch, T, ...]``, the sum over an example's tokens (those
        labelled ``ignore_index`` left out)."""
        if self.likelihood is Likelihood.CATEGORICAL:
            return categorical_nll(out, y, self.ignore_index)
        var = self.obs_scale**2
        return (0.5 * ((y - out) ** 2 / var + torch.log(2 * math.pi * var))).sum(-1)

    def kl_divergence(self) -> Tensor:
        """Sum of the (scaled) closed-form KL terms of every stochastic module."""
        kls = [m.kl_divergence() for m in self.stochastic_modules().values()]
        if not kls:
            return torch.zeros(())
        return torch.stack(kls).sum()

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Backbone output with every latent at its posterior mean (E[theta])."""
        with noise_mode(self.net, NoiseMode.MEAN):
            return self.net(x)

    def sample_outputs(self, x: Tensor) -> Tensor:
        """One backbone output with the latents drawn from the guide (per example)."""
        with noise_mode(self.net, NoiseMode.REPARAM, examples=x.shape[0]):
            return self.net(x)

    def iter_latents(self) -> Iterator[tuple[str, StochasticModule]]:
        yield from self.stochastic_modules().items()


def categorical_nll(logits: Tensor, y: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Per-example negative log likelihood of labels under logits, ``[N]``: class labels
    ``[N]`` with logits ``[N, C]``, or token labels ``[N, T, ...]`` with logits
    ``[N, T, ..., C]`` (the sum over an example's tokens, those labelled ``ignore_index``
    left out). The one categorical likelihood of the package (the ELBO, the metrics, the
    Laplace evidence)."""
    if logits.dim() > 2:
        per_token = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                    reduction="none", ignore_index=ignore_index)
        return per_token.reshape(y.shape[0], -1).sum(-1)
    return F.cross_entropy(logits, y, reduction="none")


def correct_and_counted(logits: Tensor, y: Tensor, ignore_index: int = IGNORE_INDEX
                        ) -> tuple[Tensor, Tensor]:
    """Per example, how many of its labels the logits' ``argmax`` gets right and how many
    count, ``([N], [N])`` floats: 0 or 1 and 1 for class labels ``[N]``; for token labels
    ``[N, T, ...]`` its tokens not labelled ``ignore_index``. An accuracy is the sum of the
    first over the sum of the second (per token for a language model)."""
    counted = (y != ignore_index) if y.dim() > 1 else torch.ones_like(y, dtype=torch.bool)
    right = ((logits.argmax(-1) == y) & counted).to(torch.float64)
    if y.dim() > 1:
        return right.reshape(y.shape[0], -1).sum(-1), counted.reshape(y.shape[0], -1).sum(-1).to(torch.float64)
    return right, counted.to(torch.float64)


def correct_totals(logits: Tensor, y: Tensor, ignore_index: int = IGNORE_INDEX) -> tuple[float, float]:
    """:func:`correct_and_counted` summed over the batch, what an accuracy adds up: class
    labels ``[N]`` (each counted) take one comparison and one read of the result."""
    if y.dim() == 1:
        return float((logits.argmax(-1) == y).sum()), float(len(y))
    right, counted = correct_and_counted(logits, y, ignore_index)
    return float(right.sum()), float(counted.sum())


def check_kl_scale(kl_scale: float | KLScale | str, name: str = "kl_scale") -> float | str:
    """``kl_scale`` checked, before any model is at hand: a :class:`KLScale` name (returned
    as its value) or a finite number >= 0 (returned as a float)."""
    if isinstance(kl_scale, (str, KLScale)):
        return parse_enum(KLScale, kl_scale, name).value
    try:
        if isinstance(kl_scale, bool):
            raise TypeError
        value = float(kl_scale)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number >= 0 or one of "
                         f"{[k.value for k in KLScale]}, got {kl_scale!r}") from None
    if not value >= 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number >= 0, got {kl_scale!r}")
    return value


def check_prunable(model: object) -> PrunableNet:
    """``model`` itself when it is a :class:`PrunableNet`, else a ``TypeError`` naming it."""
    if not isinstance(model, PrunableNet):
        raise TypeError(f"model must be a PrunableNet, got {type(model).__name__}")
    return model
