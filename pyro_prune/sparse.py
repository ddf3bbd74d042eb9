"""Sparse storage of pruned weights: export, measure, save and load.

Unstructured pruning (e.g. :class:`~pyro_prune.reduction.bayes_factor_pruning.BayesFactorPruning`)
leaves weight tensors of the original shape with most entries zero; the memory only shrinks
when the non-zeros are stored in a sparse layout. :func:`export_sparse` converts every
floating-point tensor of a ``state_dict`` to

* **CSR** (default; ``torch.sparse_csr_tensor``): ``values`` (``nnz`` floats),
  ``col_indices`` (``nnz``) and ``crow_indices`` (``rows + 1``) with 32-bit indices, i.e.
  ``nnz * (4 + 4) + 4 (rows + 1)`` bytes for float32 — smaller than dense below ~50% density;
* **COO** (``torch.sparse_coo_tensor``): ``values`` and a ``[2, nnz]`` int64 index (torch
  requires int64), ``nnz * (4 + 16)`` bytes — smaller below ~20% density;

or keeps it dense when the sparse layout would not be smaller (low sparsity; biases). Tensors
of more than two dimensions (conv weights ``[out, in, kh, kw]``) are stored as the 2-D
matrix ``[out, in * kh * kw]`` and reshaped back on load. The boolean ``weight_mask``
buffers are not exported (the sparsity pattern is in the indices); :func:`load_sparse_into`
rebuilds them from the non-zeros.

Sizes are counted exactly from the tensors (:func:`tensor_nbytes`): storage bytes, not
Python object overhead. Files are written with ``torch.save`` and read back with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import enum
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pyro_prune._enums import parse_enum
from pyro_prune._io import save_torch

__all__ = [
    "SparseExport",
    "SparseLayout",
    "TensorReport",
    "compact_tensor",
    "export_sparse",
    "load_sparse",
    "load_sparse_into",
    "save_sparse",
    "tensor_nbytes",
]

FORMAT = "pyro_prune.sparse/1"
_MASK_SUFFIX = "weight_mask"


class SparseLayout(enum.Enum):
    """Storage layout of an exported tensor."""

    #: compressed sparse rows, 32-bit indices
    CSR = "csr"
    #: coordinate list, int64 indices
    COO = "coo"
    #: the ordinary strided tensor
    DENSE = "dense"


def _layout(value: object) -> SparseLayout:
    return parse_enum(SparseLayout, value, "layout")


def tensor_nbytes(t: Tensor) -> int:
    """Bytes of storage a tensor's data needs: dense, CSR (values + both indices) or COO."""
    if not isinstance(t, Tensor):
        raise TypeError(f"t must be a Tensor, got {type(t).__name__}")
    parts: tuple[Tensor, ...]
    if t.layout == torch.sparse_csr:
        parts = (t.values(), t.crow_indices(), t.col_indices())
    elif t.layout == torch.sparse_coo:
        c = t if t.is_coalesced() else t.coalesce()
        parts = (c.values(), c.indices())
    elif t.layout == torch.strided:
        parts = (t,)
    else:
        raise ValueError(f"unsupported layout {t.layout}")
    return sum(p.numel() * p.element_size() for p in parts)


def _as_matrix(t: Tensor) -> Tensor:
    if t.dim() == 0:
        return t.reshape(1, 1)
    if t.dim() == 1:
        return t.reshape(1, -1)
    return t.reshape(t.shape[0], -1)


def _to_layout(t: Tensor, layout: SparseLayout) -> Tensor:
    matrix = _as_matrix(t.detach())
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        if layout is SparseLayout.CSR:
            csr = matrix.to_sparse_csr()
            return torch.sparse_csr_tensor(
                csr.crow_indices().to(torch.int32),
                csr.col_indices().to(torch.int32),
                csr.values(),
                size=matrix.shape,
                check_invariants=True,
            )
        return matrix.to_sparse_coo().coalesce()


def compact_tensor(t: Tensor, layout: SparseLayout | str = SparseLayout.CSR) -> Tensor:
    """``t`` in ``layout`` (as a 2-D matrix) if that needs fewer bytes, else ``t`` unchanged.

    Only floating-point tensors are converted; others are returned as they are.
    """
    kind = _layout(layout)
    if kind is SparseLayout.DENSE or not t.is_floating_point() or t.layout != torch.strided:
        return t
    sparse = _to_layout(t, kind)
    return sparse if tensor_nbytes(sparse) < tensor_nbytes(t) else t


@dataclass(frozen=True)
class TensorReport:
    """How one tensor was stored."""

    name: str
    shape: tuple[int, ...]
    layout: str
    numel: int
    nnz: int
    dense_bytes: int
    stored_bytes: int


