"""Tests of pyro_prune.distributions.special against mpmath at 80 digits and finite differences."""

from __future__ import annotations

import mpmath as mp
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.autograd import gradcheck

from pyro_prune.distributions import log_diff_ndtr, ndtri_exp

mp.mp.dps = 80


def _mp_diff_ndtr(a, b):
    """Phi(b) - Phi(a) at 80 digits, on the side where it does not cancel."""
    a, b = mp.mpf(a), mp.mpf(b)
    return mp.ncdf(-a) - mp.ncdf(-b) if a > 0 else mp.ncdf(b) - mp.ncdf(a)



def t64(*xs):
    return [torch.tensor(x, dtype=torch.float64) for x in xs]


class TestLogDiffNdtr:
    GRID = [(-3.0, 1.0), (0.0, 0.5), (2.0, 2.5), (10.0, 10.5), (-10.5, -10.0), (40.0, 41.0),
            (-41.0, -40.0), (1e5, 1e5 + 1e-3), (-1e10, 5.0), (5e9, 1.5e10), (-1.5e10, -5e9),
            (-1e-3, 1e-3), (7.9, 8.1), (19.0, 21.0), (-0.3, 40.0), (0.1, 0.100001)]

    @pytest.mark.parametrize("a,b", GRID)
    def test_matches_mpmath(self, a: float, b: float) -> None:
        ref = mp.log(_mp_diff_ndtr(a, b))
        got = log_diff_ndtr(*t64(a, b)).item()
        # d log Z / da ~ 1/(b - a): the rounding of the inputs alone costs eps |a| / (b - a)
        conditioning = 4 * 2.2e-16 * max(1.0, abs(a), abs(b)) / min(1.0, b - a)
        assert abs(got - float(ref)) <= 1e-13 * max(1.0, abs(float(ref))) + conditioning

    @pytest.mark.parametrize("a,b", GRID)
    def test_float32(self, a: float, b: float) -> None:
        a32, b32 = torch.tensor(a), torch.tensor(b)
        got = log_diff_ndtr(a32, b32)
        assert got.dtype == torch.float32
        if a32 == b32:  # the interval rounds to a point in float32
            assert torch.isneginf(got)
            return
        ref = mp.log(_mp_diff_ndtr(a32.item(), b32.item()))
        conditioning = 4 * 1.2e-7 * max(1.0, abs(a), abs(b)) / min(1.0, b32.item() - a32.item())
        assert abs(got.item() - float(ref)) <= 3e-6 * max(1.0, abs(float(ref))) + conditioning

    @settings(max_examples=60, deadline=None, derandomize=True)
    @given(st.floats(-60, 60), st.floats(1e-3, 30))
    def test_mirror_symmetry_and_monotonicity(self, a: float, w: float) -> None:
        a_, b_ = t64(a, a + w)
        v = log_diff_ndtr(a_, b_)
        torch.testing.assert_close(v, log_diff_ndtr(-b_, -a_), rtol=1e-12, atol=1e-12)
        assert bool(log_diff_ndtr(a_, b_ + 0.5) >= v)
        assert bool(v <= 0.0) and bool(torch.isfinite(v))

    def test_empty_interval_and_bad_order(self) -> None:
        a = torch.tensor([-3.0, 0.0, 2.0, 30.0], dtype=torch.float64)
        assert bool(torch.isneginf(log_diff_ndtr(a, a)).all())
        mixed = log_diff_ndtr(torch.tensor([-3.0, -1.0, 30.0]), torch.tensor([-3.0, 1.0, 31.0]))
        assert torch.isneginf(mixed[0]) and torch.isfinite(mixed[1:]).all()
        with pytest.raises(ValueError, match="a <= b"):
            log_diff_ndtr(torch.tensor(1.0), torch.tensor(0.0))

    def test_gradient(self) -> None:
        a = torch.tensor([-3.0, 0.2, 9.0, -25.0], dtype=torch.float64, requires_grad=True)
        b = torch.tensor([-1.0, 1.5, 9.5, -21.0], dtype=torch.float64, requires_grad=True)
        assert gradcheck(log_diff_ndtr, (a, b))


class TestNdtriExp:
    @pytest.mark.parametrize("y", [-1e19, -1e5, -800.0, -700.0, -50.0, -5.0, -0.7, -0.69, -0.1, -1e-10])
    def test_matches_mpmath_inverse(self, y: float) -> None:
        x = ndtri_exp(torch.tensor(y, dtype=torch.float64)).item()
        # the defining equation at 80 digits: log Phi(x) = y, compared in relative terms of x
        x_ref = mp.findroot(lambda v: mp.log(mp.ncdf(v)) - y, x)
        assert abs(x - float(x_ref)) <= 1e-13 * max(1.0, abs(float(x_ref)))

    def test_float32_round_trip(self) -> None:
        y = -torch.logspace(-6, 6, 50)
        x = ndtri_exp(y)
        assert x.dtype == torch.float32
        back = torch.special.log_ndtr(x.double())
        torch.testing.assert_close(back.float(), y, rtol=2e-5, atol=1e-6)
