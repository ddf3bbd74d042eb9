"""Laplace evidence: exact for Bayesian linear regression; GGN plumbing; BMR removals; bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("asdl")

from pyro_prune.laplace import (  # noqa: E402
    SUPPORTED_LAYERS,
    fit_evidence,
    laplace_posterior,
    laplace_prune,
    laplace_removals,
    log_evidence,
)
from pyro_prune.models import bayesianize  # noqa: E402


def _closed_form(x: torch.Tensor, y: torch.Tensor, s: float, sigma: float) -> float:
    """log p(Y | X) of y_k ~ N(0, sigma^2 I + s^2 X X^T), independently per output k."""
    n = x.shape[0]
    cov = sigma**2 * torch.eye(n, dtype=x.dtype) + s**2 * (x @ x.T)
    mvn = torch.distributions.MultivariateNormal(torch.zeros(n, dtype=x.dtype), covariance_matrix=cov)
    return float(sum(mvn.log_prob(y[:, k]) for k in range(y.shape[1])))


def _map(x: torch.Tensor, y: torch.Tensor, s: float, sigma: float) -> torch.Tensor:
    precision = x.T @ x / sigma**2 + torch.eye(x.shape[1], dtype=x.dtype) / s**2
    return torch.linalg.solve(precision, x.T @ y / sigma**2).T


def _regression(n: int, d: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(d, k, generator=g, dtype=torch.float64)
    return x, x @ w + 0.3 * torch.randn(n, k, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("hessian", ["full", "kron"])
@pytest.mark.parametrize(("n", "d", "k", "s", "sigma"), [(40, 5, 1, 0.7, 0.4), (64, 8, 3, 2.0, 0.25)])
def test_linear_gaussian_evidence_is_exact(hessian: str, n: int, d: int, k: int, s: float, sigma: float) -> None:
    x, y = _regression(n, d, k)
    net = nn.Linear(d, k, bias=False).double()
    with torch.no_grad():
        net.weight.copy_(_map(x, y, s, sigma))
    ev = log_evidence(net, (x, y), prior_scale=s, likelihood="gaussian", obs_scale=sigma, hessian=hessian)
    assert float(ev) == pytest.approx(_closed_form(x, y, s, sigma), rel=1e-6)
    assert ev.log_evidence == pytest.approx(ev.log_likelihood + ev.log_occam)
    assert ev.num_params == d * k and ev.num_data == n


@pytest.mark.parametrize("hessian", ["full", "kron"])
def test_pruned_linear_evidence_is_exact(hessian: str) -> None:
    x, y = _regression(50, 6, 2, seed=1)
    s, sigma = 1.3, 0.5
    keep = torch.tensor([True, False, True, True, False, True])
    net = nn.Linear(6, 2, bias=False).double()
    with torch.no_grad():  # the MAP of the pruned model; the removed inputs' weights are garbage
        net.weight.copy_(torch.randn(2, 6, dtype=torch.float64))
        net.weight[:, keep] = _map(x[:, keep], y, s, sigma)
    before = net.weight.detach().clone()
    mask = {"weight": keep.expand(2, 6).clone()}
    ev = log_evidence(net, (x, y), prior_scale=s, likelihood="gaussian", obs_scale=sigma, hessian=hessian, mask=mask)
    assert float(ev) == pytest.approx(_closed_form(x[:, keep], y, s, sigma), rel=1e-6)
    assert ev.num_params == 8
    assert torch.equal(net.weight, before)  # the weights are restored


def test_diagonal_evidence_uses_the_diagonal_of_the_gauss_newton_matrix() -> None:
    x, y = _regression(30, 4, 1, seed=2)
    s, sigma = 0.9, 0.6
    net = nn.Linear(4, 1).double()
    with torch.no_grad():
        net.weight.copy_(_map(x, y, s, sigma)[:, :4])
    ev = log_evidence(net, (x, y), prior_scale=s, likelihood="gaussian", obs_scale=sigma, hessian="diag")
    ones = torch.cat([x, torch.ones(30, 1, dtype=torch.float64)], 1)
    h = (ones**2).sum(0) / sigma**2  # diag of J^T J / sigma^2 over [weight, bias]
    w = torch.cat([net.weight.detach().reshape(-1), net.bias.detach()])
    resid = y - net(x).detach()
    ll = -0.5 * float(resid.square().sum()) / sigma**2 - 30 * math.log(sigma) - 15 * math.log(2 * math.pi)
    occam = (-0.5 * float(w.square().sum()) / s**2 - 5 * math.log(s)
             - 0.5 * float(torch.log(h + 1 / s**2).sum()))
    assert float(ev) == pytest.approx(ll + occam, rel=1e-10)


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()


def _ggn(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """sum_n J_n^T (diag p_n - p_n p_n^T) J_n by autograd (the categorical GGN)."""
    params = dict(net.named_parameters())
    names = list(params)

    def f(*flat: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(net, dict(zip(names, flat)), (x,))

    jac = torch.autograd.functional.jacobian(f, tuple(params.values()))
    j = torch.cat([t.reshape(x.shape[0], 3, -1) for t in jac], dim=2)  # [n, classes, d]
    p = F.softmax(net(x), -1).detach()
    lam = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    return torch.einsum("nci,ncd,ndj->ij", j, lam, j)


def test_categorical_curvature_is_the_gauss_newton_matrix() -> None:
    net = _mlp()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(25, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (25,), generator=g)
    ggn = _ggn(net, x)
    s = 0.8
    d = ggn.shape[0]
    precision = ggn + torch.eye(d, dtype=torch.float64) / s**2
    w = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    ll = -float(F.cross_entropy(net(x).detach(), y, reduction="sum"))
    occam = -0.5 * float(w.square().sum()) / s**2 - d * math.log(s) - 0.5 * float(torch.logdet(precision))
    assert float(log_evidence(net, (x, y), prior_scale=s, hessian="full")) == pytest.approx(ll + occam, rel=1e-9)
    diag = torch.log(ggn.diagonal() + 1 / s**2).sum()
    ev = log_evidence(net, (x, y), prior_scale=s, hessian="diag")
    assert ev.log_det_precision == pytest.approx(float(diag), rel=1e-9)
    assert ev.accuracy == pytest.approx(float((net(x).argmax(-1) == y).double().mean()))
    # a mask drops rows and columns of the full precision
    keep = torch.rand(7, 5, generator=g) > 0.4
    kept = torch.cat([keep.reshape(-1), torch.ones(d - 35, dtype=torch.bool)])
    with torch.no_grad():
        saved = net[0].weight.detach().clone()
        net[0].weight.mul_(keep)
        ggn_p = _ggn(net, x)
        lp = -float(F.cross_entropy(net(x), y, reduction="sum"))
        wp = torch.cat([p.detach().reshape(-1) for p in net.parameters()])[kept]
        net[0].weight.copy_(saved)
    sub = ggn_p[kept][:, kept] + torch.eye(int(kept.sum()), dtype=torch.float64) / s**2
    expected = lp - 0.5 * float(wp.square().sum()) / s**2 - int(kept.sum()) * math.log(s) - 0.5 * float(torch.logdet(sub))
    ev = log_evidence(net, (x, y), prior_scale=s, hessian="full", mask={"0.weight": keep})
    assert float(ev) == pytest.approx(expected, rel=1e-9)


def test_fit_evidence_finds_the_maximum_over_the_scales() -> None:
    x, y = _regression(60, 4, 1, seed=4)
    net = nn.Linear(4, 1, bias=False).double()
    with torch.no_grad():
        net.weight.copy_(_map(x, y, 1.0, 0.3))
    best = fit_evidence(net, (x, y), likelihood="gaussian", obs_scale=1.0, hessian="full")
    for ds, dsig in ((1.2, 1.0), (1 / 1.2, 1.0), (1.0, 1.2), (1.0, 1 / 1.2)):
        other = log_evidence(net, (x, y), prior_scale=best.prior_scale * ds, likelihood="gaussian",
                             obs_scale=best.obs_scale * dsig, hessian="full")
        assert float(other) < float(best)
    assert 0.2 < best.obs_scale < 0.45  # the data's noise is 0.3


def test_curvature_subset_scales_to_the_whole_data() -> None:
    x, y = _regression(80, 3, 1, seed=5)
    net = nn.Linear(3, 1, bias=False).double()
    full = log_evidence(net, (x, y), prior_scale=1.0, likelihood="gaussian", obs_scale=0.5, hessian="full")
    part = log_evidence(net, (x, y), prior_scale=1.0, likelihood="gaussian", obs_scale=0.5, hessian="full",
                        curvature_subset=40)
    assert part.log_likelihood == pytest.approx(full.log_likelihood)
    assert part.log_det_precision == pytest.approx(full.log_det_precision, rel=0.05)


class _ClassicNet(nn.Module):
    """A LeNet written the way the PyTorch tutorials write it (functional ops in forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3)
        self.fc1 = nn.Linear(6 * 2 * 2, 16)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        return self.fc2(F.relu(self.fc1(x)))


