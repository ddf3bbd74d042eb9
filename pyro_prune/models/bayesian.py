r"""Bayesian weight layers: Gaussian priors on weights and biases, mean-field Normal posterior.

Model (Blundell et al., "Weight Uncertainty in Neural Networks", ICML 2015; Graves 2011):

    w_ij ~ N(0, s^2),   b_i ~ N(0, s^2)                       (prior, s = ``prior_scale``)
    q(w_ij) = N(mu_ij, sigma_ij^2),   q(b_i) = N(mu_i, sigma_i^2)   (mean-field guide)

:class:`BayesianLinear` and :class:`BayesianConv1d` / :class:`BayesianConv2d` /
:class:`BayesianConv3d` (any padding mode) are
:class:`~pyro_prune.models.noise.StochasticModule` s, so they run in the three modes of the
package:

* ``NoiseMode.SAMPLE`` (the Pyro model): ``pyro.sample("<site>.weight", N(0, s).expand(shape)
  .to_event(k))`` and ``"<site>.bias"`` under ``pyro.plate("<site>_plate", out_features)``.
  The plate runs over the **output structures** (rows of the weight, one per neuron or
  filter) and ``to_event`` covers a structure's incoming weights, so a removed output
  structure is masked out of the ELBO with :func:`pyro.poutine.mask` over the plate: it
  contributes neither a prior term nor a KL term. :meth:`BayesianLinear.guide_sample`
  draws the same sites from the Normal posterior (an ``AutoNormal`` whose parameters live in
  the layer, reachable per structure as ``weight_loc[i]``, ``weight_log_scale[i]``).
* ``NoiseMode.MEAN``: the posterior mean weights (what :meth:`as_deterministic` returns).
* ``NoiseMode.REPARAM``: the local reparameterisation trick (Kingma, Salimans & Welling,
  "Variational Dropout and the Local Reparameterization Trick", NeurIPS 2015): instead of a
  weight draw, the pre-activations are drawn per example from their exact Gaussian under
  the mean-field posterior,

      a = x W_mu^T + b_mu + sqrt(x^2 (W_sigma^2)^T + b_sigma^2) * eps,   eps ~ N(0, I).

  For a Linear layer this is exact per example (different output units have independent
  rows). For a convolution it is the usual approximation: every output position gets the
  exact marginal of its pre-activation, but the correlation between positions that share
  the kernel is dropped (Kingma et al. 2015, Molchanov et al. 2017).

The closed-form KL used by the fast ELBO is

    KL(N(mu, sigma^2) || N(0, s^2)) = log(s / sigma) + (sigma^2 + mu^2) / (2 s^2) - 1/2,

summed over the weights and biases of the kept output structures, times ``kl_scale``.

Initialisation: ``weight_loc`` uses the Kaiming-uniform initialisation of ``nn.Linear`` /
``nn.Conv2d`` (bound ``1/sqrt(fan_in)``), ``bias_loc`` is uniform in the same bound, and every
log scale starts at ``-4.6`` (sigma ~= 0.01). A standard deviation two to ten times smaller
than the Kaiming bound for fan-ins between 100 and 10,000 means the network starts as the
usual deterministic initialisation with a little noise; the KL term then grows the scales
where the data allow. Larger initial scales (sigma ~ 0.1) make the first epochs of a
784-input layer almost pure noise and slow training down considerably.

Which gate masks a layer's rows is linked by :func:`link_output_gates` (a net's gates name
their producer layer); an unlinked layer counts every row. A gate over attention heads is
linked by :func:`~pyro_prune.models.bayesianize` to the q/k/v rows of its heads (read from the
structure graph, also for a fused qkv layer or grouped-query attention), so a removed head's
rows leave the KL and the Pyro sites as well.

Code that reads a layer's ``weight`` / ``bias`` (dtype and shape checks, casts, init code in a
network the package did not write) gets the **posterior mean**: ``layer.weight`` *is*
``layer.weight_loc`` (the same parameter, ``[out, ...]`` as in ``nn.Linear`` / ``nn.Conv2d``;
no draw, in every mode) and ``layer.bias`` is ``bias_loc`` (``None`` without bias). In-place
writes to them set the mean; assigning ``layer.weight = ...`` is an error, since a shared
(tied) parameter cannot be Bayesian in one place only. Neither is an extra parameter: the
state dict, the Pyro sites and the checkpoints keep the names ``weight_loc``, ...

:func:`bayesian_weights` replaces layers through a registry, one rule per layer type
(:func:`register_bayesian_layer`): ``nn.Linear`` and ``nn.Conv1d/2d/3d`` are built in, Hugging
Face's ``transformers.pytorch_utils.Conv1D`` (GPT-2's linear layer, weight stored
``[in, out]``) is recognised by its qualified name without importing ``transformers``, and a
user registers a layer type of their own the same way.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.nn import PyroModule
from torch import Tensor, nn

from pyro_prune._checks import check_count, check_number
from pyro_prune.models.gate import StructureGate
from pyro_prune.models.noise import NoiseMode, StochasticModule

__all__ = [
    "BayesianConv",
    "BayesianConv1d",
    "BayesianConv2d",
    "BayesianConv3d",
    "BayesianLayer",
    "BayesianLinear",
    "DEFAULT_INIT_LOG_SCALE",
    "bayesian_layer_rule",
    "bayesian_weights",
    "gaussian_kl",
    "link_output_gates",
    "register_bayesian_layer",
]

#: initial ``log sigma`` of every weight and bias (sigma = exp(-4.6) ~= 0.01)
DEFAULT_INIT_LOG_SCALE = -4.6


def gaussian_kl(loc: Tensor, scale: Tensor, prior_scale: float) -> Tensor:
    r"""Elementwise ``KL(N(loc, scale^2) || N(0, prior_scale^2))`` in closed form."""
    var_ratio = (scale / prior_scale) ** 2
    return 0.5 * (var_ratio + (loc / prior_scale) ** 2 - 1.0 - torch.log(var_ratio))


_PlainLayer = TypeVar("_PlainLayer", bound=nn.Module)
_Bayesian = TypeVar("_Bayesian", bound="BayesianLayer")


class BayesianLayer(StochasticModule):
    """Shared machinery of :class:`BayesianLinear` and :class:`BayesianConv`.

    Subclasses set ``weight_loc``/``weight_log_scale`` (dim 0 = output structures),
    ``bias_loc``/``bias_log_scale`` (``[out]``, or ``None`` without bias) and implement
    :meth:`_op` (the deterministic op with given weights) and :meth:`as_deterministic`.
    """

    weight_loc: nn.Parameter
    weight_log_scale: nn.Parameter
    bias_loc: nn.Parameter | None
    bias_log_scale: nn.Parameter | None
    #: the plain layer type this layer stands for (``bayesianize``'s ``noise_on`` matches it);
    #: :func:`bayesian_weights` sets it to the type of the layer it replaced
    replaces: type[nn.Module] = nn.Module

    def _init_posterior(self, weight_shape: Sequence[int], bias: bool, prior_scale: float,
                        init_log_scale: float) -> None:
        self.prior_scale = check_number(prior_scale, "prior_scale", positive=True)
        if isinstance(init_log_scale, bool) or not isinstance(init_log_scale, (int, float)) \
                or not math.isfinite(init_log_scale):
            raise ValueError(f"init_log_scale must be a finite number, got {init_log_scale!r}")
        self.weight_loc = nn.Parameter(torch.empty(*weight_shape))
        self.weight_log_scale = nn.Parameter(torch.full(tuple(weight_shape), float(init_log_scale)))
        if bias:
            self.bias_loc = nn.Parameter(torch.empty(weight_shape[0]))
            self.bias_log_scale = nn.Parameter(torch.full((weight_shape[0],), float(init_log_scale)))
        else:
            self.register_parameter("bias_loc", None)
            self.register_parameter("bias_log_scale", None)
        # gates whose ``kept`` masks the rows of this layer (plain tuple: not submodules), and
        # per gate ``None`` (one structure per row) or ``(row -> structure index, structures)``
        self._output_gates: tuple[StructureGate, ...] = ()
        self._gate_rows: tuple[tuple[Tensor, int] | None, ...] = ()
        self.site_name = type(self).__name__.lower()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-uniform ``weight_loc`` and uniform ``bias_loc`` as in ``nn.Linear``."""
        nn.init.kaiming_uniform_(self.weight_loc, a=math.sqrt(5))
        if self.bias_loc is not None:
            fan_in = self.weight_loc[0].numel()
            bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            nn.init.uniform_(self.bias_loc, -bound, bound)

    # ------------------------------------------------------------------ parameters
    @property
    def weight(self) -> Tensor:
        """The posterior mean of the weights: ``weight_loc`` itself (read by foreign code).

        The same parameter as ``weight_loc`` (same shape, dtype, device and gradient), so code
        that reads ``layer.weight.dtype`` or ``.shape`` sees what it would see on the plain
        layer, and code that computes with ``layer.weight`` directly (instead of calling the
        layer) uses the mean weights, in every mode. In-place writes set the mean.
        """
        return self.weight_loc

    @property
    def bias(self) -> Tensor | None:
        """The posterior mean of the biases: ``bias_loc`` itself (``None`` without bias)."""
        return self.bias_loc

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("weight", "bias"):
            raise AttributeError(
                f"{type(self).__name__}.{name} is the posterior mean {name}_loc and cannot be "
                f"assigned (a tied or replaced {name} cannot be Bayesian in one place only); "
                f"write the mean in place with {name}_loc.copy_(...)")
        super().__setattr__(name, value)

    @property
    def num_structures(self) -> int:
        """Number of output structures (rows of the weight)."""
        return int(self.weight_loc.shape[0])

    @property
    def weight_scale(self) -> Tensor:
        return self.weight_log_scale.exp()

    @property
    def bias_scale(self) -> Tensor | None:
        return None if self.bias_log_scale is None else self.bias_log_scale.exp()

    def link_output_gate(self, gate: StructureGate, rows: Tensor | None = None) -> None:
        """Let ``gate`` (which selects this layer's output structures) mask its rows.

        Args:
            gate: the gate.
            rows: ``None``: the gate has one structure per row. Otherwise the structure of
                ``gate`` each row belongs to (integer ``[out]``, ``-1`` for rows of none): a
                gate over attention heads selects blocks of the q/k/v rows.
        """
        if not isinstance(gate, StructureGate):
            raise TypeError(f"gate must be a StructureGate, got {type(gate).__name__}")
        link: tuple[Tensor, int] | None = None
        if rows is None:
            if gate.num_structures != self.num_structures:
                raise ValueError(
                    f"gate {gate.site_name!r} has {gate.num_structures} structures, layer "
                    f"{self.site_name!r} has {self.num_structures} outputs"
                )
        else:
            if not isinstance(rows, Tensor) or rows.dtype.is_floating_point or rows.dtype == torch.bool \
                    or tuple(rows.shape) != (self.num_structures,) or bool((rows < -1).any()) \
                    or bool((rows >= gate.num_structures).any()):
                raise ValueError(
                    f"rows must be an integer tensor of shape ({self.num_structures},) with values in "
                    f"[-1, {gate.num_structures}), got {rows!r}")
            link = (rows.detach().to(torch.long).cpu(), gate.num_structures)
        links = getattr(self, "_gate_rows", ())
        for i, g in enumerate(self._output_gates):
            if g is gate:
                self._gate_rows = (*links[:i], link, *links[i + 1:])
                return
        self._output_gates = (*self._output_gates, gate)
        self._gate_rows = (*links, *([None] * (len(self._output_gates) - 1 - len(links))), link)

    def output_kept(self) -> Tensor | None:
        """Bool ``[out]`` of the rows still in the network, or ``None`` when all are."""
        kept: Tensor | None = None
        links = getattr(self, "_gate_rows", ())
        for i, g in enumerate(self._output_gates):
            link = links[i] if i < len(links) else None
            if link is None:
                if g.kept.shape != (self.num_structures,):  # stale link (a layer sliced since)
                    continue
                rows_kept = g.kept
            else:
                index, n = link
                if index.shape != (self.num_structures,) or g.kept.shape != (n,):  # stale
                    continue
                index = index.to(g.kept.device)
                rows_kept = g.kept[index.clamp_min(0)] | (index < 0)
            kept = rows_kept if kept is None else kept & rows_kept
        if kept is None or bool(kept.all()):
            return None
        return kept

    def weight_posterior(self) -> tuple[Tensor, Tensor, float]:
        """``(loc, scale, prior_scale)``: rows ``[out, fan_in + 1]``, the bias as last column.

        Without a bias the rows are ``[out, fan_in]``. This is what Gaussian Bayesian model
        reduction of a structure reads (:func:`pyro_prune.reduction.delta_f_gaussian`).
        """
        loc = self.weight_loc.reshape(self.num_structures, -1)
        scale = self.weight_scale.reshape(self.num_structures, -1)
        if self.bias_loc is not None:
            loc = torch.cat([loc, self.bias_loc[:, None]], dim=1)
            scale = torch.cat([scale, self.bias_scale[:, None]], dim=1)  # type: ignore[index]
        return loc, scale, self.prior_scale

    @torch.no_grad()
    def _means_into(self, layer: _PlainLayer) -> _PlainLayer:
        """``layer`` (its plain counterpart) moved to this layer's device and dtype, holding
        the posterior means as its weight and bias."""
        layer = layer.to(device=self.weight_loc.device, dtype=self.weight_loc.dtype)
        cast(Tensor, layer.weight).copy_(self.weight_loc)
        if self.bias_loc is not None:
            cast(Tensor, layer.bias).copy_(self.bias_loc)
        return layer

    @torch.no_grad()
    def _means_from(self: _Bayesian, weight: Tensor, bias: Tensor | None) -> _Bayesian:
        """This layer moved to ``weight``'s device and dtype, its posterior means set to
        ``weight`` and ``bias``."""
        new = self.to(device=weight.device, dtype=weight.dtype)
        new.weight_loc.copy_(weight)
        if bias is not None:
            cast(nn.Parameter, new.bias_loc).copy_(bias)
        return new

    # ------------------------------------------------------------------ distributions
    def kl_divergence(self) -> Tensor:
        """``kl_scale * sum KL(q || p)`` over the weights and biases of the kept rows."""
        loc, scale, prior_scale = self.weight_posterior()
        kl_rows = gaussian_kl(loc, scale, prior_scale).sum(-1)
        kept = self.output_kept()
        if kept is not None:
            kl_rows = kl_rows * kept.to(kl_rows.dtype)
        return self.kl_scale * kl_rows.sum()

    def _plate(self) -> pyro.plate:
        return pyro.plate(f"{self.site_name}_plate", self.num_structures, dim=-1)

    def _masked(self) -> contextlib.AbstractContextManager:
        kept = self.output_kept()
        return contextlib.nullcontext() if kept is None else poutine.mask(mask=cast(torch.BoolTensor, kept))

    def _event_dims(self) -> int:
        return self.weight_loc.dim() - 1

    def _sample_sites(self, prior: bool) -> tuple[Tensor, Tensor | None]:
        k = self._event_dims()
        with self._plate(), self._masked(), poutine.scale(scale=self.kl_scale):
            if prior:
                zero = self.weight_loc.new_zeros(())
                w_fn = dist.Normal(zero, self.prior_scale).expand(self.weight_loc.shape).to_event(k)
            else:
                w_fn = dist.Normal(self.weight_loc, self.weight_scale).to_event(k)
            weight = pyro.sample(f"{self.site_name}.weight", w_fn)
            bias = None
            if self.bias_loc is not None:
                if prior:
                    b_fn = dist.Normal(self.bias_loc.new_zeros(()), self.prior_scale).expand(
                        self.bias_loc.shape)
                else:
                    b_fn = dist.Normal(self.bias_loc, cast(Tensor, self.bias_scale))
                bias = pyro.sample(f"{self.site_name}.bias", b_fn)
        return weight, bias

    def guide_sample(self) -> tuple[Tensor, Tensor | None]:
        """Draw ``(weight, bias) ~ q`` as the guide's sample sites."""
        return self._sample_sites(prior=False)

    # ------------------------------------------------------------------ forward
    def _op(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        mode = self.mode
        if mode is NoiseMode.MEAN:
            return self._op(x, self.weight_loc, self.bias_loc)
        if mode is NoiseMode.SAMPLE:
            weight, bias = self._sample_sites(prior=True)
            return self._op(x, weight, bias)
        # REPARAM: local reparameterisation, one draw of the pre-activations per example
        mean = self._op(x, self.weight_loc, self.bias_loc)
        var_bias = None if self.bias_log_scale is None else (2.0 * self.bias_log_scale).exp()
        var = self._op(x * x, (2.0 * self.weight_log_scale).exp(), var_bias)
        return mean + var.clamp_min(1e-30).sqrt() * torch.randn_like(mean)

    def extra_repr(self) -> str:
        return f"prior_scale={self.prior_scale}, bias={self.bias_loc is not None}"


class BayesianLinear(BayesianLayer):
    r"""A Linear layer with Gaussian weights and biases (see the module docstring).

    Args:
        in_features, out_features: sizes as in ``nn.Linear``.
        bias: whether the layer has a (Bayesian) bias.
        prior_scale: standard deviation ``s`` of the N(0, s^2) prior of every weight and bias.
        init_log_scale: initial ``log sigma`` of the posterior (default -4.6, sigma ~= 0.01).

    Attributes:
        weight_loc, weight_log_scale: ``[out_features, in_features]``.
        bias_loc, bias_log_scale: ``[out_features]`` (``None`` without bias).
        site_name: the sites are ``"<site_name>.weight"`` and ``"<site_name>.bias"``; a
            :class:`~pyro_prune.models.PrunableNet` sets it to the module path.
    """

    replaces = nn.Linear

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 prior_scale: float = 1.0, init_log_scale: float = DEFAULT_INIT_LOG_SCALE) -> None:
        super().__init__()
        self.in_features = check_count(in_features, "in_features")
        self.out_features = check_count(out_features, "out_features")
        self._init_posterior((out_features, in_features), bool(bias), prior_scale, init_log_scale)

    def _op(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.linear(x, weight, bias)

    @torch.no_grad()
    def as_deterministic(self) -> nn.Linear:
        """An ``nn.Linear`` with the posterior-mean weights and bias."""
        return self._means_into(nn.Linear(self.in_features, self.out_features,
                                          bias=self.bias_loc is not None))

    @classmethod
    def from_linear(cls, layer: nn.Linear, *, prior_scale: float = 1.0,
                    init_log_scale: float = DEFAULT_INIT_LOG_SCALE) -> BayesianLinear:
        """A Bayesian layer whose posterior means are ``layer``'s weights."""
        if not isinstance(layer, nn.Linear):
            raise TypeError(f"layer must be an nn.Linear, got {type(layer).__name__}")
        new = cls(layer.in_features, layer.out_features, bias=layer.bias is not None,
                  prior_scale=prior_scale, init_log_scale=init_log_scale)
        return new._means_from(layer.weight, layer.bias)

    @classmethod
    @torch.no_grad()
    def from_tensors(cls, weight: Tensor, bias: Tensor | None = None, *, prior_scale: float = 1.0,
                     init_log_scale: float = DEFAULT_INIT_LOG_SCALE) -> BayesianLinear:
        """A Bayesian layer computing ``x @ weight.T + bias`` at its posterior means.

        ``weight`` is ``[out_features, in_features]`` (transpose a weight stored ``[in, out]``
        first), ``bias`` ``[out_features]`` or ``None``; the layer takes their device and
        dtype. The building block of a :func:`register_bayesian_layer` rule for a linear
        layer of another library.
        """
        if not isinstance(weight, Tensor) or weight.dim() != 2 or not weight.is_floating_point():
            raise ValueError(f"weight must be a floating [out, in] tensor, got "
                             f"{tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__}")
        if bias is not None and (not isinstance(bias, Tensor) or tuple(bias.shape) != (weight.shape[0],)):
            raise ValueError(f"bias must be None or a tensor of shape ({weight.shape[0]},), got "
                             f"{tuple(bias.shape) if isinstance(bias, Tensor) else type(bias).__name__}")
        new = cls(int(weight.shape[1]), int(weight.shape[0]), bias=bias is not None,
                  prior_scale=prior_scale, init_log_scale=init_log_scale)
        return new._means_from(weight, bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, " + super().extra_repr()


def _ntuple(value: int | Sequence[int], n: int, arg: str) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,) * n
    values = tuple(cast(Sequence[int], value))
    if len(values) != n or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{arg} must be an int or {n} ints, got {value!r}")
    return values


_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


class BayesianConv(BayesianLayer):
    r"""A convolution with Gaussian weights and biases over ``spatial_dims`` axes (see the
    module docstring); use :class:`BayesianConv1d`, :class:`BayesianConv2d` or
    :class:`BayesianConv3d`.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
            padding_mode: as in ``nn.Conv2d`` (``padding`` may be an int, a tuple, ``"same"``
            or ``"valid"``; ``padding_mode`` ``"zeros"``, ``"reflect"``, ``"replicate"`` or
            ``"circular"``).
        bias, prior_scale, init_log_scale: as in :class:`BayesianLinear`.

    The structures are the output channels: ``weight_loc`` is
    ``[out_channels, in_channels / groups, *kernel_size]``.
    """

    spatial_dims: int = 2
    replaces: type[nn.Module] = nn.Conv2d
    padding_mode: str = "zeros"

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Sequence[int],
                 stride: int | Sequence[int] = 1, padding: int | Sequence[int] | str = 0,
                 dilation: int | Sequence[int] = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", *, prior_scale: float = 1.0,
                 init_log_scale: float = DEFAULT_INIT_LOG_SCALE) -> None:
        super().__init__()
        n = self.spatial_dims
        self.in_channels = check_count(in_channels, "in_channels")
        self.out_channels = check_count(out_channels, "out_channels")
        self.groups = check_count(groups, "groups")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels and out_channels must be divisible by groups={groups}")
        self.kernel_size = _ntuple(kernel_size, n, "kernel_size")
        self.stride = _ntuple(stride, n, "stride")
        self.dilation = _ntuple(dilation, n, "dilation")
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"padding must be 'same', 'valid' or ints, got {padding!r}")
            self.padding: tuple[int, ...] | str = padding
        else:
            self.padding = _ntuple(padding, n, "padding")
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {_PADDING_MODES}, got {padding_mode!r}")
        self.padding_mode = padding_mode
        shape = (out_channels, in_channels // groups, *self.kernel_size)
        self._init_posterior(shape, bool(bias), prior_scale, init_log_scale)

    def _explicit_padding(self) -> list[int]:
        """``F.pad``'s amounts (last axis first) for a padding mode other than zeros."""
        pads: list[int] = []
        for i in reversed(range(self.spatial_dims)):
            if self.padding == "valid":
                left = right = 0
            elif self.padding == "same":
                total = self.dilation[i] * (self.kernel_size[i] - 1)
                left, right = total // 2, total - total // 2
            else:
                left = right = cast(tuple[int, ...], self.padding)[i]
            pads += [left, right]
        return pads

    def _op(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        conv = (F.conv1d, F.conv2d, F.conv3d)[self.spatial_dims - 1]
        if self.padding_mode == "zeros":
            return conv(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        x = F.pad(x, self._explicit_padding(), mode=self.padding_mode)
        return conv(x, weight, bias, self.stride, 0, self.dilation, self.groups)

    @torch.no_grad()
    def as_deterministic(self) -> nn.Module:
        """The plain ``nn.ConvNd`` with the posterior-mean weights and bias."""
        plain = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[self.spatial_dims - 1]
        return self._means_into(plain(self.in_channels, self.out_channels, self.kernel_size,  # type: ignore[arg-type]
                                      self.stride, self.padding, self.dilation, self.groups,  # type: ignore[arg-type]
                                      bias=self.bias_loc is not None,
                                      padding_mode=self.padding_mode))  # type: ignore[arg-type]

    @classmethod
    def from_conv(cls: type[_Conv], layer: nn.Module, *, prior_scale: float = 1.0,
                  init_log_scale: float = DEFAULT_INIT_LOG_SCALE) -> _Conv:
        """A Bayesian convolution whose posterior means are ``layer``'s weights (``layer``: the
        ``nn.ConvNd`` of the same number of spatial axes)."""
        plain = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[cls.spatial_dims - 1]
        if not isinstance(layer, plain):
            raise TypeError(f"layer must be an nn.{plain.__name__}, got {type(layer).__name__}")
        new = cls(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                  layer.padding, layer.dilation, layer.groups, bias=layer.bias is not None,
                  padding_mode=layer.padding_mode, prior_scale=prior_scale, init_log_scale=init_log_scale)
        return new._means_from(layer.weight, layer.bias)

    def extra_repr(self) -> str:
        mode = "" if self.padding_mode == "zeros" else f"padding_mode={self.padding_mode!r}, "
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, {mode}" + super().extra_repr())


_Conv = TypeVar("_Conv", bound=BayesianConv)


class BayesianConv1d(BayesianConv):
    """A Conv1d layer with Gaussian weights and biases (see :class:`BayesianConv`)."""

    spatial_dims = 1
    replaces = nn.Conv1d


class BayesianConv2d(BayesianConv):
    """A Conv2d layer with Gaussian weights and biases (see :class:`BayesianConv`);
    ``weight_loc`` is ``[out_channels, in_channels / groups, kh, kw]``."""

    spatial_dims = 2
    replaces = nn.Conv2d

    @classmethod
    def from_conv2d(cls, layer: nn.Conv2d, *, prior_scale: float = 1.0,
                    init_log_scale: float = DEFAULT_INIT_LOG_SCALE) -> BayesianConv2d:
        """A Bayesian convolution whose posterior means are ``layer``'s weights."""
        return cls.from_conv(layer, prior_scale=prior_scale, init_log_scale=init_log_scale)


class BayesianConv3d(BayesianConv):
    """A Conv3d layer with Gaussian weights and biases (see :class:`BayesianConv`)."""

    spatial_dims = 3
    replaces = nn.Conv3d


#: a rule turning one layer into its Bayesian version:
#: ``rule(layer, *, prior_scale, init_log_scale) -> BayesianLayer`` whose posterior means
#: compute exactly what ``layer`` computed
BayesianRule = Callable[..., BayesianLayer]


def _from_transposed_linear(layer: Any, *, prior_scale: float, init_log_scale: float) -> BayesianLayer:
    """A linear layer whose weight is stored ``[in, out]`` (Hugging Face ``Conv1D``)."""
    return BayesianLinear.from_tensors(layer.weight.detach().T, layer.bias, prior_scale=prior_scale,
                                       init_log_scale=init_log_scale)


_RULES: dict[type, BayesianRule] = {
    nn.Linear: BayesianLinear.from_linear,
    nn.Conv1d: BayesianConv1d.from_conv,
    nn.Conv2d: BayesianConv2d.from_conv,
    nn.Conv3d: BayesianConv3d.from_conv,
}
#: rules for layers of other libraries, matched by qualified type name (no import needed)
_RULES_ELSEWHERE: dict[str, BayesianRule] = {
    "transformers.pytorch_utils.Conv1D": _from_transposed_linear,
}


def register_bayesian_layer(layer_type: type[nn.Module], rule: BayesianRule) -> None:
    """Teach :func:`bayesian_weights` (and ``bayesianize(..., weights="gaussian")``) a layer type.

    Args:
        layer_type: an ``nn.Module`` subclass. Rules match the exact type: a subclass may
            compute something else, so it is registered on its own.
        rule: ``rule(layer, *, prior_scale, init_log_scale)`` returns a :class:`BayesianLayer`
            whose posterior means compute what ``layer`` computes (e.g. with
            :meth:`BayesianLinear.from_tensors` for a linear layer storing its weight
            ``[in, out]``). A new :class:`BayesianLayer` subclass also needs
            :func:`~pyro_prune.convert.register_layer` so the graph and the converter know it.

    Example::

        register_bayesian_layer(Dense, lambda m, **kw: BayesianLinear.from_tensors(m.w.T, m.b, **kw))
    """
    if not (isinstance(layer_type, type) and issubclass(layer_type, nn.Module)):
        raise TypeError(f"layer_type must be an nn.Module subclass, got {layer_type!r}")
    if isinstance(layer_type, type) and issubclass(layer_type, BayesianLayer):
        raise TypeError(f"layer_type must be a plain layer type, got the Bayesian {layer_type.__name__}")
    if not callable(rule):
        raise TypeError(f"rule must be callable (layer, *, prior_scale, init_log_scale), got {rule!r}")
    _RULES[layer_type] = rule


def _rule_of(cls: type) -> BayesianRule | None:
    return _RULES.get(cls) or _RULES_ELSEWHERE.get(f"{cls.__module__}.{cls.__qualname__}")


def bayesian_layer_rule(layer: nn.Module) -> BayesianRule | None:
    """The rule that makes ``layer`` Bayesian (by its exact type), or ``None``.

    A Pyro wrapper such as ``PyroModule[nn.Linear]`` without Pyro priors or parameters
    (no ``PyroSample`` / ``PyroParam`` attribute) uses the rule of the type it wraps; one with
    priors of its own has none (it is Bayesian already).
    """
    rule = _rule_of(type(layer))
    if rule is None and isinstance(layer, PyroModule) and not isinstance(layer, BayesianLayer) \
            and not layer._pyro_samples and not layer._pyro_params:
        wrapped = next((c for c in type(layer).__mro__ if not issubclass(c, PyroModule)), nn.Module)
        rule = _rule_of(wrapped)
    return rule


def _tied_layers(module: nn.Module, layers: dict[int, nn.Module]) -> set[int]:
    """Ids of the ``layers`` holding a parameter that another module holds too (tied)."""
    owners: dict[int, set[int]] = {}
    for sub in module.modules():
        for p in sub._parameters.values():
            if p is not None:
                owners.setdefault(id(p), set()).add(id(sub))
    return {i for i, m in layers.items()
            if any(len(owners.get(id(p), ())) > 1 for p in m._parameters.values() if p is not None)}


def bayesian_weights(module: nn.Module, *, prior_scale: float = 1.0,
                     init_log_scale: float = DEFAULT_INIT_LOG_SCALE) -> nn.Module:
    """Replace every layer of ``module`` that has a rule (in place) by its Bayesian version.

    Rules (:func:`register_bayesian_layer`) exist for ``nn.Linear``, ``nn.Conv1d/2d/3d`` and
    Hugging Face's ``Conv1D`` (GPT-2), matched by exact type. Works on any module, in
    particular the ``torch.fx.GraphModule`` of :func:`~pyro_prune.models.bayesianize` (its
    ``call_module`` nodes refer to module paths, which stay the same). The posterior means
    start at the existing weights, so a trained network becomes the mean of the initial
    posterior. A layer held at several paths becomes one Bayesian layer at all of them. A
    layer whose weight is tied to another module's (a language model's output layer sharing
    the token embedding) keeps its point weights, with a warning: replacing it would untie
    them. So does, with a warning, a registered layer type without a rule (a layer given to
    ``register_layer``, a subclass of ``nn.Linear``, ...). Returns ``module``.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    check_number(prior_scale, "prior_scale", positive=True)
    from pyro_prune.graph import LayerRole, layer_slicer

    paths: dict[int, list[str]] = {}
    layers: dict[int, nn.Module] = {}
    without_rule: list[str] = []
    for name, m in module.named_modules(remove_duplicate=False):
        if not name or isinstance(m, BayesianLayer):
            continue
        if bayesian_layer_rule(m) is not None:
            paths.setdefault(id(m), []).append(name)
            layers[id(m)] = m
        elif id(m) not in paths:
            slicer = layer_slicer(m)
            if slicer is not None and slicer.role is LayerRole.PRODUCER and next(m.parameters(), None) is not None:
                without_rule.append(name)
    tied = _tied_layers(module, layers)
    if tied:
        warnings.warn(
            f"weights='gaussian': {sorted(paths[i][0] for i in tied)} keep point weights: their "
            f"weight is tied to another module's (e.g. an output layer sharing the token "
            f"embedding), and a Bayesian copy would untie them", RuntimeWarning, stacklevel=2)
    if without_rule:
        warnings.warn(
            f"weights='gaussian': {sorted(set(without_rule))} keep point weights: no Bayesian "
            f"rule for their type (see register_bayesian_layer)", RuntimeWarning, stacklevel=2)
    for key, layer in layers.items():
        if key in tied:
            continue
        rule = cast(BayesianRule, bayesian_layer_rule(layer))
        new = rule(layer, prior_scale=prior_scale, init_log_scale=init_log_scale)
        if not isinstance(new, BayesianLayer):
            raise TypeError(f"the Bayesian rule for {type(layer).__name__} returned "
                            f"{type(new).__name__}, not a BayesianLayer")
        new.replaces = type(layer)
        new.train(layer.training)
        for name in paths[key]:
            parent_name, _, child = name.rpartition(".")
            parent = module.get_submodule(parent_name) if parent_name else module
            setattr(parent, child, new)
        new.site_name = paths[key][0]
    return module


def link_output_gates(net: nn.Module) -> int:
    """Link every gate of ``net`` to the Bayesian layers whose output rows it selects.

    ``net`` is a :class:`~pyro_prune.models.PrunableNet`: each gate's ``producer_name`` names
    the layer whose output structures it selects; a gate over attention heads is linked to
    the q, k and v rows of its heads in every Bayesian layer holding them, as the structure
    graph reads them (:func:`~pyro_prune.graph.structure_rows`). After linking, a removed
    structure's weights leave the layer's KL term and the Pyro sites are masked over it.
    Idempotent, and it describes the current layout (``shrink`` links its result again);
    returns the number of links made.
    """
    backbone = getattr(net, "net", None)
    if not isinstance(backbone, nn.Module):
        raise TypeError(f"net must be a PrunableNet, got {type(net).__name__}")
    links = 0
    heads: list[str] = []
    for path, gate in backbone.named_modules():
        if not isinstance(gate, StructureGate):
            continue
        producer = None if gate.producer_name is None else backbone.get_submodule(gate.producer_name)
        if isinstance(producer, BayesianLayer) and producer.num_structures == gate.num_structures:
            producer.link_output_gate(gate)
            links += 1
        else:
            heads.append(path)
    if heads:
        links += _link_by_rows(net, heads)
    return links


def _link_by_rows(net: Any, paths: list[str]) -> int:
    """Link the gates over attention heads among ``paths`` to the rows they own."""
    from pyro_prune.graph import head_rows

    links = 0
    for path in paths:
        rows_by_layer = head_rows(net, path)
        if not rows_by_layer:
            continue
        gate = net.net.get_submodule(path)
        for layer_path, rows in rows_by_layer.items():
            layer = net.net.get_submodule(layer_path)
            if isinstance(layer, BayesianLayer) and bool((rows >= 0).any()) \
                    and tuple(rows.shape) == (layer.num_structures,):
                layer.link_output_gate(gate, rows=rows)
                links += 1
    return links
