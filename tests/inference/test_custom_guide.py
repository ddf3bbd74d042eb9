"""pyro_prune.inference.custom_guide: an autoguide made ready to train (fit and Lightning)."""

from __future__ import annotations

import pyro
import pytest
import torch
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