def _trained_classic(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    x = torch.randn(120, 1, 14, 14)
    y = (x[:, 0, :7].mean((1, 2)) > 0).long() + (x[:, 0, 7:].mean((1, 2)) > 0).long()
    net = _ClassicNet()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(60):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval(), x, y


@pytest.mark.parametrize("hessian", ["diag", "kron"])
def test_laplace_prune_removes_dead_neurons_and_makes_a_smaller_plain_module(hessian: str) -> None:
    net, x, y = _trained_classic()
    with torch.no_grad():  # four fc1 neurons the network does not use: at the MAP they are 0
        net.fc1.weight[:4] = 0.0
        net.fc1.bias[:4] = 0.0
        net.fc2.weight[:, :4] = 0.0
    small, removals = laplace_prune(net, (x, y), hessian=hessian, reduced_mean=False)
    assert set(removals) == {"bn1_gate", "conv2_gate", "fc1_gate"}
    if hessian == "diag":  # zero curvature and zero weights: dF = 0 exactly, removed
        assert bool(removals["fc1_gate"][:4].all())
    assert all(not bool(r.all()) for r in removals.values())
    n_params = sum(p.numel() for p in small.parameters())
    assert n_params < sum(p.numel() for p in net.parameters())
    model = bayesianize(net, gate="mask").eval()
    for name, gate in model.gates().items():
        gate.prune(removals[name])
    with torch.no_grad():
        assert torch.allclose(small(x), model.predict(x), atol=1e-5)


def test_laplace_removals_agree_with_gaussian_bmr_of_the_posterior() -> None:
    from pyro_prune.reduction import delta_f_gaussian

    net, x, y = _trained_classic(seed=1)
    model = bayesianize(net, gate="mask")
    removals = laplace_removals(model, (x, y), prior_scale=0.5, hessian="diag")
    post = laplace_posterior(model.net, (x, y), prior_scale=0.5).flat_directions_at_prior()
    def mean_field(p: object, name: str) -> torch.Tensor:
        return delta_f_gaussian(p.mean[name].double(), p.variance[name].sqrt(), prior_scale=0.5)  # type: ignore[attr-defined]

    # an fc1 neuron's weights: its row of fc1.weight, its fc1.bias entry, its column of fc2.weight
    df = mean_field(post, "fc1.weight").sum(1) + mean_field(post, "fc1.bias") + mean_field(post, "fc2.weight").sum(0)
    tie = -1e-9 * (24 + 1 + 3)
    assert torch.equal(removals["fc1_gate"], df >= tie)
    kron = laplace_posterior(model.net, (x, y), prior_scale=0.5, hessian="kron").flat_directions_at_prior()
    df = kron.row_delta_f("fc1.weight") + mean_field(kron, "fc1.bias") + kron.column_delta_f("fc2.weight")
    assert torch.equal(laplace_removals(model, (x, y), prior_scale=0.5)["fc1_gate"], df >= tie)
    weights = laplace_removals(net, (x, y), structure="weight", prior_scale=0.5)
    assert set(weights) == {"conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"}
    assert weights["fc1.weight"].shape == (16, 24) and weights["fc1.weight"].dtype == torch.bool


class _Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.temperature = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) / self.temperature


