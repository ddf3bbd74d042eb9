"""Tests of the criteria registry of pyro_prune.reduction and of log_prior_odds."""

from __future__ import annotations

import math

import pytest
import torch

from pyro_prune.reduction import (
    BMRS_LOG_PRIOR_ODDS,
    CRITERIA,
    Criterion,
    CriterionInput,
    criteria,
    delta_f_gaussian,
    delta_f_lognormal,
    delta_f_lognormal_released_code,
    delta_f_loguniform,
    expected_theta,
    get_criterion,
    register_criterion,
    snr,
)

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
            criteria._REGISTRY.pop("neg_loc")
