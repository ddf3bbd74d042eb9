"""Multiplicative noise on structures (neurons, conv channels, attention heads).

A :class:`MultiplicativeNoise` layer multiplies every structure ``i`` of its input along one
axis by a positive random scale ``theta_i``:

    h_i = theta_i * (w_i . h_prev),   theta_i > 0.

Model (Neklyudov et al., "Structured Bayesian Pruning via Log-Normal Multiplicative Noise",
NeurIPS 2017):

    p(theta_i) = LogU[A, B]          (log theta_i ~ Uniform(A, B), A = -20, B = 0)
    q(theta_i) = LogN[A, B](mu_i, sigma_i^2)

The prior is a ``pyro.sample`` site under a ``pyro.plate`` over the structures; the guide draws
from the truncated log-normal with learnable ``loc`` (init 0) and ``log_scale`` (init -5).

**The initial signal does not depend on ``init_loc``.** The layer multiplies its input by
``theta / theta_ref`` with the fixed constant ``log theta_ref = reference_loc`` (default: the
``init_loc``), so at the start every structure passes its input through at scale ~1 wherever
its posterior starts. The constant is a reparameterisation of the producing layer's weights,
not a change of the model: the gate follows an affine layer, ``theta c (W x + b) = theta
((c W) x + c b)``, so with point weights the networks representable are the same, and the
prior, the posterior, the KL and every reduction criterion are those of ``theta`` as before.
Without it a start at ``init_loc = -4`` scales each layer's output by ``e^-4`` (``e^-28``
through the 7 layers of the MNIST MLP, whose gradients then fall below Adam's ``eps`` and the
network hardly trains). With Gaussian weights (``weights="gaussian"``) the constant scales
their effective prior by ``1 / theta_ref``; at the default ``init_loc = 0`` it is 1 and
nothing changes.
Removed structures are clamped to zero in every mode and never come back (monotone pruning);
they are also masked out of the ELBO with :func:`pyro.poutine.mask`, so a removed structure
contributes neither likelihood nor KL.

**One storage for the whole network.** A layer's variational parameters are a slice of its
registered ``loc`` and ``log_scale`` Parameters: ``storage[offset : offset + n]``. A layer
on its own holds Parameters of its ``n`` structures (offset 0). A
:class:`~pyro_prune.models.base.PrunableNet` makes all its noise layers share one flat
``loc`` and one flat ``log_scale`` Parameter (:func:`share_noise_storage`, layer after layer
in module order), so that the training step's noise node, the autograd engine's gradient
accumulators and the optimizer handle two tensors instead of two per layer (about 0.25 ms of
a 2-3 ms step of the 7x100 MLP). ``layer.loc`` and ``layer.log_scale`` are the layer's
slices (views: gradients reach the shared Parameter, in-place writes under ``no_grad``
reach the storage); ``parameters()`` lists each shared Parameter once; ``state_dict`` keeps
one ``loc`` and one ``log_scale`` entry of ``n`` values per layer, the layout of layers that
own their Parameters, so checkpoints load either way. Slicing a layer (``shrink``) first gives it
its own Parameters again (:meth:`MultiplicativeNoise.own_storage`).
"""

from __future__ import annotations

import contextlib
import enum
import math
from collections.abc import Iterator
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.nn import PyroModule
from torch import Tensor, nn

from pyro_prune._checks import check_number
from pyro_prune.distributions import TruncatedLogNormal, TruncatedLogUniform
from pyro_prune.models.gate import StructureGate
from pyro_prune.models.noise_kernels import (
    kl_truncated_lognormal_loguniform,
    rsample_log_theta,
)

__all__ = [
    "MultiplicativeNoise",
    "NoiseMode",
    "StochasticModule",
    "noise_mode",
    "share_noise_storage",
]


