"""The networks of the Bayes-factor pruning paper, trained to the MAP under a Gaussian prior.

Mathew & Rowe, "Pruning a neural network using Bayesian inference" (arXiv 2308.02451),
put a Gaussian prior ``w ~ N(0, sigma^2)`` on every weight of a fully connected network
(:class:`FCN`) and of a small convolutional network (:class:`CNN`) and train them to the
maximum a posteriori (MAP) point with Adam. As a Pyro program (:class:`MAPNet`):

    model(x, y):  pyro.factor("log_prior", sum_i log N(w_i | 0, sigma^2))
                  y_n ~ Categorical(logits = net(x_n; w))   under  plate("data", N, subsample)
    guide:        empty; the weights are point estimates (the equivalent of an ``AutoDelta``
                  guide, whose Delta sites contribute log q = 0)

so the model's log joint is the log posterior up to the constant ``-log p(D)``:

    log p(w | D) + log p(D) = sum_n log p(y_n | x_n, w) + sum_i log N(w_i | 0, sigma^2).

:func:`~pyro_prune.inference.fit` minimises ``-(N / B) sum_batch log p(y | x, w) - log p(w)``,
the minibatch estimate of the negative log joint, without Pyro tracing (the fast engine).
:func:`with_sample_priors` writes the same network with ``PyroSample`` Normal priors for use
with :class:`pyro.infer.autoguide.AutoDelta` and ``engine="pyro"``: the two give the same log
joint for the same weights (tested), the fast path is several times quicker per step.

Which parameters the prior covers: every parameter of the backbone, weights and biases
(``sigma`` is shared). Which parameters can be pruned (:func:`prunable_layers`): the weights
of every ``nn.Linear`` and ``nn.Conv2d`` layer, not the biases. Each such layer carries a
boolean buffer ``weight_mask`` (True = kept; :func:`ensure_weight_masks`), saved in the
``state_dict``; pruning schedules keep the masked weights exactly zero.

Widths (the paper does not state them; these are standard choices):

* :class:`FCN`: ``in -> 512 -> 256 -> 128 -> classes``, ReLU; 567,434 weights on MNIST.
* :class:`CNN`: two blocks ``conv 3x3 (padding 1) -> ReLU -> max-pool 2x2`` with 32 and 64
  filters, then ``flatten -> 256 -> 128 -> 64 -> classes``, ReLU.

The default prior scale is ``sigma = 1.0``.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Sequence

import pyro.distributions as dist
import torch
from pyro.nn import PyroSample
from pyro.nn.module import to_pyro_module_
from torch import Tensor, nn

from pyro_prune._checks import check_count, check_counts
from pyro_prune.models.base import Likelihood, PrunableNet

__all__ = [
    "CNN",
    "FCN",
    "MASK_NAME",
    "MAPNet",
    "autodelta_init",
    "ensure_weight_masks",
    "prunable_layers",
    "weight_masks",
    "with_sample_priors",
]

#: name of the boolean keep-mask buffer registered on every prunable layer
MASK_NAME = "weight_mask"

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _widths(values: Sequence[int] | int, arg: str) -> list[int]:
    widths = [values] if isinstance(values, int) else list(values)
    if not widths:
        raise ValueError(f"{arg} must name at least one layer")
    return [check_count(w, arg) for w in widths]


def _add_dense_layers(layers: OrderedDict[str, nn.Module], in_features: int, widths: list[int],
                      out_features: int, *, first_relu: int = 1) -> None:
    """Append ``fc<i> -> relu<first_relu + i - 1>`` for every hidden width, then ``out``."""
    prev = in_features
    for i, width in enumerate(widths, start=1):
        layers[f"fc{i}"] = nn.Linear(prev, width)
        layers[f"relu{first_relu + i - 1}"] = nn.ReLU()
        prev = width
    layers["out"] = nn.Linear(prev, out_features)


PrunableLayer = nn.Linear | nn.Conv2d


def prunable_layers(model: nn.Module) -> dict[str, PrunableLayer]:
    """Every ``nn.Linear`` / ``nn.Conv2d`` of ``model`` by module path (their weights are pruned).

    For a :class:`PrunableNet` the backbone ``model.net`` is searched, so the names are
    the backbone's (``"fc1"``, ``"conv2"``, ...).
    """
    root = model.net if isinstance(model, PrunableNet) else model
    return {n: m for n, m in root.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}


def ensure_weight_masks(model: nn.Module) -> dict[str, Tensor]:
    """Register an all-True ``weight_mask`` buffer on every prunable layer that lacks one.

    Returns the masks (True = weight kept) by layer name. The buffers are part of the
    ``state_dict``, so a checkpoint restores the pruning state with the weights.
    """
    masks: dict[str, Tensor] = {}
    for name, layer in prunable_layers(model).items():
        mask = getattr(layer, MASK_NAME, None)
        if not isinstance(mask, Tensor):
            mask = torch.ones_like(layer.weight, dtype=torch.bool)
            layer.register_buffer(MASK_NAME, mask)
        elif mask.shape != layer.weight.shape or mask.dtype != torch.bool:
            raise ValueError(
                f"layer {name!r} has a {MASK_NAME} of dtype {mask.dtype} and shape "
                f"{tuple(mask.shape)}; expected bool {tuple(layer.weight.shape)}"
            )
        masks[name] = mask
    return masks


def weight_masks(model: nn.Module) -> dict[str, Tensor]:
    """The ``weight_mask`` buffers (True = kept) of the prunable layers that have one."""
    out: dict[str, Tensor] = {}
    for name, layer in prunable_layers(model).items():
        mask = getattr(layer, MASK_NAME, None)
        if isinstance(mask, Tensor):
            out[name] = mask
    return out


class MAPNet(PrunableNet):
    """A :class:`PrunableNet` with point weights under a Gaussian prior ``N(0, sigma^2)``.

    :meth:`log_prior` returns ``sum_i log N(w_i | 0, sigma^2)`` over every backbone parameter
    (weights and biases); the Pyro model adds it as ``pyro.factor("log_prior", ...)`` and the
    fast engine of :func:`~pyro_prune.inference.fit` subtracts it from the loss, so training
    finds the MAP. Every ``nn.Linear`` / ``nn.Conv2d`` gets a ``weight_mask`` buffer.

    Args:
        net: the backbone (point-estimate layers, no stochastic modules needed).
        prior_scale: ``sigma`` of the prior on every parameter (> 0).
        likelihood: ``"categorical"`` or ``"gaussian"`` (whose observation scale is a
            point estimate with a flat prior).
        num_data: training-set size (``fit`` sets it).
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        prior_scale: float = 1.0,
        likelihood: Likelihood | str = Likelihood.CATEGORICAL,
        num_data: int | None = None,
    ) -> None:
        if isinstance(prior_scale, bool) or not isinstance(prior_scale, (int, float)):
            raise TypeError(f"prior_scale must be a number, got {type(prior_scale).__name__}")
        if not (prior_scale > 0 and math.isfinite(prior_scale)):
            raise ValueError(f"prior_scale must be a positive finite number, got {prior_scale!r}")
        super().__init__(net, likelihood=likelihood, num_data=num_data)
        self.prior_scale = float(prior_scale)
        ensure_weight_masks(self)

    def prior_parameters(self) -> dict[str, nn.Parameter]:
        """The parameters under the Gaussian prior (every parameter of the backbone)."""
        return dict(self.net.named_parameters())

    def log_prior(self, dtype: torch.dtype | None = None) -> Tensor:
        """``sum_i log N(w_i | 0, sigma^2) = -sum_i w_i^2 / (2 sigma^2) - n (log sigma + log(2 pi) / 2)``.

        Differentiable, equal to ``Normal(0, sigma).log_prob(w).sum()`` summed over the
        parameters, but computed through :class:`_SumOfSquares` (one dot product per
        tensor, gradient ``-w / sigma^2`` in one pass), which makes a training step of the
        FCN about 1.5x faster than the elementwise form. ``dtype`` (e.g. ``torch.float64``)
        computes it in another precision: the constant is of order ``n``, so float32
        resolves the value only to ~``1e-7 n`` nats.
        """
        params: list[Tensor] = list(self.prior_parameters().values())
        if dtype is not None:
            params = [p.to(dtype) for p in params]
        sq = _SumOfSquares.apply(*params)
        n = sum(p.numel() for p in params)
        const = n * (math.log(self.prior_scale) + _HALF_LOG_2PI)
        return -0.5 * sq / self.prior_scale**2 - const


