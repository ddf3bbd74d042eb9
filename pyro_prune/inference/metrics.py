"""Mean negative log likelihood and accuracy (or RMSE) of a model at its posterior mean."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from pyro_prune._checks import as_dataset, check_dataset, check_model_data
from pyro_prune.inference.batches import eval_batches
from pyro_prune.models.base import Likelihood, PrunableNet, correct_totals

__all__ = ["evaluate", "first_batch", "model_device"]


@torch.no_grad()
def evaluate(model: PrunableNet, dataset: Any, *, batch_size: int = 2048) -> dict[str, float]:
    """Mean negative log likelihood and accuracy (or RMSE) at the posterior mean.

    The loss is per example; with token labels ``[N, T]`` (a language model's next tokens)
    an example's is the sum over its tokens and the accuracy is per token, tokens labelled
    the model's ``ignore_index`` (``-100``) left out of both.

    ``dataset``: a ``TensorDataset(inputs, targets)`` or the pair of tensors ``(inputs,
    targets)`` itself, any map-style or iterable ``Dataset`` of ``(input, target)`` pairs, or a
    ``DataLoader`` (read in order, batch by batch).
    """
    dataset = as_dataset(dataset, "dataset")
    if isinstance(dataset, TensorDataset):
        x, y = check_dataset(dataset, "dataset")
        check_model_data(model, x, y, "dataset")
    else:
        check_model_data(model, *first_batch(dataset, "dataset"), "dataset")
    was_training = model.training
    model.eval()
    device = model_device(model)
    total_nll, correct, counted, sq, n, width = 0.0, 0.0, 0.0, 0.0, 0, 1
    try:
        for xb, yb in eval_batches(dataset, batch_size):
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            out = model.predict(xb)
            total_nll += float(model.nll(out, yb).sum())
            n += len(xb)
            if model.likelihood is Likelihood.CATEGORICAL:
                right, count = correct_totals(out, yb, model.ignore_index)
                correct, counted = correct + right, counted + count
            else:
                sq += float(((out - yb) ** 2).sum())
                width = yb.shape[-1]
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("dataset is empty")
    metrics = {"loss": total_nll / n}
    if model.likelihood is Likelihood.CATEGORICAL:
        metrics["accuracy"] = correct / counted if counted else 0.0
    else:
        metrics["rmse"] = math.sqrt(sq / (n * width))
    return metrics


def first_batch(data: Any, arg: str) -> tuple[Tensor, Tensor]:
    """Two examples of a data set of any kind (for the checks of inputs and targets)."""
    try:
        return next(eval_batches(data, 2, arg))
    except StopIteration:
        raise ValueError(f"{arg} is empty") from None


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (the CPU for a model without any)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")
