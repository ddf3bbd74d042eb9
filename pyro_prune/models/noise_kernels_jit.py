r"""The network-wide noise kernel compiled for the CPU with Numba.

:func:`pyro_prune.models.noise_kernels.network_theta_and_kl` draws the noise of every
multiplicative-noise layer of a network and computes its KL in one autograd node. In torch
that node is about a hundred tensor operations on a few hundred numbers per step, and on a
CPU their dispatch, not their arithmetic, is what a training step of a small network pays
for. This module computes the same values in compiled functions, one for the forward (per
structure: the standardised bounds and the KL; per draw: the draw, ``theta = exp(x) * kept``
and the derivatives of ``x`` with respect to ``loc`` and ``log sigma``) and one for the
backward (the hand-written gradients of :class:`~pyro_prune.models.noise_kernels._DrawAndKL`,
which with the per-draw derivatives stored are two multiply-adds per draw), and is used in
its place when Numba is installed (the ``fast`` extra), the tensors live on the CPU and a step
draws at most :data:`MAX_DRAWS` numbers.

Per-example draws take their uniforms from the kernel's own counter-based generator
(:class:`CounterUniforms`: SplitMix64 keyed by one draw from torch's generator, so a seed
still fixes every draw), generated where they are used instead of read from torch's Mersenne
Twister; given the same uniforms (:func:`counter_uniforms`) the torch kernels give the same
values (tested).

The draws run over one example's structures at a time in loops that compile to vector
instructions, the rows padded to a multiple of 16 structures so that no loop ends in scalar
code. ``Phi^-1`` is Acklam's rational approximation (Acklam, *An algorithm for computing the
inverse normal cumulative distribution function*, 2003; relative error below ``1.2e-9``).

* **float32 parameters** (the default networks), bounds inside ``[-80, 80]``: the uniform,
  ``p = Phi(a) + u Z`` and ``r = min(p, 1 - p)`` are computed in float64 (so both tails keep
  their precision), everything after in float32, 16 draws per instruction:
  ``Phi^-1(p) = sqrt(2) erfinv(2p - 1)`` with Giles's single-precision ``erfinv``
  polynomial in ``w = -log(4 r (1 - r))`` (Giles, *Approximating the erfinv function*, GPU
  Computing Gems, 2011) where ``w < 5``, and Acklam's tail rational beyond (a few draws in a
  thousand; Acklam's central rational cancels in float32 near its edges), both evaluated for
  every draw so that the loop has no branch; the logarithm is Cephes's ``logf`` and the two
  exponentials per draw ``2^k e^r`` with a degree-7 polynomial, the powers of two made from
  the float's bits; multiplies and adds fuse into fused multiply-adds where the CPU has them
  (LLVM's ``contract``, this kernel only). Draws, KL and gradients agree with the float64 kernel within ``1e-5``
  (relative error of the draws about ``1e-6``; tested, with KS tests of the draws against the
  truncated normal).
* **float64 parameters** (and float32 with wider bounds): float64 throughout, Acklam's central
  rational for every draw, the few draws in its tails (a list built without branches) and
  one Halley step on ``Phi(t) = p``; results agree with the torch kernels to rounding.

The range is the torch kernels': structures whose turned standardised interval ends more
than ``reach`` standard deviations below the mean are out of reach (``None`` is returned and
the caller takes the exact distribution).

Set the environment variable ``PYRO_PRUNE_NUMBA=0`` (or call :func:`set_enabled`) to use
the torch kernels instead.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pyro_prune.models.noise_kernels import (
    _CLIP,
    _HALF_LOG_2PI_E,
    _INV_SQRT_2,
    _INV_SQRT_2PI,
    _REACH,
)

__all__ = ["MAX_DRAWS", "CounterUniforms", "available", "counter_uniforms", "draw_key",
           "network_theta_and_kl", "set_enabled", "usable", "usable_counter"]

_SQRT_2PI = math.sqrt(2.0 * math.pi)
#: ``log 2`` split so that ``k * _LN2_HI`` is exact for ``|k| < 2^24`` (29 significant bits)
#: and ``_LN2_LO = log 2 - _LN2_HI`` to float64 precision
_LN2_HI = 0.6931471787393093
_LN2_LO = 1.8206359985041462e-09
#: ``erfcx(x) = e^(x^2) erfc(x) ~ P((x - K) / (x + K)) / (K + x)`` on ``[0, inf)``: ``P`` of degree
#: 24, the least-squares Chebyshev fit at 400 Chebyshev points of ``t = (x - K) / (x + K)`` in
#: ``(-1, 1)`` of ``(K + x) erfcx(x)`` evaluated in 40-digit arithmetic, written in powers of
#: ``t`` (the sum of the coefficients' magnitudes is 2.5, so Horner's rule loses nothing);
#: relative error below 5e-15 (``tests/models/test_noise_kernels_jit.py`` derives the fit again)
_ERFCX_K = 2.5
_ERFCX_POLYNOMIAL = (
    1.0540318203057186, -0.8046518494391512, 0.45391411664802095, -0.17125114524566443,
    0.028361550135628424, 0.008393044292264078, -0.004818785589467549, -0.0004392081504774515,
    0.0007026943377390141, 5.830708221105584e-05, -0.00011260818086764622, -1.9529476485157325e-05,
    1.8255970344622904e-05, 6.747607672327249e-06, -2.358781045490367e-06, -1.9519479496703496e-06,
    3.4463217139576215e-08, 4.367773297240028e-07, 9.719293757189966e-08, -6.233123768056441e-08,
    -2.6440561995506203e-08, 1.864504138226077e-09, 1.1853801143688956e-09, 7.408625714805597e-10,
    5.268356063861758e-10,
)
_TINY = {torch.float32: float(torch.finfo(torch.float32).tiny),
         torch.float64: float(torch.finfo(torch.float64).tiny)}

_enabled = os.environ.get("PYRO_PRUNE_NUMBA", "1").strip().lower() not in ("0", "false", "no", "off")
_kernels: tuple[Any, Any, Any, Any] | None = None
_import_failed = False


def set_enabled(enabled: bool) -> bool:
    """Use the compiled kernels when available (``True``) or always torch; returns the old value."""
    global _enabled
    old, _enabled = _enabled, bool(enabled)
    return old


def available() -> bool:
    """Whether the compiled kernels are enabled and Numba can be imported."""
    return _enabled and _load() is not None


def _load() -> tuple[Any, Any, Any, Any] | None:
    global _kernels, _import_failed
    if _kernels is None and not _import_failed:
        try:
            _kernels = _compile()
        except ImportError:
            _import_failed = True
    return _kernels


def _compile() -> tuple[Any, Any, Any, Any]:
    """``((prepare, draw, draw32), backward, exp_vector, uniforms)``, compiled on first use."""
    import numba

    # Acklam's coefficients: central region |p - 1/2| <= 1/2 - P_LOW, and the tails
    a0, a1, a2, a3, a4, a5 = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02,
                              1.383577518672690e02, -3.066479806614716e01, 2.506628277459239e00)
    b0, b1, b2, b3, b4 = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02,
                          6.680131188771972e01, -1.328068155288572e01)
    c0, c1, c2, c3, c4, c5 = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00,
                              -2.549732539343734e00, 4.374664141464968e00, 2.938163982698783e00)
    d0, d1, d2, d3 = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00,
                      3.754408661907416e00)
    p_low = 0.02425
    clip, half_log_2pi_e = _CLIP, _HALF_LOG_2PI_E
    inv_sqrt_2pi, inv_sqrt_2, sqrt_2pi = _INV_SQRT_2PI, _INV_SQRT_2, _SQRT_2PI

    @numba.njit(cache=True, inline="always", error_model="numpy")
    def ndtri(p: float, refine: bool) -> float:
        if p < p_low:
            q = math.sqrt(-2.0 * math.log(p))
            x = ((((((c0 * q + c1) * q + c2) * q + c3) * q + c4) * q + c5)
                 / ((((d0 * q + d1) * q + d2) * q + d3) * q + 1.0))
        elif p <= 1.0 - p_low:
            q = p - 0.5
            r = q * q
            x = ((((((a0 * r + a1) * r + a2) * r + a3) * r + a4) * r + a5) * q
                 / (((((b0 * r + b1) * r + b2) * r + b3) * r + b4) * r + 1.0))
        else:
            q = math.sqrt(-2.0 * math.log1p(-p))
            x = -((((((c0 * q + c1) * q + c2) * q + c3) * q + c4) * q + c5)
                  / ((((d0 * q + d1) * q + d2) * q + d3) * q + 1.0))
        if refine:  # one Halley step on Phi(x) = p: cubic convergence to float64 precision
            if p > 0.5:  # Phi(x) - p as (1 - p) - Phi(-x): 1 - p is exact, Phi(x) near 1 is not
                e = (1.0 - p) - 0.5 * math.erfc(x * inv_sqrt_2)
            else:
                e = 0.5 * math.erfc(-x * inv_sqrt_2) - p
            u = e * sqrt_2pi * math.exp(0.5 * x * x)
            x = x - u / (1.0 + 0.5 * x * u)
        return x

    @numba.njit(cache=True, inline="always", error_model="numpy")
    def exp_vector(x: float) -> float:
        # e^x = (e^(x / 256))^256: a degree-11 Taylor polynomial on |x / 256| <= 0.32 (for
        # |x| <= 80; the kernels' arguments are clipped to that) and eight squarings,
        # relative error below 1e-12; multiplications only, so the loops that call it
        # compile to vector instructions (the library exp does not vectorise)
        r = x * (1.0 / 256.0)
        y = 1.0 + r * (1.0 + r * (1.0 / 2 + r * (1.0 / 6 + r * (1.0 / 24 + r * (1.0 / 120 + r * (
            1.0 / 720 + r * (1.0 / 5040 + r * (1.0 / 40320 + r * (1.0 / 362880 + r * (
                1.0 / 3628800 + r * (1.0 / 39916800)))))))))))
        for _ in range(8):
            y = y * y
        return y

    @numba.njit(cache=True, inline="always", error_model="numpy")
    def exp_row(x, exact):  # x <- e^x, in place
        if exact:
            for j in range(x.shape[0]):
                x[j] = math.exp(x[j])
        else:
            for j in range(x.shape[0]):
                x[j] = exp_vector(x[j])

    gamma, mix1, mix2 = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9),
                         np.uint64(0x94D049BB133111EB))
    s30, s27, s31, s11, one = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11), np.uint64(1)
    two_m53, half_ulp = 2.0 ** -53, 2.0 ** -54

    @numba.njit(cache=True, inline="always", error_model="numpy")
    def uniform(key, counter):
        # SplitMix64 (Steele, Lea and Flood, 2014) at position `counter` of the stream of
        # `key`, its top 53 bits as a float in (0, 1): 2^-54 ... 1 - 2^-54
        z = key + (counter + one) * gamma
        z = (z ^ (z >> s30)) * mix1
        z = (z ^ (z >> s27)) * mix2
        z = z ^ (z >> s31)
        return float(np.int64(z >> s11)) * two_m53 + half_ulp

    @numba.njit(cache=True, inline="always", error_model="numpy")
    def row_uniforms(u, key, i, n, drawn):
        # the uniforms of row i of a draw over n structures into all of `drawn`: counter-based
        # (key >= 0) or read from u (columns beyond n, padding, repeat the last one)
        if key >= 0:
            k64, base = np.uint64(key), np.uint64(i * n)
            for j in range(drawn.shape[0]):
                drawn[j] = uniform(k64, base + np.uint64(j))
        else:
            for j in range(drawn.shape[0]):
                drawn[j] = u[i, min(j, n - 1)]

    @numba.njit(cache=True, error_model="numpy")
    def uniforms(key, first_row, out):  # pragma: no cover - compiled
        n = out.shape[1]
        k = np.uint64(key)
        for i in range(out.shape[0]):
            base = np.uint64((first_row + i) * n)
            oi = out[i]
            for j in range(n):
                oi[j] = uniform(k, base + np.uint64(j))

    # float32 per-draw maths (draw32). Phi^-1(p) = sqrt(2) erfinv(2p - 1) with Giles's
    # single-precision erfinv on w = -log(4 r (1 - r)) < 5, r = min(p, 1 - p) (a polynomial in
    # w, no division; Acklam's central rational cancels in float32 near its edges), and
    # Acklam's tail rational beyond (a few draws in a thousand), both evaluated for every
    # draw so that the loop stays one vector loop; the logarithm is Cephes's logf and e^x is
    # 2^k e^r with a degree-7 Taylor polynomial, both through the float's bits
    f4 = np.float32
    g_erfinv = tuple(f4(v) for v in (2.81022636e-08, 3.43273939e-07, -3.5233877e-06, -4.39150654e-06,
                                      0.00021858087, -0.00125372503, -0.00417768164, 0.246640727,
                                      1.50140941))
    g0, g1, g2, g3, g4, g5, g6, g7, g8 = g_erfinv
    tc0, tc1, tc2, tc3, tc4, tc5 = (f4(c0), f4(c1), f4(c2), f4(c3), f4(c4), f4(c5))
    td0, td1, td2, td3 = (f4(d0), f4(d1), f4(d2), f4(d3))
    l0, l1, l2, l3, l4, l5, l6, l7, l8 = (f4(v) for v in (
        7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1,
        -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1))
    e2, e3, e4, e5, e6, e7 = (f4(1.0 / math.factorial(k)) for k in range(2, 8))
    f_one, f_half, f_two, f_zero, f_five, f_two5 = f4(1.0), f4(0.5), f4(2.0), f4(0.0), f4(5.0), f4(2.5)
    f_third, f_sqrt2, f_ln4 = f4(1.0 / 3.0), f4(math.sqrt(2.0)), f4(math.log(4.0))
    f_log2e, f_ln2_hi, f_ln2_lo = f4(1.0 / math.log(2.0)), f4(0.693359375), f4(-2.12194440e-4)
    f_m80, f_p80 = f4(-80.0), f4(80.0)
    i127, i23, mantissa, exponent_0 = np.int32(127), np.int32(23), np.int32(0x7FFFFF), np.int32(0x3F800000)
    rows32 = (0, 1, 2, 3, 11, 12, 13, 14)  # the rows of `per` draw32 reads, then `kept`

    @numba.njit(cache=True, inline="always", error_model="numpy")
    def exp32(x):
        # e^x = 2^k e^r, |r| <= log(2) / 2 (|x| <= 80): (e^r, the bits of the float 2^k)
        k = np.floor(x * f_log2e + f_half)
        r = x - k * f_ln2_hi - k * f_ln2_lo
        e_r = f_one + r * (f_one + r * (e2 + r * (e3 + r * (e4 + r * (e5 + r * (e6 + r * e7))))))
        return e_r, (np.int32(k) + i127) << i23

    # a multiply and an add may fuse into one rounding (``contract``): the polynomials become
    # chains of fused multiply-adds, a fifth less time for draws as accurate against the
    # float64 kernel (measured: the same largest and a smaller mean error)
    @numba.njit(cache=True, error_model="numpy", fastmath={"contract"})
    def draw32(u, key, per, per32, low, high, tiny, theta, d_loc, d_log_scale, first,
               last):  # pragma: no cover - compiled
        """:func:`draw` for float32 parameters with the per-draw maths in float32: the uniform,
        ``p`` and ``min(p, 1 - p)`` in float64, the rest in float32 (relative error of the draws
        about ``1e-6``), over all ``m`` (padded) columns: five loops of 16-wide vectors a row,
        multiplies and adds fused where the CPU has the instruction."""
        m = per.shape[1]
        n = u.shape[1]
        pa, z = per[7], per[8]
        s, al, be, flip, mu, c_ref, f_a, f_b, kept = (per32[0], per32[1], per32[2], per32[3],
                                                     per32[4], per32[5], per32[6], per32[7], per32[8])
        x2, y4, rr, uu, lg, tt = (np.empty(m, np.float32), np.empty(m, np.float32),
                                  np.empty(m, np.float32), np.empty(m, np.float32),
                                  np.empty(m, np.float32), np.empty(m, np.float32))
        e_x, e_t, passes = np.empty(m, np.float32), np.empty(m, np.float32), np.empty(m, np.float32)
        bits, bits_x, bits_t = np.empty(m, np.int32), np.empty(m, np.int32), np.empty(m, np.int32)
        mant, pow_x, pow_t, y_bits = (bits.view(np.float32), bits_x.view(np.float32),
                                      bits_t.view(np.float32), y4.view(np.int32))
        low32, high32 = np.float32(low), np.float32(high)
        drawn = np.empty(m)
        for i in range(first, last):
            row_uniforms(u, key, i, n, drawn)
            for j in range(m):
                ui = drawn[j]
                p = max(pa[j] + ui * z[j], tiny)
                r = max(min(p, 1.0 - p), tiny)
                x2[j] = np.float32(2.0 * p - 1.0)
                y4[j] = np.float32(4.0 * r * (1.0 - r))
                rr[j] = np.float32(r)
                uu[j] = np.float32(ui)
            for j in range(m):  # log(4 r (1 - r)): exponent and mantissa in [1, 2)
                b = y_bits[j]
                bits[j] = (b & mantissa) | exponent_0
                lg[j] = np.float32((b >> i23) - i127)
            for j in range(m):
                f = mant[j]
                e = lg[j]
                big = f > f_sqrt2
                f = f * f_half if big else f
                e = e + f_one if big else e
                f = f - f_one
                ff = f * f
                y = ((((((((l0 * f + l1) * f + l2) * f + l3) * f + l4) * f + l5) * f + l6) * f + l7) * f
                     + l8) * f * ff
                lg[j] = f + (y + f_ln2_lo * e - f_half * ff) + f_ln2_hi * e
            for j in range(m):
                w = -lg[j]
                v = w - f_two5
                central = (((((((g0 * v + g1) * v + g2) * v + g3) * v + g4) * v + g5) * v + g6) * v + g7) * v + g8
                t_central = f_sqrt2 * central * x2[j]
                r = rr[j]
                q = np.sqrt(-f_two * (lg[j] - f_ln4 + r * (f_one + r * (f_half + r * f_third))))
                t_tail = (((((tc0 * q + tc1) * q + tc2) * q + tc3) * q + tc4) * q + tc5) / (
                    (((td0 * q + td1) * q + td2) * q + td3) * q + f_one)
                t_tail = t_tail if x2[j] < f_zero else -t_tail
                t = (t_central if w < f_five else t_tail) * (f_one - f_two * flip[j])
                x = mu[j] + s[j] * t
                c = min(max(x, low32), high32)
                passes[j] = f_one if c == x else f_zero
                tt[j] = t
                e_t[j], bits_t[j] = exp32(min(max(f_half * t * t - c_ref[j], f_m80), f_p80))
                e_x[j], bits_x[j] = exp32(c)
            dli, dsi, ci = d_loc[i], d_log_scale[i], theta[i]
            for j in range(m):
                t = tt[j]
                et = e_t[j] * pow_t[j]
                v = uu[j] + flip[j] * (f_one - f_two * uu[j])
                da = (f_one - v) * et * f_a[j]
                db = v * et * f_b[j]
                dli[j] = (f_one - da - db) * passes[j]
                dsi[j] = (t - al[j] * da - be[j] * db) * s[j] * passes[j]
                ci[j] = e_x[j] * pow_x[j] * kept[j]

    # float64 e^x, log x and erfcx x written so that loops over the structures compile to
    # vector instructions (the library functions do not vectorise): :func:`prepare` evaluates
    # them for every structure of the network at each step
    ln2_hi, ln2_lo, log2e, sqrt2 = _LN2_HI, _LN2_LO, 1.0 / math.log(2.0), math.sqrt(2.0)
    i1023, s52, two_m54 = np.int64(1023), np.int64(52), 2.0 ** -54
    mantissa64, exponent_0_64 = np.int64((1 << 52) - 1), np.int64(1023 << 52)
    t0, t1, t2, t3, t4, t5, t6, t7, t8, t9, t10, t11, t12, t13 = (
        1.0 / math.factorial(k) for k in range(14))
    (h0, h1, h2, h3, h4, h5, h6, h7, h8, h9, h10, h11, h12, h13, h14, h15, h16, h17, h18, h19, h20,
     h21, h22, h23, h24) = _ERFCX_POLYNOMIAL
    k_erfcx = _ERFCX_K

    @numba.njit(cache=True, inline="always", error_model="numpy")
    def exp64(x):
        # e^x = 2^k e^r, |r| <= log(2) / 2, as (e^r, the bits of the float 2^k): e^r by its
        # Taylor polynomial of degree 13 (remainder below 5e-18); below 2^-1022 (x < -708.4)
        # the power is 2^(k + 54) and e^r carries the 2^-54, so that the product rounds into
        # the subnormal floats as the library's e^x does; 0 below x = -745.2
        y = min(max(x, -745.2), 709.0)
        k = math.floor(y * log2e + 0.5)
        r = (y - k * ln2_hi) - k * ln2_lo  # k ln2_hi is exact: ln2_hi has 29 significant bits
        e_r = t0 + r * (t1 + r * (t2 + r * (t3 + r * (t4 + r * (t5 + r * (t6 + r * (t7 + r * (
            t8 + r * (t9 + r * (t10 + r * (t11 + r * (t12 + r * t13))))))))))))
        low_range = k < -1022.0
        e_r = e_r * two_m54 if low_range else e_r
        k = k + 54.0 if low_range else k
        return (e_r if x >= -745.2 else 0.0), (np.int64(k) + i1023) << s52

    @numba.njit(cache=True, inline="always", error_model="numpy")
    def erfcx(x):
        # e^(x^2) erfc(x) for x >= 0: a polynomial of degree 24 in t = (x - K) / (x + K), divided
        # by K + x (relative error below 5e-15 on [0, inf); see _ERFCX_POLYNOMIAL)
        t = (x - k_erfcx) / (x + k_erfcx)
        h = h0 + t * (h1 + t * (h2 + t * (h3 + t * (h4 + t * (h5 + t * (h6 + t * (h7 + t * (h8 + t * (
            h9 + t * (h10 + t * (h11 + t * (h12 + t * (h13 + t * (h14 + t * (h15 + t * (h16 + t * (
                h17 + t * (h18 + t * (h19 + t * (h20 + t * (h21 + t * (h22 + t * (h23 + t * h24)))))))))))))))))))))))
        return h / (k_erfcx + x)

    @numba.njit(cache=True, error_model="numpy")
    def prepare(loc, log_scale, weight, kept, low, high, reach, per, per32):  # pragma: no cover - compiled
        """Per structure: what the draws need (in ``per``, and in float32 in ``per32`` for
        :func:`draw32`); returns ``(kl_sum, in_reach)``. Columns ``n:`` of both are padding:
        an untruncated standard normal with ``kept = 0``, so that the draws' loops run over a
        multiple of the vector width.

        In float64, in loops over the structures that compile to vector instructions, each
        with few arrays (more and the compiler gives up its checks that they do not overlap),
        the sums outside them: ``Phi`` of a bound ``c <= 0`` is ``e^(-c^2 / 2) erfcx(-c / sqrt 2) / 2``,
        the exponential it needs also ``phi(c)``; sigma is rounded to the parameters' dtype,
        as the torch kernels compute it."""
        n = loc.shape[0]
        m = per.shape[1]
        for j in range(n, m):
            per[:, j] = 0.0
            per[0, j], per[1, j], per[2, j], per[8, j], per[11, j] = 1.0, -clip, clip, 1.0, 0.5 * (low + high)
            for k in range(8):
                per32[k, j] = per[rows32[k], j]
            per32[8, j] = 0.0
        # e^x as (e^r, 2^k) in pairs of arrays, the powers of two read through a float view
        e_r = np.empty((5, m))
        bits = np.empty((5, m), dtype=np.int64)
        pow2 = bits.view(np.float64)
        sigma = np.empty(m, dtype=log_scale.dtype)
        er0, b0 = e_r[0], bits[0]
        for j in range(n):
            er0[j], b0[j] = exp64(float(log_scale[j]))
        p0 = pow2[0]
        for j in range(n):
            sigma[j] = er0[j] * p0[j]
        out_of_reach = 0
        for j in range(n):
            s = float(sigma[j])
            inv = 1.0 / s
            al = min(max((low - loc[j]) * inv, -clip), clip)
            be = min(max((high - loc[j]) * inv, -clip), clip)
            flipped = al > 0.0
            out_of_reach += 0 if (be if not flipped else -al) > -reach else 1
            per[0, j] = s
            per[1, j] = al
            per[2, j] = be
            per[3, j] = 1.0 if flipped else 0.0
            per[9, j] = 1.0 if abs(al) <= clip else 0.0  # bounds clipped at +-50 pass no gradient
            per[10, j] = 1.0 if abs(be) <= clip else 0.0
            per[11, j] = float(loc[j])
            # phi(alpha) / phi(t) = e^(t^2/2 - c) e^(c - alpha^2/2) with c the smaller of
            # alpha^2/2 and beta^2/2: one exponential per draw, a factor <= 1 per structure
            per[12, j] = 0.5 * min(al * al, be * be)
        if out_of_reach:
            return 0.0, False
        al_row, be_row, c_row = per[1], per[2], per[12]
        er1, er2, b1, b2 = e_r[1], e_r[2], bits[1], bits[2]
        for j in range(n):
            er1[j], b1[j] = exp64(-0.5 * al_row[j] * al_row[j])
            er2[j], b2[j] = exp64(-0.5 * be_row[j] * be_row[j])
        er3, er4, b3, b4 = e_r[3], e_r[4], bits[3], bits[4]
        for j in range(n):
            er3[j], b3[j] = exp64(c_row[j] - 0.5 * al_row[j] * al_row[j])
            er4[j], b4[j] = exp64(c_row[j] - 0.5 * be_row[j] * be_row[j])
        z_row = per[8]
        for j in range(n):
            al, be, flipped = al_row[j], be_row[j], per[3, j] > 0.0
            phi_al, phi_be = er1[j] * pow2[1, j], er2[j] * pow2[2, j]  # e^(-alpha^2/2), e^(-beta^2/2)
            a = -be if flipped else al
            b = -al if flipped else be
            # a clipped bound (+-50) has e^(-c^2/2) = 0: Phi exactly 0 or 1, phi 0
            pa = 0.5 * (phi_be if flipped else phi_al) * erfcx(-a * inv_sqrt_2)
            tail_b = 0.5 * (phi_al if flipped else phi_be) * erfcx(abs(b) * inv_sqrt_2)
            z = (tail_b if b <= 0.0 else 1.0 - tail_b) - pa
            z_row[j] = z
            per[4, j] = phi_al * inv_sqrt_2pi / z
            per[5, j] = phi_be * inv_sqrt_2pi / z
            per[7, j] = pa
            per[13, j] = er3[j] * pow2[3, j] * per[9, j]
            per[14, j] = er4[j] * pow2[4, j] * per[10, j]
        # log z = e log 2 + log f, z = f 2^e with f in [1/sqrt 2, sqrt 2): 2 atanh((f - 1) / (f + 1))
        z_bits, fraction, exponent = z_row.view(np.int64), b0, er0
        for j in range(n):
            zb = z_bits[j]
            fraction[j] = (zb & mantissa64) | exponent_0_64
            exponent[j] = float((zb >> s52) - i1023)
        f_row, kl = fraction.view(np.float64), er1
        log_width = math.log(high - low)
        for j in range(n):
            f, e = f_row[j], exponent[j]
            big = f > sqrt2
            f = 0.5 * f if big else f
            e = e + 1.0 if big else e
            q = (f - 1.0) / (f + 1.0)
            q2 = q * q
            log_f = 2.0 * q * (1.0 + q2 * (1.0 / 3 + q2 * (1.0 / 5 + q2 * (1.0 / 7 + q2 * (1.0 / 9 + q2 * (
                1.0 / 11 + q2 * (1.0 / 13 + q2 * (1.0 / 15 + q2 * (1.0 / 17 + q2 * (1.0 / 19 + q2 / 21))))))))))
            log_z = e * ln2_hi + (log_f + e * ln2_lo)
            g = al_row[j] * per[4, j] - be_row[j] * per[5, j]
            per[6, j] = g
            kl[j] = (log_width - log_z - float(log_scale[j]) - half_log_2pi_e - 0.5 * g) * weight[j]
        kl_sum = 0.0
        for j in range(n):
            kl_sum += kl[j]
        for k in range(8):
            src, dst = per[rows32[k]], per32[k]
            for j in range(n):
                dst[j] = src[j]
        dst = per32[8]
        for j in range(n):
            dst[j] = kept[j]
        return kl_sum, True

    @numba.njit(cache=True, error_model="numpy")
    def draw(u, key, kept, low, high, tiny, refine, per, theta, d_loc, d_log_scale, first,
             last):  # pragma: no cover - compiled
        """Rows ``first:last`` of ``theta`` and of the derivatives of ``x`` (float64 inside)."""
        n = kept.shape[0]
        # the draws, row by row (one example's structures at a time), in passes that compile
        # to vector instructions: the uniforms (when drawn here), Acklam's central rational
        # function for every draw, then the tails (about 5% of draws: a log and a square root
        # each) and the Halley step of float64, then x, the clip, theta and the derivatives
        # of x with respect to loc and log sigma, what the backward needs of each draw
        s, al, be, flip = per[0], per[1], per[2], per[3]
        pa, z, mu, c_ref, f_a, f_b = per[7], per[8], per[11], per[12], per[13], per[14]
        row, prob, drawn, e_t = np.empty(n), np.empty(n), np.empty(n), np.empty(n)
        tail = np.empty(n, dtype=np.int64)
        passes = np.empty(n, dtype=np.bool_)
        # float64: the library exp, exact to rounding; float32: the vectorised exp, exact
        # far below float32's rounding, over the range it is accurate on
        exact_exp = refine or low < -80.0 or high > 80.0
        for i in range(first, last):
            row_uniforms(u, key, i, n, drawn)
            ui = drawn
            for j in range(n):
                p = max(pa[j] + ui[j] * z[j], tiny)
                prob[j] = p
                q = p - 0.5
                r = q * q
                row[j] = ((((((a0 * r + a1) * r + a2) * r + a3) * r + a4) * r + a5) * q
                          / (((((b0 * r + b1) * r + b2) * r + b3) * r + b4) * r + 1.0))
            # the draws that need more than the central rational, listed without a branch
            # (a branch around the call lets the compiler evaluate it for every draw)
            k = 0
            for j in range(n):
                p = prob[j]
                tail[k] = j
                k += 1 if (p < p_low) | (p > 1.0 - p_low) | refine else 0
            for j in tail[:k]:
                row[j] = ndtri(prob[j], refine)
            # d t / d alpha = (1 - v) phi(alpha) / phi(t), d t / d beta = v phi(beta) / phi(t)
            # (v = u, or 1 - u where the interval was turned), through e^(t^2/2 - c) with its
            # exponent cut to [-80, 80]: below, the term is negligible; above is out of reach
            # (a uniform of at least 2^-54 puts t within sqrt(2 * 37) of the bound nearer
            # zero, so the exponent stays under 40)
            for j in range(n):
                t = row[j] * (1.0 - 2.0 * flip[j])
                x = mu[j] + s[j] * t
                c = min(max(x, low), high)
                e_t[j] = min(max(0.5 * t * t - c_ref[j], -80.0), 80.0)
                row[j] = t
                prob[j] = c
                passes[j] = c == x  # draws clipped to [A, B] (rounding) pass no gradient
            exp_row(e_t, refine)
            dli, dsi = d_loc[i], d_log_scale[i]
            for j in range(n):
                t = row[j]
                v = ui[j] + flip[j] * (1.0 - 2.0 * ui[j])
                da = (1.0 - v) * e_t[j] * f_a[j]
                db = v * e_t[j] * f_b[j]
                dli[j] = 1.0 - da - db if passes[j] else 0.0
                dsi[j] = (t - al[j] * da - be[j] * db) * s[j] if passes[j] else 0.0
            exp_row(prob, exact_exp)
            ci = theta[i]
            for j in range(n):
                ci[j] = prob[j] * kept[j]

    @numba.njit(cache=True, error_model="numpy")
    def backward(grad_theta, theta, d_loc, d_log_scale, per, weight, grad_kl_sum, has_grad_theta,
                 grad_loc, grad_log_scale, sums):  # pragma: no cover - compiled
        n = grad_loc.shape[0]
        sums[:] = 0.0  # per structure: sum over the batch of g dx/dloc and g dx/dlog sigma
        if has_grad_theta:  # vectorised over the structures of one example at a time
            s_l, s_s = sums[0], sums[1]
            for i in range(theta.shape[0]):
                gi, thi, dli, dsi = grad_theta[i], theta[i], d_loc[i], d_log_scale[i]
                for j in range(n):
                    gx = float(gi[j]) * thi[j]  # d theta / d x = theta
                    s_l[j] += gx * dli[j]
                    s_s[j] += gx * dsi[j]
        for j in range(n):
            s, al, be = per[0, j], per[1, j], per[2, j]
            ra, rb, g = per[4, j], per[5, j], per[6, j]
            gk = grad_kl_sum * weight[j]
            dkl_da = 0.5 * ra * (1.0 + al * al - g) * per[9, j]
            dkl_db = -0.5 * rb * (1.0 + be * be - g) * per[10, j]
            grad_loc[j] = sums[0, j] - gk * (dkl_da + dkl_db) / s
            # d / d log sigma = sigma d / d sigma
            grad_log_scale[j] = sums[1, j] - gk * (1.0 + al * dkl_da + be * dkl_db)

    return (prepare, draw, draw32), backward, exp_vector, uniforms


@dataclasses.dataclass(frozen=True)
class CounterUniforms:
    """The uniforms of a draw, generated inside the kernel: ``rows`` rows of SplitMix64 (Steele,
    Lea and Flood, *Fast splittable pseudorandom number generators*, 2014) from ``key``.

    Element ``(i, j)`` of a draw over ``n`` structures is the top 53 bits of the
    ``(i n + j)``-th output of the generator seeded with ``key``, as a float in
    ``(2^-54, 1 - 2^-54)``; :func:`counter_uniforms` materialises them. A training step takes
    ``key`` from torch's generator (:func:`draw_key`), so a seed still fixes every draw, and
    the kernel draws its uniforms where it uses them instead of reading ``rows x n`` numbers
    from torch's Mersenne Twister (a third of the step's noise cost on a small network).
    """

    key: int
    rows: int

    def __post_init__(self) -> None:
        if not 0 <= self.key < 1 << 63:
            raise ValueError(f"key must be in [0, 2^63), got {self.key}")
        if self.rows < 1:
            raise ValueError(f"rows must be >= 1, got {self.rows}")


def draw_key(generator: torch.Generator | None = None) -> int:
    """A key for :class:`CounterUniforms`: one draw from torch's (default) CPU generator."""
    return int(torch.randint(0, (1 << 63) - 1, (), generator=generator))


