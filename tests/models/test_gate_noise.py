from __future__ import annotations

import math

import pyro
import pytest
import torch
from pyro import poutine

from pyro_prune.models import MultiplicativeNoise, NoiseMode, StructureMask, noise_mode


@pytest.mark.parametrize("dim,shape", [(-1, (4, 5)), (1, (4, 5, 3, 3)), (-1, (2, 7, 5))])
def test_mean_mode_scales_structures_by_expected_theta(dim: int, shape: tuple[int, ...]) -> None:
    layer = MultiplicativeNoise(5, dim).eval()
    with torch.no_grad():
        layer.loc.copy_(torch.linspace(-3.0, 0.0, 5))
    x = torch.randn(shape)
    out = layer(x)
    e = layer.expected_theta()
    view = [1] * len(shape)
    view[dim % len(shape)] = 5
    torch.testing.assert_close(out, x * e.view(view))


def test_per_example_draws_broadcast_over_channels() -> None:
    layer = MultiplicativeNoise(3, 1)
    x = torch.ones(6, 3, 2, 2)
    with noise_mode(layer, NoiseMode.REPARAM):
        out = layer(x)
    # one draw per example and channel, constant over the spatial positions
    assert out.shape == x.shape
    assert torch.all(out[:, :, 0, 0].unsqueeze(-1).unsqueeze(-1) == out)
    assert not torch.allclose(out[0], out[1])
    assert torch.all((out > 0) & (out <= 1.0))


