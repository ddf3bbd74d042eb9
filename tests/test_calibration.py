from __future__ import annotations

import numpy as np
import pytest
import torch

from pyro_prune.calibration import calibration


@pytest.mark.parametrize("bins", [1, 10, 15])
def test_ece_matches_a_direct_computation(bins: int) -> None:
    gen = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(500, 4, generator=gen)
    probs = logits.softmax(-1)
    labels = torch.randint(0, 4, (500,), generator=gen)
    cal = calibration(probs, labels, bins=bins)
    conf, pred = probs.double().max(-1)
    ece = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        sel = (conf >= lo) & ((conf < hi) if b < bins - 1 else (conf <= hi))
        if sel.any():
            ece += sel.double().mean() * abs((pred[sel] == labels[sel]).double().mean() - conf[sel].mean())
    assert cal.ece == pytest.approx(float(ece), abs=1e-12)
    assert cal.count.sum() == 500 and len(cal.edges) == bins + 1


def test_a_perfectly_calibrated_predictor_has_ece_near_zero() -> None:
    gen = torch.Generator().manual_seed(1)
    n = 200_000
    conf = 0.5 + 0.5 * torch.rand(n, generator=gen, dtype=torch.float64)
    correct = torch.rand(n, generator=gen, dtype=torch.float64) < conf  # right with prob. conf
    probs = torch.stack([conf, 1 - conf], -1)
    labels = torch.where(correct, 0, 1)
    assert calibration(probs, labels).ece < 0.01
    # always confident, right half the time: ECE = 0.99 - 0.5
    sure = torch.tensor([[0.99, 0.01]], dtype=torch.float64).repeat(1000, 1)
    half = torch.arange(1000) % 2
    assert calibration(sure, half).ece == pytest.approx(0.49, abs=1e-9)
    assert np.isnan(calibration(sure, half).accuracy[0])


@pytest.mark.parametrize("probs, labels, bins, match", [
    (torch.ones(3, 2) / 2, torch.zeros(4), 10, "probs must be"),
    (torch.ones(3, 2) * 2, torch.zeros(3), 10, "probabilities"),
    (torch.ones(3, 2) / 2, torch.zeros(3), 0, "bins"),
])
def test_bad_input_is_named(probs, labels, bins, match) -> None:
    with pytest.raises(ValueError, match=match):
        calibration(probs, labels, bins=bins)
