"""The one-line pruning report of a run."""

from __future__ import annotations

import logging
import math

import foreign_networks as foreign
import pytest
import torch
from torch import nn

from pyro_prune.data import load_dataset
from pyro_prune.inference import ContinuousPruning, PruningReport, fit, pruning_report
from pyro_prune.inference.pruning_report import (
    ADVICE,
    GUIDE_ADVICE,
    STEPS_ADVICE,
    KindCount,
    PosteriorSpread,
    ScoreRange,
)
from pyro_prune.models import MLP, LeNet5, bayesianize
from pyro_prune.reduction import delta_f_lognormal


def test_counts_per_layer_kind_and_df_range() -> None:
    torch.manual_seed(0)
    net = LeNet5(1, 10, 28)
    gates = net.gates()
    conv = [n for n in gates if "conv" in n]
    fc = [n for n in gates if "conv" not in n]
    gates[conv[0]].prune(torch.arange(gates[conv[0]].num_structures) < 2)
    gates[fc[0]].prune(torch.arange(gates[fc[0]].num_structures) < 5)
    summary = pruning_report(net, "bmrs_n")
    conv_total = sum(gates[n].num_structures for n in conv)
    fc_total = sum(gates[n].num_structures for n in fc)
    assert summary.counts == (KindCount("conv channels", 2, conv_total), KindCount("linear neurons", 5, fc_total))
    # the dF range over the kept structures, from the exact operator
    df = torch.cat([delta_f_lognormal(g.loc, g.scale)[g.kept] for g in net.noise_layers().values()]).double()
    assert summary.values is not None and summary.values.count == int(sum(int(g.kept.sum()) for g in gates.values()))
    assert summary.values.high == pytest.approx(float(df.max()), rel=1e-6)
    assert summary.values.low == pytest.approx(float(df.min()), rel=1e-6)
    assert str(summary).startswith(f"bmrs_n: removed 2 of {conv_total} conv channels, 5 of {fc_total} linear neurons (dF from ")


def test_nothing_removed_says_why_and_what_to_try() -> None:
    s = PruningReport("bmrs_n", True, None, (KindCount("linear neurons", 0, 64),), ScoreRange(-3.5, -0.0041, 64))
    assert str(s) == ("bmrs_n: removed 0 of 64 linear neurons; nothing removed: all dF < 0 (max dF = -0.0041); "
                      "try a larger KL weight (kl_scale, a tempered posterior), a larger noise_lr or more "
                      "optimizer steps, so that the posteriors of unneeded structures can move away from their "
                      "initialisation; "
                      "see docs/guides_and_reports.md")
    t = PruningReport("snr", False, 1.0, (KindCount("conv channels", 0, 16),), ScoreRange(1.25, 9.0, 16))
    assert "nothing removed: all snr >= 1 (min snr = 1.25)" in str(t)
    assert s.removed == 0 and s.total == 64


@pytest.mark.parametrize("widest, narrow", [(0.058, True), (2.8, True), (2.9, False), (14.2, False)])
def test_nothing_removed_from_narrow_posteriors_says_train_longer(widest: float, narrow: bool) -> None:
    """Every posterior far narrower than its prior (at most half its width): the line says the
    run may have been too short; otherwise it gives the KL-weight advice."""
    prior = 20.0 / 12.0 ** 0.5
    s = PruningReport("bmrs", True, None, (KindCount("linear neurons", 0, 64),), ScoreRange(-1.2e5, -118.1, 64),
                      PosteriorSpread(widest=widest, prior=prior))
    assert s.spread is not None and s.spread.narrow is narrow
    if narrow:
        assert str(s) == (f"bmrs: removed 0 of 64 linear neurons; nothing removed: all dF < 0 (max dF = -118.1); "
                          f"the noise posteriors are all still narrow (widest sigma {widest:.3g}, the prior's 5.77): "
                          f"{STEPS_ADVICE}")
        assert "too few optimizer steps" in str(s) and "smaller batch_size" in str(s)
    else:
        assert str(s).endswith(f"(max dF = -118.1); {ADVICE}")
    removed = PruningReport("bmrs", True, None, (KindCount("linear neurons", 3, 64),), ScoreRange(-5.0, 0.2, 64),
                            PosteriorSpread(widest=widest, prior=prior))
    assert str(removed) == "bmrs: removed 3 of 64 linear neurons (dF from -5 to 0.2 at the last decision)"


def test_the_spread_is_the_widest_kept_posterior_against_its_prior() -> None:
    torch.manual_seed(0)
    net = MLP(6, [5, 4], 3)
    layers = list(net.noise_layers().values())
    with torch.no_grad():
        layers[0].log_scale.copy_(torch.tensor([-5.0, -1.0, 0.5, -3.0, -2.0]))
        layers[1].log_scale.copy_(torch.tensor([-4.0, 0.2, -5.0, -5.0]))
    spread = pruning_report(net, "bmrs_u").spread
    assert spread == PosteriorSpread(widest=pytest.approx(math.exp(0.5)), prior=pytest.approx(20.0 / math.sqrt(12.0)))
    net.gates()[next(iter(net.gates()))].prune(torch.tensor([False, False, True, False, False]))
    assert pruning_report(net, "bmrs_u").spread.widest == pytest.approx(math.exp(0.2))  # removed ones do not count
    assert pruning_report(LeNet5(1, 10, 28), "bmrs_n").spread.narrow  # untrained: e^-5 of 5.77


