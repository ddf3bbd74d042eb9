from __future__ import annotations

import copy
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer.autoguide import AutoDelta
from torch.utils.data import TensorDataset

from pyro_prune.inference import fit
from pyro_prune.inference.elbo import fast_elbo_loss, pyro_elbo_loss
from pyro_prune.models import CNN, FCN, MAPNet, PrunableNet, autodelta_init, with_sample_priors
from pyro_prune.models.fcn import ensure_weight_masks, prunable_layers, weight_masks


def _tiny_data(n: int = 48, d: int = 12, classes: int = 3, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    y = (x[:, :classes].argmax(-1) + (torch.rand(n, generator=g) < 0.1).long()) % classes
    return x, y


def _direct_log_joint(model: MAPNet, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """sum_n log softmax(net(x_n))[y_n] + sum_i log N(w_i | 0, sigma^2), elementwise."""
    loglik = F.log_softmax(model.net(x), -1).gather(1, y[:, None]).sum()
    prior = dist.Normal(torch.zeros((), dtype=x.dtype), torch.tensor(model.prior_scale, dtype=x.dtype))
    logp = sum(prior.log_prob(p).sum() for p in model.net.parameters())
    return loglik + logp


def _pyro_log_joint(model: PrunableNet, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    model.num_data = len(x)
    return poutine.trace(model).get_trace(x, y).log_prob_sum()


def test_fcn_architecture_and_parameter_count() -> None:
    net = FCN(784, 10)
    assert [n for n in prunable_layers(net)] == ["fc1", "fc2", "fc3", "out"]
    widths = [784, 512, 256, 128, 10]
    expected = sum(a * b + b for a, b in zip(widths, widths[1:]))
    assert sum(p.numel() for p in net.parameters()) == expected
    assert net.prior_scale == 1.0
    out = net.predict(torch.randn(5, 1, 28, 28))  # images are flattened
    assert out.shape == (5, 10)


@pytest.mark.parametrize("in_channels,image_size,num_classes", [(1, 28, 10), (3, 32, 10), (1, 8, 4), (2, 5, 3)])
def test_cnn_shapes(in_channels: int, image_size: int, num_classes: int) -> None:
    net = CNN(in_channels, num_classes, image_size)
    side = image_size // 4
    assert net.net.fc1.in_features == 64 * side * side
    assert [n for n in prunable_layers(net)] == ["conv1", "conv2", "fc1", "fc2", "fc3", "out"]
    assert [net.net.fc1.out_features, net.net.fc2.out_features, net.net.fc3.out_features] == [256, 128, 64]
    assert net.net.conv1.out_channels == 32 and net.net.conv2.out_channels == 64
    out = net.predict(torch.randn(3, in_channels, image_size, image_size))
    assert out.shape == (3, num_classes)
    assert net.example_input(2).shape == (2, in_channels, image_size, image_size)


def test_masks_are_bool_buffers_in_the_state_dict() -> None:
    net = CNN(1, 10, 8, channels=(4, 6), hidden=(8, 8, 8))
    masks = weight_masks(net)
    assert list(masks) == list(prunable_layers(net))
    for name, mask in masks.items():
        layer = prunable_layers(net)[name]
        assert mask.dtype == torch.bool and mask.shape == layer.weight.shape and bool(mask.all())
        assert f"net.{name}.weight_mask" in net.state_dict()
    assert ensure_weight_masks(net) == masks  # idempotent: the same buffers
    assert all(a is b for a, b in zip(ensure_weight_masks(net).values(), masks.values()))


@pytest.mark.parametrize("sigma", [0.05, 1.0, 3.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_prior_matches_normal_log_prob_and_its_gradient(sigma: float, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    net = FCN(12, 3, hidden=(7, 5), prior_scale=sigma).to(dtype)
    params = list(net.net.parameters())
    ref = sum(dist.Normal(torch.zeros((), dtype=dtype), torch.tensor(sigma, dtype=dtype)).log_prob(p).sum()
              for p in params)
    value = net.log_prior()
    assert value.dtype == dtype
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    assert float(value.detach()) == pytest.approx(float(ref.detach()), rel=tol)
    grads = torch.autograd.grad(value, params)
    for p, g in zip(params, grads):
        torch.testing.assert_close(g, -p.detach() / sigma**2)
    # float64 evaluation of a float32 model
    if dtype == torch.float32:
        normal64 = dist.Normal(torch.zeros((), dtype=torch.float64), torch.tensor(sigma, dtype=torch.float64))
        ref64 = sum(normal64.log_prob(p.detach().double()).sum() for p in params)
        assert float(net.log_prior(torch.float64).detach()) == pytest.approx(float(ref64), rel=1e-12)


def test_pyro_log_joint_is_log_likelihood_plus_log_prior() -> None:
    torch.manual_seed(1)
    x, y = _tiny_data(dtype=torch.float64)
    net = FCN(12, 3, hidden=(6, 5, 4), prior_scale=0.7).double()
    lj = _pyro_log_joint(net, x, y)
    assert float(lj.detach()) == pytest.approx(float(_direct_log_joint(net, x, y).detach()), rel=1e-12)


def test_fast_loss_is_the_negative_log_joint_estimate() -> None:
    """fit's fast engine minimises (N/B) * minibatch NLL - log p(w), the Pyro model's -log joint."""
    torch.manual_seed(2)
    x, y = _tiny_data(n=40, dtype=torch.float64)
    net = FCN(12, 3, hidden=(6, 5), prior_scale=0.5).double()
    net.num_data = 200
    loss, _ = fast_elbo_loss(net, x, y)
    tr = poutine.trace(net).get_trace(x, y)  # plate scales the batch by 200 / 40
    assert float(loss.detach()) == pytest.approx(-float(tr.log_prob_sum().detach()), rel=1e-12)


def test_pyro_sample_priors_with_autodelta_give_the_same_log_joint() -> None:
    pyro.clear_param_store()
    torch.manual_seed(3)
    x, y = _tiny_data(dtype=torch.float64)
    net = FCN(12, 3, hidden=(6, 5), prior_scale=0.8).double()
    pmodel = with_sample_priors(net)
    pmodel.num_data = len(x)
    guide = AutoDelta(pmodel, init_loc_fn=autodelta_init(net))
    guide_tr = poutine.trace(guide).get_trace(x, y)
    sites = {n for n, s in guide_tr.nodes.items() if s["type"] == "sample"}
    assert sites == {f"net.{n}" for n, _ in net.net.named_parameters()}
    model_tr = poutine.trace(poutine.replay(pmodel, trace=guide_tr)).get_trace(x, y)
    assert float(model_tr.log_prob_sum()) == pytest.approx(float(_pyro_log_joint(net, x, y)), rel=1e-12)
    # and the Pyro ELBO with the Delta guide is the same loss as the fast engine
    net.num_data = pmodel.num_data = 100
    fast, _ = fast_elbo_loss(net, x, y)
    slow = pyro_elbo_loss(pmodel, x, y, guide=guide)
    assert float(slow) == pytest.approx(float(fast), rel=1e-10)


def test_fit_with_autodelta_and_the_pyro_engine_matches_the_fast_engine() -> None:
    """The AutoDelta route (Pyro tracing) and the fast engine train the same MAP problem."""
    pyro.clear_param_store()
    torch.manual_seed(4)
    x, y = _tiny_data(n=96)
    net = FCN(12, 3, hidden=(16, 8))
    twin = copy.deepcopy(net)
    pmodel = with_sample_priors(net)
    guide = AutoDelta(pmodel, init_loc_fn=autodelta_init(net))
    kwargs = dict(epochs=8, batch_size=16, lr=1e-2, progress=False, seed=0, noise_lr=None)
    slow = fit(pmodel, TensorDataset(x, y), guide=guide, engine="pyro", **kwargs)
    fast = fit(twin, TensorDataset(x, y), engine="fast", **kwargs)
    assert slow.config["engine"] == "pyro" and fast.config["engine"] == "fast"
    slow_losses = [r["loss"] for r in slow.history]
    assert all(math.isfinite(v) for v in slow_losses) and slow_losses[-1] < slow_losses[0]
    assert slow_losses == pytest.approx([r["loss"] for r in fast.history], rel=1e-4)
    point = guide.median()  # predictions of the Pyro model need the guide's point values
    for name, p in twin.net.named_parameters():
        torch.testing.assert_close(point[f"net.{name}"].detach(), p.detach(), rtol=1e-4, atol=1e-5)
    with poutine.condition(data=point):
        acc = float((pmodel.predict(x).argmax(-1) == y).float().mean())
    assert acc == pytest.approx(fast.history[-1]["train_accuracy"])
    assert acc > 0.7


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="prior_scale"):
        FCN(4, 2, prior_scale=0.0)
    with pytest.raises(ValueError, match="prior_scale"):
        FCN(4, 2, prior_scale=float("inf"))
    with pytest.raises(TypeError, match="prior_scale"):
        FCN(4, 2, prior_scale="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="in_features"):
        FCN(0, 2)
    with pytest.raises(ValueError, match="hidden"):
        FCN(4, 2, hidden=[])
    with pytest.raises(ValueError, match="num_classes"):
        CNN(1, 0, 28)
    with pytest.raises(ValueError, match="image_size"):
        CNN(1, 10, 3)
    with pytest.raises(ValueError, match="kernel_size"):
        CNN(1, 10, 28, kernel_size=4)
    with pytest.raises(ValueError, match="channels"):
        CNN(1, 10, 28, channels=(8,))
    with pytest.raises(TypeError, match="MAPNet"):
        with_sample_priors(PrunableNet(torch.nn.Linear(3, 2)))
