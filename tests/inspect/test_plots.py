from __future__ import annotations

import pytest
import torch
from matplotlib.figure import Figure
from torch.utils.data import TensorDataset

from pyro_prune import inspect as pa
from pyro_prune.inspect import plots
from pyro_prune.models import LeNet5

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def idata():
    torch.manual_seed(0)
    net = LeNet5(1, 10, 8)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in net.noise_layers().values():
            layer.loc.copy_(-20 * torch.rand(layer.num_structures, generator=g))
            layer.log_scale.copy_(-2 + 2 * torch.rand(layer.num_structures, generator=g))
    net.net.fc1_gate.kept[:10] = False
    x = torch.randn(20, 1, 8, 8)
    y = torch.randint(0, 10, (20,))
    return pa.to_inference_data(net, data=TensorDataset(x, y), num_samples=20)


def _visible_axes(fig: Figure) -> list:
    return [ax for ax in fig.axes if ax.get_visible()]


def _assert_legends_clear_of_axes(fig: Figure) -> None:
    """No legend overlaps the plotting area of a visible axes (it would cover data)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    assert legends, "the figure has a legend"
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for ax in _visible_axes(fig):
            assert not box.overlaps(ax.get_window_extent(renderer)), f"legend covers {ax.get_title()!r}"


def test_theta_forest_has_one_panel_per_layer(idata, tmp_path) -> None:
    fig = plots.plot_theta_forest(idata)
    axes = [ax for ax in _visible_axes(fig) if ax.get_xscale() == "log"]
    assert [ax.get_title().split(":")[0] for ax in axes] == ["conv1", "conv2", "fc1", "fc2"]
    assert axes[2].get_title() == "fc1: 110/120 kept"
    path = plots.save_figure(fig, tmp_path / "a" / "forest.png")
    assert path.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="hdi_prob"):
        plots.plot_theta_forest(idata, hdi_prob=1.5)


def test_delta_f_histograms_mark_zero(idata) -> None:
    fig = plots.plot_delta_f(idata, "bmrs_n")
    axes = _visible_axes(fig)
    assert len(axes) == 4
    for ax in axes:
        zero_lines = [ln for ln in ax.get_lines() if list(ln.get_xdata()) == [0.0, 0.0]]
        assert zero_lines, "every panel has the dF = 0 line"
        assert ax.get_xscale() == "symlog"
    # the counts in the histograms add up to the number of structures of each layer
    counts = [sum(p.get_height() for p in ax.patches) for ax in axes]
    assert counts[0] >= 6 - 1e-9 and counts[2] >= 120 - 1e-9
    with pytest.raises(ValueError, match="no dF for criterion 'snr'"):
        plots.plot_delta_f(idata, "snr")


def test_accuracy_vs_compression_marks_the_stop() -> None:
    curve = [
        {"compression": 0.0, "accuracy": 0.95, "before_stop": True},
        {"compression": 0.4, "accuracy": 0.94, "before_stop": True},
        {"compression": 0.7, "accuracy": 0.90, "before_stop": False},
        {"compression": 0.9, "accuracy": 0.50, "before_stop": False},
    ]
    points = [{"label": "bmrs_n (continuous)", "compression": 0.5, "accuracy": 0.93}]
    fig = plots.plot_accuracy_vs_compression({"bmrs_n": curve}, points)
    ax = fig.axes[0]
    stars = [ln for ln in ax.get_lines() if ln.get_marker() == "*"]
    assert len(stars) == 1 and list(stars[0].get_xdata()) == [40.0]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "bmrs_n (continuous)" in labels
    _assert_legends_clear_of_axes(fig)
    with pytest.raises(ValueError, match="nothing to plot"):
        plots.plot_accuracy_vs_compression({}, [])
    with pytest.raises(ValueError, match="no accuracy or rmse"):
        plots.plot_accuracy_vs_compression({}, [{"compression": 0.1}])


def test_history_plot() -> None:
    history = [{"epoch": e, "loss": 3.0 / e, "val_accuracy": 0.5 + 0.1 * e,
                "kept": {"a": 10 - e}, "compression": 0.05 * e} for e in range(1, 5)]
    fig = plots.plot_history(history)
    assert len(_visible_axes(fig)) == 4  # three panels and the compression twin axis
    with pytest.raises(ValueError, match="empty"):
        plots.plot_history([])


def test_legends_of_the_report_figures_do_not_cover_data(idata) -> None:
    for fig in (plots.plot_theta_forest(idata), plots.plot_delta_f(idata, "bmrs_n"),
                plots.plot_decision(idata, "snr")):
        _assert_legends_clear_of_axes(fig)


def test_decision_plot_of_a_thresholded_criterion_draws_its_threshold(idata) -> None:
    fig = plots.plot_decision(idata, "snr")
    axes = _visible_axes(fig)
    assert len(axes) == 4 and all(ax.get_xscale() == "log" for ax in axes)
    for ax in axes:
        assert [ln for ln in ax.get_lines() if list(ln.get_xdata()) == [1.0, 1.0]]
    counts = [sum(p.get_height() for p in ax.patches) for ax in axes]
    assert counts == pytest.approx([6, 16, 120, 84])  # every structure is counted once
    # a threshold-free criterion is its dF histogram
    assert _visible_axes(plots.plot_decision(idata, "bmrs_u"))[0].get_xscale() == "symlog"
    with pytest.raises(ValueError, match="only ranks"):
        plots.plot_decision(idata, "l2")


def test_widths_summary_and_reliability_figures() -> None:
    from pyro_prune.calibration import calibration

    fig = plots.plot_widths({"fc1_gate": 100, "fc2_gate": 50}, {"fc1_gate": 40, "fc2_gate": 50})
    texts = [t.get_text().strip() for t in fig.axes[0].texts]
    assert texts == ["40/100", "50/50"]
    with pytest.raises(ValueError, match="no count"):
        plots.plot_widths({"a": 3}, {})
    metrics = {"params_full": 1000, "params_pruned": 250, "macs_full": 4e6, "macs_pruned": 2e6,
               "latency_full_ms": 2.0, "latency_pruned_ms": 1.5, "w2_normalized": 0.05}
    fig = plots.plot_summary(metrics)
    widths = [p.get_width() for p in fig.axes[0].patches]
    assert widths == pytest.approx([0.25, 0.5, 0.75, 0.05])
    paired = plots.plot_summary({**metrics, "speedup": 2.0})  # the latency bar is 1 / speedup
    assert [p.get_width() for p in paired.axes[0].patches][2] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="none of"):
        plots.plot_summary({})
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(2 * torch.randn(300, 5, generator=g), -1)
    labels = torch.randint(0, 5, (300,), generator=g)
    cal = calibration(probs, labels)
    fig = plots.plot_reliability({"before": cal, "after": cal.to_json()})
    _assert_legends_clear_of_axes(fig)
    _assert_legends_clear_of_axes(plots.plot_widths({"a": 3}, {"a": 1}))
    labels_shown = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels_shown[1] == f"before (ECE {cal.ece:.3f})" and labels_shown[2].startswith("after")
    html = plots.figure_html(fig)
    assert html.startswith('<img alt="figure" src="data:image/png;base64,')
