from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from pyro_prune.models import noise_kernels, noise_kernels_jit

pytest.importorskip("numba")

SIZES = [3, 5, 4]
LOW, HIGH = -20.0, 0.0


@pytest.fixture
def jit_on() -> Iterator[None]:
    old = noise_kernels_jit.set_enabled(True)
    yield
    noise_kernels_jit.set_enabled(old)


def _params(dtype: torch.dtype, seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Posteriors over the kernel's range: near both bounds, wide and narrow, mass piled at A."""
    g = torch.Generator().manual_seed(seed)
    locs, log_scales = [], []
    for n in SIZES:
        locs.append((-torch.rand(n, generator=g, dtype=dtype) * 19.9 - 0.05).requires_grad_())
        log_scales.append((torch.rand(n, generator=g, dtype=dtype) * 7.0 - 6.0).requires_grad_())
    # a structure at the lower bound with a tiny scale, one beyond the upper bound with a
    # wide scale, one far below A (the interval is turned): the three branches of Phi^-1
    with torch.no_grad():
        locs[0][0], log_scales[0][0] = -19.99, -4.0
        locs[1][0], log_scales[1][0] = 0.5, 1.5
        locs[2][0], log_scales[2][0] = -25.0, 1.0
    return locs, log_scales


def _run(locs: list[torch.Tensor], log_scales: list[torch.Tensor], u: torch.Tensor, kept: torch.Tensor,
         weight: torch.Tensor, grads: list[torch.Tensor], jit: bool) -> tuple[torch.Tensor, ...]:
    old = noise_kernels_jit.set_enabled(jit)
    try:
        drawn = noise_kernels.network_theta_and_kl(locs, log_scales, LOW, HIGH, u, kept, weight)
    finally:
        noise_kernels_jit.set_enabled(old)
    assert drawn is not None
    thetas, kl = drawn
    loss = sum((t * g).sum() for t, g in zip(thetas, grads)) + 1.7 * kl
    dparams = torch.autograd.grad(loss, [*locs, *log_scales])
    return (torch.cat(thetas, -1).detach(), kl.detach(), *(d.detach() for d in dparams))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [None, 1, 16])
def test_compiled_kernel_equals_the_torch_kernel(jit_on: None, dtype: torch.dtype, batch: int | None) -> None:
    locs, log_scales = _params(dtype)
    n = sum(SIZES)
    g = torch.Generator().manual_seed(1)
    shape = (n,) if batch is None else (batch, n)
    u = torch.rand(shape, generator=g, dtype=dtype)
    u.view(-1)[:2] = torch.tensor([1e-30, 1.0 - 1e-7], dtype=dtype)  # both ends of the draw
    kept = torch.ones(n, dtype=dtype)
    kept[4] = 0.0
    weight = kept * 0.3
    grads = [torch.randn(shape[:-1] + (k,), generator=g, dtype=dtype) for k in SIZES]
    compiled = _run(locs, log_scales, u, kept, weight, grads, jit=True)
    reference = _run(locs, log_scales, u, kept, weight, grads, jit=False)
    tol = {torch.float32: 2e-4, torch.float64: 1e-10}[dtype]
    for c, r in zip(compiled, reference):
        assert c.dtype == dtype and c.shape == r.shape
        torch.testing.assert_close(c, r, rtol=tol, atol=tol)
    assert float(compiled[0][..., 4].abs().max()) == 0.0  # the removed structure stays at zero


