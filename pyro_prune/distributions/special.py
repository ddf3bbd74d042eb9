r"""Special functions of the truncated normal in log space, free of cancellation.

Numerics
--------
Written naively these formulas cancel catastrophically. With :math:`\sigma = e^{-20}` and
:math:`\mu = -30` one has :math:`\alpha \approx 5\cdot 10^9`, :math:`\log Z \approx -1.25
\cdot 10^{19}`, and the KL is a difference of two such numbers that equals about 45. All
kernels here are therefore written around a single primitive,

.. math::

    M(\mu, \sigma; L, U; r) = \log \int_L^U \mathcal N(x; \mu, \sigma^2)\,dx
        + \frac{(r-\mu)^2}{2\sigma^2}, \qquad L \le r \le U,

the log-mass of an interval relative to the (unnormalised) density at a reference point
:math:`r`. Mirror the interval so that its end nearer to :math:`\mu` is
:math:`n = \max(l, -u)` in standard units (:math:`l = (L-\mu)/\sigma`,
:math:`u = (U-\mu)/\sigma`, :math:`w = u - l`, :math:`f = n + w`). Deep in a tail
(:math:`n \ge T`) it is evaluated with the Mills ratio :math:`R(x) = \Phi(-x)/\phi(x)`,

.. math::

    M = \log\bigl(R(n) - e^{-w(n+f)/2} R(f)\bigr) - \tfrac12\log 2\pi + \tfrac12 d\,(d + 2n),

with :math:`d` the distance of :math:`r` from the near end (computed from :math:`r - L` or
:math:`U - r` directly), which contains no difference of large numbers; otherwise as
:math:`\log\tfrac12(\mathrm{erfc}(n/\sqrt2) - \mathrm{erfc}(f/\sqrt2)) + c^2/2`,
:math:`c = (r-\mu)/\sigma`, where the erfc difference has no cancellation (for an interval
containing :math:`\mu` it is a sum of two terms of one sign). Expressing each quantity as a
difference of :math:`M` values taken at one well-chosen reference point makes the large
quadratic terms cancel *analytically*; :func:`log_diff_ndtr` is :math:`M - c^2/2`. The KL and
the entropy use the Mills-ratio function :math:`h(x) = xR(x) - 1` (``erfcx`` below
:math:`x = 30`, the series :math:`\log(xR(x)) = \sum_k g_k x^{-2k}` above), and the variance
switches to a cumulant expansion when the variance of :math:`\log\theta` is below ``1e-6``
(there :math:`\log E[\theta^2] - 2\log E[\theta]` is itself tiny and cannot be formed as a
difference).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction
from typing import Union

import torch
from torch.distributions.utils import broadcast_all

__all__ = [
    "LOG_HALF",
    "LOG_SQRT_2PI",
    "Standardised",
    "check_log_bounds",
    "log_diff_ndtr",
    "log_mass",
    "log_mass_std",
    "mills",
    "mills_h",
    "ndtri_exp",
    "standardise",
    "to_float64",
]

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_SQRT_HALF_PI = math.sqrt(0.5 * math.pi)
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
LOG_HALF = -math.log(2.0)
_LOG_2 = math.log(2.0)

#: Above this argument ``x R(x) - 1`` and the one-sided cumulants use the asymptotic series.
_SERIES_FROM = 30.0


def _log_mills_series_coefficients(n_terms: int) -> tuple[float, ...]:
    r"""Coefficients :math:`g_k` of :math:`\log(xR(x)) \sim \sum_{k\ge1} g_k x^{-2k}`.

    :math:`xR(x) \sim \sum_n (-1)^n (2n-1)!!\, x^{-2n}` (Abramowitz & Stegun 26.2.12); the
    logarithm of the series follows from :math:`n g_n = n c_n - \sum_{k<n} k g_k c_{n-k}`.
    """
    c = [Fraction(1)]
    double_factorial = 1
    for n in range(1, n_terms + 1):
        double_factorial *= 2 * n - 1
        c.append(Fraction((-1) ** n * double_factorial))
    g = [Fraction(0)]
    for n in range(1, n_terms + 1):
        g.append(c[n] - sum((k * g[k] * c[n - k] for k in range(1, n)), Fraction(0)) / n)
    return tuple(float(v) for v in g[1:])


_G = _log_mills_series_coefficients(8)


# --------------------------------------------------------------------------------------
# Scalar special functions
# --------------------------------------------------------------------------------------


def mills(x: torch.Tensor) -> torch.Tensor:
    r"""Mills ratio :math:`R(x) = \Phi(-x)/\phi(x)`, accurate for :math:`x \ge 0`."""
    return _SQRT_HALF_PI * torch.special.erfcx(x * _INV_SQRT2)


def log_mills_series(x: torch.Tensor, order: int) -> torch.Tensor:
    r"""``order``-th derivative of :math:`g(x) = \log(xR(x))` from the asymptotic series."""
    inv2 = x.reciprocal().square()
    out = torch.zeros_like(x)
    power = inv2
    for k, gk in enumerate(_G, start=1):
        rising = 1.0
        for j in range(order):
            rising *= -(2 * k + j)
        out = out + (gk * rising) * power
        power = power * inv2
    return out * x.reciprocal() ** order if order else out


def mills_h(x: torch.Tensor) -> torch.Tensor:
    r""":math:`h(x) = xR(x) - 1 \approx -1/x^2`, with full relative accuracy for :math:`x \ge 0`."""
    near = x < _SERIES_FROM
    x_direct = torch.where(near, x, torch.ones_like(x))
    x_series = torch.where(near, torch.full_like(x, _SERIES_FROM), x)
    direct = x_direct * mills(x_direct) - 1.0
    series = torch.expm1(log_mills_series(x_series, 0))
    return torch.where(near, direct, series)


def log_diff_ndtr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    r""":math:`\log(\Phi(b) - \Phi(a))` for :math:`a \le b`, accurate in both tails.

    An interval deep in the upper tail (:math:`a \ge T`, :math:`T` = 8 in float32, 20 in
    float64) uses the Mills-ratio form :math:`-a^2/2 - \tfrac12\log 2\pi + \log(R(a) -
    e^{-(b-a)(b+a)/2} R(b))`, which keeps :math:`\Phi(-a) - \Phi(-b)` free of cancellation
    however far out the interval is (the textbook ``log_ndtr(-a) + log1mexp(log_ndtr(-b) -
    log_ndtr(-a))`` loses narrow intervals to the rounding of two numbers of size
    :math:`a^2/2`, and the gradient of ``torch.special.log_ndtr`` overflows beyond
    :math:`|x| \approx 10^5`); the lower tail (:math:`b \le -T`) is mirrored; elsewhere
    :math:`\tfrac12(\mathrm{erfc}(n/\sqrt2) - \mathrm{erfc}(f/\sqrt2))` with the interval
    mirrored so that :math:`n = \max(a, -b)`, which never subtracts numbers of very different
    size from ones close to 1. Returns ``-inf`` where ``a == b``.

    Raises:
        ValueError: if some ``a > b``.
    """
    a, b = broadcast_all(a, b)
    if bool((a > b).any()):
        raise ValueError("log_diff_ndtr: need a <= b elementwise; got some a > b")
    zero = torch.zeros_like(a)
    ref = torch.minimum(torch.maximum(zero, a), b)
    return log_mass_std(a, b, b - a, ref - a, b - ref, ref) - 0.5 * ref.square()


def ndtri_exp(y: torch.Tensor) -> torch.Tensor:
    r"""Inverse of ``log_ndtr``: the :math:`x` with :math:`\log\Phi(x) = y`, for :math:`y \le 0`.

    ``ndtri(exp(y))`` where that is accurate, ``-ndtri(-expm1(y))`` for :math:`y > \log\frac12`,
    and for :math:`y` below the underflow of ``exp`` the asymptotic start
    :math:`x_0 = -\sqrt{-2y - \log(-2y) - \log 2\pi}` refined by Newton steps on
    ``log_ndtr`` (concave, so the iteration is monotone). Not differentiable (used for the
    detached value of samples).
    """
    finfo = torch.finfo(y.dtype)
    y = torch.clamp(y, max=0.0)
    small_cut = math.log(finfo.tiny) + 10.0  # exp(y) stays a normal number above this
    upper = y > LOG_HALF
    deep = y < small_cut
    out = torch.special.ndtri(torch.exp(torch.where(upper | deep, -1.0, y)))
    if bool(upper.any()):
        out = torch.where(upper, -torch.special.ndtri(-torch.expm1(torch.where(upper, y, -0.1))), out)
    if bool(deep.any()):
        y_deep = torch.where(deep, y, small_cut - 1.0)
        two_y = -2.0 * y_deep
        x = -torch.sqrt(two_y - torch.log(two_y) - math.log(2.0 * math.pi))
        for _ in range(4):
            x = x - (torch.special.log_ndtr(x) - y_deep) * mills(-x)
        out = torch.where(deep, x, out)
    return out


# --------------------------------------------------------------------------------------
# Truncated-normal kernels (standardised and in log-theta space)
# --------------------------------------------------------------------------------------


#: Per dtype: (T, K). Intervals whose nearer end lies at least T standard deviations from the
#: mean use the Mills-ratio form with a K-term continued fraction (relative error below 1e-7
#: in float32 at T = 8, K = 4, and below 1e-16 in float64 at T = 20, K = 8); nearer ones use
#: erfc differences, whose logarithm (about -n^2/2) costs at most T^2/2 ulps against the
#: quadratic term: ~2e-6 absolute in float32, ~2e-14 in float64.
_DEEP_TAIL = {torch.float32: (8.0, 4), torch.float64: (20.0, 8)}
#: Per dtype: (largest erfc argument, most negative exp argument). Results stay normal
#: numbers, and so does exp(.) * R(f) for f < 1e10, avoiding the very slow subnormal and
#: underflow paths of the vectorised kernels; the clamps change results by less than 1e-20
#: relative (float32) / 1e-200 (float64).
_NORMAL_RANGE = {torch.float32: (9.0, -60.0), torch.float64: (26.0, -600.0)}


def mills_cf(x: torch.Tensor, terms: int) -> torch.Tensor:
    r"""Laplace's continued fraction :math:`R(x) = 1/(x + 1/(x + 2/(x + 3/(x + \dots))))`, :math:`x > 0`.

    Evaluated bottom-up as :math:`u_K = 1/x`, :math:`u_{k} = 1/(x + (k+1) u_{k+1})`,
    :math:`R = 1/(x + u_1)`: two elementwise passes per term.
    """
    u = x.reciprocal()
    for k in range(terms - 1, 0, -1):
        u = torch.add(x, u, alpha=k + 1).reciprocal_()
    return torch.add(x, u).reciprocal_()


_Lazy = Union[torch.Tensor, Callable[[], torch.Tensor]]


def _force(value: _Lazy) -> torch.Tensor:
    return value() if callable(value) else value


def log_mass_std(
    lo: torch.Tensor,
    hi: torch.Tensor,
    width: torch.Tensor,
    d_lo: _Lazy,
    d_hi: _Lazy,
    ref: _Lazy,
) -> torch.Tensor:
    r""":math:`\log(\Phi(hi) - \Phi(lo)) + ref^2/2` for :math:`lo \le ref \le hi`.

    ``width = hi - lo``, ``d_lo = ref - lo`` and ``d_hi = hi - ref`` are passed separately so
    that callers can form them without cancellation; the ``ref`` arguments may be zero-argument
    callables, evaluated only if the branch that needs them occurs. ``d_lo`` and ``d_hi`` must
    be fresh temporaries: they may be overwritten. With the interval mirrored
    so that its nearer end :math:`n = \max(lo, -hi)` is the one closer to 0 (:math:`f = n + w`):

    * :math:`n < T` (central or shallow): :math:`\log\tfrac12(\mathrm{erfc}(n/\sqrt2) -
      \mathrm{erfc}(f/\sqrt2)) + ref^2/2`;
    * :math:`n \ge T` (deep tail): :math:`\log(R(n) - e^{-w(n+f)/2}R(f)) - \tfrac12\log 2\pi
      + \tfrac12 d(d + 2n)` with :math:`d` the distance of ``ref`` from the near end and
      :math:`R` from :func:`mills_cf`.

    Only elementwise arithmetic, ``erfc``, ``exp`` and ``log`` (no ``erfcx``, no boolean
    indexing): this is the hot path of the dF operators. The parameter-only parts broadcast
    on the shape of ``lo``/``hi``, and a branch that no element takes is skipped.
    """
    cut, terms = _DEEP_TAIL.get(lo.dtype, _DEEP_TAIL[torch.float64])
    erfc_max, exp_min = _NORMAL_RANGE.get(lo.dtype, _NORMAL_RANGE[torch.float64])
    # (in-place operations below act only on fresh temporaries that autograd does not save)
    near = torch.maximum(lo, -hi)
    near_min, near_max = (float(v) for v in torch.aminmax(near.detach())) if near.numel() else (0.0, 0.0)
    shallow = deep_val = None
    both = near_min < cut <= near_max
    if both:
        # exact 0/1 masks; each branch sees width + 1 where the other branch is selected, so
        # that it stays finite there even for an empty interval (whose own branch gives -inf)
        is_shallow = _step(torch.rsub(near.detach(), cut))
        is_deep = torch.rsub(is_shallow, 1.0)
    if near_min < cut:
        # central / shallow branch, on arguments clamped so that it stays finite everywhere
        width_s = width + is_deep if both else width
        arg_n = torch.mul(near, _INV_SQRT2).clamp_(-erfc_max, cut * _INV_SQRT2)
        arg_f = torch.add(near, width_s).mul_(_INV_SQRT2).clamp_(max=erfc_max)
        log_z = torch.log(torch.erfc(arg_f).neg_().add_(torch.erfc(arg_n))).sub_(_LOG_2)
        c = _force(ref)
        shallow = _addcmul(log_z, c, c, 0.5)
    if near_max >= cut:
        # (width + 64 where the shallow branch is selected keeps exp(.) below 1e-200 there)
        width_d = torch.add(width, is_shallow, alpha=64.0) if both else width
        n_d = near.clamp(min=cut)
        mills_n = mills_cf(n_d, terms)
        # the far end has relative weight E R(f) / R(n) <= E = exp(-w (n + f) / 2) <= exp(-w T);
        # it matters for narrow intervals only, so it is skipped when that bound is negligible
        negligible = -math.log(1e-3 * torch.finfo(lo.dtype).eps)
        if float(width_d.detach().min()) * cut < negligible:
            expo = torch.add(width_d, n_d, alpha=2.0).mul_(width_d).mul_(-0.5).clamp_(min=exp_min).exp_()
            mills_n = torch.addcmul(mills_n, expo, mills_cf(n_d + width_d, terms), value=-1.0)
        log_d = torch.log(mills_n)
        # distance of ref from the nearer end: d_hi in the lower tail (hi < 0), else d_lo;
        # selected with an exact 0/1 float mask (boolean kernels are several times slower)
        lower = _step(torch.neg(hi.detach()))
        d = _addcmul(_mul(_force(d_lo), 1.0 - lower), _force(d_hi), lower)
        deep_val = _addcmul(log_d.sub_(LOG_SQRT_2PI), d, torch.add(d, n_d, alpha=2.0), 0.5)
    if deep_val is None:
        assert shallow is not None
        return shallow
    if shallow is None:
        return deep_val
    return _addcmul(_mul(shallow, is_shallow), deep_val, is_deep)


def _addcmul(t: torch.Tensor, a: torch.Tensor, b: torch.Tensor, value: float = 1.0) -> torch.Tensor:
    """``t + value * a * b``, in place on the fresh temporary ``t`` when shapes allow."""
    if t.shape == torch.broadcast_shapes(t.shape, a.shape, b.shape):
        return t.addcmul_(a, b, value=value)
    return torch.addcmul(t, a, b, value=value)


def _mul(t: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``t * other``, in place on the fresh temporary ``t`` when shapes allow."""
    if t.shape == torch.broadcast_shapes(t.shape, other.shape):
        return t.mul_(other)
    return t * other