def test_bad_input_is_named() -> None:
    x, y = torch.randn(10, 3), torch.randint(0, 2, (10,))
    with pytest.raises(ValueError, match=r"layer '<root>' \(_Scaled.*supported kinds: Linear, Conv2d"):
        log_evidence(_Scaled(), (x, y), prior_scale=1.0)
    net = nn.Sequential(nn.Linear(3, 4), nn.PReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"layer '1' \(PReLU"):
        log_evidence(net, (x, y), prior_scale=1.0)
    assert nn.PReLU not in SUPPORTED_LAYERS
    lin = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="obs_scale"):
        log_evidence(lin, (x, y.float()[:, None].expand(10, 2)), prior_scale=1.0, likelihood="gaussian")
    with pytest.raises(ValueError, match="prior_scale"):
        log_evidence(lin, (x, y), prior_scale=0.0)
    with pytest.raises(ValueError, match="hessian must be one of"):
        log_evidence(lin, (x, y), prior_scale=1.0, hessian="block")
    with pytest.raises(ValueError, match="not a parameter"):
        log_evidence(lin, (x, y), prior_scale=1.0, mask={"fc.weight": torch.ones(2, 3, dtype=torch.bool)})
    with torch.no_grad():
        lin.weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite curvature .* 'weight'"):
        log_evidence(lin, (x, y), prior_scale=1.0)


