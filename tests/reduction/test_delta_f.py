"""Tests of pyro_prune.reduction against independent references.

The definition of Bayesian model reduction is the reference: dF = log E_q[p_r / p], the
change in log evidence when the prior p is replaced by the reduced prior p_r (Friston &
Penny 2011). It is integrated with scipy.integrate.quad in float64 where the integrands are
resolvable, and the papers' closed forms are evaluated with mpmath at 80 digits for the
defaults (reduced variance 1e-12, reduced Gaussian scale 1e-8) and the deep tails.
"""

from __future__ import annotations

import math
import warnings

import mpmath as mp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate
from torch.autograd import gradcheck

from pyro_prune import reduction
from pyro_prune.models.noise_kernels import kl_truncated_lognormal_loguniform
from pyro_prune.reduction import (
    BMRS_LOG_PRIOR_ODDS,
    CRITERIA,
    Criterion,
    CriterionInput,
    delta_f_gaussian,
    delta_f_joint,
    delta_f_lognormal,
    delta_f_lognormal_released_code,
    delta_f_loguniform,
    expected_theta,
    get_criterion,
    gradient_score,
    l2_norm,
    register_criterion,
    snr,
)

A, B = -20.0, 0.0
LN2 = math.log(2.0)
DTYPES = [torch.float32, torch.float64]
SHAPES = [(), (3,), (2, 4)]

mp.mp.dps = 80


# ------------------------------------------------------------------------ references


_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def norm_logpdf(x, m, s):
    """log N(x; m, s^2), for scalars or numpy arrays."""
    return -0.5 * ((x - m) / s) ** 2 - math.log(s) - _LOG_SQRT_2PI


def _log_quad(logf, low, high, centres):
    """log of the integral of exp(logf) over [low, high], scaled by its maximum on a grid."""
    pts = sorted({min(max(c, low), high) for c in centres})
    grid = np.unique(np.concatenate([np.linspace(low, high, 4001), pts]))
    shift = float(np.max(logf(grid)))
    with warnings.catch_warnings():  # quad warns when 1e-13 is out of reach; asserts decide
        warnings.simplefilter("ignore", integrate.IntegrationWarning)
        val, _ = integrate.quad(lambda x: math.exp(logf(x) - shift), low, high, points=pts or None,
                                epsabs=0, epsrel=1e-13, limit=500)
    return math.log(val) + shift


def quad_bmrs_n(loc, scale, reduced_loc=A, reduced_var=0.1, low=A, high=B):
    """dF = log int q p_r / p with q = LogN[A,B](loc, scale^2), p_r = LogN[A,B](mu_r, s_r^2), p = LogU."""
    s_r = math.sqrt(reduced_var)
    log_zq = _log_quad(lambda x: norm_logpdf(x, loc, scale), low, high, [loc])
    log_zr = _log_quad(lambda x: norm_logpdf(x, reduced_loc, s_r), low, high, [reduced_loc])
    log_num = _log_quad(lambda x: norm_logpdf(x, loc, scale) + norm_logpdf(x, reduced_loc, s_r),
                        low, high, [loc, reduced_loc])
    return math.log(high - low) + log_num - log_zq - log_zr


def quad_bmrs_u(loc, scale, p1=8, p2=23, low=A, high=B):
    r_low, r_high = (low if p2 is None else -p2 * LN2), -p1 * LN2
    log_p = (_log_quad(lambda x: norm_logpdf(x, loc, scale), r_low, r_high, [loc])
             - _log_quad(lambda x: norm_logpdf(x, loc, scale), low, high, [loc]))
    return math.log(high - low) - math.log(r_high - r_low) + log_p


def quad_gaussian(m, v, prior_scale, reduced_scale):
    """log E_{N(m, v)}[N(w; 0, r^2) / N(w; 0, s^2)]."""
    sd = math.sqrt(v)

    def logf(w):
        return (norm_logpdf(w, m, sd) + norm_logpdf(w, 0.0, reduced_scale)
                - norm_logpdf(w, 0.0, prior_scale))

    span = 12 * max(sd, reduced_scale)
    return _log_quad(logf, min(m, 0.0) - span, max(m, 0.0) + span, [m, 0.0])


def _mp_diff_ndtr(a, b):
    return mp.ncdf(-a) - mp.ncdf(-b) if a > 0 else mp.ncdf(b) - mp.ncdf(a)


def _mp_log_z(mu, s, low, high):
    return mp.log(_mp_diff_ndtr((low - mu) / s, (high - mu) / s))


def mp_bmrs_n(loc, scale, reduced_loc=A, reduced_var=1e-12, low=A, high=B):
    """Wright, Igel & Selvan (2024), Eq. 8 (with the -1/2 log 2 pi), at 80 digits."""
    mu, s, mu_r, v_r = (mp.mpf(x) for x in (loc, scale, reduced_loc, reduced_var))
    low, high = mp.mpf(low), mp.mpf(high)
    var = s * s + v_r
    s_q = mp.sqrt(s * s * v_r / var)
    mu_q = (mu * v_r + mu_r * s * s) / var
    return (_mp_log_z(mu_q, s_q, low, high) + mp.log(high - low) - _mp_log_z(mu, s, low, high)
            - _mp_log_z(mu_r, mp.sqrt(v_r), low, high) - mp.log(2 * mp.pi * var) / 2
            - (mu - mu_r) ** 2 / (2 * var))