class NoiseMode(enum.Enum):
    """How a stochastic module draws its random variables in ``forward``.

    * ``SAMPLE``: through ``pyro.sample`` sites (the Pyro model; under SVI the guide's
      draws are replayed into them).
    * ``MEAN``: the posterior mean (E[theta]); the default in ``eval()``.
    * ``REPARAM``: a reparameterised draw from the variational posterior inside the
      module, one per example, without Pyro's tracing (the fast ELBO of
      :mod:`pyro_prune.inference.elbo`).
    """

    SAMPLE = "sample"
    MEAN = "mean"
    REPARAM = "reparam"


class StochasticModule(PyroModule):
    """Base of the modules that hold latent variables of a :class:`PrunableNet`.

    Subclasses implement :meth:`guide_sample` (draw the module's sites from the
    variational posterior, as the guide), :meth:`kl_divergence` (the closed-form KL of
    the kept structures, scaled like the ELBO) and the three forward modes.
    """

    #: the mode forced by :func:`noise_mode`; ``None`` follows ``self.training``.
    _forced_mode: NoiseMode | None = None
    #: the examples of the network's input in a per-example draw (:func:`noise_mode`);
    #: ``None``: the rows of the module's own input
    _forced_examples: int | None = None
    #: multiplies this module's KL term (and its sites' log densities in the ELBO).
    kl_scale: float = 1.0

    @property
    def mode(self) -> NoiseMode:
        if self._forced_mode is not None:
            return self._forced_mode
        return NoiseMode.SAMPLE if self.training else NoiseMode.MEAN

    def guide_sample(self) -> object:  # pragma: no cover - interface
        raise NotImplementedError

    def kl_divergence(self) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


@contextlib.contextmanager
def noise_mode(module: nn.Module, mode: NoiseMode | str, *,
               examples: int | None = None) -> Iterator[nn.Module]:
    """Force every :class:`StochasticModule` inside ``module`` into ``mode``.

    ``examples``: with ``NoiseMode.REPARAM``, the number of examples in the network's input.
    A noise layer then draws once per example even where the network has folded each
    example's positions into its input's leading axis (``[examples * k, ...]``: tokens,
    windows, patches; :func:`~pyro_prune.models.gate.fold_examples`); by default it draws
    once per row of its own input.

    >>> with noise_mode(net, NoiseMode.SAMPLE):   # draw theta ~ q in a posterior predictive
    ...     ...
    """
    mode = NoiseMode(mode)
    layers = [m for m in module.modules() if isinstance(m, StochasticModule)]
    previous = [(m._forced_mode, m._forced_examples) for m in layers]
    try:
        for m in layers:
            m._forced_mode, m._forced_examples = mode, examples
        yield module
    finally:
        for m, (p, e) in zip(layers, previous):
            m._forced_mode, m._forced_examples = p, e


def share_noise_storage(layers: list[MultiplicativeNoise]) -> bool:
    """Make ``layers`` share one flat ``loc`` and one flat ``log_scale`` Parameter, in order.

    The values (and ``requires_grad``) are those of each layer's current slices; the layers
    then hold the shared Parameters and their offsets (see the module docstring). Returns
    whether they were shared: layers whose Parameters differ in dtype, device or
    ``requires_grad`` keep their own. Call it before building an optimizer: the Parameters
    it replaces are no longer the layers'.
    """
    if len(layers) < 2:
        return False
    first = layers[0]
    kinds = {(m.loc.dtype, m.loc.device, m.loc.requires_grad, m.log_scale.dtype,
              m.log_scale.device, m.log_scale.requires_grad) for m in layers}
    if len(kinds) != 1:
        return False
    with torch.no_grad():
        loc = nn.Parameter(torch.cat([m.loc.detach() for m in layers]),
                           requires_grad=first.loc.requires_grad)
        log_scale = nn.Parameter(torch.cat([m.log_scale.detach() for m in layers]),
                                 requires_grad=first.log_scale.requires_grad)
    offset = 0
    for m in layers:
        m._parameters["loc"] = loc
        m._parameters["log_scale"] = log_scale
        m.storage_offset = offset
        offset += m.num_structures
    return True


