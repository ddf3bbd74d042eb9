"""The adapter over ArviZ 0.x and 1.x: containers, groups, netCDF round trips."""

from __future__ import annotations

import arviz as az
import numpy as np
import pytest
import xarray as xr

from pyro_prune import inspect as pa
from pyro_prune.inspect import arviz_compat


def _groups() -> dict[str, xr.Dataset]:
    post = xr.Dataset({"a_theta": (("chain", "draw", "a_neuron"), np.ones((1, 3, 2)))})
    red = xr.Dataset({"a_kept": (("a_neuron",), np.array([True, False]))})
    return {"posterior": post, "reduction": red}


@pytest.mark.parametrize(("version", "kind"), [("0.23.4", "az"), ("0.17.1", "az"),
                                                ("1.0.0", "tree"), ("1.2.0rc1", "tree")])
def test_adapter_dispatches_on_the_arviz_version(monkeypatch, version, kind, tmp_path) -> None:
    monkeypatch.setattr(arviz_compat, "_arviz_version", lambda: version)
    idata = arviz_compat.make_inference_data(_groups(), attrs={"created_at": "now"})
    if kind == "az":
        assert isinstance(idata, az.InferenceData)
        assert arviz_compat.backend() is arviz_compat.Backend.INFERENCE_DATA
    else:
        assert isinstance(idata, xr.DataTree)
        assert arviz_compat.backend() is arviz_compat.Backend.DATATREE
        assert idata.attrs["created_at"] == "now"
    assert pa.group_names(idata) == ["posterior", "reduction"]
    xr.testing.assert_equal(pa.get_group(idata, "reduction"), _groups()["reduction"])
    with pytest.raises(KeyError, match="no group"):
        pa.get_group(idata, "prior")
    back = pa.load(pa.save(idata, tmp_path / "x.nc"))
    assert isinstance(back, type(idata))
    xr.testing.assert_equal(pa.get_group(back, "posterior"), _groups()["posterior"])


def test_netcdf_round_trip(lenet, tmp_path) -> None:
    _, idata = lenet
    path = pa.save(idata, tmp_path / "sub" / "idata.nc")
    back = pa.load(path)
    assert set(pa.group_names(back)) == set(pa.group_names(idata))
    for group in pa.group_names(idata):
        xr.testing.assert_allclose(pa.get_group(back, group), pa.get_group(idata, group))
    assert back.reduction["fc1_kept"].dtype == bool
    assert pa.loo(back).elpd == pytest.approx(pa.loo(idata).elpd)
    with pytest.raises(FileNotFoundError):
        pa.load(tmp_path / "missing.nc")
