"""A guide of the user's own (an autoguide) made ready to train: run, checked, attached.

:func:`~pyro_prune.inference.fit.fit` and :class:`~pyro_prune.lightning.PruningModule` train
a guide built by the user (``AutoNormal(model)``, ...) in place of the model's own. Before
the first step, :func:`prepare_guide`

* runs it once on two examples (an autoguide creates its parameters on its first call),
* refuses a guide the run could not learn from: one that starts the network switched off
  (:func:`~pyro_prune.inference.guides.check_guide_start`, for a guide not run before), a
  point posterior under a criterion of Bayesian model reduction
  (:func:`~pyro_prune.inference.guides.check_point_guide_criterion`) and one joint posterior
  over sites of different KL weights
  (:func:`~pyro_prune.inference.tempered_guide.check_guide_kl_weights`),
* and attaches it to the model (:func:`~pyro_prune.inference.guides.attach_guide`), so that
  the criteria, the posterior mean and the predictive read its posterior.

It returns the module that holds the guide's parameters: the guide itself when it is a
module (every autoguide), else a :class:`GuideParameters` over the ``pyro.param``
parameters a guide function uses, so that they train, are kept equal across ranks and are
saved in checkpoints as an autoguide's are.

A refused guide leaves the model as it was given. A guide whose noise posterior the criteria
cannot read at all (a custom callable, a normalising flow) still trains, with a warning that
says what does not read it: the criteria, and predictions at the posterior mean, which keep
the model's own noise posterior (its weights may be all its user wants).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import pyro
import torch
from torch import Tensor, nn

from pyro_prune.inference.guides import (
    attach_guide,
    check_guide_start,
    check_point_guide_criterion,
    check_readable_guide,
    detach_guide,
)
from pyro_prune.inference.tempered_guide import check_guide_kl_weights
from pyro_prune.models.base import PrunableNet

__all__ = ["GuideParameters", "GuideStart", "guide_start", "prepare_guide", "replaced_parameters"]


@dataclass(frozen=True)
class GuideStart:
    """Where a guide stood before a run first called it (:func:`guide_start`)."""

    #: an autoguide not run yet: it starts where its ``init_loc_fn`` puts it
    fresh: bool
    #: the names in Pyro's global param store then (a fresh guide's first call takes the
    #: values of any of its names already there)
    stored: frozenset[str] = frozenset()


def guide_start(guide: Any) -> GuideStart:
    """Record where ``guide`` stands, before anything runs it (for :func:`prepare_guide`)."""
    fresh = getattr(guide, "prototype_trace", False) is None
    return GuideStart(fresh, frozenset(pyro.get_param_store().keys()) if fresh else frozenset())


class GuideParameters(nn.Module):
    """The ``pyro.param`` parameters of a guide function, held by one module.

    The tensors are the unconstrained leaves in Pyro's param store that the guide reads, held
    as buffers (the same tensors, not copies): :func:`~pyro_prune.inference.optim.make_optimizer`
    trains them (:meth:`tensors`), and ``state_dict`` / ``load_state_dict`` read and write the
    store's values in place, which is how ``fit``'s checkpoints keep them.
    """

    def __init__(self, tensors: dict[str, Tensor]) -> None:
        super().__init__()
        #: the param store's names, in the order of :meth:`tensors`
        self.names = list(tensors)
        for name, value in tensors.items():
            self.register_buffer(name.replace(".", "__"), value)

    @classmethod
    def of(cls, trace: Any) -> GuideParameters | None:
        """Those a guide read in its run ``trace`` (a Pyro trace); ``None`` when it read none."""
        found = {name: site["value"].unconstrained() for name, site in trace.nodes.items()
                 if site["type"] == "param"}
        return cls(found) if found else None

    def tensors(self) -> list[Tensor]:
        """The parameters to train."""
        return list(self.buffers())


def prepare_guide(model: PrunableNet, guide: Any, sample: tuple[Tensor, ...], *, kl_scale: Any,
                  criterion: Any = None, start: GuideStart | None = None) -> nn.Module | None:
    """Make the custom ``guide`` of ``model`` ready to train (see the module docstring).

    Args:
        model: the network the guide stands for.
        guide: a Pyro guide of ``model`` other than its own (e.g. ``AutoNormal(model)``).
        sample: model arguments of two examples, on the model's device (``(x, y)``).
        kl_scale: the run's KL weight as given (``"auto"``, ``"paper"``, a number, ...).
        criterion: the pruning criterion of the run, if it prunes with one
            (a :class:`~pyro_prune.reduction.Criterion`).
        start: where the guide stood before the run first called it (:func:`guide_start`,
            recorded before anything ran it); by default recorded now.

    Returns:
        The module holding the guide's parameters (see the module docstring), or ``None``
        for a guide function that reads none.

    Raises:
        ValueError: the guide starts the network where it cannot train, or holds sites of
            different KL weights in one joint posterior.
        TypeError: a point posterior (``AutoDelta``) under a criterion of model reduction.
    """
    from pyro_prune.reduction import Criterion

    start = guide_start(guide) if start is None else start
    with torch.no_grad():  # an autoguide creates its parameters on its first call
        trace = pyro.poutine.trace(guide).get_trace(*sample)
    if start.fresh:
        _warn_if_shared(guide, start.stored)
    try:
        check_readable_guide(model, guide)
    except (TypeError, ValueError):
        readable = False
    else:
        readable = True
    if readable and start.fresh:
        check_guide_start(model, guide)
    if readable and isinstance(criterion, Criterion):
        check_point_guide_criterion(guide, criterion)
    check_guide_kl_weights(model, guide, kl_scale)
    _attach(model, guide)
    if isinstance(guide, nn.Module):
        return guide if guide is not model else None
    return GuideParameters.of(trace)


def _warn_if_shared(guide: Any, stored: frozenset[str]) -> None:
    """Warn when a guide run for the first time took parameters already in Pyro's param store.

    A ``PyroModule`` (every autoguide) keeps its parameters in Pyro's global param store under
    its name, ``AutoNormal.locs.<site>``: a second ``AutoNormal`` of a network of the same
    layout takes the first one's values, and training either changes both.
    """
    prefix = getattr(guide, "_pyro_name", None)
    if not prefix:
        return
    shared = sorted(name for name in stored if name.startswith(prefix + "."))
    if shared:
        warnings.warn(
            f"guide {type(guide).__name__} had not been run, yet Pyro's param store already held "
            f"{len(shared)} of its parameters ({shared[0]!r}, ...), from another guide of the same name "
            f"or loaded: it starts from those values, not where its init_loc_fn puts it, and training "
            f"it changes them for every guide that shares them. Call pyro.clear_param_store() before "
            f"building the guide, or pyro.settings.set(module_local_params=True) to give each guide its "
            f"own parameters (nothing to do if they were loaded on purpose)",
            RuntimeWarning, stacklevel=4)


def _attach(model: PrunableNet, guide: Any) -> None:
    """Attach ``guide``, or, when the criteria cannot read it, warn and keep the model's own
    posterior for them (recording why on the model)."""
    try:
        attach_guide(model, guide)
    except (TypeError, ValueError) as err:
        detach_guide(model)
        model.__dict__["_fitted_guide_error"] = str(err)
        warnings.warn(f"{err}; the pruning criteria cannot use this fit, and predictions at the posterior "
                      f"mean (model.predict, evaluate, the conversion) read the model's own noise posterior, "
                      f"not this guide's (pyro.infer.Predictive with the guide draws from it)",
                      RuntimeWarning, stacklevel=4)
    else:
        model.__dict__.pop("_fitted_guide_error", None)


def replaced_parameters(model: PrunableNet, guide: Any) -> list[nn.Parameter]:
    """The parameters of ``model``'s own posterior that the fitted ``guide`` replaces: those
    of the noise layers, and those of Gaussian weights whose sites the guide holds.

    Under the guide's ELBO they receive no gradient. A data-parallel wrapper that expects a
    gradient for every parameter (``DistributedDataParallel`` without
    ``find_unused_parameters``) must not see them as trainable.
    """
    from pyro_prune.models.bayesian import BayesianLayer

    trace = getattr(guide, "prototype_trace", None)
    sites = set(trace.nodes) if trace is not None else set()
    found: dict[int, nn.Parameter] = {}
    for noise in model.noise_layers().values():
        if noise.site_name in sites:
            for param in noise._parameters.values():  # the network's shared storage, once
                if param is not None:
                    found[id(param)] = param
    for layer in model.stochastic_modules().values():
        if not isinstance(layer, BayesianLayer):
            continue
        for part in ("weight", "bias"):
            if f"{layer.site_name}.{part}" not in sites:
                continue
            for suffix in ("loc", "log_scale"):
                param = getattr(layer, f"{part}_{suffix}", None)
                if isinstance(param, nn.Parameter):
                    found[id(param)] = param
    return list(found.values())
