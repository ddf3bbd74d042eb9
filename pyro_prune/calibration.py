r"""Calibration of a classifier's predictive probabilities: expected calibration error (ECE)
and the reliability diagram's bins.

The predictions are split into ``bins`` equal-width bins of confidence
``max_c p(c | x)``; in each bin the accuracy is compared with the mean confidence, and

.. math::

    \mathrm{ECE} = \sum_b \frac{n_b}{N} \left| \mathrm{acc}_b - \mathrm{conf}_b \right|

(Naeini et al., AAAI 2015; Guo et al., ICML 2017). A pruned network that keeps its accuracy
may still become over- or under-confident; the run report shows both before and after.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from pyro_prune._checks import check_count

__all__ = ["Calibration", "calibration"]


@dataclass(frozen=True)
class Calibration:
    """What :func:`calibration` returns.

    Attributes:
        ece: expected calibration error, in [0, 1].
        edges: the ``bins + 1`` bin edges of confidence.
        confidence: mean confidence per bin (NaN where empty).
        accuracy: accuracy per bin (NaN where empty).
        count: predictions per bin.
    """

    ece: float
    edges: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray

    def to_json(self) -> dict[str, object]:
        nan_to_none = lambda a: [None if not np.isfinite(v) else float(v) for v in a]  # noqa: E731
        return {"ece": self.ece, "edges": self.edges.tolist(),
                "confidence": nan_to_none(self.confidence), "accuracy": nan_to_none(self.accuracy),
                "count": self.count.astype(int).tolist()}


def calibration(probs: Tensor | np.ndarray, labels: Tensor | np.ndarray, *, bins: int = 15) -> Calibration:
    """Expected calibration error and reliability bins of class probabilities.

    Args:
        probs: ``[N, C]`` predictive probabilities (rows sum to 1; e.g. the posterior
            predictive mean of :func:`~pyro_prune.predictive.posterior_predictive`).
        labels: ``[N]`` integer class labels.
        bins: number of equal-width confidence bins over [0, 1].

    Raises:
        ValueError: shapes do not match, probabilities outside [0, 1], ``bins < 1``.
    """
    p = torch.as_tensor(probs, dtype=torch.float64)
    y = torch.as_tensor(labels)
    check_count(bins, "bins")
    if p.dim() != 2 or y.dim() != 1 or p.shape[0] != y.shape[0]:
        raise ValueError(f"probs must be [N, C] and labels [N], got {tuple(p.shape)} and {tuple(y.shape)}")
    if p.shape[0] == 0:
        raise ValueError("probs is empty")
    if not bool(torch.isfinite(p).all()) or float(p.min()) < 0 or float(p.max()) > 1 + 1e-6:
        raise ValueError("probs must be probabilities in [0, 1]")
    conf, pred = p.max(-1)
    correct = (pred == y.long()).double()
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = torch.clamp(torch.bucketize(conf, torch.as_tensor(edges[1:-1]), right=True), 0, bins - 1)
    count = torch.bincount(index, minlength=bins).double()
    conf_sum = torch.bincount(index, weights=conf, minlength=bins)
    acc_sum = torch.bincount(index, weights=correct, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        bin_conf = (conf_sum / count).numpy()
        bin_acc = (acc_sum / count).numpy()
    ece = float((torch.abs(acc_sum - conf_sum)).sum() / p.shape[0])
    return Calibration(ece=ece, edges=edges, confidence=bin_conf, accuracy=bin_acc,
                       count=count.numpy())