class _FoldsTokens(torch.nn.Module):
    """A decoder block's habit (OPT): ``[batch, tokens, width]`` flattened to
    ``[batch * tokens, width]`` before a gated layer, unflattened after it."""

    def __init__(self, gate: MultiplicativeNoise) -> None:
        super().__init__()
        self.gate = gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(x.reshape(-1, x.shape[-1])).reshape(x.shape)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_per_example_draws_are_one_per_example_where_the_batch_is_folded_with_tokens(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    net = _FoldsTokens(MultiplicativeNoise(5, -1).to(dtype))
    with torch.no_grad():
        net.gate.log_scale.fill_(0.0)  # wide: draws of different examples differ clearly
    x = torch.ones(3, 4, 5, dtype=dtype)  # 3 examples of 4 tokens
    with noise_mode(net, NoiseMode.REPARAM, examples=3):
        out = net(x)
    # every token of an example carries its example's draw; the examples' draws differ
    torch.testing.assert_close(out, out[:, :1].expand_as(out), rtol=0, atol=0)
    assert not torch.allclose(out[0, 0], out[1, 0]) and not torch.allclose(out[1, 0], out[2, 0])
    # without the count, each row of the gate's own input is an example (one draw per token)
    with noise_mode(net, NoiseMode.REPARAM):
        per_row = net(x)
    assert not torch.allclose(per_row[0, 0], per_row[0, 1])


@pytest.mark.parametrize("path", ["loss", "predictive"])
def test_the_network_wide_draw_folds_as_the_layer_draw_does(path: str) -> None:
    """The training loss (the network-wide kernel) and the fast posterior predictive (each
    layer's draw) give every token of an example its example's draw."""
    from pyro_prune.inference.elbo import fast_elbo_loss
    from pyro_prune.models import bayesianize
    from pyro_prune.predictive import posterior_predictive

    class TokenMLP(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = torch.nn.Linear(6, 8), torch.nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.fc1(x.reshape(-1, 6)))  # [batch * tokens, 8]: the batch folded
            return self.fc2(h).reshape(x.shape[0], -1, 2).mean(1)

    torch.manual_seed(0)
    x = torch.randn(4, 3, 6)
    model = bayesianize(TokenMLP(), example_input=x[:2], num_data=4)
    gate = next(iter(model.gates().values()))
    with torch.no_grad():
        gate.log_scale.fill_(0.0)
    seen: list[torch.Tensor] = []
    handle = gate.register_forward_hook(lambda m, args, out: seen.append(out / args[0]))
    try:
        if path == "loss":
            loss, _ = fast_elbo_loss(model, x, torch.zeros(4, dtype=torch.long))
            assert torch.isfinite(loss)
        else:  # one draw per (draw, example): the 4 examples of a single draw
            draws = posterior_predictive(model, x, draws=1, engine="fast", output="logits")
            assert draws.shape == (1, 4, 2)
    finally:
        handle.remove()
    theta = seen[0].reshape(4, 3, 8)  # the multiplier each row met
    torch.testing.assert_close(theta, theta[:, :1].expand_as(theta), rtol=1e-6, atol=0)
    assert not torch.allclose(theta[0, 0], theta[1, 0])


def test_per_example_draws_refuse_rows_that_are_not_a_multiple_of_the_examples() -> None:
    layer = MultiplicativeNoise(5, -1)
    with noise_mode(layer, NoiseMode.REPARAM, examples=3), \
            pytest.raises(ValueError, match=r"drawn for 3 examples.*7 rows.*per_example_noise=False"):
        layer(torch.ones(7, 5))


def test_removed_structures_are_zero_in_every_mode() -> None:
    layer = MultiplicativeNoise(4, -1)
    layer.prune(torch.tensor([True, False, True, False]))
    x = torch.randn(8, 4)
    for mode in (NoiseMode.MEAN, NoiseMode.REPARAM):
        with noise_mode(layer, mode):
            out = layer(x)
        assert torch.all(out[:, [0, 2]] == 0)
        assert torch.all(out[:, [1, 3]] != 0)
    with noise_mode(layer, NoiseMode.SAMPLE):
        tr = poutine.trace(layer).get_trace(x)
    assert torch.all(tr.nodes["_RETURN"]["value"][:, [0, 2]] == 0)


def test_pruning_is_monotone_and_never_empties_a_layer() -> None:
    layer = MultiplicativeNoise(3, -1)
    assert layer.prune(torch.tensor([True, False, False])) == 1
    assert layer.prune(torch.tensor([False, False, False])) == 0
    assert layer.kept.tolist() == [False, True, True]
    with pytest.warns(RuntimeWarning, match="empty"):
        newly = layer.prune(torch.tensor([True, True, True]))
    assert newly == 1
    assert int(layer.kept.sum()) == 1 and not bool(layer.kept[0])


def test_kept_is_saved_in_state_dict_and_restored() -> None:
    layer = MultiplicativeNoise(3, -1)
    layer.prune(torch.tensor([False, True, False]))
    other = MultiplicativeNoise(3, -1)
    other.load_state_dict(layer.state_dict())
    assert other.kept.tolist() == [True, False, True]


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="num_structures"):
        MultiplicativeNoise(0)
    with pytest.raises(ValueError, match="log_low"):
        MultiplicativeNoise(3, log_low=0.0, log_high=-1.0)
    layer = MultiplicativeNoise(3)
    with pytest.raises(ValueError, match="remove"):
        layer.prune(torch.tensor([1, 0, 1]))
    with pytest.raises(ValueError, match="structures along dim"):
        layer.eval()(torch.randn(2, 4))


def test_sample_mode_is_a_plated_pyro_site_with_the_log_uniform_prior() -> None:
    layer = MultiplicativeNoise(4, -1)
    layer.site_name = "fc.theta"
    layer.prune(torch.tensor([False, True, False, False]))
    tr = poutine.trace(layer).get_trace(torch.randn(2, 4))
    site = tr.nodes["fc.theta"]
    assert site["fn"].batch_shape == (4,)
    assert [f.name for f in site["cond_indep_stack"]] == ["fc.theta_plate"]
    assert site["mask"].tolist() == [True, False, True, True]
    log_theta = site["value"].log()
    assert torch.all((log_theta >= -20) & (log_theta <= 0))
    guide_tr = poutine.trace(layer.guide_sample).get_trace()
    assert type(guide_tr.nodes["fc.theta"]["fn"]).__name__ == "TruncatedLogNormal"