@dataclass
class SparseExport:
    """Tensors ready for ``torch.save`` plus what storing them that way saves.

    Attributes:
        tensors: name -> dense, CSR or COO tensor (sparse ones as 2-D matrices).
        shapes: name -> original shape.
        report: one :class:`TensorReport` per tensor.
    """

    tensors: dict[str, Tensor]
    shapes: dict[str, tuple[int, ...]]
    report: list[TensorReport] = field(default_factory=list)

    @property
    def dense_bytes(self) -> int:
        """Bytes of every exported tensor stored densely."""
        return sum(r.dense_bytes for r in self.report)

    @property
    def stored_bytes(self) -> int:
        """Bytes of the tensors as exported."""
        return sum(r.stored_bytes for r in self.report)

    @property
    def saved_bytes(self) -> int:
        """``dense_bytes - stored_bytes`` (>= 0: a tensor is only made sparse if it shrinks)."""
        return self.dense_bytes - self.stored_bytes

    @property
    def ratio(self) -> float:
        """``stored_bytes / dense_bytes``."""
        return self.stored_bytes / self.dense_bytes if self.dense_bytes else 1.0

    def to_dense(self) -> dict[str, Tensor]:
        """The dense ``state_dict`` (original shapes)."""
        return _densify(self.tensors, self.shapes)

    def payload(self) -> dict[str, Any]:
        """What :func:`save_sparse` writes (only tensors, strings, ints and lists)."""
        return {
            "format": FORMAT,
            "tensors": dict(self.tensors),
            "shapes": {k: list(v) for k, v in self.shapes.items()},
        }


def _state_dict(source: nn.Module | Mapping[str, Tensor]) -> dict[str, Tensor]:
    if isinstance(source, nn.Module):
        return dict(source.state_dict())
    if isinstance(source, Mapping):
        bad = [k for k, v in source.items() if not isinstance(v, Tensor)]
        if bad:
            raise TypeError(f"state dict entries must be tensors; not: {bad[:5]}")
        return dict(source)
    raise TypeError(f"source must be an nn.Module or a state dict, got {type(source).__name__}")


def export_sparse(
    source: nn.Module | Mapping[str, Tensor],
    layout: SparseLayout | str = SparseLayout.CSR,
    *,
    include_masks: bool = False,
) -> SparseExport:
    """Every floating-point tensor of ``source``'s state dict in ``layout`` where that is smaller.

    Args:
        source: a module (its ``state_dict()``) or a state dict.
        layout: ``"csr"`` (default), ``"coo"`` or ``"dense"`` (no conversion, for comparison).
        include_masks: also export the boolean ``*.weight_mask`` buffers (dense).
    """
    kind = _layout(layout)
    state = _state_dict(source)
    tensors: dict[str, Tensor] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    report: list[TensorReport] = []
    for name, value in state.items():
        if name.endswith(_MASK_SUFFIX) and value.dtype == torch.bool and not include_masks:
            continue
        value = value.detach().cpu()
        stored = compact_tensor(value, kind)
        tensors[name] = stored
        shapes[name] = tuple(value.shape)
        if stored.layout == torch.sparse_csr:
            lay, nnz = SparseLayout.CSR.value, int(stored.values().numel())
        elif stored.layout == torch.sparse_coo:
            lay, nnz = SparseLayout.COO.value, int(stored.values().numel())
        else:
            lay, nnz = SparseLayout.DENSE.value, int(torch.count_nonzero(value)) if value.numel() else 0
        report.append(TensorReport(
            name=name, shape=tuple(value.shape), layout=lay, numel=value.numel(), nnz=nnz,
            dense_bytes=tensor_nbytes(value), stored_bytes=tensor_nbytes(stored),
        ))
    return SparseExport(tensors=tensors, shapes=shapes, report=report)


def _densify(tensors: Mapping[str, Tensor], shapes: Mapping[str, Any]) -> dict[str, Tensor]:
    out = {}
    for name, value in tensors.items():
        shape = tuple(int(s) for s in shapes[name])
        if value.layout in (torch.sparse_csr, torch.sparse_coo):
            value = value.to_dense()
        out[name] = value.reshape(shape)
    return out


def save_sparse(
    source: nn.Module | Mapping[str, Tensor],
    path: str | os.PathLike,
    layout: SparseLayout | str = SparseLayout.CSR,
    *,
    include_masks: bool = False,
) -> SparseExport:
    """:func:`export_sparse` and ``torch.save`` the result to ``path``; returns the export."""
    export = export_sparse(source, layout, include_masks=include_masks)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_torch(export.payload(), out)
    return export


def load_sparse(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> dict[str, Tensor]:
    """Read a :func:`save_sparse` file (``weights_only=True``) back as a dense state dict.

    Raises:
        ValueError: the file is not a pyro_prune sparse export.
    """
    try:
        payload = torch.load(Path(path), map_location=map_location, weights_only=True)
    except Exception as err:
        raise ValueError(f"cannot read sparse export {path}: {err}") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a pyro_prune sparse export (format {FORMAT})")
    tensors, shapes = payload["tensors"], payload["shapes"]
    if set(tensors) != set(shapes):
        raise ValueError(f"{path} is corrupt: tensors and shapes name different entries")
    return _densify(tensors, shapes)


def load_sparse_into(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a :func:`save_sparse` file into ``model``; returns ``model``.

    ``weight_mask`` buffers of the model that the file does not hold are set to
    ``weight != 0`` (the exported sparsity pattern). Any other missing or unexpected entry
    raises ``ValueError``.
    """
    state = load_sparse(path)
    own = model.state_dict()
    unexpected = sorted(set(state) - set(own))
    missing = [k for k in own if k not in state]
    bad_missing = [k for k in missing if not k.endswith(_MASK_SUFFIX)]
    if unexpected or bad_missing:
        raise ValueError(f"{path} does not match the model: unexpected {unexpected[:5]}, missing {bad_missing[:5]}")
    for key in missing:
        weight_key = key[: -len(_MASK_SUFFIX)] + "weight"
        if weight_key not in state:
            raise ValueError(f"{path} has no {weight_key!r} to rebuild {key!r} from")
        state[key] = state[weight_key] != 0
    model.load_state_dict(state)
    return model
