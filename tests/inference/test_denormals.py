"""Subnormal floats flushed while fit trains, the caller's mode restored after."""

from __future__ import annotations

import pytest
import torch

from pyro_prune.inference import fit
from pyro_prune.inference.denormals import denormals_flushed
from pyro_prune.models import MLP


class _RecordFlush:
    """A schedule that records whether subnormals are flushed while fit trains."""

    def __init__(self) -> None:
        self.seen: list[bool] = []

    def on_fit_start(self, ctx) -> None:
        pass

    def on_step_end(self, ctx) -> None:
        pass

    def on_epoch_end(self, ctx, epoch: int) -> dict:
        self.seen.append(denormals_flushed())
        return {}


@pytest.mark.parametrize("flush", [True, False])
def test_fit_flushes_subnormals_while_training_and_restores_the_mode(digits, flush) -> None:
    train, _ = digits
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush subnormal floats")
    assert not denormals_flushed()
    # a subnormal survives arithmetic outside fit ...
    assert float(torch.tensor([3e-39]) * 2.0) == pytest.approx(6e-39, rel=1e-6)
    rec = _RecordFlush()
    fit(MLP(64, [16], 10), train, epochs=2, batch_size=64, schedule=rec, progress=False,
        flush_denormal=flush)
    assert rec.seen == [flush, flush]  # ... and is flushed to zero inside, when asked
    assert not denormals_flushed()  # the caller's mode is back
    torch.set_flush_denormal(True)
    try:
        fit(MLP(64, [16], 10), train, epochs=1, batch_size=64, progress=False, flush_denormal=flush)
        assert denormals_flushed()  # a caller who flushes keeps flushing
    finally:
        torch.set_flush_denormal(False)
