from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import stats

from pyro_prune.distributions import TruncatedLogNormal, TruncatedLogUniform
from pyro_prune.models import MultiplicativeNoise, NoiseMode, noise_mode
from pyro_prune.models.noise_kernels import (
    _draw,
    _kl,
    _ndtri_no_grad,
    _prepared,
    kl_truncated_lognormal_loguniform,
    log_theta_and_kl,
    rsample_log_theta,
)

LOCS = [-30.0, -20.5, -12.0, -3.0, -0.01, 0.0, 0.02, 3.0, 10.0]
LOG_SCALES = [-20.0, -8.0, -5.0, -1.0, 0.0, 2.0, 5.0]


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 2e-4), (torch.float64, 1e-9)])
def test_lean_kl_matches_the_exact_kl_where_it_applies(dtype: torch.dtype, rtol: float) -> None:
    pairs = list(itertools.product(LOCS, LOG_SCALES))
    loc = torch.tensor([p[0] for p in pairs], dtype=dtype)
    scale = torch.tensor([p[1] for p in pairs], dtype=dtype).exp()
    exact = torch.distributions.kl_divergence(
        TruncatedLogNormal(loc.double(), scale.double()),
        TruncatedLogUniform(torch.tensor(-20.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)).expand([len(pairs)]),
    )
    for i in range(len(pairs)):
        lean = kl_truncated_lognormal_loguniform(loc[i : i + 1], scale[i : i + 1], -20.0, 0.0)
        if lean is None:  # out of reach: the layer uses the exact KL
            continue
        assert torch.isfinite(lean).all()
        torch.testing.assert_close(lean.double(), exact[i : i + 1], rtol=rtol, atol=rtol)


def test_lean_kl_gradients_are_finite_over_the_box() -> None:
    loc = torch.tensor([p[0] for p in itertools.product(LOCS, LOG_SCALES)], requires_grad=True)
    log_scale = torch.tensor([p[1] for p in itertools.product(LOCS, LOG_SCALES)], requires_grad=True)
    for i in range(len(loc)):
        kl = kl_truncated_lognormal_loguniform(loc[i : i + 1], log_scale[i : i + 1].exp(), -20.0, 0.0)
        if kl is not None:
            kl.sum().backward()
    assert torch.isfinite(loc.grad).all() and torch.isfinite(log_scale.grad).all()


@pytest.mark.parametrize("loc,log_scale", [(0.0, -5.0), (-3.0, 0.0), (-19.5, 0.5), (0.3, -3.0), (-2.0, 2.0)])
def test_lean_draws_follow_the_truncated_log_normal(loc: float, log_scale: float) -> None:
    torch.manual_seed(0)
    x = rsample_log_theta(torch.tensor([loc]), torch.tensor([log_scale]).exp(), -20.0, 0.0, 4000)
    assert x is not None and x.shape == (4000, 1)
    assert bool(((x >= -20.0) & (x <= 0.0)).all())
    dist = TruncatedLogNormal(torch.tensor(loc, dtype=torch.float64), torch.tensor(log_scale, dtype=torch.float64).exp())

    def cdf(v: np.ndarray) -> np.ndarray:
        theta = torch.from_numpy(np.exp(v.astype(np.float64)))
        return dist.cdf(theta).numpy()

    result = stats.kstest(x[:, 0].double().numpy(), cdf)
    assert result.pvalue > 1e-3


def test_lean_draws_are_differentiable() -> None:
    loc = torch.tensor([-1.0, 0.1], requires_grad=True)
    log_scale = torch.tensor([-1.0, -4.0], requires_grad=True)
    x = rsample_log_theta(loc, log_scale.exp(), -20.0, 0.0, 64)
    x.exp().sum().backward()
    assert torch.isfinite(loc.grad).all() and torch.isfinite(log_scale.grad).all()


