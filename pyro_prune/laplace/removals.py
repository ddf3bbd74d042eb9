"""Threshold-free Bayesian model reduction of a trained network from its Laplace posterior."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from pyro_prune._enums import parse_enum
from pyro_prune.laplace.curvature import HessianStructure, _full_name, _tensors
from pyro_prune.laplace.posterior import FLAT_RTOL, LaplacePosterior, laplace_posterior
from pyro_prune.models.base import Likelihood

__all__ = ["RemovalStructure", "laplace_prune", "laplace_removals"]

# --------------------------------------------------------------------------- BMR
class RemovalStructure(enum.Enum):
    """What :func:`laplace_removals` decides about."""

    #: the structures of a model's gates: neurons of Linear layers, channels of convolutions
    NEURON = "neuron"
    #: single weights of every Linear / Conv2d layer
    WEIGHT = "weight"


def _gate_info(model: Any, gate_name: str) -> Any:
    """The gate's entry of the model's structure graph (``None``: the network cannot be traced)."""
    from pyro_prune.graph import structure_graph

    try:
        return structure_graph(model).gates.get(gate_name)
    except (ValueError, TypeError, RuntimeError):
        return None


def _structure_parameters(model: Any, gate_name: str, gate: Any) -> list[tuple[str, Tensor]]:
    """``(parameter name, parameter)`` whose axis 0 runs over the gate's structures.

    The producer's weight rows and bias, and the per-channel parameters of the BatchNorm
    layers between it and the gate (from the structure graph).
    """
    n = gate.num_structures
    names = dict(model.net.named_modules())
    owners: list[str] = []
    if gate.producer_name is not None:
        owners.append(gate.producer_name)
    info = _gate_info(model, gate_name)
    if info is not None:
        owners += [p for p in info.per_channel if p not in owners]
    out = []
    for path in owners:
        for pname, p in names[path].named_parameters(recurse=False):
            if p.requires_grad and p.dim() >= 1 and p.shape[0] == n:
                out.append((_full_name(path, pname), p))
    if not out:
        raise ValueError(f"gate {gate_name!r} has no producer parameters with {n} rows")
    return out


#: per-weight round-off allowed in a structure's dF before a tie (dF = 0) stops counting as one
_TIE_TOLERANCE = 1e-9

def _consumer_columns(model: Any, gate_name: str, n: int) -> list[tuple[str, int]]:
    """``(weight name, block)`` of the Linear / Conv2d layers that read the gate's structures.

    The gate's ``direct_consumers`` in the structure graph (reached through activations,
    pooling, dropout and index ops only); structure ``i`` owns the input columns
    ``i*block .. (i+1)*block - 1`` of the weight flattened to ``[out, -1]`` (a flattened
    channel's ``H*W`` block, a conv input channel's kernel). Anything else on the way (a
    residual add, a normalisation) or a reader other than a trainable Linear / ungrouped Conv2d: those
    structures are judged on their incoming weights only.
    """
    info = _gate_info(model, gate_name)
    if info is None or info.direct_consumers is None:
        return []
    out: list[tuple[str, int]] = []
    for path in info.direct_consumers:
        m = model.net.get_submodule(path)
        if not isinstance(m, (nn.Linear, nn.Conv2d)) or (isinstance(m, nn.Conv2d) and m.groups != 1) \
                or not m.weight.requires_grad:
            return []
        width = m.weight[0].numel()
        in_units = m.in_features if isinstance(m, nn.Linear) else m.in_channels
        if in_units % n == 0 and width % n == 0:
            out.append((_full_name(path, "weight"), width // n))
    return out


def laplace_removals(
    model: nn.Module,
    data: TensorDataset | Sequence[Tensor],
    *,
    structure: RemovalStructure | str = RemovalStructure.NEURON,
    prior_scale: float | None = None,
    likelihood: Likelihood | str | None = None,
    obs_scale: float | None = None,
    hessian: HessianStructure | str = HessianStructure.KRON,
    reduced_scale: float = 1e-8,
    batch_size: int = 512,
    curvature_subset: int | None = None,
    flat_rtol: float | None = FLAT_RTOL,
) -> dict[str, Tensor]:
    r"""Threshold-free removals from the Laplace posterior of a trained network.

    The Laplace posterior :math:`\mathcal N(w^*, P^{-1})` (:func:`laplace_posterior`) gives
    every weight a mean and a marginal variance; Gaussian BMR
    (:func:`~pyro_prune.reduction.delta_f_gaussian`, prior :math:`\mathcal N(0, s^2)`,
    reduced prior :math:`\mathcal N(0, r^2)`) gives the change in log evidence of fixing
    it at 0. A structure's weights are its incoming weights (the producer's weight row and
    bias, the entries of a BatchNorm it passes) and its outgoing ones (the input columns of
    the Linear / Conv2d layers that read it, found through activations, pooling and flatten;
    :func:`_consumer_columns`), and its :math:`\Delta F` adds up theirs: with
    ``hessian="kron"`` (default) the weight row and each consumer's group of columns are
    reduced jointly under their Kronecker posterior covariance
    (:meth:`LaplacePosterior.row_delta_f`, :meth:`LaplacePosterior.column_delta_f`), a bias
    entry and BatchNorm entries by their marginals (exact for one weight); the blocks are
    independent under K-FAC, so the sum is the joint :math:`\Delta F`. With ``"diag"``
    every weight is mean field (the sum of ``delta_f_gaussian`` over them). A structure is
    removed where :math:`\Delta F \ge 0`: no threshold, no target ratio (a tie within
    float64 round-off, ``1e-9`` per weight, counts as ``dF = 0``). Structures are judged
    one at a time (each with the others kept), as the other BMR criteria. Before that the
    posterior mean is moved to the prior mean 0 along the directions where the likelihood
    is flat (:meth:`LaplacePosterior.flat_directions_at_prior`), where the Laplace mode is.

    Args:
        model: for ``structure="neuron"`` a :class:`~pyro_prune.models.PrunableNet` with
            gates, e.g. ``bayesianize(net, gate="mask")`` of a trained ``net``; the
            structure of a gate is its producer's weight row and bias entry plus the
            per-channel parameters of a BatchNorm it follows. For ``"weight"`` any module
            (a ``PrunableNet``'s backbone is used).
        data: the training data ``(inputs, targets)``.
        structure: ``"neuron"`` (:class:`RemovalStructure`) or ``"weight"``.
        prior_scale: ``s``; ``None`` (default) fits it by maximising the evidence.
        likelihood, obs_scale: default: the ``PrunableNet``'s; ``"categorical"`` for a
            plain module. A Gaussian ``obs_scale=None`` is fitted.
        hessian: curvature structure of the posterior (``"kron"`` or ``"diag"``).
        reduced_scale: ``r`` of the reduced prior (mean-field terms; the joint row term is
            its ``r -> 0`` limit).
        batch_size, curvature_subset: as :func:`log_evidence`.
        flat_rtol: the relative curvature eigenvalue at or below which a direction is flat
            (``None``: the weights as given are the mean everywhere).

    Returns:
        ``structure="neuron"``: gate name to a bool mask over its structures, True = remove
        (only kept structures), as :func:`~pyro_prune.reduction.scoring.structure_removals`;
        ``"weight"``: parameter name of each Linear/Conv2d weight to a bool mask of its
        shape, True = remove.
    """
    removals, _, _ = _bmr(model, data, structure=structure, prior_scale=prior_scale, likelihood=likelihood,
                          obs_scale=obs_scale, hessian=hessian, reduced_scale=reduced_scale, batch_size=batch_size,
                          curvature_subset=curvature_subset, flat_rtol=flat_rtol)
    return removals


def _bmr(
    model: nn.Module,
    data: TensorDataset | Sequence[Tensor],
    *,
    structure: RemovalStructure | str,
    prior_scale: float | None,
    likelihood: Likelihood | str | None,
    obs_scale: float | None,
    hessian: HessianStructure | str,
    reduced_scale: float,
    batch_size: int,
    curvature_subset: int | None,
    flat_rtol: float | None,
) -> tuple[dict[str, Tensor], LaplacePosterior, dict[str, list[tuple[str, int]]]]:
    """:func:`laplace_removals`, also returning the posterior and each gate's parameters.

    The third item maps a gate to ``(parameter name, block)``: ``block = 0`` for a parameter
    whose axis 0 runs over the structures, else the number of input columns per structure
    of a consumer weight flattened to ``[out, -1]``.
    """
    from pyro_prune.models.base import PrunableNet
    from pyro_prune.models.gate import StructureGate
    from pyro_prune.models.noise import NoiseMode, noise_mode
    from pyro_prune.reduction import delta_f_gaussian

    kind = parse_enum(RemovalStructure, structure.value if isinstance(structure, RemovalStructure) else structure,
                      "structure")
    if isinstance(model, PrunableNet):
        net = model.net
        if likelihood is None:
            likelihood = model.likelihood
            if model.likelihood is Likelihood.GAUSSIAN and obs_scale is None:
                obs_scale = float(model.obs_scale)
    elif isinstance(model, nn.Module):
        if kind is RemovalStructure.NEURON:
            raise TypeError('structure="neuron" needs a PrunableNet with gates, e.g. '
                            'bayesianize(net, gate="mask"); for a plain module use laplace_prune')
        net = model
    else:
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if likelihood is None:
        likelihood = Likelihood.CATEGORICAL
    frozen = [p for m in net.modules() if isinstance(m, StructureGate)
              for p in m.parameters(recurse=False) if p.requires_grad]
    try:
        for p in frozen:  # the gates are not weights of the network's Laplace posterior
            p.requires_grad_(False)
        with noise_mode(net, NoiseMode.MEAN):
            post = laplace_posterior(net, data, prior_scale=prior_scale, likelihood=likelihood,
                                     obs_scale=obs_scale, hessian=hessian, batch_size=batch_size,
                                     curvature_subset=curvature_subset)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    if flat_rtol is not None:  # the mode: the prior mean where the likelihood is flat
        post = post.flat_directions_at_prior(flat_rtol)
    s = post.evidence.prior_scale

    def delta_f(name: str) -> Tensor:
        return delta_f_gaussian(post.mean[name].double(), post.variance[name].sqrt(), prior_scale=s,
                                reduced_scale=reduced_scale)

    if kind is RemovalStructure.WEIGHT:
        out: dict[str, Tensor] = {}
        for path, module in net.named_modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)) and module.weight.requires_grad:
                name = _full_name(path, "weight")
                out[name] = (delta_f(name) >= 0).to(module.weight.device)
        return out, post, {}
    removals: dict[str, Tensor] = {}
    members: dict[str, list[tuple[str, int]]] = {}  # gate -> (parameter name, columns per structure; 0 = rows)
    for gate_name, gate in model.gates().items():  # type: ignore[union-attr, operator]
        total = torch.zeros(gate.num_structures, dtype=torch.float64)
        count = 0  # weights per structure, for the round-off tolerance of a tie
        members[gate_name] = []
        for name, param in _structure_parameters(model, gate_name, gate):
            members[gate_name].append((name, 0))
            if name in post.kron:  # the joint posterior of the row
                total += post.row_delta_f(name).cpu()
            else:  # mean field
                total += delta_f(name).reshape(param.shape[0], -1).sum(1).cpu()
            count += param[0].numel()
        n = gate.num_structures
        for name, block in _consumer_columns(model, gate_name, n):
            members[gate_name].append((name, block))
            if name in post.kron:  # the structure's block of columns jointly
                total += post.column_delta_f(name, block).cpu()
            else:
                df = delta_f(name)
                total += df.reshape(df.shape[0], n, block).sum((0, 2)).cpu()
            count += post.mean[name].numel() // n
        # dF = 0 (the posterior is the prior: a tie, which removes) up to float64 round-off
        removals[gate_name] = (total >= -_TIE_TOLERANCE * count).to(gate.kept.device) & gate.kept
    return removals, post, members


def laplace_prune(
    net: nn.Module,
    data: TensorDataset | Sequence[Tensor],
    *,
    likelihood: Likelihood | str = Likelihood.CATEGORICAL,
    reduced_mean: bool = True,
    prior_scale: float | None = None,
    obs_scale: float | None = None,
    hessian: HessianStructure | str = HessianStructure.KRON,
    reduced_scale: float = 1e-8,
    batch_size: int = 512,
    curvature_subset: int | None = None,
    flat_rtol: float | None = FLAT_RTOL,
) -> tuple[nn.Module, dict[str, Tensor]]:
    r"""Prune the neurons / channels of a trained plain network by Laplace BMR; a smaller module.

    ``bayesianize(net, gate="mask")`` puts a deterministic gate after every hidden Linear /
    Conv2d / BatchNorm2d (the input is copied, never changed), :func:`laplace_removals`
    decides, the kept weights move to the reduced posterior mean (``reduced_mean=True``,
    default: :meth:`~pyro_prune.laplace.LaplacePosterior.reduced_mean`, the conditional
    mean :math:`m_K + P_{KK}^{-1} P_{KR} m_R` given every removed structure's weights at 0,
    which compensates within each layer for what was removed), the gates are pruned and
    :func:`~pyro_prune.convert.to_deterministic` slices the removed structures out.
    ``reduced_mean=False`` keeps the kept weights at ``w*``. The other arguments are
    :func:`laplace_removals`'.

    Returns:
        ``(smaller module, removals)`` with ``removals`` as :func:`laplace_removals` returns.
    """
    from pyro_prune.convert import to_deterministic
    from pyro_prune.models.bayesianize import bayesianize

    if not isinstance(reduced_mean, bool):
        raise TypeError(f"reduced_mean must be True or False, got {reduced_mean!r}")
    x, _ = _tensors(data)
    model = bayesianize(net, gate="mask", likelihood=likelihood)
    model.eval()
    removals, post, members = _bmr(model, data, structure=RemovalStructure.NEURON, prior_scale=prior_scale,
                                   likelihood=likelihood, obs_scale=obs_scale, hessian=hessian,
                                   reduced_scale=reduced_scale, batch_size=batch_size,
                                   curvature_subset=curvature_subset, flat_rtol=flat_rtol)
    if reduced_mean:
        _move_to_reduced_mean(model.net, post, removals, members)
    gates = model.gates()
    for name, remove in removals.items():
        gates[name].prune(remove)
    return to_deterministic(model, example_input=x[:1]), removals


def _removed_weights(removals: Mapping[str, Tensor], members: Mapping[str, list[tuple[str, int]]],
                     shapes: Mapping[str, torch.Size]) -> dict[str, Tensor]:
    """Parameter name to the bool mask of the weights the removed structures take with them."""
    out: dict[str, Tensor] = {}
    for gate_name, remove in removals.items():
        remove = remove.cpu()
        if not bool(remove.any()):
            continue
        for name, block in members[gate_name]:
            shape = shapes[name]
            mask = out.setdefault(name, torch.zeros(shape, dtype=torch.bool))
            if block == 0:  # axis 0 runs over the structures
                mask[remove] = True
            else:  # consumer columns: structure i owns columns i*block .. (i+1)*block - 1
                flat = mask.reshape(shape[0], -1)
                flat[:, remove.repeat_interleave(block)] = True
    return out


def _move_to_reduced_mean(net: nn.Module, post: LaplacePosterior, removals: Mapping[str, Tensor],
                          members: Mapping[str, list[tuple[str, int]]]) -> None:
    """Set ``net``'s parameters to the posterior mean given the removed structures' weights at 0."""
    params = dict(net.named_parameters())
    removed = _removed_weights(removals, members, {n: p.shape for n, p in params.items()})
    if not removed:
        return
    means = post.reduced_mean(removed)
    with torch.no_grad():
        for name, value in means.items():
            params[name].copy_(value.to(params[name].dtype))
