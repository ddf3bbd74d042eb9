"""References for the tests of pyro_prune.reduction, computed independently of it.

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
import torch
from scipy import integrate

A, B = -20.0, 0.0
LN2 = math.log(2.0)
DTYPES = [torch.float32, torch.float64]
SHAPES = [(), (3,), (2, 4)]

mp.mp.dps = 80


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
