"""to_inference_data: its groups, dims, draws, reduction results, masks and attributes."""

from __future__ import annotations

import math

import arviz as az
import numpy as np
import pytest
import torch
from torch import nn

from pyro_prune import inspect as pa
from pyro_prune.models import MLP
from pyro_prune.reduction import delta_f_lognormal, delta_f_loguniform, snr


def test_groups_dims_and_shapes(lenet, digits_small) -> None:
    net, idata = lenet
    assert isinstance(idata, az.InferenceData)
    assert set(pa.group_names(idata)) == {
        "posterior", "prior", "posterior_predictive", "log_likelihood", "observed_data", "reduction"}
    post = idata.posterior
    expected = {"conv1_theta": ("conv1_channel", 6), "conv2_theta": ("conv2_channel", 16),
                "fc1_theta": ("fc1_neuron", 120), "fc2_theta": ("fc2_neuron", 84)}
    assert set(post.data_vars) == set(expected)
    for var, (dim, n) in expected.items():
        assert post[var].dims == ("chain", "draw", dim)
        assert post[var].shape == (1, 40, n)
        np.testing.assert_array_equal(post[dim].values, np.arange(n))
    n_obs = len(digits_small)
    assert idata.log_likelihood["obs"].dims == ("chain", "draw", "obs_id")
    assert idata.log_likelihood["obs"].shape == (1, 40, n_obs)
    assert idata.log_likelihood["obs"].dtype == np.float64
    assert idata.posterior_predictive["obs"].shape == (1, 40, n_obs)
    pp = idata.posterior_predictive["obs"].values
    assert pp.min() >= 0 and pp.max() < 10
    np.testing.assert_array_equal(idata.observed_data["obs"].values, digits_small.tensors[1].numpy())


def test_removed_structures_are_zero_and_kept_recorded(lenet) -> None:
    net, idata = lenet
    fc1 = idata.posterior["fc1_theta"].values[0]
    assert np.all(fc1[:, :30] == 0)
    assert np.all(fc1[:, 30:] > 0)
    assert np.all(idata.posterior["conv2_theta"].values[0, :, 3] == 0)
    red = idata.reduction
    np.testing.assert_array_equal(red["fc1_kept"].values, net.net.fc1_gate.kept.numpy())
    assert red["fc1_kept"].dims == ("fc1_neuron",)


def test_prior_group_draws_the_log_uniform_prior(lenet) -> None:
    net, idata = lenet
    assert idata.prior["fc1_theta"].dims == idata.posterior["fc1_theta"].dims
    log_theta = np.log(idata.prior["fc1_theta"].values).ravel()  # removed structures too
    layer = net.net.fc1_gate
    lo, hi = layer.log_low, layer.log_high
    assert lo <= log_theta.min() and log_theta.max() <= hi
    # LogU[A, B]: log theta uniform, mean (A + B) / 2 and variance (B - A)^2 / 12
    assert log_theta.mean() == pytest.approx((lo + hi) / 2, abs=4 * (hi - lo) / np.sqrt(12 * log_theta.size))
    assert log_theta.var() == pytest.approx((hi - lo) ** 2 / 12, rel=0.1)
    assert set(pa.group_names(pa.to_inference_data(net, num_samples=2))) == {"posterior", "reduction"}


def test_own_criterion_joins_the_reduction_group(lenet, digits_small) -> None:
    net, _ = lenet
    idata = pa.to_inference_data(net, num_samples=2, criteria=["snr"],
                                 settings={"criterion": "bmrs_n_code"})
    assert list(idata.reduction["criterion"].values) == ["snr", "bmrs_n_code"]
    assert list(idata.reduction["dF_criterion"].values) == ["bmrs_n_code"]
    assert idata.reduction.attrs["criterion"] == "bmrs_n_code"


def test_theta_draws_follow_the_guide(lenet) -> None:
    net, idata = lenet
    layer = net.net.fc2_gate
    draws = np.log(idata.posterior["fc2_theta"].values[0])  # [S, n]
    # 40 draws of a truncated normal in log space: the sample mean is within 5 standard errors
    post = layer.posterior()
    log_theta = torch.log(post.sample((4000,)))
    mean, std = log_theta.mean(0).numpy(), log_theta.std(0).numpy()
    z = (draws.mean(0) - mean) / (std / math.sqrt(draws.shape[0]))
    assert np.all(np.abs(z) < 5)