def mp_bmrs_u(loc, scale, p1=8, p2=23, low=A, high=B):
    mu, s = mp.mpf(loc), mp.mpf(scale)
    r_low, r_high = -p2 * mp.log(2), -p1 * mp.log(2)
    log_p = _mp_log_z(mu, s, r_low, r_high) - _mp_log_z(mu, s, mp.mpf(low), mp.mpf(high))
    return mp.log(mp.mpf(high) - mp.mpf(low)) - mp.log(r_high - r_low) + log_p


def mp_gaussian(m, v, prior_scale, reduced_scale):
    """The BMR formula of DESIGN.md (Friston & Penny 2011), at 80 digits."""
    m, v, s2, r2 = (mp.mpf(x) for x in (m, v, prior_scale**2, reduced_scale**2))
    p = 1 / v
    pt = p + 1 / r2 - 1 / s2
    mt = p * m / pt
    return (mp.log(p) - mp.log(pt) + mp.log(s2) - mp.log(r2)) / 2 - (p * m * m - pt * mt * mt) / 2


def mp_tn_moments(loc, scale, low=A, high=B):
    mu, s = mp.mpf(loc), mp.mpf(scale)
    a, b = (mp.mpf(low) - mu) / s, (mp.mpf(high) - mu) / s
    z = _mp_diff_ndtr(a, b)
    m1 = mp.exp(mu + s * s / 2) * _mp_diff_ndtr(a - s, b - s) / z
    m2 = mp.exp(2 * mu + 2 * s * s) * _mp_diff_ndtr(a - 2 * s, b - 2 * s) / z
    return m1, m2


def rel(value, ref):
    return abs(float(value) - float(ref)) / abs(float(ref))


def f64(*xs):
    return [torch.tensor(x, dtype=torch.float64) for x in xs]


# (loc, scale) where quadrature resolves q and the reduced posterior
QUAD_CASES = [(-5.0, 1.0), (-21.0, 0.5), (-19.5, 0.3), (-25.0, 2.0), (0.5, 0.3), (3.0, 1.5),
              (-10.0, 8.0), (-12.0, 0.1), (-1.0, 0.2), (-30.0, 148.0), (-18.0, 1.0)]
# extreme pairs of the documented box
BOX_CASES = [(-30.0, math.exp(-20)), (-5.0, math.exp(-20)), (10.0, math.exp(-20)),
             (-20.0, math.exp(-20)), (-30.0, math.exp(5)), (10.0, math.exp(5)), (-25.0, 0.01),
             (-19.9999, 1e-6), (-20.0001, 1e-6), (-19.0, 1e-6), (-22.0, math.exp(-3)),
             (0.5, 0.3), (-5.0, 1.0), (-10.0, math.exp(-10)), (5.0, 0.1)]


# ------------------------------------------------------------------------ BMRS_N


