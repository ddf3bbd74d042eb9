"""The adapter over ArviZ versions: 0.x keeps groups in ``az.InferenceData``, ArviZ >= 1 in
``xarray.DataTree``. Everything that differs between the two goes through here: making the
container, its groups, writing and reading it (the PSIS-LOO and summary modules ask
:func:`backend` too)."""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import xarray as xr

__all__ = ["Backend", "backend", "get_group", "group_names", "load", "make_inference_data", "save"]


class Backend(enum.Enum):
    """The container ArviZ uses for groups."""

    #: ArviZ 0.x: ``az.InferenceData``
    INFERENCE_DATA = "inference_data"
    #: ArviZ >= 1: ``xarray.DataTree``
    DATATREE = "datatree"


def _arviz_version() -> str:
    import arviz

    return str(arviz.__version__)


def backend() -> Backend:
    major = int(re.match(r"\d+", _arviz_version()).group())  # type: ignore[union-attr]
    return Backend.INFERENCE_DATA if major < 1 else Backend.DATATREE


def make_inference_data(groups: dict[str, xr.Dataset], attrs: Mapping[str, Any] | None = None) -> Any:
    """Groups -> ``az.InferenceData`` (ArviZ 0.x) or ``xr.DataTree`` (ArviZ >= 1)."""
    if backend() is Backend.INFERENCE_DATA:
        import arviz

        return arviz.InferenceData(attrs=dict(attrs or {}), **groups)  # type: ignore[arg-type]
    tree = xr.DataTree.from_dict({f"/{name}": ds for name, ds in groups.items()})
    tree.attrs.update(attrs or {})
    return tree


def group_names(idata: Any) -> list[str]:
    """Names of the groups of an ``InferenceData`` / ``DataTree``."""
    if isinstance(idata, xr.DataTree):
        return list(idata.children)
    return list(idata.groups())


def get_group(idata: Any, name: str) -> xr.Dataset:
    """Group ``name`` as an ``xarray.Dataset``."""
    if name not in group_names(idata):
        raise KeyError(f"no group {name!r}; groups: {group_names(idata)}")
    if isinstance(idata, xr.DataTree):
        return idata[name].to_dataset()
    return getattr(idata, name)


def save(idata: Any, path: str | os.PathLike) -> Path:
    """Write ``idata`` to a netCDF file (every group, the custom ``reduction`` one too).

    The file is written under a temporary name and renamed: an interrupted write leaves the
    previous file (or none), never a truncated one.
    """
    from pyro_prune._io import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        if isinstance(idata, xr.DataTree):
            idata.to_netcdf(tmp, engine="h5netcdf")
        else:
            idata.to_netcdf(str(tmp), engine="h5netcdf")
    return path


def load(path: str | os.PathLike) -> Any:
    """Read what :func:`save` wrote, fully into memory (the file is closed afterwards)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no InferenceData file at {path}")
    if backend() is Backend.INFERENCE_DATA:
        import arviz

        idata = arviz.from_netcdf(str(path), engine="h5netcdf")
        for name in idata.groups():
            setattr(idata, name, getattr(idata, name).load())
        return idata
    with xr.open_datatree(path, engine="h5netcdf") as tree:
        return tree.load().copy()
