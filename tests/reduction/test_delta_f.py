"""Tests of the dF operators of pyro_prune.reduction against independent references
(quadrature of the BMR identity and the papers' closed forms at 80 digits:
``reduction_references.py``)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reduction_references import (
    BOX_CASES,
    DTYPES,
    LN2,
    QUAD_CASES,
    SHAPES,
    A,
    B,
    f64,
    mp_bmrs_n,
    mp_bmrs_u,
    mp_gaussian,
    quad_bmrs_n,
    quad_bmrs_u,
    quad_gaussian,
    rel,
)
from torch.autograd import gradcheck

from pyro_prune.models.noise_kernels import kl_truncated_lognormal_loguniform
from pyro_prune.reduction import (
    CriterionInput,
    _elementwise,
    delta_f_gaussian,
    delta_f_joint,
    delta_f_lognormal,
    delta_f_lognormal_released_code,
    delta_f_loguniform,
    expected_theta,
    get_criterion,
    snr,
)

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


# ------------------------------------------------------------------------ blocked evaluation


@pytest.mark.parametrize("fn", [delta_f_lognormal, delta_f_loguniform, delta_f_gaussian])
@pytest.mark.parametrize("dtype", DTYPES)
def test_blocked_evaluation_matches_whole_tensor_evaluation(fn, dtype, monkeypatch) -> None:
    g = torch.Generator().manual_seed(0)
    n = 50_000
    loc = torch.rand(n, generator=g, dtype=dtype) * 40 - 30
    scale = (torch.rand(n, generator=g, dtype=dtype) * 25 - 20).exp()
    blocked = fn(loc, scale)
    monkeypatch.setattr(_elementwise, "BLOCK_BYTES", 1 << 40)  # one block: the whole tensors
    torch.testing.assert_close(blocked, fn(loc, scale), rtol=0, atol=0)
    monkeypatch.setattr(_elementwise, "BLOCK_BYTES", 4096)  # many small blocks, 2-d input
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
