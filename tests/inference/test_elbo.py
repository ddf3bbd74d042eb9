from __future__ import annotations

from collections.abc import Callable, Iterator

import pyro
import pytest
import torch

from pyro_prune.inference.elbo import fast_elbo_loss, pyro_elbo_loss
from pyro_prune.models import MLP, LeNet5, ResNet, ViT, noise_kernels_jit


@pytest.fixture
def torch_kernel() -> Iterator[None]:
    """The fused kernel in torch, which draws its uniforms layer by layer from torch's
    generator like the per-layer path (the compiled kernel draws per-example uniforms from its
    own counter-based generator; tests/models/test_noise_kernels_jit.py gives both kernels the
    same uniforms)."""
    old = noise_kernels_jit.set_enabled(False)
    yield
    noise_kernels_jit.set_enabled(old)


def _net(seed: int = 0, init_loc: float = 0.0) -> MLP:
    torch.manual_seed(seed)
    net = MLP(6, [5, 4], 3, num_data=50, init_loc=init_loc)
    with torch.no_grad():
        for g in net.noise_layers().values():
            g.loc.uniform_(-2.0, 0.0)
            g.log_scale.uniform_(-2.0, 0.0)
    return net


def _assert_fused_equals_per_layer(net, x: torch.Tensor, y: torch.Tensor, *, seed: int,
                                   grad: Callable[[], torch.Tensor] | None = None) -> None:
    """The per-example loss, output and ``grad()`` (default: every parameter's gradient) of
    the fused noise kernel equal those of the per-layer path under the same seed."""
    results = []
    for fused in (False, True):
        net.zero_grad()
        torch.manual_seed(seed)
        loss, out = fast_elbo_loss(net, x, y, per_example=True, fused=fused)
        loss.backward()
        grads = grad() if grad is not None else torch.cat([p.grad.flatten() for p in net.parameters()])
        results.append((loss.detach(), out.detach(), grads))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kl_scale", [1.0, 3.5])
def test_fast_loss_with_one_draw_equals_trace_mean_field_elbo(kl_scale: float) -> None:
    net = _net()
    net.set_kl_scale(kl_scale)
    net.net.fc1_gate.prune(torch.tensor([True, False, False, True, False]))
    x, y = torch.randn(10, 6), torch.randint(0, 3, (10,))
    torch.manual_seed(1)
    pyro.set_rng_seed(1)
    pyro_loss = pyro_elbo_loss(net, x, y)
    torch.manual_seed(1)
    pyro.set_rng_seed(1)
    fast_loss, _ = fast_elbo_loss(net, x, y, per_example=False)
    torch.testing.assert_close(fast_loss, pyro_loss, rtol=1e-5, atol=1e-4)


def test_gradients_agree_between_engines() -> None:
    net = _net()
    x, y = torch.randn(10, 6), torch.randint(0, 3, (10,))
    grads = []
    for engine in ("pyro", "fast"):
        net.zero_grad()
        torch.manual_seed(3)
        if engine == "pyro":
            loss = pyro_elbo_loss(net, x, y)
        else:
            loss, _ = fast_elbo_loss(net, x, y, per_example=False, fused=False)
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("make", [
    lambda: MLP(6, [5, 4], 3, num_data=50),
    lambda: LeNet5(1, 3, 8, num_data=40),
    lambda: ResNet(1, 3, widths=(4, 6), blocks_per_stage=1, image_size=8),
    lambda: ViT(8, 4, 1, 3, dim=16, depth=1, heads=4, mlp_dim=12),
], ids=["mlp", "lenet5", "resnet", "vit"])
def test_fused_noise_kernel_equals_the_per_layer_path(torch_kernel: None, make) -> None:
    """One kernel call over all layers: same draws, loss and gradients as layer by layer."""
    torch.manual_seed(0)
    net = make()
    with torch.no_grad():
        for i, g in enumerate(net.noise_layers().values()):
            g.loc.uniform_(-3.0, 0.0)
            g.log_scale.uniform_(-4.0, 1.0 + i)
        first = next(iter(net.noise_layers().values()))
        first.prune(torch.arange(first.num_structures) == 0)
    net.num_data = 40
    shape = (7, 6) if isinstance(net, MLP) else (7, 1, 8, 8)
    x, y = torch.randn(shape), torch.randint(0, 3, (7,))
    _assert_fused_equals_per_layer(net, x, y, seed=5)
    # every drawn theta was consumed by its layer's forward
    assert all(g._drawn_theta is None for g in net.noise_layers().values())