class TestBmrsN:
    @pytest.mark.parametrize("loc,scale", QUAD_CASES)
    @pytest.mark.parametrize("reduced_var", [0.05, 0.3, 1.0])
    def test_against_quadrature_of_the_bmr_identity(self, loc, scale, reduced_var) -> None:
        df = delta_f_lognormal(*f64(loc, scale), reduced_var=reduced_var).item()
        ref = quad_bmrs_n(loc, scale, reduced_var=reduced_var)
        assert abs(df - ref) <= 1e-6 * abs(ref) + 1e-9

    @pytest.mark.parametrize("reduced_loc", [-15.0, -3.0])
    def test_reduced_loc(self, reduced_loc) -> None:
        for loc, scale in QUAD_CASES[:5]:
            df = delta_f_lognormal(*f64(loc, scale), reduced_loc=reduced_loc, reduced_var=0.2)
            ref = quad_bmrs_n(loc, scale, reduced_loc=reduced_loc, reduced_var=0.2)
            assert abs(df.item() - ref) <= 1e-6 * abs(ref) + 1e-9

    @pytest.mark.parametrize("loc,scale", BOX_CASES)
    @pytest.mark.parametrize("reduced_var", [1e-12, 0.05])
    def test_default_against_closed_form_at_80_digits(self, loc, scale, reduced_var) -> None:
        df = delta_f_lognormal(*f64(loc, scale), reduced_var=reduced_var).item()
        assert rel(df, mp_bmrs_n(loc, scale, reduced_var=reduced_var)) <= 1e-10

    @pytest.mark.parametrize("loc,scale", BOX_CASES)
    def test_float32(self, loc, scale) -> None:
        l32, s32 = torch.tensor(loc), torch.tensor(scale)
        df = delta_f_lognormal(l32, s32)
        assert df.dtype == torch.float32
        ref = mp_bmrs_n(l32.item(), s32.item(), reduced_var=torch.tensor(1e-12).item())
        assert abs(df.item() - float(ref)) <= 5e-6 * max(1.0, abs(float(ref)))

    def test_decisions(self) -> None:
        # far below the lower bound: the posterior already sits at A -> remove
        loc = torch.tensor([-28.0, -24.0, -2.0, -0.5])
        scale = torch.tensor([0.5, 1e-3, 0.1, 1e-4])
        assert delta_f_lognormal(loc, scale).ge(0).tolist() == [True, True, False, False]

    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("shape", SHAPES)
    def test_shapes_and_dtypes(self, dtype, shape) -> None:
        g = torch.Generator().manual_seed(0)
        loc = torch.rand(shape, generator=g, dtype=dtype) * 40 - 30
        scale = (torch.rand(shape, generator=g, dtype=dtype) * 25 - 20).exp()
        for fn in (delta_f_lognormal, delta_f_loguniform, expected_theta, snr):
            out = fn(loc, scale)
            assert out.shape == shape and out.dtype == dtype and torch.isfinite(out).all()
        out = delta_f_lognormal(loc, scale, log_low=torch.tensor(-21.0, dtype=dtype), reduced_loc=-21.0)
        assert out.shape == shape and torch.isfinite(out).all()

    def test_broadcasting(self) -> None:
        loc = torch.linspace(-25, -1, 5).reshape(5, 1)
        scale = torch.tensor([0.01, 0.5, 2.0])
        out = delta_f_lognormal(loc, scale)
        assert out.shape == (5, 3)
        ref = torch.stack([delta_f_lognormal(loc[:, 0], s.expand(5)) for s in scale], dim=1)
        torch.testing.assert_close(out, ref)

    def test_gradcheck(self) -> None:
        loc = torch.tensor([-25.0, -19.5, -5.0, 0.5, -10.0], dtype=torch.float64, requires_grad=True)
        log_scale = torch.tensor([-2.0, -1.0, 0.0, -0.5, 2.0], dtype=torch.float64, requires_grad=True)
        for kw in ({}, {"reduced_var": 0.5}, {"reduced_loc": -10.0, "reduced_var": 0.1}):
            assert gradcheck(lambda lc, s, kw=kw: delta_f_lognormal(lc, s.exp(), **kw), (loc, log_scale))

    def test_bad_input(self) -> None:
        one = torch.tensor([1.0])
        with pytest.raises(ValueError, match="scale"):
            delta_f_lognormal(one, torch.tensor([0.0]))
        with pytest.raises(ValueError, match="loc"):
            delta_f_lognormal(torch.tensor([float("nan")]), one)
        with pytest.raises(ValueError, match="log_low"):
            delta_f_lognormal(one, one, log_low=0.0, log_high=-1.0)
        with pytest.raises(ValueError, match="reduced_var"):
            delta_f_lognormal(one, one, reduced_var=0.0)
        with pytest.raises(ValueError, match="reduced_var"):
            delta_f_lognormal(one, one, reduced_var=1e-50)  # underflows float32
        with pytest.raises(TypeError, match="loc"):
            delta_f_lognormal(torch.tensor([1]), one)
        with pytest.raises(TypeError, match="scale"):
            delta_f_lognormal(one, "1.0")


# ------------------------------------------------------------------------ BMRS_U


class TestBmrsU:
    @pytest.mark.parametrize("loc,scale", QUAD_CASES)
    @pytest.mark.parametrize("p1", [4, 8])
    def test_against_quadrature(self, loc, scale, p1) -> None:
        df = delta_f_loguniform(*f64(loc, scale), p1=p1).item()
        ref = quad_bmrs_u(loc, scale, p1=p1)
        assert abs(df - ref) <= 1e-6 * abs(ref) + 1e-9

    @pytest.mark.parametrize("loc,scale", BOX_CASES)
    def test_against_closed_form_at_80_digits(self, loc, scale) -> None:
        df = delta_f_loguniform(*f64(loc, scale)).item()
        ref = mp_bmrs_u(loc, scale)
        assert abs(df - float(ref)) <= 1e-10 * max(1.0, abs(float(ref)))
        df32 = delta_f_loguniform(torch.tensor(loc), torch.tensor(scale))
        ref32 = mp_bmrs_u(torch.tensor(loc).item(), torch.tensor(scale).item())
        assert abs(df32.item() - float(ref32)) <= 5e-6 * max(1.0, abs(float(ref32)))

    @settings(max_examples=40, deadline=None, derandomize=True)
    @given(st.floats(-30, 10), st.floats(-20, 5), st.sampled_from(DTYPES), st.sampled_from([4, 8]))
    def test_bounded_above(self, loc, log_scale, dtype, p1) -> None:
        # log q(A' <= x <= B') <= 0, so dF <= log(B - A) - log(B' - A')
        df = delta_f_loguniform(torch.tensor(loc, dtype=dtype), torch.tensor(log_scale, dtype=dtype).exp(), p1=p1)
        bound = math.log(20.0) - math.log((23 - p1) * LN2)
        assert torch.isfinite(df) and df.item() <= bound + 1e-6

    def test_bad_input(self) -> None:
        one = torch.tensor([1.0])
        with pytest.raises(ValueError, match="p2 > p1"):
            delta_f_loguniform(one, one, p1=23, p2=8)
        with pytest.raises(ValueError, match="inside"):
            delta_f_loguniform(one, one, log_low=-10.0)
        with pytest.raises(TypeError, match="p1"):
            delta_f_loguniform(one, one, p1="8")

    def test_gradcheck(self) -> None:
        loc = torch.tensor([-25.0, -12.0, -5.0, 0.5], dtype=torch.float64, requires_grad=True)
        log_scale = torch.tensor([-1.0, 0.5, 0.0, -0.5], dtype=torch.float64, requires_grad=True)
        assert gradcheck(lambda lc, s: delta_f_loguniform(lc, s.exp(), p1=4), (loc, log_scale))