def test_reduction_group_matches_the_criteria(lenet) -> None:
    net, idata = lenet
    red = idata.reduction
    assert list(red["criterion"].values) == list(pa.DEFAULT_CRITERIA)
    assert list(red["dF_criterion"].values) == ["bmrs_n", "bmrs_u"]
    layer = net.net.fc2_gate
    loc, scale = layer.loc.detach().double(), layer.scale.detach().double()
    df_n = delta_f_lognormal(loc, scale).numpy()
    df_u = delta_f_loguniform(loc, scale).numpy()
    np.testing.assert_allclose(red["fc2_dF"].sel(dF_criterion="bmrs_n").values, df_n, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(red["fc2_dF"].sel(dF_criterion="bmrs_u").values, df_u, rtol=1e-4, atol=1e-4)
    assert (df_n >= 0).any() and (df_n < 0).any()
    kept = layer.kept.numpy()
    np.testing.assert_array_equal(red["fc2_remove"].sel(criterion="bmrs_n").values, (df_n >= 0) & kept)
    np.testing.assert_allclose(red["fc2_score"].sel(criterion="snr").values,
                               snr(loc, scale).numpy(), rtol=1e-4)
    np.testing.assert_allclose(red["fc2_e_theta"].values, layer.expected_theta().detach().numpy(), rtol=1e-5)
    # removed structures are never "removed again"
    assert not red["fc1_remove"].values[:, :30].any()


def test_log_likelihood_is_pointwise_and_matches_the_network(digits_small) -> None:
    torch.manual_seed(0)
    net = MLP(64, [12], 10)
    with torch.no_grad():  # an almost deterministic posterior: every draw ~ E[theta]
        for layer in net.noise_layers().values():
            layer.log_scale.fill_(-18.0)
    idata = pa.to_inference_data(net, data=digits_small, num_samples=5)
    x, y = digits_small.tensors
    expected = -net.nll(net.predict(x), y).double().numpy()
    ll = idata.log_likelihood["obs"].values[0]
    np.testing.assert_allclose(ll, np.broadcast_to(expected, ll.shape), rtol=1e-4, atol=1e-5)


def test_mask_by_criterion_name_and_bad_masks(lenet, digits_small) -> None:
    net, _ = lenet
    idata = pa.to_inference_data(net, num_samples=3, mask="bmrs_n")
    removed = idata.reduction["fc2_remove"].sel(criterion="bmrs_n").values
    assert not removed.any()  # under the mask the removed ones are gone already
    assert np.all(idata.posterior["fc2_theta"].values[0][:, ~idata.reduction["fc2_kept"].values] == 0)
    assert idata.posterior.attrs["mask"] == "bmrs_n"
    with pytest.raises(ValueError, match="unknown gate"):
        pa.to_inference_data(net, num_samples=2, mask={"nope": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="mask\\['fc1_gate'\\]"):
        pa.to_inference_data(net, num_samples=2, mask={"fc1_gate": torch.ones(3, dtype=torch.bool)})


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"num_samples": 0}, ValueError), ({"num_samples": 2.5}, ValueError),
    ({"data": torch.zeros(3, 64)}, TypeError), ({"seed": "0"}, TypeError),
])
def test_bad_arguments(kwargs, error) -> None:
    net = MLP(64, [4], 10)
    with pytest.raises(error):
        pa.to_inference_data(net, **kwargs)
    with pytest.raises(TypeError, match="PrunableNet"):
        pa.to_inference_data(nn.Linear(2, 2))