def test_kron_evidence_of_single_removed_weights() -> None:
    """One removed weight: the Schur complement is its marginal variance, exact; more: a bound."""
    x, y = _regression(50, 5, 2, seed=6)
    s, sigma = 1.1, 0.5
    net = nn.Linear(5, 2, bias=False).double()
    with torch.no_grad():
        net.weight.copy_(_map(x, y, s, sigma))
    one = torch.ones(2, 5, dtype=torch.bool)
    one[1, 3] = False
    options = dict(prior_scale=s, likelihood="gaussian", obs_scale=sigma)
    kron = log_evidence(net, (x, y), hessian="kron", mask={"weight": one}, **options)
    full = log_evidence(net, (x, y), hessian="full", mask={"weight": one}, **options)
    assert kron.log_det_precision == pytest.approx(full.log_det_precision, rel=1e-9)
    assert float(kron) == pytest.approx(float(full), rel=1e-9)
    many = torch.ones(2, 5, dtype=torch.bool)
    many[0, 1] = many[1, 3] = many[1, 4] = False
    kron = log_evidence(net, (x, y), hessian="kron", mask={"weight": many}, **options)
    full = log_evidence(net, (x, y), hessian="full", mask={"weight": many}, **options)
    assert kron.log_det_precision >= full.log_det_precision - 1e-9  # Hadamard: Occam understated
    assert kron.log_det_precision == pytest.approx(full.log_det_precision, abs=1.0)


def test_row_delta_f_is_the_savage_dickey_ratio_of_the_dense_kronecker_posterior() -> None:
    net, x, y = _trained_classic(seed=2)
    post = laplace_posterior(net, (x, y), prior_scale=0.7, hessian="kron")
    eb, qb, ea, qa, n = post.kron["fc1.weight"]
    b = qb @ torch.diag(eb) @ qb.T
    a = qa @ torch.diag(ea) @ qa.T
    precision = torch.kron(b, a) / n + torch.eye(b.shape[0] * a.shape[0], dtype=torch.float64) / 0.7**2
    cov = torch.linalg.inv(precision)
    m = post.mean["fc1.weight"].double()
    rows, cols = m.shape
    expected = []
    for i in range(rows):
        block = cov[i * cols:(i + 1) * cols, i * cols:(i + 1) * cols]
        q = torch.distributions.MultivariateNormal(m[i], covariance_matrix=block)
        prior = torch.distributions.Normal(0.0, 0.7)
        expected.append(float(q.log_prob(torch.zeros(cols, dtype=torch.float64))
                              - prior.log_prob(torch.zeros(cols, dtype=torch.float64)).sum()))
    assert post.row_delta_f("fc1.weight").tolist() == pytest.approx(expected, rel=1e-6, abs=1e-6)
    # the marginal variances are the diagonal of the same covariance
    assert post.variance["fc1.weight"].reshape(-1).tolist() == pytest.approx(cov.diagonal().tolist(), rel=1e-6)
    with pytest.raises(ValueError, match="Kronecker"):
        post.row_delta_f("bn1.weight")


