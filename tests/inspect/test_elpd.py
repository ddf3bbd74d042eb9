"""PSIS-LOO of an InferenceData and the comparison of a full and a pruned network."""

from __future__ import annotations

import arviz as az
import numpy as np
import pytest
import torch

from pyro_prune import inspect as pa
from pyro_prune.models import MLP


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_loo_and_waic_run(lenet) -> None:
    _, idata = lenet
    res = az.loo(idata, pointwise=True)
    assert np.isfinite(res["elpd_loo"])
    assert res["loo_i"].shape == (80,)
    assert np.isfinite(az.waic(idata)["elpd_waic"])
    summary = pa.loo(idata)
    assert summary.n == 80 and summary.elpd == pytest.approx(float(res["elpd_loo"]))
    assert summary.elpd < 0


def test_compare_full_and_pruned(digits_small) -> None:
    torch.manual_seed(0)
    net = MLP(64, [24], 10)
    from pyro_prune.inference import fit

    fit(net, digits_small, epochs=15, batch_size=16, lr=1e-2, progress=False)
    full = pa.to_inference_data(net, data=digits_small, num_samples=30)
    keep = {"fc1_gate": torch.arange(24) < 2}
    pruned = pa.to_inference_data(net, data=digits_small, num_samples=30, mask=keep)
    assert bool(net.net.fc1_gate.kept.all())  # the mask is temporary
    table = pa.compare({"full": full, "pruned": pruned})
    assert list(table.index) == ["full", "pruned"]
    for col in ("elpd", "elpd_diff", "dse", "weight"):
        assert col in table.columns
    diff, dse = pa.elpd_difference(pruned, full)
    assert diff < 0 and dse > 0
    assert diff == pytest.approx(-float(table.loc["pruned", "elpd_diff"]))
    assert pa.elpd_difference(full, pruned)[0] == pytest.approx(-diff)