def _step(x: torch.Tensor) -> torch.Tensor:
    """Exact 0/1 float mask of ``x > 0``, in place on the fresh tensor ``x`` (float kernels only)."""
    return x.clamp_(0.0, 1.0).ceil_()


def log_mass(
    loc: torch.Tensor,
    scale: torch.Tensor,
    low: torch.Tensor,
    high: torch.Tensor,
    ref: torch.Tensor,
    shift: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    r""":math:`M = \log\int_{low}^{high} \mathcal N(x; m, scale^2)\,dx + (ref-m)^2/(2\,scale^2)`.

    Here :math:`m = loc + shift \cdot scale`; passing the shift in standard units (rather than
    forming :math:`loc + k\sigma^2`) keeps it exact when it is far below the resolution of
    ``loc``. Requires ``low <= ref <= high``; see the module docstring for why this is the
    primitive.
    """
    inv = scale.reciprocal()
    lo = (low - loc) * inv
    hi = (high - loc) * inv
    if not (isinstance(shift, float) and shift == 0.0):
        lo, hi = lo - shift, hi - shift
    return log_mass_std(
        lo,
        hi,
        (high - low) * inv,
        lambda: (ref - low) * inv,
        lambda: (high - ref) * inv,
        lambda: (ref - loc) * inv - shift,
    )


class Standardised:
    r"""Truncated standard normal on :math:`[lo, hi]` in *canonical orientation*.

    An interval in the lower tail (:math:`hi < 0`) is mirrored to :math:`[-hi, -lo]` so that
    every tail case is an upper tail :math:`0 < a < b`; ``sign`` is ``-1`` for mirrored
    entries. Provides :math:`r_a = \phi(a)/Z`, :math:`r_b = \phi(b)/Z` and the Mills-ratio
    pieces :math:`D = Z/\phi(a) = R(a) - E\,R(b)`, :math:`E = \phi(b)/\phi(a)`, all without
    cancellation.
    """

    def __init__(self, lo: torch.Tensor, hi: torch.Tensor, width: torch.Tensor) -> None:
        lower = hi < 0
        self.tail = (lo > 0) | lower
        self.sign = torch.where(lower, -torch.ones_like(lo), torch.ones_like(lo))
        a = torch.where(lower, -hi, lo)
        b = torch.where(lower, -lo, hi)
        self.a, self.b, self.width = a, b, width
        one = torch.ones_like(a)
        # tail pieces, on sanitised arguments so that unused branches stay finite
        ta = torch.where(self.tail, a, one)
        tw = torch.where(self.tail, width, one)
        tb = ta + tw
        self.ta, self.tb, self.tw = ta, tb, tw
        self.expo = torch.exp(-0.5 * tw * (tw + 2.0 * ta))
        self.mills_b = mills(tb)
        self.d = mills(ta) - self.expo * self.mills_b
        # central pieces
        ca = torch.where(self.tail, -one, a)
        cb = torch.where(self.tail, one, b)
        self.ca, self.cb = ca, cb
        self.log_z_central = torch.log(
            0.5 * (torch.erf(cb * _INV_SQRT2) - torch.erf(ca * _INV_SQRT2))
        )
        ra_c = torch.exp(-0.5 * ca.square() - LOG_SQRT_2PI - self.log_z_central)
        rb_c = torch.exp(-0.5 * cb.square() - LOG_SQRT_2PI - self.log_z_central)
        self.r_a = torch.where(self.tail, self.d.reciprocal(), ra_c)
        self.r_b = torch.where(self.tail, self.expo / self.d, rb_c)

    def entropy(self) -> torch.Tensor:
        r"""Entropy of the standardised truncated normal (mirror invariant).

        Central: :math:`\log(\sqrt{2\pi e} Z) + (a r_a - b r_b)/2`. Tail:
        :math:`\tfrac12 + \log D - N/(2D)` with :math:`N = a h(a) + E w(w+2a)/b - E a^2 h(b)/b`,
        :math:`h(x) = xR(x)-1`, which is the same expression with the :math:`a^2/2` terms
        cancelled by hand.
        """
        central = (
            LOG_SQRT_2PI
            + 0.5
            + self.log_z_central
            + 0.5 * (self.ca * self.r_a - self.cb * self.r_b)
        )
        ta, tb, tw, e = self.ta, self.tb, self.tw, self.expo
        n = ta * mills_h(ta) + e * tw * (tw + 2.0 * ta) / tb - e * ta.square() * mills_h(tb) / tb
        tail = 0.5 + torch.log(self.d) - 0.5 * n / self.d
        return torch.where(self.tail, tail, central)

    def mean_offset(self) -> torch.Tensor:
        r"""Tail: :math:`E[t] - a = (-h(a) + E(aR(b) - 1))/D` (canonical); central: :math:`E[t]`."""
        ta, tb, tw, e = self.ta, self.tb, self.tw, self.expo
        a_rb_m1 = (-tw + ta * mills_h(tb)) / tb  # a R(b) - 1 = -w/b + a h(b)/b
        tail = (-mills_h(ta) + e * a_rb_m1) / self.d
        return torch.where(self.tail, tail, self.r_a - self.r_b)

    def cumulants(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        r"""Cumulants :math:`\kappa_2, \kappa_3, \kappa_4` of the standardised truncated normal.

        From :math:`m_k = He_{k-1}(a) r_a - He_{k-1}(b) r_b` (:math:`\kappa_2 = 1 + m_2 - m_1^2`
        etc.), except deep in a one-sided tail (:math:`a \ge 30`, :math:`E` below 1e-300)
        where :math:`\kappa_n = (n-1)!/a^n + (-1)^n g^{(n)}(a)` with the series of
        :math:`g = \log(xR(x))`. The sign of :math:`\kappa_3` follows the orientation.
        """
        a = torch.where(self.tail, self.ta, self.ca)
        b = torch.where(self.tail, self.tb, self.cb)
        ra, rb = self.r_a, self.r_b
        m1 = ra - rb
        m2 = a * ra - b * rb
        m3 = (a.square() - 1.0) * ra - (b.square() - 1.0) * rb
        m4 = (a**3 - 3.0 * a) * ra - (b**3 - 3.0 * b) * rb
        k2 = 1.0 + m2 - m1.square()
        k3 = m3 - 3.0 * m1 * m2 + 2.0 * m1**3
        k4 = m4 - 4.0 * m1 * m3 - 3.0 * m2.square() + 12.0 * m1.square() * m2 - 6.0 * m1**4
        deep = self.tail & (self.ta >= _SERIES_FROM) & (0.5 * self.tw * (self.tw + 2 * self.ta) > 700)
        xs = torch.where(deep, self.ta, torch.full_like(a, _SERIES_FROM))
        inv = xs.reciprocal()
        s2 = inv.square() + log_mills_series(xs, 2)
        s3 = 2.0 * inv**3 - log_mills_series(xs, 3)
        s4 = 6.0 * inv**4 + log_mills_series(xs, 4)
        k2 = torch.where(deep, s2, k2)
        k3 = torch.where(deep, s3, k3) * self.sign
        k4 = torch.where(deep, s4, k4)
        return k2, k3, k4


def standardise(loc, scale, low, high) -> Standardised:
    inv = scale.reciprocal()
    return Standardised((low - loc) * inv, (high - loc) * inv, (high - low) * inv)


def check_log_bounds(log_low: torch.Tensor, log_high: torch.Tensor) -> None:
    if not bool(torch.isfinite(log_low).all()):
        raise ValueError("log_low must be finite")
    if not bool(torch.isfinite(log_high).all()):
        raise ValueError("log_high must be finite")
    if not bool((log_low < log_high).all()):
        raise ValueError("log_low must be smaller than log_high")


def to_float64(*ts: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(t.to(torch.float64) for t in ts)
