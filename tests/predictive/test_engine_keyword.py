"""The engine switch is the keyword ``engine=``; its former name ``method=`` still works for
one release, with a ``DeprecationWarning``, and passing both is an error."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.utils.data import TensorDataset

from pyro_prune.predictive import (
    evaluate_predictive,
    log_predictive_density,
    neuron_w2,
    posterior_predictive,
    predictive_run,
    w2_shift,
)


def _as_tensor(result: Any) -> torch.Tensor:
    """One tensor of every number a predictive function returns."""
    if isinstance(result, torch.Tensor):
        return result.double().flatten()
    if hasattr(result, "samples"):
        return result.samples.double().flatten()
    if isinstance(result, dict):
        return torch.cat([_as_tensor(result[k]) if isinstance(result[k], torch.Tensor)
                          else torch.tensor([float(result[k])], dtype=torch.float64) for k in sorted(result)])
    return torch.tensor([result.w2, result.w2_empty, result.normalized], dtype=torch.float64)


# each function with the engine that is NOT its default, so that a dropped keyword shows
CALLS: dict[str, tuple[Callable[..., Any], str]] = {
    "posterior_predictive": (lambda net, x, y, **kw: posterior_predictive(net, x, draws=3, seed=1, **kw), "fast"),
    "predictive_run": (lambda net, x, y, **kw: predictive_run(net, x, draws=3, seed=1, **kw), "pyro"),
    "evaluate_predictive": (lambda net, x, y, **kw: evaluate_predictive(net, TensorDataset(x, y), draws=3,
                                                                        seed=1, **kw), "pyro"),
    "log_predictive_density": (lambda net, x, y, **kw: log_predictive_density(net, TensorDataset(x, y), draws=3,
                                                                              seed=1, **kw), "pyro"),
    "w2_shift": (lambda net, x, y, **kw: w2_shift(net, None, {"fc1_gate": torch.arange(6) < 3}, x, draws=3,
                                                  seed=1, **kw), "pyro"),
    "neuron_w2": (lambda net, x, y, **kw: neuron_w2(net, None, x, draws=3, seed=1, **kw), "pyro"),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_the_old_keyword_method_warns_and_picks_the_engine(name: str, bnn) -> None:
    call, other = CALLS[name]
    net = bnn()
    x = torch.randn(7, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    default = _as_tensor(call(net, x, y))
    new = _as_tensor(call(net, x, y, engine=other))
    assert not torch.equal(new, default)  # the two engines draw differently
    with pytest.warns(DeprecationWarning, match=rf"{name}\(method=\.\.\.\) is now {name}\(engine=\.\.\.\)") as record:
        old = _as_tensor(call(net, x, y, method=other))
    torch.testing.assert_close(old, new, rtol=0, atol=0)
    assert record[0].filename == __file__  # the warning points at the caller


@pytest.mark.parametrize("name", list(CALLS))
def test_engine_and_method_together_are_an_error(name: str, bnn) -> None:
    call, other = CALLS[name]
    x = torch.randn(7, 4)
    with pytest.raises(TypeError, match=rf"{name}\(\) got both engine= and method=, its former name; pass engine= only"):
        call(bnn(), x, torch.zeros(7, dtype=torch.long), engine=other, method=other)
