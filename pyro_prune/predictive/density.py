r"""The posterior predictive judged on labelled data: metrics of the Bayesian model average,
the pointwise log predictive density of held-out data and a paired comparison of two networks."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from pyro_prune._checks import as_dataset
from pyro_prune._deprecation import renamed_keywords
from pyro_prune._enums import Engine
from pyro_prune.models.base import Likelihood, PrunableNet, check_prunable, correct_and_counted
from pyro_prune.predictive.draws import Mask, Output, predictive_run

__all__ = ["LpdComparison", "compare_lpd", "evaluate_predictive", "log_predictive_density"]


def _draws_on_labelled(model: PrunableNet, dataset: TensorDataset | Sequence[Tensor], *, guide: Callable | None,
                       draws: int, mask: Mask | None, engine: Engine | str, seed: int
                       ) -> tuple[Tensor, Tensor]:
    """The network outputs ``[S, N, ...]`` (logits for a classifier, the mean otherwise) of
    ``draws`` posterior draws on a labelled data set, and its targets."""
    x, y = as_dataset(dataset, "dataset", tensors_only=True).tensors
    output = Output.LOGITS if model.likelihood is Likelihood.CATEGORICAL else Output.MEAN
    out = predictive_run(model, x, guide=guide, draws=draws, mask=mask, engine=engine,
                         output=output, seed=seed).samples
    return out, y


@renamed_keywords(method="engine")
@torch.no_grad()
def evaluate_predictive(
    model: PrunableNet,
    dataset: TensorDataset | Sequence[Tensor],
    *,
    guide: Callable | None = None,
    draws: int = 100,
    mask: Mask | None = None,
    engine: Engine | str = Engine.FAST,
    seed: int = 0,
    target_scale: float = 1.0,
) -> dict[str, float]:
    r"""Metrics of the posterior predictive (Bayesian model average) on a labelled data set.

    Classification: ``accuracy`` of ``argmax_c mean_s p_s(c | x)`` and ``nll`` =
    ``-mean_n log mean_s p_s(y_n | x_n)`` (token labels: accuracy per token, an example's
    tokens together in its ``p_s``, tokens labelled ``model.ignore_index`` left out). Regression: ``rmse`` of the predictive mean
    ``mean_s f_s(x)`` and ``ll`` = ``mean_n log mean_s N(y_n | f_s(x_n), sigma^2)``, both in the
    units of ``target_scale * y`` (pass the training targets' standard deviation to report
    standardised UCI targets in their original units; the log likelihood then subtracts
    ``log target_scale``).
    """
    model = check_prunable(model)
    if not (isinstance(target_scale, (int, float)) and target_scale > 0):
        raise ValueError(f"target_scale must be a positive number, got {target_scale!r}")
    out, y = _draws_on_labelled(model, dataset, guide=guide, draws=draws, mask=mask, engine=engine,
                                seed=seed)
    out = out.double()
    log_s = math.log(out.shape[0])
    if model.likelihood is Likelihood.CATEGORICAL:
        log_p = torch.log_softmax(out, -1).logsumexp(0) - log_s  # [N, C] or [N, T, C]
        if y.dim() > 1:  # token labels: per-token accuracy, the nll of an example's tokens
            lpd = _log_lik_draws(model, out, y).logsumexp(0) - log_s
            right, counted = correct_and_counted(log_p, y, model.ignore_index)  # ignored: in neither
            return {"accuracy": float(right.sum() / counted.sum().clamp_min(1)),
                    "nll": float(-lpd.mean())}
        return {"accuracy": float((log_p.argmax(-1) == y).double().mean()),
                "nll": float(-log_p.gather(-1, y[:, None]).mean())}
    rmse = float(((out.mean(0) - y.double()) ** 2).mean().sqrt()) * target_scale
    log_lik = _log_lik_draws(model, out, y).logsumexp(0) - log_s
    ll = float(log_lik.mean()) - y.shape[-1] * math.log(target_scale)
    return {"rmse": rmse, "ll": ll}


def _log_lik_draws(model: PrunableNet, out: Tensor, y: Tensor) -> Tensor:
    """``log p(y_n | x_n, z_s)`` of every draw ``[S, N]`` from the network outputs ``out``
    (with token labels ``[N, T, ...]``, the sum over an example's tokens, those labelled the
    model's ``ignore_index`` left out)."""
    out = out.double()
    if model.likelihood is Likelihood.CATEGORICAL:
        if y.dim() > 1:
            ignored = y == model.ignore_index
            per_token = torch.log_softmax(out, -1).gather(
                -1, y.masked_fill(ignored, 0).expand(out.shape[0], *y.shape)[..., None])[..., 0]
            per_token = per_token.masked_fill(ignored, 0.0)
            return per_token.reshape(out.shape[0], y.shape[0], -1).sum(-1)
        return torch.log_softmax(out, -1).gather(-1, y.expand(out.shape[0], -1)[..., None])[..., 0]
    sigma = model.obs_scale.detach().double()
    return torch.distributions.Normal(out, sigma).log_prob(y.double()).sum(-1)


@renamed_keywords(method="engine")
@torch.no_grad()
def log_predictive_density(
    model: PrunableNet,
    dataset: TensorDataset | Sequence[Tensor],
    *,
    guide: Callable | None = None,
    draws: int = 100,
    mask: Mask | None = None,
    engine: Engine | str = Engine.FAST,
    seed: int = 0,
) -> Tensor:
    r"""Pointwise log posterior predictive density of held-out data, ``[N]`` (float64); with
    token labels ``[N, T]``, of each example's tokens together.

    :math:`\mathrm{lpd}_n = \log \frac1S \sum_s p(y_n \mid x_n, z_s)` with ``S = draws``
    posterior draws, formed with logsumexp. Summed over a test set it is the quantity a
    Bayesian model is judged by on new data (PSIS-LOO estimates the same thing from the
    training data, where the test data are not available). ``mask`` removes structures
    temporarily (:func:`apply_mask`); with the same ``seed`` two calls use the same random
    numbers, so their difference is paired.
    """
    model = check_prunable(model)
    out, y = _draws_on_labelled(model, dataset, guide=guide, draws=draws, mask=mask, engine=engine,
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