class MultiplicativeNoise(StructureGate, StochasticModule):
    r"""Log-normal multiplicative noise over one structure axis.

    Args:
        num_structures: number of structures (neurons, channels) ``n``.
        dim: the structure axis of the input (``-1`` for the features of a Linear layer,
            ``1`` for the channels of an ``N x C x H x W`` conv output).
        log_low, log_high: the truncation bounds ``A < B`` of ``log theta``.
        init_loc: initial ``mu`` of every structure.
        init_log_scale: initial ``log sigma``.
        reference_loc: ``log theta_ref``: the layer multiplies by ``theta / theta_ref`` (see
            the module docstring); ``None`` (default) takes ``init_loc``, so the initial
            signal has scale ~1 at any ``init_loc``. ``0`` multiplies by ``theta`` itself.

    Attributes:
        loc, log_scale: variational parameters, shape ``[n]``: the layer's slice of its
            registered Parameters of the same names, which a network shares between its
            noise layers (see the module docstring).
        storage_offset: where the layer's structures start in that storage.
        kept: boolean buffer ``[n]`` of the structures still in the network (saved in
            ``state_dict``).
        site_name: the Pyro sample site, ``"<module path>.theta"``; set by the owning net.
        producer_name: module path of the layer whose output this noise scales (the
            structures' incoming weights), or ``None``; read from the structure graph.

    ``forward`` multiplies its input by ``theta * kept / theta_ref`` broadcast along ``dim``, where theta
    depends on the :class:`NoiseMode`: a ``pyro.sample`` site of the prior (``SAMPLE``,
    training), ``E_q[theta]`` (``MEAN``, eval) or a reparameterised draw from ``q`` per
    example (``REPARAM``, the fast ELBO).
    """

    def __init__(
        self,
        num_structures: int,
        dim: int = -1,
        *,
        log_low: float = -20.0,
        log_high: float = 0.0,
        init_loc: float = 0.0,
        init_log_scale: float = -5.0,
        reference_loc: float | None = None,
    ) -> None:
        super().__init__(num_structures, dim)
        init_log_scale = check_number(init_log_scale, "init_log_scale")
        init_loc = check_number(init_loc, "init_loc")
        reference_loc = init_loc if reference_loc is None else check_number(reference_loc, "reference_loc")
        if not log_low < log_high:
            raise ValueError(
                f"log_low must be < log_high, got log_low={log_low}, log_high={log_high}"
            )
        if not log_low <= init_loc <= log_high:
            raise ValueError(f"init_loc={init_loc} must lie in [log_low, log_high]")
        self.log_low = float(log_low)
        self.log_high = float(log_high)
        # the layer's own storage until a network shares one (``loc``, ``log_scale``: its slices)
        self.register_parameter("loc", nn.Parameter(torch.full((num_structures,), float(init_loc))))
        self.register_parameter("log_scale",
                                nn.Parameter(torch.full((num_structures,), float(init_log_scale))))
        self.storage_offset = 0
        self.site_name = "theta"
        #: ``log theta_ref``: the forward multiplies by ``theta / theta_ref``
        self.reference_loc = float(reference_loc)
        #: ``1 / theta_ref`` (exactly 1.0 at ``reference_loc = 0``)
        self.signal_scale = math.exp(-self.reference_loc)

    def extra_repr(self) -> str:
        ref = f", reference_loc={self.reference_loc}" if self.reference_loc else ""
        return super().extra_repr() + f", bounds=[{self.log_low}, {self.log_high}]" + ref

    # ---------------------------------------------------------------- storage
    def _variational(self, name: str) -> Tensor:
        """The layer's slice of its registered Parameter ``name`` (the Parameter itself when
        the layer owns it)."""
        storage = self.__dict__["_parameters"].get(name)
        if storage is None:
            raise AttributeError(f"{type(self).__name__} has no parameter {name!r}")
        n = self.num_structures
        if storage.shape[0] == n:
            return storage
        offset = self.storage_offset
        return storage[offset:offset + n]

    @property
    def loc(self) -> Tensor:
        """``mu`` of every structure, ``[n]`` (a slice of the shared storage)."""
        return self._variational("loc")

    @property
    def log_scale(self) -> Tensor:
        """``log sigma`` of every structure, ``[n]`` (a slice of the shared storage)."""
        return self._variational("log_scale")

    @property
    def shares_storage(self) -> bool:
        """Whether the layer's ``loc``/``log_scale`` are slices of Parameters it shares."""
        loc = self.__dict__["_parameters"].get("loc")
        return loc is not None and loc.shape[0] != self.num_structures

    def own_storage(self) -> None:
        """Give the layer Parameters of its own structures (copies of its slices), offset 0."""
        if not self.shares_storage:
            return
        with torch.no_grad():
            for name in ("loc", "log_scale"):
                storage = self.__dict__["_parameters"][name]
                self._parameters[name] = nn.Parameter(self._variational(name).detach().clone(),
                                                      requires_grad=storage.requires_grad)
        self.storage_offset = 0

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.shares_storage:  # the layer's own n values, as a layer owning its Parameters saves
            for name in ("loc", "log_scale"):
                if prefix + name in destination:
                    value = self._variational(name)
                    destination[prefix + name] = value if keep_vars else value.detach()

    def _load_from_state_dict(self, state_dict: Any, prefix: str, local_metadata: Any, strict: bool,
                              missing_keys: list[str], unexpected_keys: list[str],
                              error_msgs: list[str]) -> None:
        if not self.shares_storage:
            super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                          unexpected_keys, error_msgs)
            return
        # the shared Parameters are loaded slice by slice (copied in place); the rest as usual
        params = self.__dict__["_parameters"]
        shared = ("loc", "log_scale")
        self.__dict__["_parameters"] = {k: v for k, v in params.items() if k not in shared}
        try:
            super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                          unexpected_keys, error_msgs)
        finally:
            self.__dict__["_parameters"] = params
        for name in shared:  # hidden from the loader above, which took them for unexpected
            if prefix + name in unexpected_keys:
                unexpected_keys.remove(prefix + name)
        n = self.num_structures
        for name in shared:
            key = prefix + name
            if key not in state_dict:
                if strict:
                    missing_keys.append(key)
                continue
            value = state_dict[key]
            if not isinstance(value, Tensor) or tuple(value.shape) != (n,):
                shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                error_msgs.append(f"size mismatch for {key}: copying a param with shape {shape} from "
                                  f"checkpoint, the shape in current model is {(n,)}.")
                continue
            with torch.no_grad():
                self._variational(name).copy_(value)

    # ---------------------------------------------------------------- distributions
    @property
    def scale(self) -> Tensor:
        return self.log_scale.exp()

    def prior(self) -> TruncatedLogUniform:
        """``LogU[A, B]`` expanded over the structures."""
        low = self.loc.new_tensor(self.log_low)
        high = self.loc.new_tensor(self.log_high)
        return TruncatedLogUniform(low, high).expand([self.num_structures])

    def posterior(self) -> TruncatedLogNormal:
        """``LogN[A, B](loc, scale^2)`` of every structure."""
        return TruncatedLogNormal(self.loc, self.scale, self.log_low, self.log_high)

    def guide_posterior(self) -> Any:
        """The posterior of a fitted autoguide this layer reads instead of its own ``loc`` and
        ``scale`` (see :func:`pyro_prune.inference.guides.attach_guide`), or ``None``."""
        reader = self.__dict__.get("_guide_posterior")
        return None if reader is None else reader()

    def expected_theta(self) -> Tensor:
        """``E_q[theta] * kept``: the scale the network uses in eval mode.

        ``q`` is the posterior of the fitted guide when one is attached, else the layer's own.
        """
        external = self.guide_posterior()
        if external is not None:
            e = external.moments()[0].to(self.loc.dtype)
        else:
            # the noise posterior's own mean (the closed form the reduction stage uses too)
            e = TruncatedLogNormal(self.loc, self.scale, self.log_low, self.log_high,
                                   validate_args=False).mean
        return e * self.kept.to(e.dtype)

    def output_scale(self) -> Tensor:
        """What the layer multiplies its structures by in eval mode:
        ``E_q[theta] * kept / theta_ref`` (what conversion folds into the weights)."""
        e = self.expected_theta()
        return e if self.signal_scale == 1.0 else e * self.signal_scale

    def importance(self) -> Tensor:
        return self.expected_theta()

    def kl_divergence(self) -> Tensor:
        """``kl_scale * sum_i KL(q_i || p)`` over the kept structures (closed form).

        Uses the lean kernel of :mod:`pyro_prune.models.noise_kernels` where it is accurate
        and the exact registered KL otherwise.
        """
        kl = kl_truncated_lognormal_loguniform(self.loc, self.scale, self.log_low, self.log_high)
        if kl is None:
            kl = torch.distributions.kl_divergence(self.posterior(), self.prior())
        return self.kl_scale * (kl * self.kept.to(kl.dtype)).sum()

    def rsample_per_example(self, batch: int) -> Tensor:
        """``theta ~ q`` drawn independently for each of ``batch`` examples: ``[batch, n]``."""
        external = self.guide_posterior()
        if external is not None:
            return external.rsample((batch,))
        log_theta = rsample_log_theta(self.loc, self.scale, self.log_low, self.log_high, batch)
        if log_theta is None:
            return self.posterior().rsample((batch,))
        return log_theta.exp()

    # ---------------------------------------------------------------- sampling
    def _plate(self) -> pyro.plate:
        return pyro.plate(f"{self.site_name}_plate", self.num_structures, dim=-1)

    def _masked(self) -> contextlib.AbstractContextManager:
        if bool(self.kept.all()):
            return contextlib.nullcontext()
        return poutine.mask(mask=self.kept)

    def guide_sample(self) -> Tensor:
        """Draw ``theta ~ q`` as the guide's sample site."""
        with self._plate(), self._masked(), poutine.scale(scale=self.kl_scale):
            return pyro.sample(self.site_name, self.posterior())

    def _model_sample(self) -> Tensor:
        with self._plate(), self._masked(), poutine.scale(scale=self.kl_scale):
            return pyro.sample(self.site_name, self.prior())

    #: theta (times ``kept / theta_ref``) drawn for the next forward by the network-wide kernel of
    #: :func:`pyro_prune.inference.elbo.fast_elbo_loss`; consumed by that forward.
    _drawn_theta: Tensor | None = None

    def __call__(self, *args: object, **kwargs: object) -> Tensor:
        # with theta already drawn the forward runs no Pyro statement: skip PyroModule's
        # parameter-scope context (about 10 us per layer and step)
        if self.__dict__.get("_drawn_theta") is not None:
            return nn.Module.__call__(self, *args, **kwargs)
        return super().__call__(*args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        # theta drawn by the network-wide kernel, removed structures already at zero; read
        # from __dict__ directly (PyroModule's attribute lookup costs microseconds per step)
        drawn = self.__dict__.get("_drawn_theta")
        if drawn is not None:
            self.__dict__["_drawn_theta"] = None
            if x.dim() == 2 and self.dim % 2 == 1 and x.shape[1] == drawn.shape[-1] and (
                    drawn.dim() == 1 or x.shape[0] == drawn.shape[0]):  # no reshape
                return x * drawn
            return x * self.broadcast(drawn, x)
        mode = self.mode
        if mode is NoiseMode.MEAN:
            return x * self.broadcast(self.output_scale(), x)
        if mode is NoiseMode.SAMPLE:
            theta = self._model_sample()
        else:  # REPARAM: one draw per example (of the network's input, see noise_mode)
            theta = self.rsample_per_example(self._forced_examples or x.shape[0])
        theta = theta * self.kept.to(theta.dtype)
        if self.signal_scale != 1.0:
            theta = theta * self.signal_scale
        return x * self.broadcast(theta, x)