# ------------------------------------------------------------------------ Gaussian BMR


class TestGaussian:
    @pytest.mark.parametrize("m,sd", [(0.0, 0.1), (0.3, 0.05), (-1.2, 0.5), (2.0, 1.0), (0.01, 0.02)])
    @pytest.mark.parametrize("prior_scale,reduced_scale", [(1.0, 0.1), (0.5, 0.3), (2.0, 0.05)])
    def test_against_quadrature(self, m, sd, prior_scale, reduced_scale) -> None:
        df = delta_f_gaussian(*f64(m, sd), prior_scale=prior_scale, reduced_scale=reduced_scale).item()
        ref = quad_gaussian(m, sd**2, prior_scale, reduced_scale)
        assert abs(df - ref) <= 1e-6 * abs(ref) + 1e-9

    @pytest.mark.parametrize("m,sd", [(0.0, 0.1), (0.3, 0.05), (-1.2, 0.5), (1e-9, 1e-9), (5.0, 1e-5), (0.0, 10.0)])
    def test_default_against_formula_at_80_digits(self, m, sd) -> None:
        df = delta_f_gaussian(*f64(m, sd)).item()
        assert rel(df, mp_gaussian(m, sd**2, 1.0, 1e-8)) <= 1e-12
        df32 = delta_f_gaussian(torch.tensor(m), torch.tensor(sd)).item()
        ref32 = mp_gaussian(torch.tensor(m).item(), torch.tensor(sd).item() ** 2, 1.0,
                            torch.tensor(1e-8).item())
        assert rel(df32, ref32) <= 1e-5

    def test_structure_sum_and_dims(self) -> None:
        g = torch.Generator().manual_seed(0)
        loc = torch.randn(4, 3, 2, 2, generator=g, dtype=torch.float64)
        scale = torch.rand(4, 3, 2, 2, generator=g, dtype=torch.float64) + 0.01
        per_weight = delta_f_gaussian(loc, scale, prior_scale=0.7)
        torch.testing.assert_close(delta_f_gaussian(loc, scale, prior_scale=0.7, dim=(1, 2, 3)),
                                   per_weight.sum(dim=(1, 2, 3)))
        torch.testing.assert_close(delta_f_gaussian(loc, scale, prior_scale=0.7, dim=-1),
                                   per_weight.sum(dim=-1))

    def test_equal_scales_give_zero_and_wide_reduced_prior(self) -> None:
        m, sd = f64(0.4, 0.3)
        torch.testing.assert_close(delta_f_gaussian(m, sd, prior_scale=0.5, reduced_scale=0.5),
                                   torch.tensor(0.0, dtype=torch.float64))
        # reduced prior wider than the prior and a wide posterior: the BMR integral diverges
        assert torch.isinf(delta_f_gaussian(m, torch.tensor(3.0, dtype=torch.float64), prior_scale=1.0,
                                            reduced_scale=2.0))
        ok = delta_f_gaussian(m, sd, prior_scale=1.0, reduced_scale=2.0).item()
        assert abs(ok - quad_gaussian(0.4, 0.09, 1.0, 2.0)) < 1e-9

    def test_gradcheck_and_bad_input(self) -> None:
        m = torch.tensor([0.0, 0.3, -1.0], dtype=torch.float64, requires_grad=True)
        ls = torch.tensor([-2.0, -3.0, -0.5], dtype=torch.float64, requires_grad=True)
        assert gradcheck(lambda a, b: delta_f_gaussian(a, b.exp(), prior_scale=0.8, reduced_scale=0.1), (m, ls))
        with pytest.raises(ValueError, match="reduced_scale"):
            delta_f_gaussian(m, ls.exp(), reduced_scale=0.0)
        with pytest.raises(ValueError, match="prior_scale"):
            delta_f_gaussian(m, ls.exp(), prior_scale=-1.0)


# ------------------------------------------------------------------------ E[theta], SNR


