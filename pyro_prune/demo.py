"""The end-to-end demo behind ``pyro-prune demo``.

On the embedded 8x8 digits (no files needed) — or on MNIST with ``--data mnist`` — it runs the
whole pipeline for two networks, an MLP and LeNet-5:

1. **define + fit**: SVI with log-normal multiplicative noise on every neuron and channel,
   four ways with the same seed, number of epochs and the library's default recipe
   (``docs/defaults.md``): no pruning (the reference), the default criterion ``bmrs``
   (BMRS_N of Wright, Igel & Selvan, NeurIPS 2024, with prior odds sqrt(2 pi):1 for
   removal, so structures whose posterior went back to the prior, where dF ties at 0, are
   removed), plain BMRS_N (``bmrs_n``: ``dF >= 0``, which keeps them) and the SNR baseline
   (remove where ``E[theta] / std[theta] < 1``; Neklyudov et al., NeurIPS 2017);
2. **check**: the W2 shift of the posterior predictive caused by the removals
   (:func:`pyro_prune.predictive.w2_shift`, normalised by the shift of removing
   everything) and the ELPD difference to the unpruned reference on the test set
   (PSIS-LOO with ``az.compare``);
3. **convert**: a physically smaller deterministic network
   (:func:`pyro_prune.convert.to_deterministic`), its MACs and its measured speed-up over the
   unpruned deterministic network (batch 256, median of 21 runs);
4. **inspect**: per-run folders with the InferenceData, reports and figures, and a summary
   report with the accuracy-vs-compression curves of the unpruned model ranked by BMRS_N and
   by SNR, with the threshold-free stopping point.

It prints the table and where everything was written.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pyro_prune._io import atomic_write_text
from pyro_prune.evaluation import accuracy_curves
from pyro_prune.report import markdown_table, write_report
from pyro_prune.run_folder import (
    EXPORTED_PROGRAM_FILE,
    FIGURES_DIR,
    IDATA_FILE,
    REPORT_FILE,
    read_json,
    write_json,
)
from pyro_prune.runs import RunConfig, RunResult, load_data, run_fit

__all__ = ["DATA_DEFAULTS", "DemoConfig", "DemoResult", "run_demo"]


@dataclass(frozen=True)
class _DataDefaults:
    epochs: int
    finetune_epochs: int
    batch_size: int
    lr: float
    num_samples: int
    curve_points: int
    eval_examples: int | None
    curve_train_examples: int | None


#: criteria whose post-training ranking curves the summary plots (bmrs_n and bmrs rank
#: alike, their scores differing by the constant prior odds, and stop at different points)
CURVE_CRITERIA = ("bmrs_n", "bmrs", "snr")

#: per data set: epochs, fine-tuning epochs, batch size, learning rate, posterior draws, points
#: of the accuracy-vs-compression curves, test examples for ArviZ and the W2 check, training
#: examples for the one epoch of fine-tuning per curve point
DATA_DEFAULTS: dict[str, _DataDefaults] = {
    "digits": _DataDefaults(epochs=20, finetune_epochs=5, batch_size=32, lr=3e-2, num_samples=200,
                            curve_points=8, eval_examples=None, curve_train_examples=None),
    "mnist": _DataDefaults(epochs=3, finetune_epochs=1, batch_size=128, lr=1e-2, num_samples=100,
                           curve_points=4, eval_examples=2000, curve_train_examples=10000),
}


@dataclass
class DemoConfig:
    """Settings of :func:`run_demo` (``None`` takes the data set's :data:`DATA_DEFAULTS`)."""

    data: str = "digits"
    out: Path = Path("runs/demo")
    epochs: int | None = None
    finetune_epochs: int | None = None
    seed: int = 0
    num_samples: int | None = None
    curve_points: int | None = None
    train_subset: int | None = None
    models: tuple[str, ...] = ("mlp", "lenet5")
    methods: tuple[str, ...] = ("none", "bmrs", "bmrs_n", "snr")
    kl_scale: str = RunConfig.kl_scale
    noise_lr: float | None = RunConfig.noise_lr
    hidden: list[int] = field(default_factory=lambda: [100, 100])

    def run_config(self, model: str, method: str) -> RunConfig:
        if self.data not in DATA_DEFAULTS:
            raise ValueError(f"demo data must be one of {list(DATA_DEFAULTS)}, got {self.data!r}")
        d = DATA_DEFAULTS[self.data]
        return RunConfig(
            model=model, data=self.data, method=method,
            epochs=self.epochs or d.epochs,
            finetune_epochs=d.finetune_epochs if self.finetune_epochs is None else self.finetune_epochs,
            batch_size=d.batch_size, lr=d.lr, noise_lr=self.noise_lr, seed=self.seed,
            kl_scale=self.kl_scale,
            hidden=list(self.hidden) if model == "mlp" else None, val_fraction=0.1,
            num_samples=self.num_samples or d.num_samples, curve_points=0,
            train_subset=self.train_subset, eval_examples=d.eval_examples,
        )

    @property
    def points(self) -> int:
        """Points of the accuracy-vs-compression curves."""
        return DATA_DEFAULTS[self.data].curve_points if self.curve_points is None else self.curve_points


@dataclass
class DemoResult:
    """The rows of the printed table and the paths written."""

    rows: list[dict[str, Any]]
    report: Path
    figures: list[Path]
    runs: dict[str, Path]
    seconds: float


COLUMNS = (
    ("model", "model", ""),
    ("method", "method", ""),
    ("test_accuracy", "accuracy", ".4f"),
    ("compression", "compression", ".3f"),
    ("macs", "MACs (pruned/full)", ""),
    ("speedup", "speedup", ".2f"),
    ("w2_normalized", "W2 shift", ".3g"),
    ("lpd", "test lpd vs none (+- SE)", ""),
)


def _row(model: str, method: str, run: RunResult, reference: RunResult | None) -> dict[str, Any]:
    from pyro_prune.predictive import compare_lpd

    m = run.metrics
    row = {"model": model, "method": method, "test_accuracy": m["test_accuracy"],
           "compression": m["compression"], "macs": f"{m['macs_pruned']}/{m['macs_full']}",
           "macs_pruned": m["macs_pruned"], "macs_full": m["macs_full"],
           "speedup": m.get("speedup"), "w2": m["w2"], "w2_normalized": m["w2_normalized"],
           "test_lpd": m["test_lpd"], "test_lpd_n": m["test_lpd_n"],
           "elpd_loo_train": m["elpd_loo"], "pareto_k_max": m["pareto_k_max"],
           "pareto_k_bad": m["pareto_k_bad"],
           "kept": m["kept"], "structures": m["structures"], "fit_time_s": m["fit_time_s"]}
    if reference is None:  # no unpruned reference in this demo
        row.update(lpd_diff=None, lpd_diff_se=None, lpd="-")
    elif run.lpd_pointwise is None or reference.lpd_pointwise is None:
        row.update(lpd_diff=None, lpd_diff_se=None, lpd="-")
    elif reference is run:
        row.update(lpd_diff=0.0, lpd_diff_se=0.0, lpd="0 (reference)")
    else:  # the same test points in both runs (same seed): paired
        cmp = compare_lpd(run.lpd_pointwise, reference.lpd_pointwise)
        diff, se = round(cmp.difference, 1) + 0.0, round(cmp.se, 1) + 0.0  # no "-0.0"
        row.update(lpd_diff=cmp.difference, lpd_diff_se=cmp.se, lpd=f"{diff:+.1f} +- {se:.1f}")
    return row


def run_demo(cfg: DemoConfig | None = None, *, data_root: str | None = None, progress: bool = True,
             restart: bool = False) -> DemoResult:
    """Run the demo, print its table, write ``<out>/report.md``; see the module docstring."""
    from pyro_prune.inspect import plots
    from pyro_prune.progress import progress_bar

    cfg = cfg or DemoConfig()
    out = Path(cfg.out)
    fig_dir = out / FIGURES_DIR
    fig_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    figures: list[Path] = []
    run_dirs: dict[str, Path] = {}
    curve_sets: dict[str, dict[str, list[dict[str, Any]]]] = {}
    stages = [(m, meth) for m in cfg.models for meth in cfg.methods]
    bar = progress_bar(desc="demo", total=len(stages), enabled=progress, every_s=0.0)
    results: dict[tuple[str, str], RunResult] = {}
    def log(msg: str) -> None:
        if progress:
            print(msg, file=sys.stderr, flush=True)

    for i, (model, method) in enumerate(stages, 1):
        bar.set_description(f"demo {model}/{method}")
        log(f"demo [{i}/{len(stages)}] {model} / {method}")
        rc = cfg.run_config(model, method)
        run = run_fit(rc, out / f"{model}-{method}", data_root=data_root, progress=progress,
                      restart=restart, log=log)
        write_report(run.out, idata=run.idata)
        results[(model, method)] = run
        run_dirs[f"{model}-{method}"] = run.out
        bar.update(1)
    bar.close()

    for model in cfg.models:
        reference = results.get((model, "none"))
        for method in cfg.methods:
            rows.append(_row(model, method, results[(model, method)], reference))
        if cfg.points > 0 and reference is not None:
            rc = cfg.run_config(model, "none")
            subset = DATA_DEFAULTS[cfg.data].curve_train_examples
            if rc.train_subset is not None:
                subset = min(subset or rc.train_subset, rc.train_subset)
            cache = out / f"{model}_curves.json"
            key = {"criteria": list(CURVE_CRITERIA), "points": cfg.points, "train_subset": subset,
                   "reference": rc.to_json(), "reference_metrics": reference.metrics.get("total_time_s")}
            cached = read_json(cache) if cache.exists() and not restart else None
            if cached is not None and cached.get("key") == key:
                curve_sets[model] = cached["curves"]  # a finished demo rerun recomputes nothing
            else:
                train, test, _ = load_data(cfg.data, root=data_root, train_subset=subset, seed=rc.seed)
                curve_sets[model] = accuracy_curves(
                    reference.model, train, test, CURVE_CRITERIA, points=cfg.points,
                    batch_size=rc.batch_size, lr=rc.lr, seed=rc.seed, progress=progress)
                write_json(cache, {"key": key, "curves": curve_sets[model]})
        points = [{"label": f"{r['method']} (continuous)", "compression": r["compression"],
                   "accuracy": r["test_accuracy"]} for r in rows if r["model"] == model]
        fig = plots.plot_accuracy_vs_compression(curve_sets.get(model, {}), points,
                                                 title=f"{model} on {cfg.data}")
        figures.append(plots.save_figure(fig, fig_dir / f"{model}_accuracy_vs_compression.png"))
        pruned = results.get((model, "bmrs"))
        if pruned is not None:
            figures.append(plots.save_figure(plots.plot_theta_forest(pruned.idata),
                                             fig_dir / f"{model}_bmrs_theta_forest.png"))
        if reference is not None:
            figures.append(plots.save_figure(plots.plot_delta_f(reference.idata, "bmrs_n"),
                                             fig_dir / f"{model}_none_delta_f.png"))
    seconds = time.perf_counter() - t0
    report = _write_summary(cfg, out, rows, figures, run_dirs, curve_sets, seconds)
    _print_summary(cfg, rows, report, figures, run_dirs, seconds)
    return DemoResult(rows=rows, report=report, figures=figures, runs=run_dirs, seconds=seconds)


def _settings_line(cfg: DemoConfig) -> str:
    rc = cfg.run_config(cfg.models[0], cfg.methods[0])
    return (f"data={cfg.data} epochs={rc.epochs}+{rc.finetune_epochs} (fine-tuning) "
            f"batch={rc.batch_size} lr={rc.lr} kl_scale={rc.kl_scale} seed={rc.seed} "
            f"num_samples={rc.num_samples} eval_examples={rc.eval_examples or 'all'} "
            f"threads={torch.get_num_threads()}")


def _print_summary(cfg: DemoConfig, rows: list[dict[str, Any]], report: Path, figures: Sequence[Path],
                   run_dirs: dict[str, Path], seconds: float) -> None:
    print(markdown_table(rows, COLUMNS))
    print()
    print(_settings_line(cfg))
    print("W2 shift: W2(p_restored, p_pruned) / W2(p_restored, p_empty) on the test set; "
          "test lpd: sum over the test points of log mean_s p(y | x, z_s), pruned minus none, "
          "paired over the points.")
    print(f"report:   {report}")
    print(f"figures:  {', '.join(str(p) for p in figures)}")
    for name, path in run_dirs.items():
        print(f"{name:>14}: {path / REPORT_FILE} | model {path / EXPORTED_PROGRAM_FILE} | "
              f"InferenceData {path / IDATA_FILE}")
    print(f"finished in {seconds:.1f} s")


def _write_summary(cfg: DemoConfig, out: Path, rows: list[dict[str, Any]], figures: Sequence[Path],
                   run_dirs: dict[str, Path], curves: dict[str, Any], seconds: float) -> Path:
    payload = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(cfg).items()},
        "settings": _settings_line(cfg),
        "rows": rows,
        "curves": curves,
        "seconds": seconds,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "torch_threads": torch.get_num_threads()},
    }
    atomic_write_text(out / "summary.json", json.dumps(payload, indent=2, default=str) + "\n")
    lines = [
        f"# pyro-prune demo on {cfg.data}",
        "",
        _settings_line(cfg),
        "",
        markdown_table(rows, COLUMNS),
        "",
        "* **compression**: fraction of the parameters of the unpruned deterministic network "
        "removed by the conversion; **MACs** per input; **speedup**: latency of the unpruned "
        "deterministic network over the converted one (batch 256, median of 21 interleaved runs).",
        "* **W2 shift**: W2 between the posterior predictive with the removed structures restored "
        "and the pruned one, divided by the W2 of removing every structure (0 = unchanged).",
        "* **test lpd vs none**: the test-set log predictive density (sum over the test points "
        "of log mean_s p(y | x, z_s)) of the pruned network minus that of the unpruned reference, "
        "with the standard error of the paired difference (positive: the pruned network predicts "
        "the test data better). PSIS-LOO, on training data, is in each run's report.",
        "",
        "## Figures",
        "",
    ]
    for path in figures:
        lines += [f"![{path.stem}]({path.relative_to(out).as_posix()})", ""]
    lines += ["## Runs", ""]
    for name, path in run_dirs.items():
        lines.append(f"* [{name}]({(path / REPORT_FILE).relative_to(out).as_posix()})")
    lines += ["", f"Finished in {seconds:.1f} s."]
    path = out / REPORT_FILE
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
