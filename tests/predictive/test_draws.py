"""Posterior predictive draws: shapes, common random numbers, the two engines, masks."""

from __future__ import annotations

import warnings

import pytest
import torch

from pyro_prune.predictive import apply_mask, empty_mask, kept_mask, posterior_predictive


@pytest.mark.parametrize("engine", ["pyro", "fast"])
@pytest.mark.parametrize("likelihood,output,shape", [
    ("categorical", "auto", (5, 7, 3)), ("categorical", "logits", (5, 7, 3)),
    ("categorical", "obs", (5, 7)), ("gaussian", "auto", (5, 7, 2)), ("gaussian", "obs", (5, 7, 2)),
])
def test_posterior_predictive_shapes(engine: str, likelihood: str, output: str, shape: tuple, bnn) -> None:
    net = bnn(likelihood, out=3 if likelihood == "categorical" else 2)
    net.num_data = 4  # smaller than the input batch: predictive draws must not care
    x = torch.randn(7, 4)
    draws = posterior_predictive(net, x, draws=5, engine=engine, output=output, draw_chunk=2, data_chunk=3)
    assert draws.shape == shape
    if likelihood == "categorical" and output == "auto":
        torch.testing.assert_close(draws.sum(-1), torch.ones(5, 7))
    assert net.num_data == 4


@pytest.mark.parametrize("engine", ["pyro", "fast"])
def test_common_random_numbers_and_untouched_rng(engine: str, bnn) -> None:
    net = bnn()
    x = torch.randn(6, 4)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = posterior_predictive(net, x, draws=4, engine=engine, seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    b = posterior_predictive(net, x, draws=4, engine=engine, seed=7)
    c = posterior_predictive(net, x, draws=4, engine=engine, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_pyro_and_fast_draws_have_the_same_marginals(bnn) -> None:
    net = bnn("gaussian", hidden=(5,), out=1, seed=1)
    x = torch.randn(3, 4)
    fast = posterior_predictive(net, x, draws=4000, engine="fast")[..., 0]
    slow = posterior_predictive(net, x, draws=250, engine="pyro", draw_chunk=125)[..., 0]
    se = (fast.var(0) / 4000 + slow.var(0) / 250).sqrt()
    assert torch.all((fast.mean(0) - slow.mean(0)).abs() < 4 * se)
    ratio = slow.var(0) / fast.var(0)
    assert torch.all((ratio > 0.65) & (ratio < 1.5))


def test_predictive_with_an_autoguide_needs_the_pyro_engine(bnn) -> None:
    from pyro.infer.autoguide import AutoNormal

    net = bnn()
    x = torch.randn(5, 4)
    guide = AutoNormal(net)
    from pyro_prune.models import NoiseMode, noise_mode

    with noise_mode(net.net, NoiseMode.SAMPLE):
        guide(x, torch.zeros(5, dtype=torch.long))  # create the autoguide's parameters
    draws = posterior_predictive(net, x, guide=guide, draws=3, engine="pyro")
    assert draws.shape == (3, 5, 3)
    with pytest.raises(ValueError, match="fast"):
        posterior_predictive(net, x, guide=guide, draws=3, engine="fast")


def test_apply_mask_is_temporary_and_checked(bnn) -> None:
    net = bnn()
    net.net.fc1_gate.prune(torch.tensor([True, False, False, False, False, False]))
    before = kept_mask(net)
    mask = {"fc1_gate": torch.tensor([True, True, False, True, True, True])}
    with apply_mask(net, mask):
        assert net.net.fc1_gate.kept.tolist() == [False, True, False, True, True, True]
    assert torch.equal(net.net.fc1_gate.kept, before["fc1_gate"])
    with apply_mask(net, empty_mask(net)):
        assert not bool(net.net.fc1_gate.kept.any())
    with pytest.raises(ValueError, match="unknown gate"):
        with apply_mask(net, {"nope": torch.ones(6, dtype=torch.bool)}):
            pass
    with pytest.raises(ValueError, match="bool tensor"):
        with apply_mask(net, {"fc1_gate": torch.ones(6)}):
            pass


def test_empty_network_outputs_the_output_bias_only(bnn) -> None:
    net = bnn(hidden=(5, 4))
    x = torch.randn(3, 4)
    with apply_mask(net, empty_mask(net)):
        out = net.predict(x)
    torch.testing.assert_close(out, net.net.out.bias_loc.detach().expand(3, 3))


def test_the_engine_is_the_one_switch_of_fit_and_predictive(bnn) -> None:
    """``engine="auto"`` draws like fit's engine: fast with the model's own guide, Pyro with an
    autoguide."""
    from pyro.infer.autoguide import AutoNormal

    from pyro_prune.inference import Engine as FitEngine
    from pyro_prune.models import NoiseMode, noise_mode
    from pyro_prune.predictive import Engine

    assert Engine is FitEngine
    net = bnn()
    x = torch.randn(5, 4)
    torch.testing.assert_close(posterior_predictive(net, x, draws=3, engine="auto", seed=1),
                               posterior_predictive(net, x, draws=3, engine=Engine.FAST, seed=1))
    guide = AutoNormal(net)
    with noise_mode(net.net, NoiseMode.SAMPLE):
        guide(x, torch.zeros(5, dtype=torch.long))
    torch.testing.assert_close(posterior_predictive(net, x, guide=guide, draws=3, engine=Engine.AUTO, seed=1),
                               posterior_predictive(net, x, guide=guide, draws=3, engine="pyro", seed=1))
    with pytest.raises(ValueError, match=r"engine must be one of \['auto', 'fast', 'pyro'\]"):
        posterior_predictive(net, x, draws=3, engine="slow")


def test_the_old_name_method_still_imports_with_a_warning() -> None:
    import pyro_prune.predictive as predictive

    with pytest.warns(DeprecationWarning, match=r"pyro_prune.predictive.Method is now pyro_prune.predictive.Engine"):
        method = predictive.Method
    assert method is predictive.Engine and method.FAST is predictive.Engine.FAST
    with pytest.warns(DeprecationWarning):
        from pyro_prune.predictive import Method  # noqa: F401
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        predictive.nothing_here  # noqa: B018


def test_the_old_name_method_warns_only_when_used() -> None:
    """Importing the module (run again here), listing its names, ``import *`` and its help
    page never touch the alias: only reading ``Method`` warns."""
    import importlib
    import inspect
    import pydoc

    import pyro_prune.predictive as predictive

    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        importlib.reload(predictive)
        exec("from pyro_prune.predictive import *", {})
        inspect.getmembers(predictive)
        pydoc.render_doc(predictive)
        assert "Method" not in dir(predictive) and "Method" not in predictive.__all__
    with pytest.warns(DeprecationWarning, match="Method is now"):
        getattr(predictive, "Method")  # noqa: B009
