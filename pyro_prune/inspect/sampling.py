"""The draws an ``InferenceData`` is made of: the guide's latent sites, the pointwise log
likelihood and a predictive draw of every observation under each, and prior draws."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor

from pyro_prune.inspect.names import OBS
from pyro_prune.models.base import PrunableNet
from pyro_prune.models.noise import MultiplicativeNoise, NoiseMode, noise_mode

__all__ = ["Draws", "draw"]


@dataclass
class Draws:
    """Guide draws of every latent site, the log likelihood and predictive of each, prior draws."""

    latents: dict[str, list[np.ndarray]]
    log_lik: list[np.ndarray]
    predictive: list[np.ndarray]
    prior: dict[str, list[np.ndarray]] | None = None


def _draw_prior(model: PrunableNet, x0: Tensor, num_samples: int) -> dict[str, list[np.ndarray]]:
    """``num_samples`` draws of every latent site from the model's priors (the model traced
    on the single input ``x0``, no guide)."""
    from pyro import poutine
    from pyro.poutine.util import site_is_subsample

    out: dict[str, list[np.ndarray]] = {}
    with noise_mode(model.net, NoiseMode.SAMPLE):
        for _ in range(num_samples):
            trace = poutine.trace(model).get_trace(x0, None)
            for name, site in trace.nodes.items():
                if (site["type"] != "sample" or site["is_observed"] or name == OBS
                        or site_is_subsample(site)):
                    continue
                out.setdefault(name, []).append(cast(Tensor, site["value"]).detach().cpu().numpy())
    return out


def draw(
    model: PrunableNet,
    guide: Callable,
    x: Tensor | None,
    y: Tensor | None,
    num_samples: int,
    batch_size: int,
    progress: bool,
) -> Draws:
    """``num_samples`` guide draws; the model replayed on each for the likelihood of ``y``.

    One guide trace is shared by every batch of the data, so ``log_lik[s][n]`` is
    ``log p(y_n | x_n, z_s)`` under a single posterior draw ``z_s``.
    """
    from pyro import poutine
    from pyro.poutine.util import site_is_subsample

    from pyro_prune.progress import progress_bar

    gates = {g.site_name: g for g in model.gates().values() if isinstance(g, MultiplicativeNoise)}
    out = Draws(latents={}, log_lik=[], predictive=[])
    x0 = x[:1] if x is not None else None
    y0 = y[:1] if y is not None else None
    num_data = model.num_data
    model.num_data = None  # no num_data / batch scaling of the likelihood here
    try:
        with noise_mode(model.net, NoiseMode.SAMPLE):
            for _ in progress_bar(range(num_samples), desc="posterior draws", enabled=progress):
                guide_trace = poutine.trace(guide).get_trace(x0, y0)
                for name, site in guide_trace.nodes.items():
                    if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
                        continue
                    value = cast(Tensor, site["value"]).detach()
                    if name in gates:
                        value = value * gates[name].kept.to(value.dtype)
                    out.latents.setdefault(name, []).append(value.cpu().numpy())
                if x is None or y is None:
                    continue
                lls, pps = [], []
                replayed = poutine.replay(model, trace=guide_trace)
                for i in range(0, len(x), batch_size):
                    xb, yb = x[i : i + batch_size], y[i : i + batch_size]
                    trace = poutine.trace(replayed).get_trace(xb, None)
                    obs_site = trace.nodes[OBS]
                    lls.append(cast(Any, obs_site["fn"]).log_prob(yb).detach().double())
                    pps.append(cast(Tensor, obs_site["value"]).detach())
                out.log_lik.append(torch.cat(lls).cpu().numpy())
                out.predictive.append(torch.cat(pps).cpu().numpy())
        if x0 is not None:
            out.prior = _draw_prior(model, x0, num_samples)
    finally:
        model.num_data = num_data
    return out
