"""The one-line pruning report of a run."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from pyro_prune.data import load_dataset
from pyro_prune.inference import ContinuousPruning, PruningReport, fit, pruning_report
from pyro_prune.inference.pruning_report import KindCount, ScoreRange
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
                      "try a larger KL weight (kl_scale, a tempered posterior) or a larger noise_lr, so that the "
                      "posteriors of unneeded structures can move away from their initialisation; "
                      "see docs/guides_and_reports.md")
    t = PruningReport("snr", False, 1.0, (KindCount("conv channels", 0, 16),), ScoreRange(1.25, 9.0, 16))
    assert "nothing removed: all snr >= 1 (min snr = 1.25)" in str(t)
    assert s.removed == 0 and s.total == 64


def test_a_network_the_project_did_not_write() -> None:
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 8), nn.ReLU(),
                          nn.Linear(8, 3))
    net = bayesianize(plain, noise_on=(nn.Linear, nn.Conv2d))
    kinds = [c.kind for c in pruning_report(net, "bmrs_u").counts]
    assert kinds == ["conv channels", "linear neurons"]


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