def test_structure_mask_is_deterministic() -> None:
    mask = StructureMask(3, 1)
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(mask(x), x)
    mask.prune(torch.tensor([False, True, False]))
    out = mask(x)
    assert torch.all(out[:, 1] == 0)
    torch.testing.assert_close(out[:, [0, 2]], x[:, [0, 2]])
    pyro.clear_param_store()


@pytest.mark.parametrize("init_loc", [0.0, -2.0, -4.0])
def test_initial_signal_does_not_depend_on_init_loc(init_loc: float) -> None:
    """The layer multiplies by theta / theta_ref with log theta_ref = init_loc: scale ~1 at the start."""
    layer = MultiplicativeNoise(50, init_loc=init_loc)
    assert layer.reference_loc == init_loc and layer.signal_scale == pytest.approx(math.exp(-init_loc))
    x = torch.ones(400, 50)
    expected = 1.0 if init_loc < 0 else float(layer.expected_theta()[0])  # init 0: truncated at B = 0
    for mode in (NoiseMode.MEAN, NoiseMode.REPARAM):  # SAMPLE outside SVI draws from the prior
        with noise_mode(layer, mode), torch.no_grad():
            out = layer(x)
        assert float(out.mean()) == pytest.approx(expected, rel=0.02)
    # the posterior, the prior and the criteria see theta itself
    assert float(layer.expected_theta()[0].detach()) == pytest.approx(math.exp(init_loc), rel=0.02)
    torch.testing.assert_close(layer.output_scale(), layer.expected_theta() * layer.signal_scale)


def test_reference_loc_zero_multiplies_by_theta_itself() -> None:
    layer = MultiplicativeNoise(4, init_loc=-4.0, reference_loc=0.0).eval()
    assert layer.signal_scale == 1.0
    x = torch.randn(3, 4)
    torch.testing.assert_close(layer(x), x * layer.expected_theta())
    with pytest.raises(ValueError, match="reference_loc"):
        MultiplicativeNoise(4, reference_loc=float("nan"))


def test_a_deep_network_starts_alive_at_any_init_loc() -> None:
    """Without the reference, init_loc = -4 scales the 7-layer MLP's output by about e^-28."""
    from pyro_prune.models import MLP

    x = torch.randn(16, 20, generator=torch.Generator().manual_seed(0))
    outs = {}
    for init_loc, ref in ((0.0, None), (-4.0, None), (-4.0, 0.0)):
        torch.manual_seed(1)
        net = MLP(20, [30] * 7, 3, init_loc=init_loc, reference_loc=ref).eval()
        with torch.no_grad():  # how much of the input reaches the output
            outs[(init_loc, ref)] = float(net.net(x).std(0).mean())
    assert outs[(-4.0, None)] / outs[(0.0, None)] == pytest.approx(1.0, rel=0.1)
    assert outs[(-4.0, 0.0)] / outs[(0.0, None)] < 1e-6


def test_conversion_folds_the_signal_reference() -> None:
    """The converted network multiplies by E[theta] * kept / theta_ref, like the eval net."""
    from pyro_prune.convert import to_deterministic
    from pyro_prune.models import LeNet5

    torch.manual_seed(0)
    net = LeNet5(1, 3, 12, init_loc=-3.0).double()
    with torch.no_grad():
        for g in net.noise_layers().values():
            g.loc.uniform_(-5.0, -1.0)
            g.log_scale.uniform_(-3.0, 0.0)
            g.prune(torch.rand(g.num_structures) < 0.3)
    net.eval()
    x = torch.randn(4, 1, 12, 12, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(to_deterministic(net)(x), net.predict(x), rtol=1e-6, atol=1e-9)
