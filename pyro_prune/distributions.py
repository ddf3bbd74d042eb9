r"""Truncated log-normal and log-uniform distributions of multiplicative noise.

A structure (neuron, conv channel) is multiplied by noise :math:`\theta > 0`. Following
Neklyudov et al. (2017), *Structured Bayesian Pruning via Log-Normal Multiplicative Noise*
(NeurIPS), everything lives in log space, :math:`x = \log\theta \in [A, B]` with
:math:`A = \log a` and :math:`B = \log b` (defaults ``log_low=-20``, ``log_high=0``):

* prior :math:`p(\theta) = \mathrm{LogU}_{[A,B]}`: :math:`x \sim \mathcal U(A, B)`;
* posterior :math:`q(\theta) = \mathrm{LogN}_{[A,B]}(\mu, \sigma^2)`: :math:`x` is
  :math:`\mathcal N(\mu, \sigma^2)` truncated to :math:`[A, B]`.

With :math:`\alpha = (A-\mu)/\sigma`, :math:`\beta = (B-\mu)/\sigma` and
:math:`Z = \Phi(\beta) - \Phi(\alpha)` the closed forms are

.. math::

    \mathrm{KL}(q\,\|\,p) &= \log(B-A) - \log Z - \log\sigma - \tfrac12\log(2\pi e)
        - \frac{\alpha\phi(\alpha) - \beta\phi(\beta)}{2Z},\\
    \mathbb E[\theta^k] &= e^{k\mu + k^2\sigma^2/2}\,
        \frac{\Phi(\beta - k\sigma) - \Phi(\alpha - k\sigma)}{Z}.

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

The distribution methods compute in float64 internally and cast back to the parameters'
dtype, so float32 parameters get float64-quality results (the training hot path evaluates
these on a few thousand structures, where the cost is negligible). Everything is finite and
NaN-free, values and gradients, for ``loc`` in ``[-30, 10]`` and ``log(scale)`` in
``[-20, 5]`` with the default bounds.

Sampling (:meth:`TruncatedLogNormal.rsample`, :meth:`~TruncatedLogNormal.icdf`) inverts the
CDF in log-probability space on whichever side (lower tail or upper tail) avoids
cancellation, using :func:`ndtri_exp`; the result is clamped into ``[log_low, log_high]`` (only
rounding can push it outside). Its gradient is the implicit reparameterisation gradient
(Figurnov et al., 2018, *Implicit Reparameterization Gradients*):
:math:`\partial x/\partial\mu = 1 - \rho_A - \rho_B`, :math:`\partial x / \partial\sigma = t -
\alpha\rho_A - \beta\rho_B`, :math:`\partial x/\partial A = \rho_A`, :math:`\partial
x/\partial B = \rho_B` with :math:`t = (x-\mu)/\sigma`, :math:`\rho_A = (1-F)\phi(\alpha)/\phi(t)`
and :math:`\rho_B = F\phi(\beta)/\phi(t)`; these first derivatives are exact, second derivatives
of samples are not provided.

References: Neklyudov et al. (2017); Wright, Igel & Selvan (2024), *BMRS: Bayesian Model
Reduction for Structured Pruning* (NeurIPS), which uses these distributions for BMRS.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction
from typing import Union

import torch
from pyro.distributions.torch_distribution import TorchDistribution
from torch.distributions import constraints
from torch.distributions.kl import register_kl
from torch.distributions.utils import broadcast_all

__all__ = [
    "TruncatedLogNormal",
    "TruncatedLogUniform",
    "log_diff_ndtr",
    "ndtri_exp",
]

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_SQRT_HALF_PI = math.sqrt(0.5 * math.pi)
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_LOG_HALF = -math.log(2.0)
_LOG_2 = math.log(2.0)

#: Above this argument ``x R(x) - 1`` and the one-sided cumulants use the asymptotic series.
_SERIES_FROM = 30.0
#: Below this variance of ``log theta`` the variance of theta uses the cumulant expansion.
_SMALL_LOG_VARIANCE = 1e-6


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


def _mills(x: torch.Tensor) -> torch.Tensor:
    r"""Mills ratio :math:`R(x) = \Phi(-x)/\phi(x)`, accurate for :math:`x \ge 0`."""
    return _SQRT_HALF_PI * torch.special.erfcx(x * _INV_SQRT2)


def _log_mills_series(x: torch.Tensor, order: int) -> torch.Tensor:
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


def _mills_h(x: torch.Tensor) -> torch.Tensor:
    r""":math:`h(x) = xR(x) - 1 \approx -1/x^2`, with full relative accuracy for :math:`x \ge 0`."""
    near = x < _SERIES_FROM
    x_direct = torch.where(near, x, torch.ones_like(x))
    x_series = torch.where(near, torch.full_like(x, _SERIES_FROM), x)
    direct = x_direct * _mills(x_direct) - 1.0
    series = torch.expm1(_log_mills_series(x_series, 0))
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
    return _log_mass_std(a, b, b - a, ref - a, b - ref, ref) - 0.5 * ref.square()


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
    upper = y > _LOG_HALF
    deep = y < small_cut
    out = torch.special.ndtri(torch.exp(torch.where(upper | deep, -1.0, y)))
    if bool(upper.any()):
        out = torch.where(upper, -torch.special.ndtri(-torch.expm1(torch.where(upper, y, -0.1))), out)
    if bool(deep.any()):
        y_deep = torch.where(deep, y, small_cut - 1.0)
        two_y = -2.0 * y_deep
        x = -torch.sqrt(two_y - torch.log(two_y) - math.log(2.0 * math.pi))
        for _ in range(4):
            x = x - (torch.special.log_ndtr(x) - y_deep) * _mills(-x)
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


def _mills_cf(x: torch.Tensor, terms: int) -> torch.Tensor:
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


def _log_mass_std(
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
      :math:`R` from :func:`_mills_cf`.

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
        mills_n = _mills_cf(n_d, terms)
        # the far end has relative weight E R(f) / R(n) <= E = exp(-w (n + f) / 2) <= exp(-w T);
        # it matters for narrow intervals only, so it is skipped when that bound is negligible
        negligible = -math.log(1e-3 * torch.finfo(lo.dtype).eps)
        if float(width_d.detach().min()) * cut < negligible:
            expo = torch.add(width_d, n_d, alpha=2.0).mul_(width_d).mul_(-0.5).clamp_(min=exp_min).exp_()
            mills_n = torch.addcmul(mills_n, expo, _mills_cf(n_d + width_d, terms), value=-1.0)
        log_d = torch.log(mills_n)
        # distance of ref from the nearer end: d_hi in the lower tail (hi < 0), else d_lo;
        # selected with an exact 0/1 float mask (boolean kernels are several times slower)
        lower = _step(torch.neg(hi.detach()))
        d = _addcmul(_mul(_force(d_lo), 1.0 - lower), _force(d_hi), lower)
        deep_val = _addcmul(log_d.sub_(_LOG_SQRT_2PI), d, torch.add(d, n_d, alpha=2.0), 0.5)
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


def _log_mass(
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
    return _log_mass_std(
        lo,
        hi,
        (high - low) * inv,
        lambda: (ref - low) * inv,
        lambda: (high - ref) * inv,
        lambda: (ref - loc) * inv - shift,
    )


class _Standardised:
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
        self.mills_b = _mills(tb)
        self.d = _mills(ta) - self.expo * self.mills_b
        # central pieces
        ca = torch.where(self.tail, -one, a)
        cb = torch.where(self.tail, one, b)
        self.ca, self.cb = ca, cb
        self.log_z_central = torch.log(
            0.5 * (torch.erf(cb * _INV_SQRT2) - torch.erf(ca * _INV_SQRT2))
        )
        ra_c = torch.exp(-0.5 * ca.square() - _LOG_SQRT_2PI - self.log_z_central)
        rb_c = torch.exp(-0.5 * cb.square() - _LOG_SQRT_2PI - self.log_z_central)
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
            _LOG_SQRT_2PI
            + 0.5
            + self.log_z_central
            + 0.5 * (self.ca * self.r_a - self.cb * self.r_b)
        )
        ta, tb, tw, e = self.ta, self.tb, self.tw, self.expo
        n = ta * _mills_h(ta) + e * tw * (tw + 2.0 * ta) / tb - e * ta.square() * _mills_h(tb) / tb
        tail = 0.5 + torch.log(self.d) - 0.5 * n / self.d
        return torch.where(self.tail, tail, central)

    def mean_offset(self) -> torch.Tensor:
        r"""Tail: :math:`E[t] - a = (-h(a) + E(aR(b) - 1))/D` (canonical); central: :math:`E[t]`."""
        ta, tb, tw, e = self.ta, self.tb, self.tw, self.expo
        a_rb_m1 = (-tw + ta * _mills_h(tb)) / tb  # a R(b) - 1 = -w/b + a h(b)/b
        tail = (-_mills_h(ta) + e * a_rb_m1) / self.d
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
        s2 = inv.square() + _log_mills_series(xs, 2)
        s3 = 2.0 * inv**3 - _log_mills_series(xs, 3)
        s4 = 6.0 * inv**4 + _log_mills_series(xs, 4)
        k2 = torch.where(deep, s2, k2)
        k3 = torch.where(deep, s3, k3) * self.sign
        k4 = torch.where(deep, s4, k4)
        return k2, k3, k4


def _standardise(loc, scale, low, high) -> _Standardised:
    inv = scale.reciprocal()
    return _Standardised((low - loc) * inv, (high - loc) * inv, (high - low) * inv)


def _tln_log_moment(loc, scale, low, high, k: float) -> torch.Tensor:
    r""":math:`\log E[\theta^k] = k r + M(\mu + k\sigma^2; r) - M(\mu; r)`, :math:`r = \mathrm{clamp}(\mu + k\sigma^2)`.

    Follows from :math:`e^{kx}\mathcal N(x;\mu,\sigma^2) = e^{k\mu + k^2\sigma^2/2}
    \mathcal N(x; \mu + k\sigma^2, \sigma^2)`; the reference point sits where the tilted
    density has its mass, so both :math:`M` terms stay moderate.
    """
    ref = torch.minimum(torch.maximum(loc + k * scale.square(), low), high)
    return k * ref + _log_mass(loc, scale, low, high, ref, k * scale) - _log_mass(loc, scale, low, high, ref)


def _tln_log_variance_ratio(loc, scale, low, high) -> torch.Tensor:
    r""":math:`\Delta = \log E[\theta^2] - 2\log E[\theta]`, so :math:`\mathrm{Var}\,\theta = E[\theta]^2\,\mathrm{expm1}(\Delta)`.

    :math:`\Delta = K(2\sigma) - 2K(\sigma) = \sum_{n\ge2} \sigma^n\kappa_n (2^n-2)/n!` with
    :math:`K` the cumulant generating function of the standardised truncated normal. Where
    :math:`\mathrm{Var}[\log\theta] = \sigma^2\kappa_2 < 10^{-6}` the series to
    :math:`\kappa_4` is used (relative error below ~1e-8); elsewhere the second difference
    :math:`M_2 - 2M_1 + M_0` at one common reference point.
    """
    s2 = scale.square()
    ref = torch.minimum(torch.maximum(loc + s2, low), high)
    m0 = _log_mass(loc, scale, low, high, ref)
    m1 = _log_mass(loc, scale, low, high, ref, scale)
    m2 = _log_mass(loc, scale, low, high, ref, 2.0 * scale)
    direct = m2 - 2.0 * m1 + m0
    k2, k3, k4 = _standardise(loc, scale, low, high).cumulants()
    var_x = s2 * k2
    series = var_x + scale * s2 * k3 + (7.0 / 12.0) * s2.square() * k4
    return torch.where(var_x < _SMALL_LOG_VARIANCE, series, direct)


def _tln_mean_log(loc, scale, low, high) -> torch.Tensor:
    r""":math:`E[\log\theta]`: measured from the nearer bound in a tail, from ``loc`` otherwise."""
    st = _standardise(loc, scale, low, high)
    off = st.mean_offset()
    upper = st.tail & (st.sign > 0)
    lower = st.tail & (st.sign < 0)
    return torch.where(upper, low + scale * off, torch.where(lower, high - scale * off, loc + scale * off))


def _tln_entropy_log(loc, scale, low, high) -> torch.Tensor:
    """Entropy of ``log theta``: ``log(scale) + h_std(alpha, beta)``."""
    return torch.log(scale) + _standardise(loc, scale, low, high).entropy()


def _tln_icdf_log(loc, scale, low, high, u: torch.Tensor) -> torch.Tensor:
    r"""``log theta`` at probability ``u`` (float64 in, float64 out), with implicit gradients.

    The detached value inverts on the side with probability below 1/2:
    :math:`\log p = \mathrm{logaddexp}(\log\Phi(\alpha), \log u + \log Z)` or
    :math:`\log(1-p) = \mathrm{logaddexp}(\log\Phi(-\beta), \log(1-u) + \log Z)`, then
    :func:`ndtri_exp`. Gradients w.r.t. ``loc``, ``scale``, ``low``, ``high`` and ``u`` are the
    exact first derivatives of the inverse CDF (module docstring), attached by a
    first-order surrogate.
    """
    with torch.no_grad():
        mu, s, lo_b, hi_b = (t.detach() for t in broadcast_all(loc, scale, low, high))
        uu = u.detach()
        # parameter-shaped pieces first, per-sample ones after
        alpha = (lo_b - mu) / s
        beta = (hi_b - mu) / s
        log_z = log_diff_ndtr(alpha, beta)
        log_p = torch.logaddexp(torch.special.log_ndtr(alpha), torch.log(uu) + log_z)
        log_q = torch.logaddexp(torch.special.log_ndtr(-beta), torch.log1p(-uu) + log_z)
        use_p = log_p <= _LOG_HALF
        root = ndtri_exp(torch.where(use_p, log_p, log_q))
        x = torch.minimum(torch.maximum(mu + s * torch.where(use_p, root, -root), lo_b), hi_b)
        t = (x - mu) / s
        # log F(x) or log(1 - F(x)), whichever is smaller, from the side interval [low, x] or
        # [x, high] (evaluated at the rounded x, so that the Jacobian matches the returned
        # value deep in a tail), the other one by log1mexp
        lower_half = uu <= 0.5  # F(x) = u up to rounding
        side_lo = torch.where(lower_half, lo_b, x)
        side_hi = torch.where(lower_half, x, hi_b)
        ref = torch.minimum(torch.maximum(mu, side_lo), side_hi)
        log_small = _log_mass(mu, s, side_lo, side_hi, ref) - _log_mass(mu, s, lo_b, hi_b, ref)
        log_small = log_small.clamp(max=0.0)
        log_big = torch.log1p(-torch.exp(log_small))
        log_f = torch.where(lower_half, log_small, log_big)
        log_sf = torch.where(lower_half, log_big, log_small)
        d_lo = (x - lo_b) / s
        d_hi = (hi_b - x) / s
        rho_a = torch.exp(log_sf + 0.5 * d_lo * ((x + lo_b - 2.0 * mu) / s)).clamp(0.0, 1.0)
        rho_b = torch.exp(log_f - 0.5 * d_hi * ((hi_b + x - 2.0 * mu) / s)).clamp(0.0, 1.0)
        dx_dloc = 1.0 - rho_a - rho_b
        dx_dscale = t * dx_dloc + d_lo * rho_a - d_hi * rho_b
        # dx/du = 1 / q(x) = scale * sqrt(2 pi) * exp(M(loc, scale; low, high; x))
        dx_du = s * math.sqrt(2.0 * math.pi) * torch.exp(_log_mass(mu, s, lo_b, hi_b, x))
    out = x
    for param, jac in (
        (loc, dx_dloc),
        (scale, dx_dscale),
        (low, rho_a),
        (high, rho_b),
        (u, dx_du),
    ):
        if isinstance(param, torch.Tensor) and param.requires_grad:
            out = out + jac * (param - param.detach())
    return out


def _check_bounds(log_low: torch.Tensor, log_high: torch.Tensor) -> None:
    if not bool(torch.isfinite(log_low).all()):
        raise ValueError("log_low must be finite")
    if not bool(torch.isfinite(log_high).all()):
        raise ValueError("log_high must be finite")
    if not bool((log_low < log_high).all()):
        raise ValueError("log_low must be smaller than log_high")


def _f64(*ts: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(t.to(torch.float64) for t in ts)


# --------------------------------------------------------------------------------------
# Distributions
# --------------------------------------------------------------------------------------


class TruncatedLogNormal(TorchDistribution):
    r"""Noise :math:`\theta` with :math:`\log\theta \sim \mathcal N(\mu, \sigma^2)` truncated to ``[log_low, log_high]``.

    The variational posterior :math:`\mathrm{LogN}_{[A,B]}(\mu, \sigma^2)` of Neklyudov et
    al. (2017), used by BMRS (Wright, Igel & Selvan, 2024). The support is
    :math:`[e^A, e^B]`. See the module docstring for the numerics: all methods are accurate
    deep in the tails (e.g. :math:`\sigma = e^{-20}`) and compute in float64 internally.

    Args:
        loc: :math:`\mu`, location of ``log theta`` before truncation.
        scale: :math:`\sigma > 0`.
        log_low: :math:`A` (default -20).
        log_high: :math:`B > A` (default 0).
        validate_args: as in :class:`torch.distributions.Distribution`.

    Attributes ``loc``, ``scale``, ``log_low``, ``log_high`` are tensors broadcast to
    ``batch_shape``.
    """

    arg_constraints = {
        "loc": constraints.real,
        "scale": constraints.positive,
        "log_low": constraints.real,
        "log_high": constraints.real,
    }
    has_rsample = True

    def __init__(self, loc, scale, log_low=-20.0, log_high=0.0, validate_args=None):
        self.loc, self.scale, self.log_low, self.log_high = broadcast_all(loc, scale, log_low, log_high)
        super().__init__(self.loc.shape, validate_args=validate_args)
        if self._validate_args:
            _check_bounds(self.log_low, self.log_high)

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self):
        return constraints.interval(self.log_low.exp(), self.log_high.exp())

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(TruncatedLogNormal, _instance)
        batch_shape = torch.Size(batch_shape)
        new.loc = self.loc.expand(batch_shape)
        new.scale = self.scale.expand(batch_shape)
        new.log_low = self.log_low.expand(batch_shape)
        new.log_high = self.log_high.expand(batch_shape)
        super(TruncatedLogNormal, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def _params64(self) -> tuple[torch.Tensor, ...]:
        return _f64(self.loc, self.scale, self.log_low, self.log_high)

    def _out(self, value: torch.Tensor) -> torch.Tensor:
        return value.to(self.loc.dtype)

    def rsample(self, sample_shape=()):
        """Reparameterised sample; see :meth:`icdf` (``u ~ U(0, 1)`` drawn in float64)."""
        shape = self._extended_shape(sample_shape)
        u = torch.rand(shape, dtype=torch.float64, device=self.loc.device)
        x = _tln_icdf_log(*self._params64(), u)
        return self._out(x).exp()

    def icdf(self, value):
        """Inverse CDF (differentiable in the parameters and in ``value``)."""
        value = torch.as_tensor(value, dtype=self.loc.dtype, device=self.loc.device)
        if self._validate_args and not bool(((value >= 0) & (value <= 1)).all()):
            raise ValueError("icdf: value must lie in [0, 1]")
        return self._out(_tln_icdf_log(*self._params64(), value.to(torch.float64))).exp()

    def log_prob(self, value):
        r""":math:`\log q(\theta) = -M(\mu,\sigma; A, B; \log\theta) - \log\sigma - \tfrac12\log 2\pi - \log\theta`."""
        if self._validate_args:
            self._validate_sample(value)
        value = torch.as_tensor(value, dtype=self.loc.dtype, device=self.loc.device)
        # membership is decided in the parameters' dtype, so that samples rounded onto
        # exp(log_low) in float32 stay inside after the float64 logarithm
        inside = (value >= self.log_low.exp()) & (value <= self.log_high.exp())
        loc, scale, low, high = self._params64()
        x = torch.log(value.to(torch.float64))
        xr = torch.minimum(torch.maximum(x, low), high)
        lp = -_log_mass(loc, scale, low, high, xr) - torch.log(scale) - _LOG_SQRT_2PI - x
        return self._out(torch.where(inside, lp, torch.full_like(lp, -math.inf)))

    def cdf(self, value):
        """CDF in ``theta``; the smaller of F and 1 - F is computed directly."""
        if self._validate_args:
            self._validate_sample(value)
        loc, scale, low, high = self._params64()
        x = torch.log(torch.as_tensor(value).to(torch.float64))
        below, above = x <= low, x >= high
        # safe stand-ins where F = 0 or F = 1 exactly, so that no empty interval (log 0) enters
        # the graph and gradients stay finite at the bounds
        x_f = torch.where(below, high, x).clamp(max=high)
        x_s = torch.where(above, low, x).clamp(min=low)
        ref_f = torch.minimum(torch.maximum(loc, low), x_f)
        ref_s = torch.minimum(torch.maximum(loc, x_s), high)
        log_f = _log_mass(loc, scale, low, x_f, ref_f) - _log_mass(loc, scale, low, high, ref_f)
        log_sf = _log_mass(loc, scale, x_s, high, ref_s) - _log_mass(loc, scale, low, high, ref_s)
        inner = torch.where(log_f < _LOG_HALF, torch.exp(log_f), -torch.expm1(log_sf))
        zero, one = torch.zeros_like(inner), torch.ones_like(inner)
        return self._out(torch.where(below, zero, torch.where(above, one, inner)))

    @property
    def mean(self):
        r""":math:`E[\theta] = \exp(\mu + \sigma^2/2)\,(\Phi(\beta-\sigma) - \Phi(\alpha-\sigma))/Z`, in log space."""
        return self._out(_tln_log_moment(*self._params64(), 1.0).exp())

    @property
    def variance(self):
        r""":math:`E[\theta]^2\,\mathrm{expm1}(\log E[\theta^2] - 2\log E[\theta])` (see module docs)."""
        loc, scale, low, high = self._params64()
        log_m1 = _tln_log_moment(loc, scale, low, high, 1.0)
        delta = _tln_log_variance_ratio(loc, scale, low, high)
        return self._out(torch.exp(2.0 * log_m1) * torch.expm1(delta).clamp(min=0.0))

    def entropy(self):
        r"""Entropy of :math:`\theta`: :math:`H[\log\theta] + E[\log\theta]`."""
        loc, scale, low, high = self._params64()
        return self._out(_tln_entropy_log(loc, scale, low, high) + _tln_mean_log(loc, scale, low, high))


class TruncatedLogUniform(TorchDistribution):
    r"""Log-uniform prior :math:`\mathrm{LogU}_{[A,B]}`: :math:`\log\theta \sim \mathcal U(A, B)`.

    The prior of Neklyudov et al. (2017) and Wright, Igel & Selvan (2024); density
    :math:`p(\theta) = 1/(\theta (B - A))` on :math:`[e^A, e^B]`. Parameters broadcast to the
    batch shape; use :meth:`expand` for a batch of identical priors.
    """

    arg_constraints = {"log_low": constraints.real, "log_high": constraints.real}
    has_rsample = True

    def __init__(self, log_low=-20.0, log_high=0.0, validate_args=None):
        self.log_low, self.log_high = broadcast_all(log_low, log_high)
        super().__init__(self.log_low.shape, validate_args=validate_args)
        if self._validate_args:
            _check_bounds(self.log_low, self.log_high)

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self):
        return constraints.interval(self.log_low.exp(), self.log_high.exp())

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(TruncatedLogUniform, _instance)
        batch_shape = torch.Size(batch_shape)
        new.log_low = self.log_low.expand(batch_shape)
        new.log_high = self.log_high.expand(batch_shape)
        super(TruncatedLogUniform, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def _width(self) -> torch.Tensor:
        return self.log_high - self.log_low

    def rsample(self, sample_shape=()):
        shape = self._extended_shape(sample_shape)
        u = torch.rand(shape, dtype=self.log_low.dtype, device=self.log_low.device)
        x = self.log_low + u * self._width
        return torch.minimum(x, self.log_high).exp()

    def log_prob(self, value):
        r""":math:`-\log(B-A) - \log\theta` on the support."""
        if self._validate_args:
            self._validate_sample(value)
        x = torch.log(value)
        lp = -torch.log(self._width) - x
        inside = (x >= self.log_low) & (x <= self.log_high)
        return torch.where(inside, lp, torch.full_like(lp, -math.inf))

    def cdf(self, value):
        if self._validate_args:
            self._validate_sample(value)
        return ((torch.log(value) - self.log_low) / self._width).clamp(0.0, 1.0)

    def icdf(self, value):
        value = torch.as_tensor(value, dtype=self.log_low.dtype, device=self.log_low.device)
        return (self.log_low + value * self._width).exp()

    @property
    def mean(self):
        r""":math:`(e^B - e^A)/(B - A) = e^A\,\mathrm{expm1}(B-A)/(B-A)`."""
        w = self._width
        return self.log_low.exp() * torch.expm1(w) / w

    @property
    def variance(self):
        r""":math:`e^{2A}\,[\mathrm{expm1}(2w)/(2w) - (\mathrm{expm1}(w)/w)^2]`, :math:`w = B - A`."""
        w = self._width
        m1 = torch.expm1(w) / w
        m2 = torch.expm1(2.0 * w) / (2.0 * w)
        return (2.0 * self.log_low).exp() * (m2 - m1.square()).clamp(min=0.0)

    def entropy(self):
        r""":math:`\log(B-A) + (A+B)/2` (entropy of :math:`\theta`)."""
        return torch.log(self._width) + 0.5 * (self.log_low + self.log_high)


@register_kl(TruncatedLogNormal, TruncatedLogUniform)
def _kl_truncated_lognormal_loguniform(q: TruncatedLogNormal, p: TruncatedLogUniform) -> torch.Tensor:
    r"""Closed-form :math:`\mathrm{KL}(\mathrm{LogN}_{[A,B]}(\mu,\sigma^2) \,\|\, \mathrm{LogU}_{[A',B']})`.

    :math:`\log(B'-A') - H[\log\theta]` (the KL is invariant under :math:`x = \log\theta`),
    which for equal bounds is Neklyudov et al. (2017), Eq. 11:
    :math:`\log(B-A) - \log Z - \log\sigma - \tfrac12\log(2\pi e) - (\alpha\phi(\alpha) -
    \beta\phi(\beta))/(2Z)`, evaluated without cancellation. ``+inf`` where the support of
    ``q`` is not inside that of ``p``.
    """
    loc, scale, low, high = q._params64()
    p_low, p_high = _f64(p.log_low, p.log_high)
    kl = torch.log(p_high - p_low) - _tln_entropy_log(loc, scale, low, high)
    outside = (low < p_low) | (high > p_high)
    return q._out(torch.where(outside, torch.full_like(kl, math.inf), kl))