@pytest.mark.parametrize("hessian", ["full", "kron"])
def test_reduced_mean_of_a_linear_gaussian_model_is_the_map_of_the_pruned_model(hessian: str) -> None:
    """Exact posterior: the conditional mean given the removed weights at 0 is the pruned model's MAP."""
    x, y = _regression(60, 6, 3, seed=3)
    s, sigma = 0.9, 0.4
    net = nn.Linear(6, 3, bias=False).double()
    with torch.no_grad():
        net.weight.copy_(_map(x, y, s, sigma))
    post = laplace_posterior(net, (x, y), prior_scale=s, likelihood="gaussian", obs_scale=sigma, hessian=hessian)
    keep = torch.tensor([True, False, True, True, False, True])
    removed = {"weight": (~keep).expand(3, 6).clone()}
    reduced = post.reduced_mean(removed)["weight"]
    assert reduced[:, keep].reshape(-1).tolist() == pytest.approx(
        _map(x[:, keep], y, s, sigma).reshape(-1).tolist(), rel=1e-8, abs=1e-10)
    assert bool((reduced[:, ~keep] == 0).all())
    assert torch.equal(post.reduced_mean({})["weight"], net.weight.detach())


def _dense_kron(post: object, name: str, s: float) -> tuple[torch.Tensor, torch.Tensor]:
    eb, qb, ea, qa, n = post.kron[name]  # type: ignore[attr-defined]
    b, a = qb @ torch.diag(eb) @ qb.T, qa @ torch.diag(ea) @ qa.T
    precision = torch.kron(b, a) / n + torch.eye(b.shape[0] * a.shape[0], dtype=torch.float64) / s**2
    return precision, torch.linalg.inv(precision)


def test_reduced_mean_is_the_conditional_mean_of_the_dense_kronecker_posterior() -> None:
    net, x, y = _trained_classic(seed=3)
    post = laplace_posterior(net, (x, y), prior_scale=0.7, hessian="kron")
    _, cov = _dense_kron(post, "fc1.weight", 0.7)
    m = post.mean["fc1.weight"].double()
    removed = torch.zeros_like(m, dtype=torch.bool)
    removed[[1, 5, 9]] = True  # three output rows (neurons) ...
    removed[:, 4:8] = True  # ... and one input channel's four columns
    r = removed.reshape(-1)
    expected = m.reshape(-1).clone()  # m_K - Sigma_KR Sigma_RR^-1 m_R
    expected[~r] -= cov[~r][:, r] @ torch.linalg.solve(cov[r][:, r], expected[r])
    expected[r] = 0.0
    bias_removed = torch.zeros(16, dtype=torch.bool)
    bias_removed[[1, 5, 9]] = True
    reduced = post.reduced_mean({"fc1.weight": removed, "fc1.bias": bias_removed})
    assert reduced["fc1.weight"].reshape(-1).tolist() == pytest.approx(expected.tolist(), rel=1e-6, abs=1e-9)
    # a dense block (the bias under kron): the same conditional mean from its own precision
    pb = post.outer["fc1.bias"] + torch.eye(16, dtype=torch.float64) / 0.7**2
    cb = torch.linalg.inv(pb)
    mb = post.mean["fc1.bias"].double().clone()
    mb[~bias_removed] -= cb[~bias_removed][:, bias_removed] @ torch.linalg.solve(
        cb[bias_removed][:, bias_removed], mb[bias_removed])
    mb[bias_removed] = 0.0
    assert reduced["fc1.bias"].tolist() == pytest.approx(mb.tolist(), rel=1e-6, abs=1e-9)
    # the other layers are independent blocks under K-FAC: unchanged
    assert torch.equal(reduced["fc2.weight"], post.mean["fc2.weight"].double())
    single = torch.zeros_like(removed)
    single[0, 0] = True
    with pytest.raises(ValueError, match="whole rows and input columns"):
        post.reduced_mean({"fc1.weight": single})
    with pytest.raises(ValueError, match="bool tensor of shape"):
        post.reduced_mean({"fc1.weight": removed[:2]})