def test_out_of_reach_falls_back_to_the_exact_distribution() -> None:
    # loc far above the upper bound with a tiny scale: the interval lies 1e6 sigmas away
    loc, scale = torch.tensor([5.0]), torch.tensor([1e-5])
    assert kl_truncated_lognormal_loguniform(loc, scale, -20.0, 0.0) is None
    assert rsample_log_theta(loc, scale, -20.0, 0.0, 3) is None
    layer = MultiplicativeNoise(1, -1)
    with torch.no_grad():
        layer.loc.fill_(5.0)
        layer.log_scale.fill_(-11.5)
    kl = layer.kl_divergence()
    assert torch.isfinite(kl)
    with noise_mode(layer, NoiseMode.REPARAM):
        out = layer(torch.ones(4, 1))
    # all the mass sits at the upper bound: theta = e^0 = 1
    torch.testing.assert_close(out, torch.ones(4, 1), rtol=1e-4, atol=1e-4)


def _composed(loc: torch.Tensor, scale: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The draw and KL as a plain autograd composition of the kernel's parts (the oracle)."""
    prep = _prepared(loc, scale, -20.0, 0.0)
    assert prep is not None
    return _draw(loc, scale, -20.0, 0.0, prep, u), _kl(scale, -20.0, 0.0, prep)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-4), (torch.float64, 1e-7)])
@pytest.mark.parametrize("batch", [None, 5])
def test_hand_written_gradients_equal_autograd_of_the_composition(
    dtype: torch.dtype, tol: float, batch: int | None
) -> None:
    pairs = [(m, s) for m, s in itertools.product(LOCS, LOG_SCALES)
             if _prepared(torch.tensor([m], dtype=dtype), torch.tensor([s], dtype=dtype).exp(), -20.0, 0.0)]
    assert len(pairs) > 30  # flipped, clipped and tail intervals are all among them
    g = torch.Generator().manual_seed(0)
    shape = (len(pairs),) if batch is None else (batch, len(pairs))
    u = torch.rand(shape, generator=g, dtype=dtype)
    w_x, w_kl = torch.randn(shape, generator=g, dtype=dtype), torch.randn(len(pairs), generator=g, dtype=dtype)
    results = []
    for fn in (log_theta_and_kl, None):
        loc = torch.tensor([p[0] for p in pairs], dtype=dtype, requires_grad=True)
        log_scale = torch.tensor([p[1] for p in pairs], dtype=dtype, requires_grad=True)
        if fn is None:
            x, kl = _composed(loc, log_scale.exp(), u)
        else:
            out = fn(loc, log_scale.exp(), -20.0, 0.0, u)
            assert out is not None
            x, kl = out
        ((x * w_x).sum() + (kl * w_kl).sum()).backward()
        results.append((x.detach(), kl.detach(), loc.grad, log_scale.grad))
    for fast, oracle in zip(*results):
        assert torch.isfinite(fast).all()
        torch.testing.assert_close(fast, oracle, rtol=tol, atol=tol)


def test_hand_written_gradients_pass_gradcheck() -> None:
    loc = torch.tensor([-19.0, -3.0, 0.0, 0.4, -10.0], dtype=torch.float64, requires_grad=True)
    scale = torch.tensor([0.5, 1.0, 0.01, 2.0, 7.0], dtype=torch.float64, requires_grad=True)
    u = torch.rand(3, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda m, s: log_theta_and_kl(m, s, -20.0, 0.0, u), (loc, scale))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float64, 1e-13)])
def test_fast_inverse_normal_cdf_matches_ndtri(dtype: torch.dtype, tol: float) -> None:
    g = torch.Generator().manual_seed(0)
    p = torch.cat([torch.rand(50_000, generator=g, dtype=dtype),
                   torch.logspace(-30, -1, 200, dtype=dtype), 1 - torch.logspace(-7, -1, 200, dtype=dtype)])
    fast = _ndtri_no_grad(p)
    torch.testing.assert_close(fast.double(), torch.special.ndtri(p.double()), rtol=tol, atol=tol)
