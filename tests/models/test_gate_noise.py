from __future__ import annotations

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