class _SumOfSquares(torch.autograd.Function):
    """``sum_k ||p_k||^2`` over tensors ``p_k`` with the gradient ``2 g p_k`` in one pass."""

    @staticmethod
    def forward(ctx, *params: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(*params)
        if not params:
            return torch.zeros(())
        total = torch.zeros((), dtype=params[0].dtype, device=params[0].device)
        for p in params:
            flat = p.reshape(-1)
            total = total + torch.dot(flat, flat)
        return total

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, ...]:  # type: ignore[override]
        return tuple(p * (2 * grad) for p in ctx.saved_tensors)


class FCN(MAPNet):
    """The paper's fully connected network: three hidden ReLU layers, Gaussian prior.

    ``flatten -> fc1 (in x 512) -> relu1 -> fc2 (512 x 256) -> relu2 -> fc3 (256 x 128)
    -> relu3 -> out (128 x classes)``; images are flattened, so ``in_features`` is
    ``prod(image shape)`` (784 for MNIST).

    Args:
        in_features: input size.
        num_classes: number of classes.
        hidden: the three hidden widths (default ``(512, 256, 128)``; any number of
            layers is accepted).
        prior_scale: ``sigma`` of the ``N(0, sigma^2)`` prior (default 1.0).
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        hidden: Sequence[int] | int = (512, 256, 128),
        prior_scale: float = 1.0,
        num_data: int | None = None,
    ) -> None:
        check_counts(in_features=in_features, num_classes=num_classes)
        widths = _widths(hidden, "hidden")
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        _add_dense_layers(layers, in_features, widths, num_classes)
        super().__init__(nn.Sequential(layers), prior_scale=prior_scale, num_data=num_data)
        self.record_config((in_features,), in_features=in_features, num_classes=num_classes,
                           hidden=widths, prior_scale=self.prior_scale)


class CNN(MAPNet):
    """The paper's convolutional network: two conv + max-pool blocks, three hidden FC layers.

    ``conv1 (3x3, 32, padding 1) -> relu1 -> pool1 (2x2) -> conv2 (3x3, 64, padding 1) ->
    relu2 -> pool2 (2x2) -> flatten -> fc1 (64 * (s//4)^2 x 256) -> relu3 -> fc2 (256 x 128)
    -> relu4 -> fc3 (128 x 64) -> relu5 -> out (64 x classes)`` for ``s = image_size``
    (MNIST: 3136 flattened features).

    Args:
        in_channels: input channels (1 for MNIST, 3 for CIFAR-10).
        num_classes: number of classes.
        image_size: height = width of the input (>= 4).
        channels: filters of the two conv layers (default ``(32, 64)``).
        hidden: widths of the hidden FC layers (default ``(256, 128, 64)``).
        kernel_size: odd conv kernel size (default 3; "same" padding).
        prior_scale: ``sigma`` of the ``N(0, sigma^2)`` prior (default 1.0).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: int,
        *,
        channels: Sequence[int] = (32, 64),
        hidden: Sequence[int] | int = (256, 128, 64),
        kernel_size: int = 3,
        prior_scale: float = 1.0,
        num_data: int | None = None,
    ) -> None:
        check_counts(in_channels=in_channels, num_classes=num_classes, image_size=image_size,
                     kernel_size=kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (same padding), got {kernel_size}")
        conv_widths = _widths(channels, "channels")
        if len(conv_widths) != 2:
            raise ValueError(f"channels must name the two conv layers' filters, got {channels!r}")
        if image_size < 4:
            raise ValueError(f"image_size must be >= 4 (two 2x2 max-pools), got {image_size}")
        widths = _widths(hidden, "hidden")
        side = (image_size // 2) // 2
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        prev = in_channels
        for i, filters in enumerate(conv_widths, start=1):
            layers[f"conv{i}"] = nn.Conv2d(prev, filters, kernel_size, padding=kernel_size // 2)
            layers[f"relu{i}"] = nn.ReLU()
            layers[f"pool{i}"] = nn.MaxPool2d(2)
            prev = filters
        layers["flatten"] = nn.Flatten()
        _add_dense_layers(layers, prev * side * side, widths, num_classes, first_relu=len(conv_widths) + 1)
        super().__init__(nn.Sequential(layers), prior_scale=prior_scale, num_data=num_data)
        self.record_config((in_channels, image_size, image_size), in_channels=in_channels,
                           num_classes=num_classes, image_size=image_size, channels=conv_widths,
                           hidden=widths, kernel_size=kernel_size, prior_scale=self.prior_scale)


def with_sample_priors(model: MAPNet) -> PrunableNet:
    """The same network with ``PyroSample`` Normal priors, for an ``AutoDelta`` guide.

    Every backbone parameter becomes the Pyro sample site ``net.<path>`` with prior
    ``Normal(0, sigma).expand(shape).to_event(dim)``; the weights' current values are kept as
    the ``init_loc_fn`` values of :func:`autodelta_init`. With
    ``AutoDelta(pyro_model, init_loc_fn=autodelta_init(model))`` the log joint of the
    returned model at the guide's point equals ``model``'s log joint (prior factor +
    likelihood), and :func:`~pyro_prune.inference.fit` trains it with ``engine="pyro"``.

    The returned model is a copy; ``model`` is not changed.
    """
    if not isinstance(model, MAPNet):
        raise TypeError(f"model must be a MAPNet (FCN, CNN), got {type(model).__name__}")
    net = copy.deepcopy(model.net)
    to_pyro_module_(net)
    for module in net.modules():
        for pname, param in list(module.named_parameters(recurse=False)):
            prior = dist.Normal(torch.zeros((), dtype=param.dtype),
                                torch.tensor(model.prior_scale, dtype=param.dtype))
            site = prior.expand(param.shape).to_event(param.dim())
            delattr(module, pname)
            setattr(module, pname, PyroSample(site))
    return PrunableNet(net, likelihood=model.likelihood, num_data=model.num_data)


def autodelta_init(model: MAPNet):
    """An ``init_loc_fn`` for ``AutoDelta`` that starts every site at ``model``'s weights."""
    values = {f"net.{name}": p.detach().clone() for name, p in model.net.named_parameters()}

    def init_loc_fn(site: dict) -> Tensor:
        if site["name"] not in values:
            raise KeyError(f"no initial value for site {site['name']!r}")
        return values[site["name"]]

    return init_loc_fn
