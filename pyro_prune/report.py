"""The Markdown report of a run folder (``report.md``) with its PNG figures."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pyro_prune._io import (
    atomic_write_text,
)
from pyro_prune.run_folder import (
    CALIBRATION_FILE,
    CONFIG_FILE,
    CONVERTED_STATE_FILE,
    CURVE_FILE,
    EXPORTED_PROGRAM_FILE,
    FIGURES_DIR,
    HISTORY_FILE,
    IDATA_FILE,
    METRICS_FILE,
    MODEL_FILE,
    REPORT_FILE,
    UsageError,
    one_line,
    read_json,
    run_folder_lock,
    writable_dir,
)
from pyro_prune.runs import METHODS, load_run

__all__ = [
    "markdown_table",
    "write_report",
]

#: the metric tables of the report: the columns ``(metrics key, header, format spec)`` of each
_METRIC_COLUMNS: dict[str, list[tuple[str, str, str]]] = {
    "results": [
        ("test_accuracy", "accuracy", ".4f"), ("test_loss", "NLL", ".4f"),
        ("compression", "compression", ".3f"),
        ("params_full", "params (full)", ""), ("params_pruned", "params (pruned)", ""),
        ("macs_full", "MACs (full)", ""), ("macs_pruned", "MACs (pruned)", ""),
        ("speedup", "speedup (batch 256)", ".2f"),
    ],
    "uncertainty": [
        ("test_lpd", "lpd (pruned)", ".2f"), ("test_lpd_full", "lpd (restored)", ".2f"),
        ("test_lpd_diff", "difference", "+.2f"), ("test_lpd_diff_se", "SE", ".2f"),
        ("test_lpd_n", "test points", ""),
        ("w2", "W2(restored, pruned)", ".4g"), ("w2_normalized", "W2 / W2(empty)", ".3g"),
        ("ece_restored", "ECE (restored)", ".3f"), ("ece_pruned", "ECE (pruned)", ".3f"),
    ],
    "loo": [
        ("elpd_loo", "elpd_loo", ".2f"), ("elpd_loo_se", "SE", ".2f"),
        ("p_loo", "p_loo", ".2f"), ("pareto_k_max", "max Pareto k", ".2f"),
        ("pareto_k_bad", "points with k > 0.7", ""), ("loo_n", "points", ""),
    ],
}


def _fmt(value: Any, spec: str = ".4g") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return format(value, spec)
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """A Markdown table; ``columns`` are ``(key, header, format spec)``."""
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(k), spec) for k, _, spec in columns) + " |")
    return "\n".join(lines)


def write_report(out: str | os.PathLike, *, idata: Any = None) -> Path:
    """Write ``report.md`` and its PNG figures (``figures/``) into a run folder."""
    if not Path(out).is_dir():
        raise UsageError(f"run folder {str(out)!r} does not exist")
    writable_dir(Path(out), "run folder")
    with run_folder_lock(out):
        return _write_report_locked(out, idata)


def _write_report_locked(out: str | os.PathLike, idata: Any) -> Path:
    from pyro_prune import inspect as pa
    from pyro_prune.inspect import plots
    from pyro_prune.reduction import get_criterion

    run = load_run(out)
    out = run.out
    fig_dir = out / FIGURES_DIR
    fig_dir.mkdir(exist_ok=True)
    if idata is None:
        path = out / IDATA_FILE
        if not path.exists():
            raise UsageError(f"{path} not found: the run in {out} has not finished (run fit again)")
        try:
            idata = pa.load(path)
        except Exception as err:  # h5netcdf / HDF5 report damage in many ways
            raise UsageError(f"{path} is truncated or damaged ({one_line(err)[:200]}); "
                             f"run fit again to rebuild it") from None
    from pyro_prune.older_runs import backfill_metrics, reduction_of

    # a run folder of an older release: what model.pt gives is rebuilt, the rest named
    backfill = backfill_metrics(run.model, run.shape.input_shape, run.metrics, out,
                                calibration_file=CALIBRATION_FILE)
    cfg, m = run.config, backfill.metrics
    figures: list[tuple[str, str]] = []

    def save(fig: Any, name: str, caption: str) -> None:
        plots.save_figure(fig, fig_dir / name)
        figures.append((name, caption))

    save(plots.plot_history(run.history, title=f"{cfg.model} / {cfg.method} on {cfg.data}"),
         "history.png", "Loss, accuracy and kept structures per epoch.")
    if m.get("structures") and m.get("kept"):
        save(plots.plot_widths(m["structures"], m["kept"],
                               title=f"Width per layer: {m.get('compression', 0.0):.1%} of the "
                                     "parameters removed"),
             "widths.png", "Structures (neurons, channels, heads) of every layer before and after "
                           "pruning.")
    if m.get("params_full"):
        save(plots.plot_summary(m), "summary.png",
             "The pruned network against the unpruned one: parameters, MACs per input and "
             "latency (batch 256, medians of interleaved repeats) as ratios, and the W2 shift "
             "of the posterior predictive (0: unchanged, 1: as far as removing everything)."
             + (f" Not in this run folder: {', '.join(backfill.missing)}." if backfill.missing else ""))
    calibration_path = out / CALIBRATION_FILE
    if calibration_path.exists():
        cal = read_json(calibration_path)
        save(plots.plot_reliability({"removed structures restored": cal["restored"],
                                     "pruned": cal["pruned"]},
                                    title="Calibration of the posterior predictive (test set)"),
             "calibration.png",
             "Reliability diagram: accuracy against confidence in 15 bins, with the expected "
             "calibration error (ECE); below, the share of test examples per bin.")
    if run.model.noise_layers():
        save(plots.plot_theta_forest(idata), "theta_forest.png",
             "Posterior mean and 94% HDI of the multiplicative noise of every structure.")
        criterion = METHODS[cfg.method].criterion
        shown = criterion or "bmrs_n"
        red = pa.get_group(idata, "reduction")
        have = set(map(str, red["criterion"].values)) if "criterion" in red.coords else set()
        # an InferenceData saved before the run's criterion was in it: scores from model.pt
        source = idata if shown in have else reduction_of(run.model, shown)
        rule = ("removed at dF >= 0" if get_criterion(shown).threshold_free
                else f"removed below {get_criterion(shown).default_threshold:g}")
        save(plots.plot_decision(source, shown), "delta_f.png",
             (f"The rule of {shown} per structure ({rule}), at the final posterior; grey: "
              "removed during training." if criterion else
              f"This run did not prune; what {shown} would decide ({rule}).")
             + ("" if source is idata else " Recomputed from model.pt (the saved InferenceData "
                                           "predates the run's criterion)."))
    curves = read_json(out / CURVE_FILE) if (out / CURVE_FILE).exists() else {}
    point = {"label": f"{cfg.method} (this run)", "compression": m.get("compression", 0.0),
             "accuracy": m.get("test_accuracy")}
    if point["accuracy"] is not None:
        save(plots.plot_accuracy_vs_compression(curves, [point]), "accuracy_vs_compression.png",
             "Test accuracy against compression; curves remove structures in the criterion's "
             "order from the final model (one epoch of fine-tuning per point).")
    kept_rows = [{"gate": g, "kept": m.get("kept", {}).get(g), "total": n}
                 for g, n in m.get("structures", {}).items()]
    lines = [
        f"# pyro-prune run: {cfg.model} / {cfg.method} on {cfg.data}",
        "",
        "## Settings",
        "",
        markdown_table([cfg.to_json()], [(k, k, "") for k in
                                          ("model", "data", "method", "epochs", "finetune_epochs",
                                           "batch_size", "lr", "kl_scale", "seed", "num_samples")]),
        "",
        "## Results (test set)",
        "",
        markdown_table([m], _METRIC_COLUMNS["results"]),
        "",
        *([f"Pruning: {m['pruning_report']}", ""] if m.get("pruning_report") else []),
        *([f"**Note:** {m['chance_note'].removeprefix('note: ')}", ""] if m.get("chance_note") else []),
        *([f"*{backfill.note()}*", ""] if backfill.note() else []),
        "Uncertainty cost on the test set: log predictive density (sum over the test points of "
        "log mean_s p(y | x, z_s)) of the pruned network and of the same network with every "
        "structure restored; the difference is paired over the test points, with its standard "
        "error. The posterior predictive shift W2 and the calibration are measured on the same "
        "points.",
        "",
        markdown_table([m], _METRIC_COLUMNS["uncertainty"]),
        "",
        "PSIS-LOO on training data (ArviZ): the estimate of the predictive density of new data "
        "from the training data, with its Pareto k diagnostics (k > 0.7: that point's estimate is "
        "unreliable).",
        "",
        markdown_table([m], _METRIC_COLUMNS["loo"]),
        "",
        "## Kept structures",
        "",
        markdown_table(kept_rows, [("gate", "gate", ""), ("kept", "kept", ""), ("total", "total", "")]),
        "",
        "## Figures",
        "",
    ]
    for name, caption in figures:
        lines += [f"![{caption}]({FIGURES_DIR}/{name})", "", caption, ""]
    lines += ["## Files", "", "| file | content |", "|---|---|"]
    for name, what in ((CONFIG_FILE, "settings"), (HISTORY_FILE, "per-epoch history"),
                       (MODEL_FILE, "Pyro model state dict"),
                       (CONVERTED_STATE_FILE, "converted deterministic network (state dict)"),
                       (EXPORTED_PROGRAM_FILE, "converted network (torch.export program)"),
                       (IDATA_FILE, "ArviZ InferenceData (netCDF)"),
                       (CALIBRATION_FILE, "reliability bins and ECE"), (METRICS_FILE, "metrics")):
        if (out / name).exists():
            lines.append(f"| `{name}` | {what} |")
    path = out / REPORT_FILE
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
