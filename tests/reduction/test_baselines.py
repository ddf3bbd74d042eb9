"""Tests of the baseline scores of pyro_prune.reduction (E[theta], SNR against the moments at
80 digits; magnitude and gradient norms)."""

from __future__ import annotations

import mpmath as mp
import pytest
import torch
from reduction_references import (
    BOX_CASES,
    DTYPES,
    f64,
    mp_tn_moments,
    rel,
)

from pyro_prune.reduction import (
    delta_f_lognormal,
    delta_f_loguniform,
    expected_theta,
    gradient_score,
    l2_norm,
    snr,
)

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