class TestBaselines:
    @pytest.mark.parametrize("loc,scale", BOX_CASES)
    def test_expected_theta_and_snr(self, loc, scale) -> None:
        m1, m2 = mp_tn_moments(loc, scale)
        assert rel(expected_theta(*f64(loc, scale)), m1) <= 1e-12
        assert rel(snr(*f64(loc, scale)), m1 / mp.sqrt(m2 - m1 * m1)) <= 1e-7
        l32, s32 = torch.tensor(loc), torch.tensor(scale)
        m1, m2 = mp_tn_moments(l32.item(), s32.item())
        out = snr(l32, s32)
        assert out.dtype == torch.float32 and torch.isfinite(out)
        assert rel(out, m1 / mp.sqrt(m2 - m1 * m1)) <= 1e-6

    def test_snr_of_a_narrow_central_posterior_is_about_one_over_sigma(self) -> None:
        sigma = torch.tensor([1e-9, 1e-6, 1e-4], dtype=torch.float64)
        out = snr(torch.full_like(sigma, -5.0), sigma)
        torch.testing.assert_close(out * sigma, torch.ones_like(sigma), rtol=1e-3, atol=0)

    @pytest.mark.parametrize("dtype", DTYPES)
    def test_finite_over_the_box(self, dtype) -> None:
        loc = torch.linspace(-30, 10, 81, dtype=dtype)
        log_scale = torch.linspace(-20, 5, 51, dtype=dtype)
        lg, sg = torch.meshgrid(loc, log_scale, indexing="ij")
        for fn in (delta_f_lognormal, delta_f_loguniform, expected_theta, snr,
                   lambda a, b: delta_f_lognormal(a, b, reduced_var=0.05)):
            lg_, sg_ = lg.clone().requires_grad_(), sg.clone().requires_grad_()
            out = fn(lg_, sg_.exp())
            assert torch.isfinite(out).all()
            grads = torch.autograd.grad(out.sum(), (lg_, sg_))
            assert all(torch.isfinite(g).all() for g in grads)

    def test_l2_and_gradient_scores(self) -> None:
        g = torch.Generator().manual_seed(0)
        w = torch.randn(5, 3, 2, 2, generator=g)
        torch.testing.assert_close(l2_norm(w, (1, 2, 3)), w.reshape(5, -1).pow(2).sum(1).sqrt())
        torch.testing.assert_close(gradient_score(w, dim=1), w.pow(2).sum(1).sqrt())
        with pytest.raises(TypeError, match="weight"):
            l2_norm(torch.ones(3, dtype=torch.int64), 0)


# ------------------------------------------------------------------------ blocked evaluation


@pytest.mark.parametrize("fn", [delta_f_lognormal, delta_f_loguniform, delta_f_gaussian])
@pytest.mark.parametrize("dtype", DTYPES)
def test_blocked_evaluation_matches_whole_tensor_evaluation(fn, dtype, monkeypatch) -> None:
    g = torch.Generator().manual_seed(0)
    n = 50_000
    loc = torch.rand(n, generator=g, dtype=dtype) * 40 - 30
    scale = (torch.rand(n, generator=g, dtype=dtype) * 25 - 20).exp()
    blocked = fn(loc, scale)
    monkeypatch.setattr(reduction, "_BLOCK_BYTES", 1 << 40)  # one block: the whole tensors
    torch.testing.assert_close(blocked, fn(loc, scale), rtol=0, atol=0)
    monkeypatch.setattr(reduction, "_BLOCK_BYTES", 4096)  # many small blocks, 2-d input
    torch.testing.assert_close(fn(loc.reshape(50, -1), scale.reshape(50, -1)).reshape(-1), blocked, rtol=0, atol=0)


# ------------------------------------------------------------------------ the whole off range


class TestBmrsUOff:
    """BMRS_U with A' = A: the reduced prior LogU[A, -p1 ln 2] over every level below the step."""

    @pytest.mark.parametrize("loc,scale", QUAD_CASES)
    @pytest.mark.parametrize("p1", [4, 8])
    def test_against_quadrature(self, loc, scale, p1) -> None:
        df = delta_f_loguniform(*f64(loc, scale), p1=p1, p2=None).item()
        ref = quad_bmrs_u(loc, scale, p1=p1, p2=None)
        assert abs(df - ref) <= 1e-6 * abs(ref) + 1e-9

    @settings(max_examples=40, deadline=None, derandomize=True)
    @given(st.floats(-30, 10), st.floats(-20, 5), st.sampled_from(DTYPES))
    def test_finite_and_bounded_over_the_box(self, loc, log_scale, dtype) -> None:
        df = delta_f_loguniform(torch.tensor(loc, dtype=dtype), torch.tensor(log_scale, dtype=dtype).exp(),
                                p2=None)
        assert torch.isfinite(df) and df.item() <= math.log(20.0) - math.log(20.0 - 8 * LN2) + 1e-6

    def test_criterion_and_bad_input(self) -> None:
        loc, scale = torch.tensor([-19.0, -1.0, -10.0]), torch.tensor([0.5, 0.2, 50.0])
        crit = get_criterion("bmrs_u_off")
        torch.testing.assert_close(crit.score(loc=loc, scale=scale), -delta_f_loguniform(loc, scale, p2=None))
        assert crit.remove(loc=loc, scale=scale).tolist()[:2] == [True, False]
        with pytest.raises(ValueError, match="log_low"):
            delta_f_loguniform(loc, scale, p2=None, log_low=-3.0)


