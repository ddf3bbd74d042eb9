"""Multi-layer perceptron with a gate on every hidden neuron."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from pyro_prune._checks import check_count, check_counts
from pyro_prune.models.base import Likelihood, PrunableNet
from pyro_prune.models.layers import GateKind, WeightPrior, make_gate, make_linear

__all__ = ["MLP"]


class MLP(PrunableNet):
    """``in -> [Linear -> gate -> ReLU] * L -> Linear -> out`` as a Pyro model.

    The gate (multiplicative noise by default) sits between each hidden Linear layer and
    its ReLU, so ``E[theta]`` folds exactly into the layer at conversion. The BMRS paper's
    sizes are ``hidden=[100] * 7`` (MNIST), ``[150]`` (Fashion-MNIST), ``[150] * 5``
    (CIFAR-10).

    Args:
        in_features: input size (images are flattened).
        hidden: width of each hidden layer, or one int for a single hidden layer.
        out_features: number of classes, or the target dimension for regression.
        likelihood: ``"categorical"`` or ``"gaussian"``.
        weights: ``"point"`` or ``"gaussian"`` (Bayesian weights, prior N(0, prior_scale^2)).
        gate: ``"noise"`` (log-normal multiplicative noise) or ``"mask"``.
        noise_kwargs: passed to :class:`~pyro_prune.models.noise.MultiplicativeNoise`.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int] | int,
        out_features: int,
        *,
        likelihood: Likelihood | str = Likelihood.CATEGORICAL,
        weights: WeightPrior | str = WeightPrior.POINT,
        gate: GateKind | str = GateKind.NOISE,
        prior_scale: float = 1.0,
        num_data: int | None = None,
        obs_scale: float = 1.0,
        **noise_kwargs: float,
    ) -> None:
        check_counts(in_features=in_features, out_features=out_features)
        widths = [hidden] if isinstance(hidden, int) else list(hidden)
        if not widths:
            raise ValueError("hidden must name at least one hidden layer")
        for w in widths:
            check_count(w, "hidden")
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        prev = in_features
        for i, width in enumerate(widths, start=1):
            layers[f"fc{i}"] = make_linear(prev, width, weights, prior_scale=prior_scale)
            layers[f"fc{i}_gate"] = make_gate(width, -1, gate, **noise_kwargs)
            layers[f"relu{i}"] = nn.ReLU()
            prev = width
        layers["out"] = make_linear(prev, out_features, weights, prior_scale=prior_scale)
        super().__init__(nn.Sequential(layers), likelihood=likelihood, num_data=num_data, obs_scale=obs_scale)
        self.record_config((in_features,), in_features=in_features, hidden=widths,
                           out_features=out_features, likelihood=self.likelihood,
                           weights=WeightPrior(weights), gate=GateKind(gate), prior_scale=prior_scale,
                           obs_scale=obs_scale, **noise_kwargs)
