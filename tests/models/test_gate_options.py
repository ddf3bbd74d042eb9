"""Gate options: a misspelt or misplaced option fails before anything is built."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pyro_prune.models import MLP, LeNet5, bayesianize
from pyro_prune.models.layers import check_noise_options, make_gate, noise_option_names
from pyro_prune.models.noise import MultiplicativeNoise


def test_noise_option_names_are_the_gate_keywords() -> None:
    assert set(noise_option_names()) == {"log_low", "log_high", "init_loc", "init_log_scale", "reference_loc"}


@pytest.mark.parametrize(("build", "bad", "hint"), [
    (lambda **kw: MLP(4, [8], 2, **kw), "init_lco", "init_loc"),
    (lambda **kw: LeNet5(1, 10, 8, **kw), "log_hgh", "log_high"),
    (lambda **kw: bayesianize(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), **kw),
     "example_inputs", "example_input"),
])
def test_unknown_option_names_the_closest(build, bad: str, hint: str) -> None:
    with pytest.raises(TypeError, match=f"unknown option '{bad}' \\(did you mean '{hint}'\\?\\)"):
        build(**{bad: 1.0})


def test_unknown_option_without_a_close_name() -> None:
    with pytest.raises(TypeError, match="unknown option 'zzz'; the noise gates take log_low"):
        check_noise_options("noise", {"zzz": 1.0})


@pytest.mark.parametrize("build", [
    lambda **kw: MLP(4, [8], 2, gate="mask", **kw),
    lambda **kw: bayesianize(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), gate="mask", **kw),
])
def test_noise_options_with_mask_gates_are_refused(build) -> None:
    with pytest.raises(TypeError, match=r"noise options \(init_loc\) given with gate='mask'"):
        build(init_loc=-2.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_options_reach_every_gate(dtype: torch.dtype) -> None:
    model = bayesianize(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(),
                                      nn.Linear(6, 2)).to(dtype), init_loc=-2.0, log_low=-12.0)
    gates = list(model.noise_layers().values())
    assert len(gates) == 2
    for g in gates:
        assert g.log_low == -12.0
        assert torch.equal(g.loc.detach(), torch.full_like(g.loc.detach(), -2.0))
    gate = make_gate(5, -1, "noise", init_log_scale=-3.0)
    assert isinstance(gate, MultiplicativeNoise)
    assert torch.equal(gate.log_scale.detach(), torch.full((5,), -3.0))
