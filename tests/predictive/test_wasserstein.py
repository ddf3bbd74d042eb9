"""Wasserstein-2 distances against exact optimal transport, hand cases and the Gaussian closed form."""

from __future__ import annotations

import math

import numpy as np
import ot
import pytest
import torch

from pyro_prune.predictive import aggregate_w2, wasserstein2, wasserstein2_1d, wasserstein2_gaussian


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_w2_1d_hand_cases(dtype: torch.dtype) -> None:
    t = lambda *v: torch.tensor(v, dtype=dtype)  # noqa: E731
    assert float(wasserstein2_1d(t(0.0, 1.0), t(1.0, 2.0))) == pytest.approx(1.0)
    assert float(wasserstein2_1d(t(3.0, 0.0, 1.0), t(0.0, 0.0, 0.0))) == pytest.approx(math.sqrt(10 / 3))
    # unequal counts: the single point 0 against {0, 2}
    assert float(wasserstein2_1d(t(0.0), t(0.0, 2.0))) == pytest.approx(math.sqrt(2.0))
    # {0, 3} against {0, 1, 2}: quantile steps on (0,1/3], (1/3,1/2], (1/2,2/3], (2/3,1]
    expected = math.sqrt((1 / 3) * 0 + (1 / 6) * 1 + (1 / 6) * 4 + (1 / 3) * 1)
    assert float(wasserstein2_1d(t(0.0, 3.0), t(0.0, 1.0, 2.0))) == pytest.approx(expected)
    assert wasserstein2(t(0.0, 1.0)[:, None], t(1.0, 2.0)[:, None]).dtype == dtype


@pytest.mark.parametrize("sp,sq", [(7, 7), (5, 8), (12, 3), (1, 4)])
def test_w2_1d_matches_exact_optimal_transport(sp: int, sq: int) -> None:
    gen = torch.Generator().manual_seed(sp * 10 + sq)
    p, q = torch.randn(sp, generator=gen, dtype=torch.float64), torch.randn(sq, generator=gen, dtype=torch.float64) + 0.5
    m = (p[:, None] - q[None, :]).numpy() ** 2
    ref = math.sqrt(ot.emd2(np.full(sp, 1 / sp), np.full(sq, 1 / sq), m))
    assert float(wasserstein2_1d(p, q)) == pytest.approx(ref, rel=1e-9)
    assert float(wasserstein2(p[:, None], q[:, None])) == pytest.approx(ref, rel=1e-9)


def test_w2_multivariate_translation_permutation_and_batch_broadcast() -> None:
    gen = torch.Generator().manual_seed(0)
    p = torch.randn(20, 3, 4, generator=gen, dtype=torch.float64)  # [draws, batch=3, event=4]
    shift = torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.float64)
    q = p[torch.randperm(20, generator=gen)] + shift
    w = wasserstein2(p, q)
    assert w.shape == (3,)
    torch.testing.assert_close(w, torch.full((3,), float(shift.norm()), dtype=torch.float64))
    # batch dims broadcast: one reference distribution against three
    w_b = wasserstein2(p[:, :1], q)
    assert w_b.shape == (3,)
    assert float(w_b[0]) == pytest.approx(float(shift.norm()))
    # identical samples: zero
    assert float(wasserstein2(p, p).abs().max()) < 1e-6


@pytest.mark.parametrize("d", [2, 3])
def test_w2_of_empirical_gaussians_equals_the_closed_form(d: int) -> None:
    """Whitened samples X = m1 + C1^(1/2) Z have exactly the moments (m1, C1); their image under
    the Gaussian optimal map T is cyclically monotone, so the empirical W2 equals the closed form."""
    gen = torch.Generator().manual_seed(d)
    s = 60
    z = torch.randn(s, d, generator=gen, dtype=torch.float64)
    z = z - z.mean(0)
    chol = torch.linalg.cholesky(z.T @ z / s)
    z = z @ torch.linalg.inv(chol).T  # empirical mean 0, covariance I
    a1, a2 = torch.randn(d, d, generator=gen, dtype=torch.float64), torch.randn(d, d, generator=gen, dtype=torch.float64)
    c1, c2 = a1 @ a1.T + 0.1 * torch.eye(d), a2 @ a2.T + 0.1 * torch.eye(d)
    m1, m2 = torch.randn(d, generator=gen, dtype=torch.float64), torch.randn(d, generator=gen, dtype=torch.float64)
    evals, evecs = torch.linalg.eigh(c1)
    c1_half = evecs @ torch.diag(evals.sqrt()) @ evecs.T
    c1_inv_half = evecs @ torch.diag(evals.rsqrt()) @ evecs.T
    e2, v2 = torch.linalg.eigh(c1_half @ c2 @ c1_half)
    transport = c1_inv_half @ (v2 @ torch.diag(e2.sqrt()) @ v2.T) @ c1_inv_half
    x = m1 + z @ c1_half
    y = m2 + (x - m1) @ transport.T
    closed = float(wasserstein2_gaussian(m1, c1, m2, c2))
    assert float(wasserstein2(x[:, None], y[:, None])[0]) == pytest.approx(closed, rel=1e-6)


def test_gaussian_closed_form_special_cases() -> None:
    m1, m2 = torch.tensor([0.0, 1.0]), torch.tensor([3.0, -1.0])
    d1, d2 = torch.tensor([4.0, 1.0]), torch.tensor([1.0, 9.0])
    expected = math.sqrt(float(((m1 - m2) ** 2).sum() + ((d1.sqrt() - d2.sqrt()) ** 2).sum()))
    assert float(wasserstein2_gaussian(m1, torch.diag(d1), m2, torch.diag(d2))) == pytest.approx(expected)
    c = torch.tensor([[2.0, 0.5], [0.5, 1.0]])
    assert float(wasserstein2_gaussian(m1, c, m1, c)) == pytest.approx(0.0, abs=1e-6)
    # batched and symmetric
    cs = torch.stack([c, torch.eye(2)])
    w = wasserstein2_gaussian(torch.zeros(2, 2), cs, torch.ones(2, 2), cs.flip(0))
    assert w.shape == (2,)
    assert float(w[0]) == pytest.approx(float(w[1]))


def test_w2_bad_inputs() -> None:
    with pytest.raises(ValueError, match="event"):
        wasserstein2(torch.zeros(4, 2), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="samples_p"):
        wasserstein2(torch.zeros(4), torch.zeros(4, 1))
    with pytest.raises(ValueError, match="broadcast"):
        wasserstein2(torch.zeros(4, 2, 1), torch.zeros(4, 3, 1))
    with pytest.raises(ValueError, match="NaN"):
        wasserstein2(torch.full((3, 1), float("nan")), torch.zeros(3, 1))
    with pytest.raises(TypeError, match="floating"):
        wasserstein2(torch.zeros(3, 1, dtype=torch.long), torch.zeros(3, 1))
    with pytest.raises(ValueError, match="square"):
        wasserstein2_gaussian(torch.zeros(2), torch.zeros(2, 3), torch.zeros(2), torch.eye(2))
    assert aggregate_w2(torch.tensor([3.0, 4.0])) == pytest.approx(math.sqrt(12.5))