def test_per_example_draws_estimate_the_same_elbo() -> None:
    """Monte Carlo: per-example draws and one shared draw have the same expectation."""
    torch.manual_seed(0)
    net = LeNet5(1, 3, 8, num_data=40)
    with torch.no_grad():
        for g in net.noise_layers().values():
            g.log_scale.fill_(-1.0)
            g.loc.fill_(-0.5)
        net.net.out.weight.mul_(20.0)  # make the likelihood depend strongly on theta
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 3, (6,))
    n = 150
    with torch.no_grad():
        shared = torch.stack([fast_elbo_loss(net, x, y, per_example=False)[0] for _ in range(n)])
        per_ex = torch.stack([fast_elbo_loss(net, x, y, per_example=True)[0] for _ in range(n)])
    se = (shared.var() / n + per_ex.var() / n).sqrt()
    assert abs(float(shared.mean() - per_ex.mean())) < 4 * float(se)


def test_removed_structures_leave_the_kl() -> None:
    net = _net()
    full = float(net.kl_divergence().detach())
    layer = net.net.fc2_gate
    one = torch.distributions.kl_divergence(layer.posterior(), layer.prior())[0]
    layer.prune(torch.tensor([True, False, False, False]))
    assert float(net.kl_divergence().detach()) == pytest.approx(full - float(one), rel=1e-5)


def test_noise_plan_follows_pruning_and_kl_scale() -> None:
    """A plan resolved once gives the loss of a fresh one after pruning and a new KL weight."""
    from pyro_prune.inference.elbo import NoisePlan

    net = _net()
    plan = NoisePlan(net)
    assert [m for m in plan.layers] == list(net.noise_layers().values()) and not plan.others
    x, y = torch.randn(10, 6), torch.randint(0, 3, (10,))

    def both() -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(4)
        kept, _ = fast_elbo_loss(net, x, y, per_example=False, plan=plan)
        torch.manual_seed(4)
        fresh, _ = fast_elbo_loss(net, x, y, per_example=False)
        return kept, fresh

    before = both()
    torch.testing.assert_close(*before)
    net.net.fc2_gate.prune(torch.tensor([True, False, True, False]))
    after_pruning = both()
    torch.testing.assert_close(*after_pruning)
    assert float(plan.masks(torch.float32)[0].sum()) == 5 + 2
    net.set_kl_scale(3.0)
    after_scale = both()
    torch.testing.assert_close(*after_scale)
    assert not torch.isclose(before[0], after_pruning[0]) and not torch.isclose(after_pruning[0], after_scale[0])
    with pytest.raises(ValueError, match="another model"):
        fast_elbo_loss(_net(1), x, y, plan=plan)


def test_fused_noise_kernel_follows_the_signal_reference(torch_kernel: None) -> None:
    """Per-example draws with init_loc = -3: the fused kernel equals the per-layer path."""
    net = _net(init_loc=-3.0)
    x, y = torch.randn(9, 6), torch.randint(0, 3, (9,))
    _assert_fused_equals_per_layer(net, x, y, seed=2, grad=lambda: net.net.fc1.weight.grad.clone())


@pytest.mark.parametrize("compiled", [True, False])
def test_a_ranks_share_of_a_global_batch_draws_what_one_process_draws(compiled: bool) -> None:
    """Data-parallel rows (``plan.rows``): rank r's outputs are rows r::2 of one process's on
    the global batch, with the compiled kernel's counter-based uniforms as with torch's; a rank
    with an empty share (``advance``) leaves torch's generator where the others leave it."""
    from pyro_prune.inference.elbo import NoisePlan

    old = noise_kernels_jit.set_enabled(compiled)
    try:
        if compiled and not noise_kernels_jit.available():
            pytest.skip("the compiled kernel needs Numba (the 'fast' extra)")
        net = _net(init_loc=-1.0)
        x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
        plan = NoisePlan(net)
        torch.manual_seed(3)
        _, whole = fast_elbo_loss(net, x, y, plan=plan)
        after = torch.get_rng_state()
        for rank in (0, 1):
            plan.rows = (8, rank, 2)
            torch.manual_seed(3)
            _, share = fast_elbo_loss(net, x[rank::2], y[rank::2], plan=plan)
            torch.testing.assert_close(share, whole[rank::2], rtol=1e-5, atol=1e-6)
            assert torch.equal(torch.get_rng_state(), after)
            torch.manual_seed(3)
            plan.advance()
            assert torch.equal(torch.get_rng_state(), after)
    finally:
        noise_kernels_jit.set_enabled(old)