# ------------------------------------------------------------------------ joint BMR


class TestJoint:
    """dF of a structure = dF of its noise + the Gaussian dF of its incoming weights."""

    @pytest.mark.parametrize("loc,scale", [(-5.0, 1.0), (-19.5, 0.3), (0.5, 0.3), (-10.0, 8.0)])
    @pytest.mark.parametrize("weights", [[(0.0, 0.1), (0.3, 0.05)], [(-1.2, 0.5), (2.0, 1.0), (0.01, 0.02)]])
    def test_against_quadrature(self, loc, scale, weights) -> None:
        m, sd = (torch.tensor([[w[i] for w in weights]], dtype=torch.float64) for i in (0, 1))
        df = delta_f_joint(*f64([loc], [scale]), m, sd, reduced_var=0.3, prior_scale=1.0,
                           reduced_scale=0.1).item()
        ref = quad_bmrs_n(loc, scale, reduced_var=0.3) + sum(quad_gaussian(mi, si**2, 1.0, 0.1)
                                                              for mi, si in weights)
        assert abs(df - ref) <= 1e-6 * abs(ref) + 1e-9

    @settings(max_examples=30, deadline=None, derandomize=True)
    @given(st.floats(-30, 10), st.floats(-20, 5), st.floats(-3, 3), st.floats(-8, 1), st.sampled_from(DTYPES))
    def test_finite_over_the_box_at_the_defaults(self, loc, log_scale, m, log_sd, dtype) -> None:
        t = lambda x: torch.tensor(x, dtype=dtype)  # noqa: E731
        df = delta_f_joint(t([loc]), t([log_scale]).exp(), t([[m, -m]]), t([[log_sd, log_sd]]).exp())
        assert torch.isfinite(df).all() and df.shape == (1,)

    def test_criterion_sums_each_structures_row(self) -> None:
        g = torch.Generator().manual_seed(0)
        loc, scale = torch.tensor([-19.0, -1.0, -5.0]), torch.tensor([0.5, 0.2, 2.0])
        wl = torch.randn(3, 4, generator=g) * 0.1
        ws = torch.rand(3, 4, generator=g) * 0.5 + 0.5
        crit = get_criterion("bmrs_joint")
        expected = delta_f_lognormal(loc, scale) + delta_f_gaussian(wl, ws, dim=1)
        torch.testing.assert_close(-crit.score(loc=loc, scale=scale, weight_loc=wl, weight_scale=ws), expected)
        assert crit.needs == {CriterionInput.NOISE_POSTERIOR, CriterionInput.GAUSSIAN_WEIGHTS}
        with pytest.raises(ValueError, match="structures"):
            delta_f_joint(loc, scale, wl[:2], ws[:2])


# ------------------------------------------------------------------------ the tie at the prior


class TestTieAtThePrior:
    """The measured finding of DESIGN.md, and the explicit prior odds that resolve it."""

    def test_a_wide_posterior_barely_moves_its_loc(self) -> None:
        loc = torch.tensor([0.0], dtype=torch.float64, requires_grad=True)
        log_scale = torch.tensor([4.0], dtype=torch.float64)
        kl = kl_truncated_lognormal_loguniform(loc, log_scale.exp(), A, B)
        if kl is None:
            kl = torch.distributions.kl_divergence(
                reduction_posterior(loc, log_scale.exp()), reduction_prior())
        (grad,) = torch.autograd.grad(kl.sum(), loc)
        assert 1e-6 < abs(grad.item()) < 1e-4  # about 3e-5: the KL hardly pulls mu anywhere

    def test_plain_bmr_decides_by_where_loc_started(self) -> None:
        scale = torch.tensor([math.exp(4.0)] * 2, dtype=torch.float64)
        loc = torch.tensor([0.0, -15.0], dtype=torch.float64)
        df = delta_f_lognormal(loc, scale)
        # the asymptote -(266.7 + 20 mu) / (2 sigma^2)
        approx = -(266.7 + 20 * loc) / (2 * scale**2)
        torch.testing.assert_close(df, approx, rtol=0.05, atol=1e-3)
        assert get_criterion("bmrs_n").remove(loc=loc, scale=scale).tolist() == [False, True]
        # with prior odds for the smaller model both prior-like structures go, whatever loc
        assert get_criterion("bmrs").remove(loc=loc, scale=scale).tolist() == [True, True]
        assert get_criterion("bmrs_n", log_prior_odds=0.1).remove(loc=loc, scale=scale).tolist() == [True, True]

    @pytest.mark.parametrize("reduced", [dict(p1=8), dict(p1=4), dict(p1=8, p2=None)])
    def test_every_reduced_prior_ties_at_the_prior(self, reduced) -> None:
        # q -> prior as sigma grows: dF -> 0 for every reduced prior
        for log_scale in (4.0, 6.0, 8.0):
            df = delta_f_loguniform(*f64(-10.0, math.exp(log_scale)), **reduced).item()
            assert abs(df) < 30 * math.exp(-2 * log_scale)
        assert abs(delta_f_lognormal(*f64(-10.0, math.exp(8.0))).item()) < 1e-5