def counter_uniforms(uniforms: CounterUniforms, n: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """The ``[rows, n]`` uniforms the kernel draws for ``uniforms`` (for tests and the torch
    kernels, which then give the same values)."""
    kernel = _load()
    if kernel is None:
        raise RuntimeError("the counter-based uniforms need Numba (the 'fast' extra)")
    out = np.empty((uniforms.rows, n))
    kernel[3](uniforms.key, 0, out)
    return torch.from_numpy(out).to(dtype)


class _CompiledNetworkNoise(torch.autograd.Function):
    """The node of :func:`network_theta_and_kl`: values computed before, gradients compiled.

    Inputs are the tensors holding the layers' ``loc`` and ``log_scale`` (the network's one
    shared storage of each, see :mod:`pyro_prune.models.noise`, or each layer's own
    Parameters), outputs each layer's ``theta`` (a slice of the one array the kernel wrote)
    and the weighted KL sum. Taking the storages and giving per-layer tensors directly keeps
    the concatenation of the parameters and the split of ``theta`` out of the graph: the
    backward is this node and the storages' gradient accumulators (two for a network sharing
    its storage), the gradients of all layers written by one compiled call.
    """

    @staticmethod
    def forward(ctx: Any, drawn: dict[str, Any], *params: Tensor) -> tuple[Tensor, ...]:
        ctx.drawn = drawn
        sizes = drawn["sizes"]
        theta = torch.from_numpy(drawn["theta"])[:, :drawn["weight"].shape[0]]  # beyond: padding
        if drawn["one_draw"]:
            theta = theta[0]
        thetas = theta.split(sizes, dim=-1) if len(sizes) > 1 else (theta,)
        return (*thetas, torch.tensor(drawn["kl_sum"], dtype=params[0].dtype))

    @staticmethod
    def backward(ctx: Any, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
        d = ctx.drawn
        backward = _kernels[1]  # type: ignore[index]
        theta, sizes = d["theta"], d["sizes"]
        rows, n = theta.shape[0], d["weight"].shape[0]
        grad_thetas, grad_kl = grads[:-1], grads[-1]
        has_grad_theta = any(g is not None for g in grad_thetas)
        g = theta
        if has_grad_theta:  # the layers' gradients side by side, [rows, n]
            g = torch.cat([torch.zeros(rows, k, dtype=torch.from_numpy(theta).dtype) if gt is None
                           else gt.reshape(rows, k) for gt, k in zip(grad_thetas, sizes)], dim=-1).numpy()
        out = np.empty((2, n), dtype=theta.dtype)  # d loss / d loc, d loss / d log sigma
        backward(g, theta, d["d_loc"], d["d_log_scale"], d["per"], d["weight"],
                 0.0 if grad_kl is None else float(grad_kl), has_grad_theta, out[0], out[1],
                 np.empty((2, n)))
        grad = torch.from_numpy(out)
        inputs = d["input_sizes"]
        if len(inputs) == 1:  # the network's shared storage
            return None, grad[0], grad[1]
        return (None, *grad[0].split(inputs), *grad[1].split(inputs))


#: the vector width the draws' rows are padded to (16 float32 lanes of AVX-512)
_PAD = 16


def network_theta_and_kl(
    locs: list[Tensor], log_scales: list[Tensor], low: float, high: float,
    u: Tensor | CounterUniforms, kept: Tensor, weight: Tensor, sizes: list[int] | None = None,
) -> tuple[list[Tensor], Tensor] | None:
    """The compiled counterpart of :func:`pyro_prune.models.noise_kernels.network_theta_and_kl`.

    Same arguments and values; ``u`` may also be :class:`CounterUniforms` (the kernel draws
    them). Returns ``None`` when a structure is out of the kernel's reach. The caller checks
    :func:`usable` first. Float32 parameters with bounds inside ``[-80, 80]`` take the kernel
    with float32 per-draw maths (:func:`draw32`), others the float64 one.
    """
    prepare, draw, draw32 = _kernels[0]  # type: ignore[index]
    dtype = locs[0].dtype
    single = dtype == torch.float32
    np_dtype = np.float32 if single else np.float64
    if len(locs) == 1:  # values only: the node takes the storages themselves
        loc, log_scale = locs[0].detach(), log_scales[0].detach()
    else:
        with torch.no_grad():
            loc, log_scale = torch.cat(locs), torch.cat(log_scales)
    n = loc.shape[0]
    m = -(-n // _PAD) * _PAD
    if isinstance(u, CounterUniforms):
        one_draw, key, rows = False, u.key, u.rows
        u2 = np.empty((0, n), dtype=np_dtype)
    else:
        one_draw, key = u.dim() == 1, -1
        u2 = u.reshape(1, -1).numpy() if one_draw else u.contiguous().numpy()
        rows = u2.shape[0]
    theta = np.empty((rows, m), dtype=np_dtype)
    d_loc = np.empty((rows, m), dtype=np_dtype)
    d_log_scale = np.empty((rows, m), dtype=np_dtype)
    per = np.empty((15, m))
    per32 = np.empty((9, m), dtype=np.float32)
    w, multiplier = weight.numpy(), kept.numpy()
    kl_sum, ok = prepare(loc.numpy(), log_scale.numpy(), w, multiplier, float(low),
                         float(high), _REACH[dtype], per, per32)
    if not ok:
        return None
    if single and -80.0 <= low and high <= 80.0:
        draw32(u2, key, per, per32, float(low), float(high), _TINY[dtype], theta, d_loc, d_log_scale,
               0, rows)
    else:
        draw(u2, key, multiplier, float(low), float(high), _TINY[dtype], not single, per, theta, d_loc,
             d_log_scale, 0, rows)
    drawn = {"theta": theta, "d_loc": d_loc, "d_log_scale": d_log_scale, "per": per, "weight": w,
             "kl_sum": kl_sum, "one_draw": one_draw, "input_sizes": [q.shape[-1] for q in locs]}
    drawn["sizes"] = drawn["input_sizes"] if sizes is None else sizes
    *thetas, kl = _CompiledNetworkNoise.apply(drawn, *locs, *log_scales)
    return thetas, kl


#: draws per call up to which the compiled kernel is used. Its loops run on one thread but in
#: vector instructions; measured on a 2-core CPU (AVX-512), the 128 x 700 float32 draws of a
#: step of the 7x100 MLP take about 0.33 ms forward (uniforms included; 0.7 ms with float64
#: per-draw maths) and 0.05 ms backward compiled against about 4 ms in torch's kernel
#: (``benchmarks/training_speed.py`` has the whole step). Beyond, a machine with many cores may
#: be better served by torch's multi-threaded operations.
MAX_DRAWS = 1 << 20


def usable_counter(dtype: torch.dtype, device: torch.device, draws: int) -> bool:
    """:func:`usable` for :class:`CounterUniforms` given what it checks of the tensors: their
    (common) dtype and device and the number of draws (a training step's check, without
    walking the tensors)."""
    return device.type == "cpu" and dtype in _REACH and draws <= MAX_DRAWS and available()


def usable(locs: list[Tensor], u: Tensor | CounterUniforms, kept: Tensor, weight: Tensor) -> bool:
    """Whether the compiled path takes these tensors: CPU, float32/64, one dtype, and at most
    :data:`MAX_DRAWS` draws."""
    if not available():
        return False
    dtype = locs[0].dtype
    if isinstance(u, CounterUniforms):
        if u.rows * sum(q.shape[-1] for q in locs) > MAX_DRAWS:
            return False
        tensors = (*locs, kept, weight)
    else:
        if u.dim() > 2 or u.numel() > MAX_DRAWS:
            return False
        tensors = (*locs, u, kept, weight)
    return dtype in _REACH and all(x.device.type == "cpu" and x.dtype == dtype for x in tensors)
