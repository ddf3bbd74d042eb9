"""Structure gates: modules that keep or remove whole structures along one axis.

A structure is a neuron of a Linear layer, a channel of a convolution, an attention head:
whatever one index along one axis of a layer's output selects. A :class:`StructureGate`
holds the boolean buffer ``kept`` over its structures and multiplies removed ones by zero.
Pruning is monotone (a removed structure never returns) and never empties a layer.

:class:`StructureMask` is the deterministic gate (used where the network has no
multiplicative noise, e.g. Bayesian networks pruned neuron by neuron);
:class:`~pyro_prune.models.noise.MultiplicativeNoise` is the stochastic one.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Mapping

import torch
from pyro.nn import PyroModule
from torch import Tensor

from pyro_prune._checks import check_count

__all__ = ["StructureGate", "StructureMask", "rank_structures", "removals_in_order"]


class StructureGate(PyroModule):
    """Keeps or removes the ``num_structures`` structures along axis ``dim`` of its input.

    Attributes:
        kept: boolean buffer ``[n]`` of the structures still in the network.
        producer_name: module path of the layer whose output structures this gate
            selects (the structures' incoming weights), or ``None``; read from the
            network's structure graph (:func:`pyro_prune.graph.producer_module`), read-only.
    """

    def __init__(self, num_structures: int, dim: int = -1) -> None:
        super().__init__()
        check_count(num_structures, "num_structures")
        if not isinstance(dim, int):
            raise TypeError(f"dim must be an int, got {type(dim).__name__}")
        self.num_structures = num_structures
        self.dim = dim
        self.register_buffer("kept", torch.ones(num_structures, dtype=torch.bool))
        self.site_name = "gate"

    @property
    def producer_name(self) -> str | None:
        """Module path (in the owning model's backbone) of the layer whose output rows are
        this gate's structures, from the structure graph; ``None`` outside a model."""
        owner = self.__dict__.get("_owner")
        if owner is None:
            return None
        model, path = owner
        try:
            if model.net.get_submodule(path) is not self:
                return None
        except AttributeError:
            return None
        from pyro_prune.graph.structure import producer_module

        return producer_module(model, path)

    def _set_owner(self, model: object, path: str) -> None:
        """Record the model holding this gate at ``path`` (not a submodule: a plain reference)."""
        self.__dict__["_owner"] = (model, path)

    def importance(self) -> Tensor:
        """Score used to pick the survivor when pruning would empty the layer."""
        return self.kept.to(torch.float32)

    def prune(self, remove: Tensor) -> int:
        """Remove the structures where ``remove`` is True; returns how many were newly removed.

        Pruning is monotone. It never empties the layer: if every remaining structure
        would go, the most important one (:meth:`importance`) stays, with a warning.
        """
        remove = torch.as_tensor(remove, device=self.kept.device)
        if remove.dtype != torch.bool or remove.shape != self.kept.shape:
            raise ValueError(
                f"remove must be a bool tensor of shape {tuple(self.kept.shape)}, "
                f"got dtype={remove.dtype} shape={tuple(remove.shape)}"
            )
        new_kept = self.kept & ~remove
        if not bool(new_kept.any()):
            with torch.no_grad():
                score = self.importance().detach().float().masked_fill(~self.kept, -float("inf"))
            keep = int(score.argmax())
            new_kept[keep] = True
            warnings.warn(
                f"pruning would empty {self.site_name!r}; keeping structure {keep}",
                RuntimeWarning,
                stacklevel=2,
            )
        newly = int((self.kept & ~new_kept).sum())
        self.kept.copy_(new_kept)
        return newly

    def broadcast(self, values: Tensor, x: Tensor) -> Tensor:
        """Reshape per-structure ``values`` ([n] or [batch, n]) to broadcast along ``dim`` of ``x``."""
        dim = self.dim % x.dim()
        if x.shape[dim] != self.num_structures:
            raise ValueError(
                f"{self.site_name}: input has {x.shape[dim]} structures along dim {self.dim}, "
                f"expected {self.num_structures} (input shape {tuple(x.shape)})"
            )
        trailing = x.dim() - dim - 1
        if values.dim() == 1:
            return values.reshape(values.shape + (1,) * trailing)
        # per-example values [batch, n]: the batch axis is dim 0 of x
        values = fold_examples(values, x.shape[0], self.site_name)
        return values.reshape(values.shape[:1] + (1,) * (dim - 1) + values.shape[1:] + (1,) * trailing)

    def extra_repr(self) -> str:
        return f"num_structures={self.num_structures}, dim={self.dim}, kept={int(self.kept.sum())}"


def fold_examples(values: Tensor, rows: int, site: str) -> Tensor:
    """Per-example ``values`` (``[batch, ...]``) for an input whose leading axis has ``rows`` rows.

    A network may fold the positions of each example into the leading axis: a decoder's
    ``hidden.reshape(-1, width)`` over ``[batch, tokens, width]`` (OPT), the windows of a
    Swin block, the patches of MobileViT. ``reshape`` keeps the batch outermost, so the
    ``rows = k * batch`` rows are the example's ``k`` positions in turn, and each takes its
    example's values (a draw of the noise is one per example, never one per position).

    Raises:
        ValueError: ``rows`` is not a multiple of the batch (the network moved the batch
            off the leading axis, e.g. a sequence-first layout).
    """
    batch = values.shape[0]
    if rows == batch:
        return values
    if batch > 0 and rows > batch and rows % batch == 0:
        return values.repeat_interleave(rows // batch, dim=0)
    raise ValueError(
        f"{site}: per-example noise was drawn for {batch} examples, but this gate's input has "
        f"{rows} rows on its leading axis, not a multiple of {batch}: the network moves the batch "
        f"off the leading axis here (e.g. a sequence-first [tokens, batch, width] layout). Train with "
        f"one draw per step (fit(per_example_noise=False)), or keep the batch first")


class StructureMask(StructureGate):
    """The deterministic gate: ``x * kept`` along ``dim`` (no latent variables)."""

    def forward(self, x: Tensor) -> Tensor:
        if bool(self.kept.all()):
            return x
        return x * self.broadcast(self.kept.to(x.dtype), x)


def rank_structures(kept: Mapping[str, Tensor], scores: Mapping[str, Tensor]) -> list[tuple[str, int]]:
    """Every kept structure as ``(gate, index)`` across all gates, lowest score first.

    Ties go by the order of the gates in ``kept``, then by index.
    """
    entries: list[tuple[float, int, int, str]] = []
    for g_i, (name, mask) in enumerate(kept.items()):
        s = scores[name].detach().double().cpu()
        for idx in torch.nonzero(mask).flatten().tolist():
            entries.append((float(s[idx]), g_i, idx, name))
    entries.sort()
    return [(name, idx) for _, _, idx, name in entries]


def removals_in_order(
    kept: Mapping[str, Tensor], order: Iterable[tuple[str, int]]
) -> Iterator[tuple[int, str, int]]:
    """Walk ``order`` and yield ``(position, gate, index)`` of each structure that can go.

    A structure can go unless it is the last one its gate keeps, counting the removals
    yielded before it: the global ranking that never empties a gate. ``kept`` is read once
    (not changed).
    """
    left = {name: int(mask.sum()) for name, mask in kept.items()}
    for position, (name, idx) in enumerate(order):
        if left[name] > 1:
            left[name] -= 1
            yield position, name, idx