def test_seeded_and_leaves_the_global_rng_alone(digits_small, randomise_noise) -> None:
    net = MLP(64, [8], 10)
    randomise_noise(net)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = pa.to_inference_data(net, data=digits_small, num_samples=4, seed=5)
    assert torch.equal(torch.get_rng_state(), before)
    b = pa.to_inference_data(net, data=digits_small, num_samples=4, seed=5)
    c = pa.to_inference_data(net, data=digits_small, num_samples=4, seed=6)
    np.testing.assert_array_equal(a.posterior["fc1_theta"].values, b.posterior["fc1_theta"].values)
    assert not np.array_equal(a.posterior["fc1_theta"].values, c.posterior["fc1_theta"].values)


def test_attrs_record_versions_and_settings(lenet) -> None:
    _, idata = lenet
    for group in ("posterior", "reduction", "log_likelihood"):
        attrs = pa.get_group(idata, group).attrs
        assert attrs["arviz_version"] == az.__version__
        assert attrs["inference_library"] == "pyro"
        assert attrs["torch_version"] == torch.__version__
    attrs = idata.posterior.attrs
    assert attrs["model"] == "LeNet5" and attrs["num_samples"] == 40 and attrs["seed"] == 1
    assert attrs["kept_total"] == 226 - 31


def test_bayesian_weights_get_named_dims(digits_small) -> None:
    torch.manual_seed(0)
    net = MLP(64, [5], 10, weights="gaussian", gate="mask")
    idata = pa.to_inference_data(net, data=digits_small, num_samples=6)
    post = idata.posterior
    assert post["fc1_weight"].dims == ("chain", "draw", "fc1_neuron", "fc1_input")
    assert post["fc1_weight"].shape == (1, 6, 5, 64)
    assert post["fc1_bias"].dims == ("chain", "draw", "fc1_neuron")
    assert post["out_weight"].dims == ("chain", "draw", "out_neuron", "out_input")
    assert "fc1_theta" not in post  # a mask gate has no noise
    red = idata.reduction
    assert "gaussian_bmr" in list(red["dF_criterion"].values)
    loc, scale, prior = net.net.fc1.weight_posterior()
    from pyro_prune.reduction import delta_f_gaussian

    expected = delta_f_gaussian(loc.detach().double(), scale.detach().double(), prior_scale=prior,
                                reduced_scale=1e-8, dim=-1).numpy()
    np.testing.assert_allclose(red["fc1_dF"].sel(dF_criterion="gaussian_bmr").values, expected,
                               rtol=1e-4, atol=1e-3)
    # a draw of the weights scatters around the posterior mean by its scale
    layer = net.net.fc1
    z = (post["fc1_weight"].values[0] - layer.weight_loc.detach().numpy()) / layer.weight_scale.detach().numpy()
    assert abs(z.mean()) < 0.1 and 0.8 < z.std() < 1.2


#: the public names of pyro_prune.arviz and pyro_prune.plots before they moved into inspect/
_OLD_ARVIZ = ("DEFAULT_CRITERIA", "ElpdSummary", "STRUCTURE_KINDS", "StructureKind", "compare", "dim_name",
              "elpd_difference", "get_group", "group_names", "hdi", "load", "loo", "save", "structure_dims",
              "summary", "to_inference_data")
_OLD_PLOTS = ("plot_accuracy_vs_compression", "plot_decision", "plot_delta_f", "plot_history",
              "plot_reliability", "plot_summary", "plot_widths", "plot_theta_forest", "figure_html",
              "save_figure")


def test_the_old_modules_still_import_with_a_warning() -> None:
    import pyro_prune.arviz as old_arviz
    import pyro_prune.plots as old_plots
    from pyro_prune.inspect import plots

    for name in _OLD_ARVIZ:
        with pytest.warns(DeprecationWarning, match=rf"pyro_prune.arviz.{name} moved to pyro_prune.inspect"):
            assert getattr(old_arviz, name) is getattr(pa, name)
    for name in _OLD_PLOTS:
        with pytest.warns(DeprecationWarning, match=rf"pyro_prune.plots.{name} moved to pyro_prune.inspect.plots"):
            assert getattr(old_plots, name) is getattr(plots, name)
    with pytest.warns(DeprecationWarning):
        from pyro_prune.arviz import to_inference_data
    assert to_inference_data is pa.to_inference_data
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        old_arviz.nothing_here  # noqa: B018