def reduction_posterior(loc, scale):
    from pyro_prune.distributions import TruncatedLogNormal

    return TruncatedLogNormal(loc, scale, A, B)


def reduction_prior():
    from pyro_prune.distributions import TruncatedLogUniform

    return TruncatedLogUniform(torch.tensor(A, dtype=torch.float64), torch.tensor(B, dtype=torch.float64))


# ------------------------------------------------------------------------ criteria


class TestCriteria:
    def _noise(self):
        loc = torch.tensor([-28.0, -2.0, -24.0, -0.5, -12.0])
        scale = torch.tensor([0.5, 0.1, 1e-3, 1e-4, 3.0])
        return loc, scale

    def test_registry(self) -> None:
        names = {"bmrs_n", "bmrs_n_code", "bmrs_u", "bmrs_u4", "bmrs_u8", "snr", "e_theta", "l2",
                 "grad", "gaussian_bmr"}
        assert names <= set(CRITERIA)
        for name in names:
            crit = get_criterion(name)
            assert isinstance(crit, Criterion) and crit.name == name and crit.description
        assert {n for n in names if CRITERIA[n].threshold_free} == {
            "bmrs_n", "bmrs_n_code", "bmrs_u", "bmrs_u4", "bmrs_u8", "gaussian_bmr"}
        assert {n for n in CRITERIA if CRITERIA[n].threshold_free} >= {"bmrs", "bmrs_u_off", "bmrs_joint"}
        assert get_criterion(" BMRS_N ").name == "bmrs_n"
        with pytest.raises(ValueError, match="known: .*bmrs_n"):
            get_criterion("obd")
        with pytest.raises(TypeError, match="p1"):
            get_criterion("bmrs_n", p1=4)
        with pytest.raises(ValueError, match="threshold"):
            get_criterion("bmrs_n", threshold=0.0)
        with pytest.raises(TypeError):
            CRITERIA["snr"] = CRITERIA["l2"]  # read-only view

    def test_dF_criteria_score_is_minus_dF_and_remove_is_dF_nonnegative(self) -> None:
        loc, scale = self._noise()
        for name, fn, kw in (("bmrs_n", delta_f_lognormal, {}),
                             ("bmrs_n_code", delta_f_lognormal_released_code, {}),
                             ("bmrs_u", delta_f_loguniform, {"p1": 8}),
                             ("bmrs_u8", delta_f_loguniform, {"p1": 8}),
                             ("bmrs_u4", delta_f_loguniform, {"p1": 4})):
            crit = get_criterion(name)
            df = fn(loc, scale, **kw)
            torch.testing.assert_close(crit.score(loc=loc, scale=scale), -df)
            assert torch.equal(crit.remove(loc=loc, scale=scale), df >= 0)
            assert torch.equal(crit.rank(loc=loc, scale=scale), torch.argsort(-df, stable=True))
        # the prior odds on removal: bmrs and bmrs_n_code are BMRS_N with log_prior_odds = 0.5 log 2pi
        assert BMRS_LOG_PRIOR_ODDS == pytest.approx(0.5 * math.log(2 * math.pi))
        df_n = delta_f_lognormal(loc, scale)
        for name in ("bmrs", "bmrs_n_code"):
            torch.testing.assert_close(get_criterion(name).score(loc=loc, scale=scale), -(df_n + BMRS_LOG_PRIOR_ODDS))
            torch.testing.assert_close(get_criterion(name, log_prior_odds=0.0).score(loc=loc, scale=scale), -df_n)
        for name, df in (("bmrs_u", delta_f_loguniform(loc, scale)), ("bmrs_n", df_n)):
            torch.testing.assert_close(get_criterion(name, log_prior_odds=2.0).score(loc=loc, scale=scale), -(df + 2.0))
            assert torch.equal(get_criterion(name).remove(loc=loc, scale=scale, log_prior_odds=-1.0), df - 1.0 >= 0)
        with pytest.raises(TypeError, match="log_prior_odds"):
            get_criterion("bmrs", log_prior_odds="1").score(loc=loc, scale=scale)
        with pytest.raises(TypeError, match="log_prior_odds"):
            get_criterion("bmrs_n").remove(loc=loc, scale=scale, log_prior_odds=math.inf)
        with pytest.raises(TypeError, match="log_prior_odds"):
            get_criterion("snr", log_prior_odds=1.0)
        u4 = get_criterion("bmrs_u", p1=4)
        torch.testing.assert_close(u4.score(loc=loc, scale=scale), get_criterion("bmrs_u4").score(loc=loc, scale=scale))
        assert get_criterion("bmrs_n").remove(loc=loc, scale=scale).tolist() == [True, False, True, False, False]
        # options also at call time
        torch.testing.assert_close(get_criterion("bmrs_n").score(loc=loc, scale=scale, reduced_var=0.1),
                                   -delta_f_lognormal(loc, scale, reduced_var=0.1))

    def test_thresholded_baselines(self) -> None:
        loc, scale = self._noise()
        crit = get_criterion("snr")
        assert crit.default_threshold == 1.0 and not crit.threshold_free
        assert torch.equal(crit.remove(loc=loc, scale=scale), snr(loc, scale) < 1.0)
        assert torch.equal(crit.remove(loc=loc, scale=scale, threshold=5.0), snr(loc, scale) < 5.0)
        assert torch.equal(get_criterion("snr", threshold=5.0).remove(loc=loc, scale=scale), snr(loc, scale) < 5.0)
        e = get_criterion("e_theta")
        assert e.default_threshold == 0.1
        torch.testing.assert_close(e.score(loc=loc, scale=scale), expected_theta(loc, scale))
        assert torch.equal(e.remove(loc=loc, scale=scale), expected_theta(loc, scale) < 0.1)
        with pytest.raises(ValueError, match="threshold-free"):
            get_criterion("bmrs_n").remove(loc=loc, scale=scale, threshold=0.0)

    def test_magnitude_and_gradient_need_a_fraction(self) -> None:
        g = torch.Generator().manual_seed(0)
        w = torch.randn(6, 4, generator=g)
        l2 = get_criterion("l2")
        torch.testing.assert_close(l2.score(weight=w), w.norm(dim=1))
        torch.testing.assert_close(l2.score(weight=w.reshape(6, 2, 2)), w.norm(dim=1))
        with pytest.raises(ValueError, match="fraction"):
            l2.remove(weight=w)
        mask = l2.remove(weight=w, fraction=0.5)
        order = torch.argsort(w.norm(dim=1))
        assert mask.sum() == 3 and bool(mask[order[:3]].all())
        grad = get_criterion("grad")
        torch.testing.assert_close(grad.score(grad=w * 2), 2 * w.norm(dim=1))
        with pytest.raises(ValueError, match="fraction"):
            grad.remove(grad=w)
        with pytest.raises(ValueError, match="fraction"):
            l2.remove(weight=w, fraction=1.5)
        with pytest.raises(ValueError, match="either"):
            get_criterion("snr").remove(loc=torch.zeros(2), scale=torch.ones(2), fraction=0.5, threshold=1.0)

    def test_gaussian_bmr(self) -> None:
        g = torch.Generator().manual_seed(0)
        m = torch.randn(5, 7, generator=g, dtype=torch.float64) * 0.1
        s = torch.rand(5, 7, generator=g, dtype=torch.float64) * 0.2 + 0.01
        crit = get_criterion("gaussian_bmr")
        df = delta_f_gaussian(m, s, prior_scale=0.5, dim=1)
        torch.testing.assert_close(crit.score(weight_loc=m, weight_scale=s, prior_scale=0.5), -df)
        assert torch.equal(crit.remove(weight_loc=m, weight_scale=s, prior_scale=0.5), df >= 0)
        assert CriterionInput.GAUSSIAN_WEIGHTS in crit.needs

    def test_inputs(self) -> None:
        loc, scale = self._noise()
        crit = get_criterion("bmrs_n")
        assert crit.input_names == ("loc", "scale")
        # inputs of other kinds are ignored, so a caller can pass everything it has
        everything = dict(loc=loc, scale=scale, log_low=-20.0, log_high=0.0, weight=torch.ones(5, 2),
                          grad=torch.ones(5, 2), weight_loc=torch.ones(5, 2), weight_scale=torch.ones(5, 2),
                          prior_scale=1.0, dim=1)
        for name in ("bmrs_n", "bmrs_u", "snr", "e_theta", "l2", "grad", "gaussian_bmr"):
            assert get_criterion(name).score(**everything).shape == (5,)
        with pytest.raises(TypeError, match="needs input"):
            crit.score(loc=loc)
        with pytest.raises(TypeError, match="unexpected"):
            crit.score(loc=loc, scale=scale, sclae=scale)

    def test_register(self) -> None:
        custom = Criterion("neg_loc", False, lambda *, loc, scale, **_: -loc, None,
                           frozenset({CriterionInput.NOISE_POSTERIOR}), default_threshold=0.0,
                           description="test")
        register_criterion(custom)
        try:
            assert get_criterion("neg_loc") is custom
            with pytest.raises(ValueError, match="already"):
                register_criterion(custom)
        finally:
            reduction._REGISTRY.pop("neg_loc")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_released_code_variant_shifts_by_half_log_2pi_and_frees_prior_like_posteriors(dtype) -> None:
    loc = torch.tensor([-0.82, -0.5, -0.1, 0.0, -19.0], dtype=dtype)
    scale = torch.tensor([3.6, 3.5, 3.6, -5.0, 0.5], dtype=dtype).exp()
    exact = delta_f_lognormal(loc, scale)
    code = delta_f_lognormal_released_code(loc, scale)
    torch.testing.assert_close(code, exact + 0.5 * math.log(2 * math.pi))
    # posteriors gone back to the prior: exact dF just below 0 (kept), the code's above (removed)
    assert ((exact[:3] < 0) & (exact[:3] > -0.2)).all() and (code[:3] > 0.7).all()
    # a needed structure stays, an off one goes, under both
    assert exact[3] < -1e3 and code[3] < -1e3 and exact[4] > 0 and code[4] > 0
