"""The pieces of :func:`~pyro_prune.inference.fit`'s loop, for a training loop of your own.

``fit`` is a plain PyTorch loop around three public pieces; a user who keeps their own loop
(or trainer) uses them directly and gets the same numbers:

* :class:`ElboLoss` — the negative ELBO of a minibatch, the likelihood scaled by
  ``num_data / batch`` and the KL weighted as ``fit`` weights it;
* :class:`~pyro_prune.inference.schedules.ContinuousPruning` — call
  ``schedule.on_epoch_end(model, epoch, epochs=...)`` after each epoch;
* :func:`pruning_summary` — the bookkeeping of a history row: kept structures per layer
  and the compression of the converted network;

plus :func:`make_optimizer`, the Adam ``fit`` builds. ``docs/scale_out.md`` shows a loop
that reproduces ``fit`` exactly (a test checks it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from pyro_prune._checks import check_count
from pyro_prune.inference.elbo import NoisePlan, fast_elbo_loss, pyro_elbo_loss
from pyro_prune.models.base import KLScale, PrunableNet

__all__ = ["ElboLoss", "pruning_summary"]


class ElboLoss:
    """Negative ELBO of a minibatch of ``model``, as :func:`~pyro_prune.inference.fit` computes it.

    Constructing it sets ``model.num_data`` (the likelihood of a batch of ``b`` examples is
    scaled by ``num_data / b``, so the loss estimates the negative ELBO of the whole data set)
    and the KL weight of every stochastic module (``kl_scale``: ``"elbo"`` (1), ``"paper"``
    or a number). Calling it returns ``(loss, out)``: the scalar loss to minimise and the
    network's output on the batch (``None`` with the Pyro estimator).

    Args:
        model: the :class:`~pyro_prune.models.base.PrunableNet` to train.
        num_data: size of the whole training set (in a data-parallel run: of all ranks
            together, not of one rank's shard).
        kl_scale: weight of the KL term: ``"auto"`` (the default, as in ``fit``: for a
            classifier the paper's weight for the structures' noise and the ELBO's for
            Gaussian weights; for a regression network the ELBO's), ``"elbo"``,
            ``"paper"`` or a number (a tempered posterior, see docs/defaults.md).
        per_example: draw the noise once per example (the default of ``fit``) or once per
            step for the whole batch.
        guide: a custom Pyro guide (e.g. an autoguide): the loss is then Pyro's
            ``Trace_ELBO`` of the model and this guide, its sites weighted by the model's KL
            weights (:func:`~pyro_prune.inference.elbo.pyro_elbo_loss`).
        use_pyro: use Pyro's ELBO estimator with the model's own guide.

    The model's noise layers are resolved once (:class:`~pyro_prune.inference.elbo.NoisePlan`);
    build a new ``ElboLoss`` after replacing modules of the model (pruning does not: it only
    flips ``kept`` masks).
    """

    def __init__(self, model: PrunableNet, *, num_data: int, kl_scale: float | KLScale | str = KLScale.AUTO,
                 per_example: bool = True, guide: Callable | None = None, use_pyro: bool = False) -> None:
        if not isinstance(model, PrunableNet):
            raise TypeError(f"model must be a PrunableNet, got {type(model).__name__}")
        check_count(num_data, "num_data")
        self.model = model
        model.num_data = num_data
        #: the KL weight in use (a number)
        self.kl_scale = model.set_kl_scale(kl_scale)
        self.per_example = per_example
        self.guide = guide
        self.use_pyro = use_pyro or guide is not None
        self.plan = None if self.use_pyro else NoisePlan(model)

    def __call__(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.use_pyro:
            return pyro_elbo_loss(self.model, x, y, guide=self.guide), None
        return fast_elbo_loss(self.model, x, y, per_example=self.per_example, plan=self.plan)

    def __repr__(self) -> str:
        return (f"ElboLoss({type(self.model).__name__}, num_data={self.model.num_data}, "
                f"kl_scale={self.kl_scale}, per_example={self.per_example}, use_pyro={self.use_pyro})")


def pruning_summary(model: PrunableNet) -> dict[str, Any]:
    """``{"kept": {layer: count}, "compression": float | None}``, as in ``fit``'s history rows.

    The compression is that of the converted deterministic network (parameters removed over
    the unpruned network's, :func:`~pyro_prune.convert.compression`); ``None`` when the
    network holds an operation the converter cannot trace. Gates that cannot shrink the
    network whatever they remove (:func:`~pyro_prune.graph.warn_cannot_shrink`, which warns
    once) are left out of ``kept``.
    """
    from pyro_prune.convert import UnsupportedOpError, compression
    from pyro_prune.graph import shrinkable_gates

    try:
        value: float | None = compression(model)
    except UnsupportedOpError:
        value = None
    return {"kept": {n: int(g.kept.sum()) for n, g in shrinkable_gates(model).items()}, "compression": value}