def test_column_groups_are_removed_jointly_under_the_dense_kronecker_posterior() -> None:
    net, x, y = _trained_classic(seed=4)
    post = laplace_posterior(net, (x, y), prior_scale=0.6, hessian="kron")
    _, cov = _dense_kron(post, "fc1.weight", 0.6)
    m = post.mean["fc1.weight"].double()
    rows, cols = m.shape
    prior = torch.distributions.Normal(torch.zeros((), dtype=torch.float64), 0.6)
    expected = []
    for g in range(6):  # conv2's six channels, 2 x 2 columns each after flatten
        idx = torch.tensor([i * cols + j for i in range(rows) for j in range(4 * g, 4 * g + 4)])
        q = torch.distributions.MultivariateNormal(m.reshape(-1)[idx], covariance_matrix=cov[idx][:, idx])
        zero = torch.zeros(len(idx), dtype=torch.float64)
        expected.append(float(q.log_prob(zero) - prior.log_prob(zero).sum()))
    assert post.column_delta_f("fc1.weight", 4).tolist() == pytest.approx(expected, rel=1e-6, abs=1e-6)
    with pytest.raises(ValueError, match="positive divisor"):
        post.column_delta_f("fc1.weight", 5)


def test_laplace_prune_moves_the_kept_weights_to_the_reduced_posterior_mean() -> None:
    net, x, y = _trained_classic(seed=5)
    with torch.no_grad():  # four fc1 neurons the network does not need
        net.fc1.weight[:4] *= 1e-3
        net.fc1.bias[:4] = 0.0
    small, removals = laplace_prune(net, (x, y), prior_scale=0.5)
    plain, same = laplace_prune(net, (x, y), prior_scale=0.5, reduced_mean=False)
    assert all(torch.equal(removals[k], same[k]) for k in removals)
    gone = removals["fc1_gate"]
    assert bool(gone.any())
    post = laplace_posterior(bayesianize(net, gate="mask").net, (x, y), prior_scale=0.5, hessian="kron")
    post = post.flat_directions_at_prior()
    _, cov = _dense_kron(post, "fc2.weight", 0.5)  # fc2 reads fc1's neurons: its columns compensate
    m = post.mean["fc2.weight"].double()
    r = gone[None, :].expand_as(m).reshape(-1)
    expected = m.reshape(-1).clone()
    expected[~r] -= cov[~r][:, r] @ torch.linalg.solve(cov[r][:, r], expected[r])
    kept_fc2 = [mod for mod in small.modules() if isinstance(mod, nn.Linear)][-1].weight.double()
    assert kept_fc2.reshape(-1).tolist() == pytest.approx(expected[~r].tolist(), rel=1e-5, abs=1e-7)
    unchanged = [mod for mod in plain.modules() if isinstance(mod, nn.Linear)][-1].weight.double()
    assert torch.equal(unchanged, net.fc2.weight.detach()[:, ~gone].double())
    with pytest.raises(TypeError, match="reduced_mean"):
        laplace_prune(net, (x, y), reduced_mean="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("hessian", ["diag", "kron", "full"])
def test_a_unit_no_example_activates_goes_to_the_prior_mean_and_is_removed(hessian: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(200, 4)
    y = (x[:, 0] + x[:, 1] > 0).long()
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(100):  # MAP-like under N(0, 1), not saturated
        opt.zero_grad()
        (F.cross_entropy(net(x), y) + sum(p.square().sum() for p in net.parameters()) / 400).backward()
        opt.step()
    with torch.no_grad():  # unit 2: small weights left by training, and a bias no input overcomes
        net[0].weight[2] = 1e-3
        net[0].bias[2] = -50.0
        net[2].weight[:, 2] = torch.tensor([2e-3, -1e-3])
    post = laplace_posterior(net, (x, y), prior_scale=1.0, hessian=hessian)
    flat = post.flat_directions_at_prior()
    assert float(flat.mean["0.weight"][2].abs().max()) < 1e-8 and float(flat.mean["2.weight"][:, 2].abs().max()) < 1e-8
    assert float(flat.mean["0.bias"][2]) == pytest.approx(0.0, abs=1e-8)
    assert torch.equal(post.mean["0.weight"], net[0].weight.detach())  # the original is unchanged
    with torch.no_grad():  # no training prediction changes (the logits may shift together: softmax is flat there)
        ref = net(x).softmax(-1)
        net[0].weight.copy_(flat.mean["0.weight"])
        net[0].bias.copy_(flat.mean["0.bias"])
        net[2].weight.copy_(flat.mean["2.weight"])
        assert torch.allclose(net(x).softmax(-1), ref, atol=1e-5)
    model = bayesianize(net, gate="mask")
    assert bool(laplace_removals(model, (x, y), prior_scale=1.0, hessian=hessian)["0_gate"][2])
    with pytest.raises(ValueError, match="rtol"):
        post.flat_directions_at_prior(1.5)


class _TokenLM(nn.Module):
    """Per-position language model: embedding, one hidden layer, logits ``[N, T, V]``."""

    def __init__(self, vocab: int = 12) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 8)
        self.hidden = nn.Linear(8, 16)
        self.head = nn.Linear(16, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.hidden(self.embed(ids))))