def test_an_autoguide_s_posterior_has_no_spread_of_the_built_in_one() -> None:
    """Fitted with an autoguide, the built-in noise parameters never train: their width says
    nothing about the run, so the report leaves it out (and gives no step advice from it)."""
    import pyro
    from pyro.infer.autoguide import AutoNormal

    train = load_dataset("digits", split="train")
    torch.manual_seed(0)
    pyro.clear_param_store()
    net = MLP(64, [16], 10)
    res = fit(net, train, epochs=1, guide=AutoNormal(net), progress=False, seed=0,
              schedule=ContinuousPruning("bmrs_u", finetune_epochs=0))
    assert res.report.spread is None and pruning_report(net, "bmrs_u").spread is None
    assert "narrow" not in str(res.report)
    assert pruning_report(MLP(64, [16], 10), "bmrs_u").spread is not None  # the built-in guide's
    assert res.report.foreign_guide and pruning_report(net, "bmrs").foreign_guide
    assert not pruning_report(MLP(64, [16], 10), "bmrs").foreign_guide


@pytest.mark.parametrize("criterion", ["bmrs", "bmrs_n", "bmrs_n_code", "bmrs_u8"])
@pytest.mark.parametrize("foreign", [True, False])
def test_nothing_removed_under_an_autoguide_by_bmrs_n_points_to_bmrs_u4(criterion: str, foreign: bool) -> None:
    """A logit-normal posterior (a Pyro autoguide's) has no density at the edge A, where the
    reduced prior of BMRS_N sits: when such a criterion removed nothing the line names the
    default under an autoguide, bmrs_u4; BMRS_U itself and the built-in posterior keep the
    general advice."""
    s = PruningReport(criterion, True, None, (KindCount("linear neurons", 0, 64),), ScoreRange(-3e3, -225.0, 64),
                      None, foreign_guide=foreign)
    advice = GUIDE_ADVICE if foreign and criterion != "bmrs_u8" else ADVICE
    assert str(s) == (f"{criterion}: removed 0 of 64 linear neurons; nothing removed: all dF < 0 "
                      f"(max dF = -225); {advice}")
    assert ("ContinuousPruning() (its default criterion under an autoguide, bmrs_u4" in str(s)) is (advice is GUIDE_ADVICE)


def test_a_network_the_project_did_not_write() -> None:
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 8), nn.ReLU(),
                          nn.Linear(8, 3))
    net = bayesianize(plain, noise_on=(nn.Linear, nn.Conv2d))
    kinds = [c.kind for c in pruning_report(net, "bmrs_u").counts]
    assert kinds == ["conv channels", "linear neurons"]


class _Sequence1d(nn.Module):
    """A 1-D convolution over ``[N, C, L]`` signals, then a linear head, as users write them."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 5, 3)
        self.head = nn.Linear(5 * 6, 3)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).flatten(1))


@pytest.mark.parametrize("make, x, kinds", [
    (lambda: nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)), torch.randn(2, 5), ["linear neurons"]),
    (_Sequence1d, torch.randn(2, 2, 8), ["conv channels"]),
    (lambda: nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.ReLU(), nn.Flatten(),
                           nn.Linear(6 * 4 * 4, 3)), torch.randn(2, 1, 8, 8), ["conv channels"]),
    # a Linear over a sequence [N, T, F]: its structures are the features of the last axis
    (lambda: nn.Sequential(nn.Linear(6, 9), nn.ReLU(), nn.Linear(9, 3)), torch.randn(2, 4, 6),
     ["linear neurons"]),
])
def test_the_kind_is_what_the_gate_multiplies(make, x, kinds) -> None:
    torch.manual_seed(0)
    model = bayesianize(make(), example_input=x)
    assert [c.kind for c in pruning_report(model, "bmrs_u").counts] == kinds


def test_gpt2_conv1d_units_are_linear_neurons() -> None:
    """Hugging Face's ``Conv1D`` is a linear map (weight ``[in, out]``): its units are the
    output features, not channels of a convolution."""
    torch.manual_seed(0)
    lm = foreign.hf_gpt2()
    model = bayesianize(lm, example_input=foreign.token_ids(2))
    gates = model.gates()
    mlp = next(n for n in gates if n.endswith("mlp_c_fc_gate"))
    assert type(model.net.get_submodule(gates[mlp].producer_name)).__name__ == "Conv1D"
    gates[mlp].prune(torch.arange(gates[mlp].num_structures) < 3)
    report = pruning_report(model, "bmrs_u")
    heads = sum(g.num_structures for n, g in gates.items() if n.endswith("head_gate"))
    assert [(c.kind, c.removed) for c in report.counts] == [("linear neurons", 3), ("attention heads", 0)]
    assert report.counts[1].total == heads == 4
    assert str(report).startswith(f"bmrs_u: removed 3 of {report.counts[0].total} linear neurons, 0 of 4 attention heads")


def test_fit_logs_the_summary(caplog) -> None:
    train = load_dataset("digits", split="train")
    with caplog.at_level(logging.INFO, logger="pyro_prune"):
        res = fit(MLP(64, [16], 10), train, epochs=2, progress=False,
                  schedule=ContinuousPruning("bmrs_n", finetune_epochs=0))
    assert isinstance(res.report, PruningReport)
    assert res.report.criterion == "bmrs_n" and res.report.total == 16
    assert str(res.report) in caplog.text
    # the decision range is the one of the last pruning epoch
    assert res.report.values is not None and res.report.values.count > 0
    assert fit(MLP(64, [8], 10), train, epochs=1, progress=False).report is None
