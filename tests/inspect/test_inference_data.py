from __future__ import annotations

import math

import arviz as az
import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn
from torch.utils.data import TensorDataset

from pyro_prune import arviz as pa
from pyro_prune.models import MLP, LeNet5, ViT, bayesianize
from pyro_prune.reduction import delta_f_lognormal, delta_f_loguniform, snr


def _randomise_noise(net, seed: int = 0) -> None:
    """Spread the noise posteriors so that criteria disagree and dF has both signs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in net.noise_layers().values():
            n = layer.num_structures
            layer.loc.copy_(-20 * torch.rand(n, generator=g))
            layer.log_scale.copy_(-3 + 3 * torch.rand(n, generator=g))


@pytest.fixture(scope="module")
def digits_small() -> TensorDataset:
    from pyro_prune.data import load_dataset

    test = load_dataset("digits", "test")
    return TensorDataset(test.inputs[:80], test.targets[:80])


@pytest.fixture(scope="module")
def lenet(digits_small):
    torch.manual_seed(0)
    net = LeNet5(1, 10, 8)
    _randomise_noise(net)
    net.net.fc1_gate.kept[:30] = False
    net.net.conv2_gate.kept[3] = False
    idata = pa.to_inference_data(net, data=digits_small, num_samples=40, seed=1)
    return net, idata


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


def test_summary_leaves_out_removed_structures_without_warnings(lenet, recwarn, capfd) -> None:
    net, idata = lenet
    table = pa.summary(idata, ["fc1_theta"])
    kept = int(idata.reduction["fc1_kept"].values.sum())
    assert len(table) == kept < 120 and "r_hat" not in table.columns
    assert np.isfinite(table["ess_bulk"].values).all()
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    assert "Shape validation" not in capfd.readouterr().err
    assert len(pa.summary(idata, ["fc1_theta"], kept_only=False)) == 120
    assert len(pa.summary(idata, ["fc1_theta"], group="prior")) == kept
    with pytest.raises(ValueError, match="no variables"):
        pa.summary(idata, ["nope"])


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


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_loo_and_waic_run(lenet) -> None:
    _, idata = lenet
    res = az.loo(idata, pointwise=True)
    assert np.isfinite(res["elpd_loo"])
    assert res["loo_i"].shape == (80,)
    assert np.isfinite(az.waic(idata)["elpd_waic"])
    summary = pa.loo(idata)
    assert summary.n == 80 and summary.elpd == pytest.approx(float(res["elpd_loo"]))
    assert summary.elpd < 0


def test_compare_full_and_pruned(digits_small) -> None:
    torch.manual_seed(0)
    net = MLP(64, [24], 10)
    from pyro_prune.inference import fit

    fit(net, digits_small, epochs=15, batch_size=16, lr=1e-2, progress=False)
    full = pa.to_inference_data(net, data=digits_small, num_samples=30)
    keep = {"fc1_gate": torch.arange(24) < 2}
    pruned = pa.to_inference_data(net, data=digits_small, num_samples=30, mask=keep)
    assert bool(net.net.fc1_gate.kept.all())  # the mask is temporary
    table = pa.compare({"full": full, "pruned": pruned})
    assert list(table.index) == ["full", "pruned"]
    for col in ("elpd", "elpd_diff", "dse", "weight"):
        assert col in table.columns
    diff, dse = pa.elpd_difference(pruned, full)
    assert diff < 0 and dse > 0
    assert diff == pytest.approx(-float(table.loc["pruned", "elpd_diff"]))
    assert pa.elpd_difference(full, pruned)[0] == pytest.approx(-diff)


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


def test_seeded_and_leaves_the_global_rng_alone(digits_small) -> None:
    net = MLP(64, [8], 10)
    _randomise_noise(net)
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


def test_netcdf_round_trip(lenet, tmp_path) -> None:
    _, idata = lenet
    path = pa.save(idata, tmp_path / "sub" / "idata.nc")
    back = pa.load(path)
    assert set(pa.group_names(back)) == set(pa.group_names(idata))
    for group in pa.group_names(idata):
        xr.testing.assert_allclose(pa.get_group(back, group), pa.get_group(idata, group))
    assert back.reduction["fc1_kept"].dtype == bool
    assert pa.loo(back).elpd == pytest.approx(pa.loo(idata).elpd)
    with pytest.raises(FileNotFoundError):
        pa.load(tmp_path / "missing.nc")


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


def test_dim_names_follow_the_producer_kind() -> None:
    class Small(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 8 * 8, 6), nn.ReLU(), nn.Linear(6, 3))

        def forward(self, x):
            return self.head(torch.relu(self.bn(self.conv(x))))

    dims = pa.structure_dims(bayesianize(Small()))
    assert dims == {"bn_gate": "conv_channel", "head_1_gate": "head_1_neuron"}
    vit = ViT(8, 4, 1, 10, dim=8, depth=1, heads=2, mlp_dim=8)
    vdims = pa.structure_dims(vit)
    assert vdims["blocks.0.attn.head_gate"] == "blocks_0_attn_head"
    assert vdims["blocks.0.mlp.fc1_gate"] == "blocks_0_mlp_fc1_neuron"
    assert pa.structure_kind(None, -1) is pa.StructureKind.NEURON
    assert pa.structure_kind(None, 1) is pa.StructureKind.CHANNEL
    assert pa.structure_kind(nn.MultiheadAttention(4, 2)) is pa.StructureKind.HEAD


def test_hdi_matches_arviz() -> None:
    rng = np.random.default_rng(0)
    values = rng.standard_gamma(2.0, size=(300, 5))
    np.testing.assert_allclose(pa._hdi_numpy(values, 0.9), pa.hdi(values, 0.9))
    low, high = pa.hdi(values, 0.9).T
    inside = ((values >= low) & (values <= high)).mean(0)
    assert np.all(inside >= 0.9)
    with pytest.raises(ValueError):
        pa.hdi(values[:1], 0.9)


def _groups() -> dict[str, xr.Dataset]:
    post = xr.Dataset({"a_theta": (("chain", "draw", "a_neuron"), np.ones((1, 3, 2)))})
    red = xr.Dataset({"a_kept": (("a_neuron",), np.array([True, False]))})
    return {"posterior": post, "reduction": red}


@pytest.mark.parametrize(("version", "kind"), [("0.23.4", "az"), ("0.17.1", "az"),
                                                ("1.0.0", "tree"), ("1.2.0rc1", "tree")])
def test_adapter_dispatches_on_the_arviz_version(monkeypatch, version, kind, tmp_path) -> None:
    monkeypatch.setattr(pa, "_arviz_version", lambda: version)
    idata = pa._make_inference_data(_groups(), attrs={"created_at": "now"})
    if kind == "az":
        assert isinstance(idata, az.InferenceData)
        assert pa._backend() is pa._Backend.INFERENCE_DATA
    else:
        assert isinstance(idata, xr.DataTree)
        assert pa._backend() is pa._Backend.DATATREE
        assert idata.attrs["created_at"] == "now"
    assert pa.group_names(idata) == ["posterior", "reduction"]
    xr.testing.assert_equal(pa.get_group(idata, "reduction"), _groups()["reduction"])
    with pytest.raises(KeyError, match="no group"):
        pa.get_group(idata, "prior")
    back = pa.load(pa.save(idata, tmp_path / "x.nc"))
    assert isinstance(back, type(idata))
    xr.testing.assert_equal(pa.get_group(back, "posterior"), _groups()["posterior"])