class _OneTokenClassifier(nn.Module):
    """The same network on single tokens ``[K]``: logits ``[K, V]`` (a classifier)."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm(ids[:, None])[:, 0]


class _CausalTokenLM(_TokenLM):
    """A causal language model as a user writes one: embedding, a hidden layer, the running
    mean over the positions so far (each token reads those before it), a head."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.hidden(self.embed(ids))
        steps = torch.arange(1, ids.shape[1] + 1, dtype=h.dtype)[:, None]
        return self.head(torch.relu(h.cumsum(1) / steps))


@pytest.mark.parametrize("hessian", ["kron", "diag"])
def test_ignored_tokens_at_the_end_of_a_causal_model_are_as_if_cut_off(hessian: str) -> None:
    """Labels -100 on the last two tokens of every sequence of a causal model: nothing counted
    depends on those positions, so the evidence (K-FAC's too) is that of the sequences cut
    before them. The ignored prompt at the start is read by the later tokens: the hidden
    layer's K-FAC keeps its rows (the head's leaves them out), in both."""
    torch.manual_seed(0)
    lm = _CausalTokenLM()
    g = torch.Generator().manual_seed(1)
    seq = (torch.randint(0, 12, (40, 1), generator=g) + torch.arange(9)) % 12
    x, y = seq[:, :-1], seq[:, 1:].clone()
    y[:, :2] = -100
    ends = y.clone()
    ends[:, -2:] = -100
    whole = log_evidence(lm, (x, ends), prior_scale=1.0, hessian=hessian)
    cut = log_evidence(lm, (x[:, :-2], y[:, :-2]), prior_scale=1.0, hessian=hessian)
    assert whole.log_likelihood == pytest.approx(cut.log_likelihood, rel=1e-9)
    assert whole.log_det_precision == pytest.approx(cut.log_det_precision, rel=1e-6)
    assert float(whole) == pytest.approx(float(cut), rel=1e-6)


@pytest.mark.parametrize("hessian", ["diag", "full", "kron"])
def test_token_labels_give_the_evidence_of_their_counted_tokens(hessian: str) -> None:
    """Logits [N, T, V] with token labels [N, T], some -100: the Laplace evidence is that of a
    classifier on the counted tokens alone (each token's logits depend on it alone, so the
    two models are one), also with K-FAC: its input factor and normaliser leave out the rows
    of ignored tokens, which no counted token depends on."""
    torch.manual_seed(0)
    lm = _TokenLM()
    g = torch.Generator().manual_seed(0)
    seq = (torch.randint(0, 12, (40, 1), generator=g) + torch.arange(9)) % 12
    x, y = seq[:, :-1], seq[:, 1:].clone()
    for ignore in (False, True):
        labels = y.clone()
        if ignore:
            labels[:, :3] = -100
            labels[::2, 5:] = -100
        kept = labels != -100
        tokens = log_evidence(lm, (x, labels), prior_scale=1.0, hessian=hessian)
        single = log_evidence(_OneTokenClassifier(lm), (x[kept], labels[kept]), prior_scale=1.0, hessian=hessian)
        assert tokens.log_likelihood == pytest.approx(single.log_likelihood, rel=1e-9)
        assert tokens.log_det_precision == pytest.approx(single.log_det_precision, rel=1e-6)
        assert float(tokens) == pytest.approx(float(single), rel=1e-6)
        assert tokens.accuracy == pytest.approx(single.accuracy)
        with torch.no_grad():
            log_lik = -F.cross_entropy(lm(x).double().flatten(0, 1), labels.flatten(), reduction="sum")
        assert tokens.log_likelihood == pytest.approx(float(log_lik), rel=1e-9)
