"""The base of the noise distributions: a variable :math:`\\theta` on :math:`[e^A, e^B]`."""

from __future__ import annotations

import torch
from pyro.distributions.torch_distribution import TorchDistribution
from torch.distributions import constraints
from torch.distributions.utils import broadcast_all

from pyro_prune.distributions.special import check_log_bounds

__all__ = ["LogBoundedDistribution"]


class LogBoundedDistribution(TorchDistribution):
    """A distribution of :math:`\\theta` with support ``[exp(log_low), exp(log_high)]``.

    Subclasses list their parameters (``log_low`` and ``log_high`` among them) in
    ``arg_constraints`` and call :meth:`_set_params`; broadcasting, the bounds check, the
    support and :meth:`expand` are shared.
    """

    log_low: torch.Tensor
    log_high: torch.Tensor

    def _set_params(self, validate_args: bool | None, **params) -> None:
        names = list(self.arg_constraints)
        values = broadcast_all(*(params[name] for name in names))
        for name, value in zip(names, values):
            setattr(self, name, value)
        TorchDistribution.__init__(self, values[0].shape, validate_args=validate_args)
        if self._validate_args:
            check_log_bounds(self.log_low, self.log_high)

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self):
        return constraints.interval(self.log_low.exp(), self.log_high.exp())

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(type(self), _instance)
        batch_shape = torch.Size(batch_shape)
        for name in self.arg_constraints:
            setattr(new, name, getattr(self, name).expand(batch_shape))
        TorchDistribution.__init__(new, batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new
