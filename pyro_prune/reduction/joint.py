r"""Joint BMR of a structure's noise and its Gaussian incoming weights.

The reduced model switches both off: the noise to the spike of BMRS\ :sub:`N`
(:mod:`~pyro_prune.reduction.lognormal`), the incoming weights to :math:`\mathcal N(0, r^2)`
(:mod:`~pyro_prune.reduction.gaussian`); under the mean-field posterior the dF is the sum.
"""

from __future__ import annotations

import torch

from pyro_prune.reduction._elementwise import Dim
from pyro_prune.reduction.gaussian import delta_f_gaussian
from pyro_prune.reduction.lognormal import delta_f_lognormal

__all__ = ["delta_f_joint"]


def delta_f_joint(
    loc: torch.Tensor,
    scale: torch.Tensor,
    weight_loc: torch.Tensor,
    weight_scale: torch.Tensor,
    *,
    log_low: float | torch.Tensor = -20.0,
    log_high: float | torch.Tensor = 0.0,
    reduced_var: float | torch.Tensor = 1e-12,
    prior_scale: float | torch.Tensor = 1.0,
    reduced_scale: float | torch.Tensor = 1e-8,
    dim: Dim = -1,
) -> torch.Tensor:
    r"""Joint BMR of a structure's noise and its Gaussian incoming weights.

    For a network with Gaussian weight priors and multiplicative noise, the model "structure
    :math:`i` is off" reduces both the prior of its noise :math:`\theta_i` (to the spike of
    BMRS\ :sub:`N` at :math:`A`) and the priors of its incoming weights :math:`w_i` (the row of
    the producing layer that :math:`\theta_i` multiplies, to :math:`\mathcal N(0, r^2)`).
    Under the mean-field posterior :math:`q(\theta_i)\prod_j q(w_{ij})` the BMR integral
    factorises, so

    .. math::

        \Delta F_i = \Delta F_\theta(\mu_i, \sigma_i) + \sum_j \Delta F_{\mathcal N}(m_{ij}, v_{ij}),

    with :func:`delta_f_lognormal` and :func:`delta_f_gaussian`: no threshold. The incoming
    row, not the outgoing column, belongs to the structure: :math:`\theta_i` scales exactly
    :math:`w_i\cdot h` (the two are one product in the likelihood, so the evidence for
    "off" is shared between them), while the outgoing column holds the incoming weights of
    the next layer's structures, whose own :math:`\Delta F` already counts them.

    Args:
        loc, scale: noise posterior, shape ``[..., n]``.
        weight_loc, weight_scale: Gaussian posterior of the incoming weights, the structures
            on the axes of ``loc`` and the weights of a structure on ``dim``.
        log_low, log_high, reduced_var: as in :func:`delta_f_lognormal`.
        prior_scale, reduced_scale: as in :func:`delta_f_gaussian`.
        dim: the axes of ``weight_loc`` summed over (default ``-1``: rows ``[n, fan_in]``).
    """
    df_noise = delta_f_lognormal(loc, scale, log_low=log_low, log_high=log_high,
                                 reduced_var=reduced_var)
    df_weights = delta_f_gaussian(weight_loc, weight_scale, prior_scale=prior_scale,
                                  reduced_scale=reduced_scale, dim=dim)
    if df_weights.shape != df_noise.shape:
        raise ValueError(
            f"the weights give {tuple(df_weights.shape)} structures after summing over dim={dim}, "
            f"the noise {tuple(df_noise.shape)}"
        )
    return df_noise + df_weights.to(df_noise.dtype)
