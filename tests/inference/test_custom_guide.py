"""pyro_prune.inference.custom_guide: an autoguide made ready to train (fit and Lightning)."""

from __future__ import annotations

import pyro
import pytest
import torch
from guide_functions import logit_normal_noise_guide
from pyro.infer.autoguide import AutoDiagonalNormal, AutoNormal

from pyro_prune.inference.custom_guide import guide_start, prepare_guide, replaced_parameters
from pyro_prune.inference.elbo import pyro_elbo_loss
from pyro_prune.inference.guides import attached_guide, init_to_model
from pyro_prune.models import MLP


@pytest.mark.parametrize("weights", ["point", "gaussian"])
@pytest.mark.parametrize("make", [AutoNormal, AutoDiagonalNormal], ids=lambda g: g.__name__)
def test_replaced_parameters_are_exactly_those_the_guides_elbo_leaves_without_gradient(weights, make) -> None:
    pyro.clear_param_store()
    torch.manual_seed(0)
    net = MLP(6, [8, 5], 3, weights=weights)
    x, y = torch.randn(16, 6), torch.arange(16) % 3
    net.num_data = 16
    guide = make(net, init_loc_fn=init_to_model(net))
    prepare_guide(net, guide, (x[:2], y[:2]), kl_scale="elbo" if make is AutoDiagonalNormal else "auto")
    assert attached_guide(net) is guide
    replaced = {id(p) for p in replaced_parameters(net, guide)}
    net.train()
    pyro_elbo_loss(net, x, y, guide=guide).backward()
    without_gradient = {id(p) for p in net.parameters() if p.grad is None}
    assert replaced == without_gradient
    assert len(replaced) == (2 if weights == "point" else 2 + 4 * 3)  # the noise storage; 3 layers' w, b
    assert all(p.grad is not None for p in guide.parameters())


def test_guide_start_is_recorded_before_the_first_call() -> None:
    pyro.clear_param_store()
    net = MLP(6, [8], 3)
    guide = AutoNormal(net)
    start = guide_start(guide)
    assert start.fresh and not any(name.startswith("AutoNormal.") for name in start.stored)
    prepare_guide(net, guide, (torch.randn(2, 6), torch.tensor([0, 1])), kl_scale="auto", start=start)
    assert not guide_start(guide).fresh  # run once: a second run continues it


def test_a_guide_functions_pyro_params_train_and_are_checkpointed(tmp_path) -> None:
    """fit trains the pyro.param parameters of a guide function (before, they kept their
    initial values while fit reported a finished run), at noise_lr, and its checkpoints keep
    them: a finished run read back restores them into Pyro's param store."""
    from torch.utils.data import TensorDataset

    from pyro_prune.inference import fit

    pyro.clear_param_store()
    torch.manual_seed(0)
    net = MLP(8, [6], 3)
    guide = logit_normal_noise_guide(net)
    site = f"{net.noise_layers()['fc1_gate'].site_name}.u_loc"
    data = TensorDataset(torch.randn(64, 8), torch.arange(64) % 3)
    with pytest.warns(RuntimeWarning, match=r"cannot be read by the reduction.*predictions at the posterior "
                                            r"mean \(model.predict, evaluate, the conversion\) read the model's own"):
        result = fit(net, data, epochs=3, batch_size=16, guide=guide, progress=False, checkpoint_dir=tmp_path)
    trained = pyro.param(site).detach().clone()
    assert trained.abs().min() > 0.05  # 12 steps at noise_lr 0.03 moved every entry
    assert result.config["guide"] == "guide"
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["guide"]
    torch.testing.assert_close(saved[site.replace(".", "__")], trained)
    with torch.no_grad():
        pyro.param(site).unconstrained().zero_()  # as a new session would start
    with pytest.warns(RuntimeWarning, match="cannot be read by the reduction"):
        fit(net, data, epochs=3, batch_size=16, guide=guide, progress=False, checkpoint_dir=tmp_path)
    torch.testing.assert_close(pyro.param(site).detach(), trained)  # read back from the checkpoint