@pytest.mark.parametrize("uniforms", ["given", "counter"])
def test_compiled_float32_is_as_exact_as_float32_allows(jit_on: None, uniforms: str) -> None:
    """The float32 kernel (per-draw maths in float32) against the float64 one for the same
    uniforms: draws, KL and gradients within 1e-5, over enough rows that both branches of
    Phi^-1 (Giles's central polynomial, Acklam's tail) are taken."""
    locs, log_scales = _params(torch.float64)
    n = sum(SIZES)
    rows = 512
    if uniforms == "counter":
        u: torch.Tensor | noise_kernels_jit.CounterUniforms = noise_kernels_jit.CounterUniforms(99, rows)
        u64 = noise_kernels_jit.counter_uniforms(u, n)
        u32: torch.Tensor | noise_kernels_jit.CounterUniforms = u
    else:
        u64 = torch.rand(rows, n, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        u, u32 = u64, u64.float()
    kept = torch.ones(n, dtype=torch.float64)
    grads = [torch.randn(rows, k, generator=torch.Generator().manual_seed(k), dtype=torch.float64)
             for k in SIZES]
    exact = _run(locs, log_scales, u, kept, kept, grads, jit=True)
    tails = (torch.minimum(u64, 1.0 - u64) < 1.7e-3).sum()
    assert int(tails) > 10  # Acklam's tail branch is taken (where w = -log(4 r (1 - r)) > 5)
    locs32 = [p.detach().float().requires_grad_() for p in locs]
    scales32 = [p.detach().float().requires_grad_() for p in log_scales]
    single = _run(locs32, scales32, u32, kept.float(), kept.float(), [g.float() for g in grads], jit=True)  # type: ignore[arg-type]
    for s, e in zip(single, exact):
        assert s.dtype == torch.float32
        torch.testing.assert_close(s.double(), e, rtol=1e-5, atol=1e-5 * max(1.0, float(e.abs().max())) ** 0.5)


def test_float32_kernel_with_bounds_beyond_80_computes_in_float64(jit_on: None) -> None:
    """Bounds outside [-80, 80] (where the float32 exponential would leave its range) take the
    float64 per-draw maths; the values are those of the torch kernel."""
    g = torch.Generator().manual_seed(21)
    locs = [(-torch.rand(6, generator=g) * 90.0).requires_grad_()]
    log_scales = [(torch.rand(6, generator=g) * 3.0 - 1.0).requires_grad_()]
    u = torch.rand(5, 6, generator=g)
    ones = torch.ones(6)
    grads = [torch.randn(5, 6, generator=g)]
    out = []
    for jit in (True, False):
        old = noise_kernels_jit.set_enabled(jit)
        try:
            drawn = noise_kernels.network_theta_and_kl(locs, log_scales, -100.0, 0.0, u, ones, ones)
        finally:
            noise_kernels_jit.set_enabled(old)
        assert drawn is not None
        loss = (drawn[0][0] * grads[0]).sum() + drawn[1]
        out.append((drawn[0][0].detach(), *torch.autograd.grad(loss, [*locs, *log_scales])))
    for c, r in zip(*out):
        torch.testing.assert_close(c, r, rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("hidden", [[150], [10, 8]])
def test_training_steps_of_float32_networks_take_the_float32_kernel(
        jit_on: None, monkeypatch: pytest.MonkeyPatch, hidden: list[int]) -> None:
    """A float32 network on the defaults draws with the float32 per-draw maths, with one gated
    layer (the Fashion-MNIST MLP's single 150-neuron layer) as with several, per example and
    once per step; float64 parameters take the float64 kernel."""
    from torch.utils.data import TensorDataset

    from pyro_prune.inference import fit
    from pyro_prune.inference.elbo import fast_elbo_loss
    from pyro_prune.models import MLP

    noise_kernels_jit._load()
    kernels = noise_kernels_jit._kernels
    assert kernels is not None
    (prepare, draw, draw32), *rest = kernels
    used: list[str] = []

    def recorded(kernel, name):  # type: ignore[no-untyped-def]
        def call(*args):  # type: ignore[no-untyped-def]
            used.append(name)
            return kernel(*args)
        return call

    monkeypatch.setattr(noise_kernels_jit, "_kernels",
                        ((prepare, recorded(draw, "float64"), recorded(draw32, "float32")), *rest))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 12, generator=g), torch.randint(0, 3, (64,), generator=g)
    torch.manual_seed(0)
    net = MLP(12, hidden, 3)
    fit(net, TensorDataset(x, y), epochs=1, batch_size=32, progress=False)
    assert used == ["float32"] * 2
    for per_example in (True, False):
        fast_elbo_loss(net, x, y, per_example=per_example)[0].backward()
    assert used == ["float32"] * 4
    fast_elbo_loss(net.double(), x.double(), y)[0].backward()
    assert used[-1] == "float64"


def test_compiled_gradients_pass_gradcheck(jit_on: None) -> None:
    locs, log_scales = _params(torch.float64, seed=3)
    n = sum(SIZES)
    u = torch.rand(4, n, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    kept = torch.ones(n, dtype=torch.float64)

    def f(*params: torch.Tensor) -> tuple[torch.Tensor, ...]:
        k = len(SIZES)
        drawn = noise_kernels.network_theta_and_kl(list(params[:k]), list(params[k:]), LOW, HIGH, u, kept, kept)
        assert drawn is not None
        return (*drawn[0], drawn[1])

    assert torch.autograd.gradcheck(f, (*locs, *log_scales), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_kernel_returns_none_out_of_reach(jit_on: None, dtype: torch.dtype) -> None:
    """A posterior far above the upper bound with a tiny scale: the caller takes the exact path."""
    locs = [torch.tensor([-3.0, 5.0], dtype=dtype, requires_grad=True)]
    log_scales = [torch.tensor([0.0, -6.0], dtype=dtype, requires_grad=True)]
    u = torch.rand(2, dtype=dtype)
    ones = torch.ones(2, dtype=dtype)
    assert noise_kernels_jit.usable(locs, u, ones, ones)
    assert noise_kernels.network_theta_and_kl(locs, log_scales, LOW, HIGH, u, ones, ones) is None


def test_compiled_kernel_is_skipped_where_it_does_not_apply(jit_on: None) -> None:
    n = 4
    locs = [torch.zeros(n, dtype=torch.float16)]
    ones = torch.ones(n, dtype=torch.float16)
    assert not noise_kernels_jit.usable(locs, ones, ones, ones)  # no float16 kernel
    locs64 = [torch.zeros(n, dtype=torch.float64)]
    ones32 = torch.ones(n)
    assert not noise_kernels_jit.usable(locs64, ones32, ones32, ones32)  # mixed dtypes
    many = torch.rand(noise_kernels_jit.MAX_DRAWS // n + 1, n)
    assert noise_kernels_jit.usable([torch.zeros(n)], many[:-1], ones32, ones32)
    assert not noise_kernels_jit.usable([torch.zeros(n)], many, ones32, ones32)  # torch is faster
    old = noise_kernels_jit.set_enabled(False)
    try:
        assert not noise_kernels_jit.available()
        assert not noise_kernels_jit.usable([torch.zeros(n)], ones32, ones32, ones32)
    finally:
        noise_kernels_jit.set_enabled(old)


def test_training_step_gives_the_same_loss_and_gradients_with_either_kernel(
        jit_on: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole step of the fast ELBO, compiled against torch's kernel. One draw per step: the
    same torch draws. One per example: the compiled kernel draws counter-based uniforms, which
    the torch kernel is then given."""
    from pyro_prune.inference import elbo
    from pyro_prune.models import MLP

    x = torch.randn(32, 12, generator=torch.Generator().manual_seed(5))
    y = torch.randint(0, 3, (32,), generator=torch.Generator().manual_seed(6))
    compiled_kernel = elbo.network_theta_and_kl
    drawn_with: list[object] = []

    def torch_kernel(locs, log_scales, low, high, u, kept, weight, sizes=None):  # type: ignore[no-untyped-def]
        drawn_with.append(u)
        if isinstance(u, noise_kernels_jit.CounterUniforms):
            u = noise_kernels_jit.counter_uniforms(u, sum(q.shape[-1] for q in locs), locs[0].dtype)
        noise_kernels_jit.set_enabled(False)
        try:
            return compiled_kernel(locs, log_scales, low, high, u, kept, weight, sizes)
        finally:
            noise_kernels_jit.set_enabled(True)

    results = []
    for jit, per_example in itertools.product((True, False), (True, False)):
        monkeypatch.setattr(elbo, "network_theta_and_kl", compiled_kernel if jit else torch_kernel)
        torch.manual_seed(7)
        net = MLP(12, [10, 8], 3)
        net.num_data = 320
        net.train()
        torch.manual_seed(8)
        loss, _ = elbo.fast_elbo_loss(net, x, y, per_example=per_example)
        loss.backward()
        results.append((per_example, loss.detach(), [p.grad.clone() for p in net.parameters()]))
    assert isinstance(drawn_with[0], noise_kernels_jit.CounterUniforms) and drawn_with[0].rows == 32
    assert isinstance(drawn_with[1], torch.Tensor) and drawn_with[1].shape == (18,)
    for per_example in (True, False):
        (_, l1, g1), (_, l2, g2) = [r for r in results if r[0] == per_example]
        torch.testing.assert_close(l1, l2, rtol=1e-5, atol=1e-4)
        for a, b in zip(g1, g2):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype,smallest", [(torch.float32, 1e-37), (torch.float64, 1e-300)])
def test_compiled_inverse_cdf_over_the_whole_unit_interval(jit_on: None, dtype: torch.dtype,
                                                           smallest: float) -> None:
    """Draws of one wide posterior for uniforms from the deep lower tail to just below 1: the
    three branches of the rational Phi^-1 (and the Halley step in float64) against torch's."""
    u = torch.cat([torch.logspace(math.log10(smallest), -1, 40, dtype=torch.float64),
                   torch.linspace(0.1, 0.9, 17, dtype=torch.float64),
                   1.0 - torch.logspace(-1, -7 if dtype == torch.float32 else -15, 20, dtype=torch.float64)])
    u = u.to(dtype).unsqueeze(-1)
    loc = [torch.tensor([-10.0], dtype=dtype, requires_grad=True)]
    log_scale = [torch.tensor([0.0], dtype=dtype, requires_grad=True)]
    ones = torch.ones(1, dtype=dtype)
    grads = [torch.ones(len(u), 1, dtype=dtype)]
    compiled = _run(loc, log_scale, u, ones, ones, grads, jit=True)
    reference = _run(loc, log_scale, u, ones, ones, grads, jit=False)
    tol = {torch.float32: 1e-5, torch.float64: 1e-12}[dtype]
    log_c, log_r = compiled[0].log(), reference[0].log()
    torch.testing.assert_close(log_c, log_r, rtol=tol, atol=tol)
    assert float(log_r.min()) == LOW and float(log_r.max()) > -5.0  # both tails were reached


def test_without_numba_the_torch_kernel_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where Numba cannot be imported the network kernel is the torch one, same values."""
    locs, log_scales = _params(torch.float64)
    n = sum(SIZES)
    u = torch.rand(n, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    ones = torch.ones(n, dtype=torch.float64)
    grads = [torch.ones(k, dtype=torch.float64) for k in SIZES]
    compiled = _run(locs, log_scales, u, ones, ones, grads, jit=True)
    monkeypatch.setattr(noise_kernels_jit, "_load", lambda: None)
    assert not noise_kernels_jit.available()
    fallback = _run(locs, log_scales, u, ones, ones, grads, jit=True)
    for c, f in zip(compiled, fallback):
        torch.testing.assert_close(c, f, rtol=1e-10, atol=1e-10)


def test_vectorised_exp_is_exact_to_1e_12(jit_on: None) -> None:
    """The float32 kernels' exp, ``(e^(x/256))^256``, over the range its callers use."""
    assert noise_kernels_jit.available()
    exp_vector = noise_kernels_jit._load()[2]  # type: ignore[index]
    for x in [i / 64.0 for i in range(-80 * 64, 80 * 64 + 1, 37)] + [-80.0, 0.0, 80.0, -1e-9]:
        assert exp_vector(x) == pytest.approx(math.exp(x), rel=1e-12, abs=0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_kernel_equals_the_torch_kernel_on_wide_layers(jit_on: None, dtype: torch.dtype) -> None:
    """Layers wide enough that the vector loops run their full width (and the tails list fills)."""
    g = torch.Generator().manual_seed(11)
    sizes = [130, 67]
    locs = [(-torch.rand(n, generator=g, dtype=dtype) * 6.0).requires_grad_() for n in sizes]
    log_scales = [(torch.rand(n, generator=g, dtype=dtype) * 6.0 - 5.0).requires_grad_() for n in sizes]
    with torch.no_grad():  # a few below A: the turned interval
        locs[1][:5], log_scales[1][:5] = -22.0, 0.5
    n = sum(sizes)
    u = torch.rand(33, n, generator=g, dtype=dtype)
    kept = (torch.rand(n, generator=g) > 0.1).to(dtype)
    grads = [torch.randn(33, k, generator=g, dtype=dtype) for k in sizes]
    compiled = _run(locs, log_scales, u, kept, kept * 2.0, grads, jit=True)
    reference = _run(locs, log_scales, u, kept, kept * 2.0, grads, jit=False)
    tol = {torch.float32: 2e-4, torch.float64: 1e-10}[dtype]
    for c, r in zip(compiled, reference):
        torch.testing.assert_close(c, r, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_counter_uniforms_give_the_torch_kernels_values(jit_on: None, dtype: torch.dtype) -> None:
    """Uniforms drawn inside the kernel: the values and gradients of the torch kernel given the
    same uniforms (materialised by counter_uniforms)."""
    locs, log_scales = _params(dtype, seed=12)
    n = sum(SIZES)
    drawn = noise_kernels_jit.CounterUniforms(key=123456789, rows=9)
    u = noise_kernels_jit.counter_uniforms(drawn, n, dtype)
    assert u.shape == (9, n) and u.dtype == dtype
    kept = torch.ones(n, dtype=dtype)
    g = torch.Generator().manual_seed(13)
    grads = [torch.randn(9, k, generator=g, dtype=dtype) for k in SIZES]
    compiled = _run(locs, log_scales, drawn, kept, kept, grads, jit=True)  # type: ignore[arg-type]
    reference = _run(locs, log_scales, u, kept, kept, grads, jit=False)
    tol = {torch.float32: 2e-4, torch.float64: 1e-10}[dtype]
    for c, r in zip(compiled, reference):
        torch.testing.assert_close(c, r, rtol=tol, atol=tol)


def test_counter_uniforms_are_uniform_and_independent(jit_on: None) -> None:
    """KS test against U(0, 1), no correlation between neighbours in a row or across rows or
    keys, every value strictly inside (0, 1), and the same key gives the same numbers."""
    from scipy import stats

    u = noise_kernels_jit.counter_uniforms(noise_kernels_jit.CounterUniforms(2024, 200), 500)
    flat = u.flatten().numpy()
    assert 0.0 < flat.min() and flat.max() < 1.0
    assert stats.kstest(flat, "uniform").pvalue > 1e-3
    assert abs(float(u.mean()) - 0.5) < 4 * math.sqrt(1 / 12 / flat.size)
    other = noise_kernels_jit.counter_uniforms(noise_kernels_jit.CounterUniforms(2025, 200), 500)
    bound = 4 / math.sqrt(u[:, 1:].numel())
    for a, b in [(u[:, 1:], u[:, :-1]), (u[1:], u[:-1]), (u, other)]:
        assert abs(float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])) < bound
    again = noise_kernels_jit.counter_uniforms(noise_kernels_jit.CounterUniforms(2024, 200), 500)
    assert torch.equal(u, again)
    with pytest.raises(ValueError, match="key"):
        noise_kernels_jit.CounterUniforms(-1, 3)
    with pytest.raises(ValueError, match="rows"):
        noise_kernels_jit.CounterUniforms(0, 0)


@pytest.mark.parametrize("loc,log_scale", [(-3.0, 0.0), (0.5, 1.5), (-19.9, -3.0), (-25.0, 1.0),
                                           (-10.0, 2.5), (-1.0, -5.0)])
def test_per_example_draws_follow_the_truncated_log_normal(jit_on: None, loc: float,
                                                           log_scale: float) -> None:
    """The default sampler (compiled kernel, counter-based uniforms, float32) against the
    analytic truncated normal CDF of log theta in float64: KS test and the first two moments."""
    from scipy import stats

    rows = 20000
    locs = [torch.tensor([loc], requires_grad=True)]
    log_scales = [torch.tensor([log_scale], requires_grad=True)]
    ones = torch.ones(1)
    drawn = noise_kernels.network_theta_and_kl(locs, log_scales, LOW, HIGH,
                                               noise_kernels_jit.CounterUniforms(77, rows), ones, ones)
    assert drawn is not None
    x = drawn[0][0].detach().double().log().flatten().numpy()
    sigma = math.exp(log_scale)
    exact = stats.truncnorm((LOW - loc) / sigma, (HIGH - loc) / sigma, loc=loc, scale=sigma)
    assert stats.kstest(x, exact.cdf).pvalue > 1e-3
    mean, sd = exact.mean(), exact.std()
    assert abs(x.mean() - mean) < 4.5 * sd / math.sqrt(rows) + 1e-6
    assert x.std() == pytest.approx(sd, rel=0.05, abs=1e-6)


def _prepared(loc: np.ndarray, log_scale: np.ndarray, low: float, high: float,
              reach: float) -> tuple[float, bool, np.ndarray]:
    """The compiled per-structure preparation (``per``) of float64 parameters."""
    prepare = noise_kernels_jit._load()[0][0]  # type: ignore[index]
    n = loc.shape[0]
    m = -(-n // 16) * 16
    per, per32 = np.empty((15, m)), np.empty((9, m), dtype=np.float32)
    ones = np.ones(n)
    kl, ok = prepare(loc, log_scale, ones, ones, low, high, reach, per, per32)
    return kl, ok, per[:, :n]


@pytest.mark.parametrize("low,high", [(LOW, HIGH), (-23 * math.log(2.0), 0.0), (-100.0, 50.0)])
def test_prepared_structures_match_scipy_over_the_documented_range(jit_on: None, low: float,
                                                                   high: float) -> None:
    """The vectorised per-structure maths (its own e^x, log and erfcx) against scipy in float64
    over mu in [-30, 10] and log sigma in [-20, 5], bounds clipped at +-50 included: ``Phi`` of
    the turned lower bound, ``Z``, the ``phi / Z`` ratios, the factors of the draws' derivatives
    and the KL (against :func:`noise_kernels.kl_truncated_lognormal_loguniform`)."""
    from scipy import special

    mu_grid, log_sigma_grid = np.linspace(-30.0, 10.0, 81), np.linspace(-20.0, 5.0, 51)
    mu, log_sigma = (g.ravel() for g in np.meshgrid(mu_grid, log_sigma_grid))
    sigma = np.exp(log_sigma)
    al = np.clip((low - mu) / sigma, -50.0, 50.0)
    be = np.clip((high - mu) / sigma, -50.0, 50.0)
    flipped = al > 0
    a, b = np.where(flipped, -be, al), np.where(flipped, -al, be)
    inside = b > -37.0  # the float64 kernel's reach
    mu, log_sigma, al, be, a, b, flipped = (v[inside] for v in (mu, log_sigma, al, be, a, b, flipped))
    kl, ok, per = _prepared(mu, log_sigma, low, high, 37.0)
    assert ok
    phi_a = special.ndtr(a)
    z = np.where(b < 0, special.ndtr(b) - phi_a, special.ndtr(-a) - special.ndtr(-b))
    phi = np.exp(-0.5 * np.stack([al * al, be * be]))
    c = 0.5 * np.minimum(al * al, be * be)
    expected = {
        0: np.exp(log_sigma), 1: al, 2: be, 3: flipped.astype(float), 7: phi_a, 8: z,
        4: phi[0] / math.sqrt(2 * math.pi) / z, 5: phi[1] / math.sqrt(2 * math.pi) / z,
        13: np.exp(c - 0.5 * al * al), 14: np.exp(c - 0.5 * be * be),
    }
    expected[6] = al * expected[4] - be * expected[5]
    for row, want in expected.items():
        np.testing.assert_allclose(per[row], want, rtol=1e-11, atol=1e-300, err_msg=f"row {row}")
    reference = noise_kernels.kl_truncated_lognormal_loguniform(
        torch.from_numpy(mu), torch.from_numpy(np.exp(log_sigma)), low, high)
    assert reference is not None
    assert kl == pytest.approx(float(reference.sum()), rel=1e-12)


def test_erfcx_polynomial_is_the_documented_fit() -> None:
    """``_ERFCX_POLYNOMIAL`` is what its comment says: the Chebyshev least-squares fit, at 400
    Chebyshev points, of ``(K + x) erfcx(x)`` in ``t = (x - K) / (x + K)`` computed in 40-digit
    arithmetic, in powers of ``t``; and it is exact to 5e-15 relative over ``[0, 40]``."""
    mpmath = pytest.importorskip("mpmath")
    from numpy.polynomial import chebyshev

    k = noise_kernels_jit._ERFCX_K
    degree = len(noise_kernels_jit._ERFCX_POLYNOMIAL) - 1
    with mpmath.workdps(40):
        def scaled(x: object) -> float:
            return float(mpmath.exp(x * x) * mpmath.erfc(x) * (k + x))

        nodes = np.cos(np.pi * (np.arange(400) + 0.5) / 400)
        values = [scaled(mpmath.mpf(k) * (1 + mpmath.mpf(t)) / (1 - mpmath.mpf(t))) for t in nodes]
        fit = chebyshev.cheb2poly(chebyshev.chebfit(nodes, np.array(values), degree))
        np.testing.assert_allclose(fit, noise_kernels_jit._ERFCX_POLYNOMIAL, rtol=0, atol=1e-13)
        x = np.concatenate([np.linspace(0.0, 40.0, 801), np.geomspace(1e-9, 40.0, 200)])
        exact = np.array([float(mpmath.exp(mpmath.mpf(v) ** 2) * mpmath.erfc(mpmath.mpf(v))) for v in x])
    t = (x - k) / (x + k)
    horner = np.zeros_like(t)
    for coefficient in reversed(noise_kernels_jit._ERFCX_POLYNOMIAL):
        horner = horner * t + coefficient
    assert np.max(np.abs(horner / (k + x) / exact - 1.0)) < 5e-15
