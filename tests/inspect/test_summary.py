"""Summaries of the kept structures and highest-density intervals."""

from __future__ import annotations

import numpy as np
import pytest

from pyro_prune import inspect as pa
from pyro_prune.inspect.summary import _hdi_numpy


def test_summary_leaves_out_removed_structures_without_warnings(lenet, recwarn, capfd) -> None:
    net, idata = lenet
    table = pa.summary(idata, ["fc1_theta"])
    kept = int(idata.reduction["fc1_kept"].values.sum())
    assert len(table) == kept < 120 and "r_hat" not in table.columns
    assert np.isfinite(table["ess_bulk"].values).all()
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    assert "Shape validation" not in capfd.readouterr().err
    assert len(pa.summary(idata, ["fc1_theta"], kept_only=False)) == 120
    assert len(pa.summary(idata, ["fc1_theta"], group="prior")) == kept
    with pytest.raises(ValueError, match="no variables"):
        pa.summary(idata, ["nope"])


def test_hdi_matches_arviz() -> None:
    rng = np.random.default_rng(0)
    values = rng.standard_gamma(2.0, size=(300, 5))
    np.testing.assert_allclose(_hdi_numpy(values, 0.9), pa.hdi(values, 0.9))
    low, high = pa.hdi(values, 0.9).T
    inside = ((values >= low) & (values <= high)).mean(0)
    assert np.all(inside >= 0.9)
    with pytest.raises(ValueError):
        pa.hdi(values[:1], 0.9)
