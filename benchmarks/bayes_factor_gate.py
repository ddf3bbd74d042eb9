"""Where the Bayes-factor gate opens: the number of examples its likelihood is evaluated on.

Bayes Magnitude (Mathew & Rowe, arXiv 2308.02451) applies a candidate pruning when
``log BF = Delta log p(D | w) + Delta log p(w) >= log beta``. Pruning lowers the likelihood
term and raises the prior term (zeroed weights sit at the mode of N(0, 1)). Evaluated on
``B`` training examples instead of all ``N``, the likelihood term shrinks by ``B / N`` in
expectation (the power posterior of
:meth:`pyro_prune.reduction.BayesFactor.tempered_log_bayes_factor`), so the gate accepts
exactly when ``B <= B*`` with ``B* = N (log beta - Delta pi) / Delta l``
(:meth:`~pyro_prune.reduction.BayesFactor.break_even_examples`). This benchmark measures:

1. ``B*`` after every epoch of training with the full-data gate (``bayes-magnitude``,
   which never opens, so the network stays dense and every epoch makes a decision);
2. the gate on ``B`` fresh training examples per decision (``bayes-magnitude-batch`` with
   ``likelihood_batch=B``) for a sweep of ``B``: the seeds whose gate opened, the first
   accepted epoch, the sparsity and test accuracy reached.

The protocol otherwise is that of ``bayes_factor_table.py`` (FCN 512-256-128, Adam lr 1e-3,
batch 64, prior N(0, 1), beta = 1); every reduction is stated in the output.

    python benchmarks/bayes_factor_gate.py --datasets mnist fashion-mnist --seeds 0 1 2 \
        --epochs 5 --train-subset 10000
    python benchmarks/bayes_factor_gate.py --batches 128 --epochs 25 --train-subset 0 \
        --suffix _full                                   # the paper's epochs and data
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from _common import (  # noqa: E402
    RESULTS_DIR,
    RunCache,
    format_table,
    parse_benchmark_args,
    print_header,
    write_results,
)
from bayes_factor_table import load_data, run_one  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

NAME = "bayes_factor_gate"
FULL = "full"  # the label of the full-data gate among the B values


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x


def break_even_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per data set and epoch: ``B*`` of the full-data gate's decisions over the seeds."""
    rows = []
    for dataset in dict.fromkeys(r["dataset"] for r in runs):
        sel = [r for r in runs if r["dataset"] == dataset and r["batch"] == FULL]
        epochs = sorted({h["epoch"] for r in sel for h in r["history"]})
        for epoch in epochs:
            vals = [h["break_even_examples"] for r in sel for h in r["history"]
                    if h["epoch"] == epoch and h.get("break_even_examples") is not None]
            if not vals:
                continue
            rows.append({"dataset": dataset, "epoch": epoch, "seeds": len(vals),
                         "break_even_median": statistics.median(vals),
                         "break_even_min": min(vals), "break_even_max": max(vals)})
    return rows


def sweep_rows(runs: list[dict[str, Any]], target: float) -> list[dict[str, Any]]:
    """Per data set and ``B``: seeds whose gate opened, first acceptance, sparsity, accuracy."""
    rows = []
    for dataset in dict.fromkeys(r["dataset"] for r in runs):
        batches = sorted({r["batch"] for r in runs if r["dataset"] == dataset},
                         key=lambda b: math.inf if b == FULL else b)
        for b in batches:
            sel = [r for r in runs if r["dataset"] == dataset and r["batch"] == b]
            opened = [r for r in sel if r["accepted_epochs"]]
            acc = [r["test_accuracy"] for r in sel]
            rows.append({
                "dataset": dataset, "B": b, "seeds": len(sel),
                "opened": f"{len(opened)}/{len(sel)}",
                "first_accepted_epoch": (statistics.median(r["accepted_epochs"][0] for r in opened)
                                         if opened else None),
                "sparsity": statistics.mean(r["sparsity"] for r in sel),
                "target_sparsity": target,
                "accuracy": statistics.mean(acc),
                "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                "first_log_bf_median": statistics.median(r["first_log_bf"] for r in sel),
            })
    return rows


def plot(runs: list[dict[str, Any]], batches: list[int], path: Path) -> None:
    datasets = list(dict.fromkeys(r["dataset"] for r in runs))
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 3.8), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for r in (r for r in runs if r["dataset"] == dataset and r["batch"] == FULL):
            pts = [(h["epoch"], h["break_even_examples"]) for h in r["history"]
                   if _finite(h.get("break_even_examples")) is not None]
            ax.plot(*zip(*pts), marker="o", label=f"B*, seed {r['seed']}")
        for b in batches:
            opened = [r for r in runs if r["dataset"] == dataset and r["batch"] == b and r["accepted_epochs"]]
            ax.axhline(b, color="grey", lw=0.6, ls="--" if opened else ":")
            ax.annotate(f"B={b}{' opens' if opened else ''}", (1, b), fontsize=7, va="bottom")
        ax.set(yscale="log", xlabel="epoch", ylabel="examples", title=f"{dataset}: break-even B*")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["mnist", "fashion-mnist"])
    parser.add_argument("--model", default="fcn", choices=["fcn", "cnn"])
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--batches", nargs="+", type=int, default=[16, 32, 64, 128, 256, 1024],
                        help="likelihood examples B of the batch gate")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--train-subset", type=int, default=10000,
                        help="train on a stratified subset of this many examples (0: all)")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--prior-scale", type=float, default=1.0)
    parser.add_argument("--runs-file", default=None,
                        help="cache of finished runs (JSON; default results/<name><suffix>.runs.json)")
    parser.add_argument("--suffix", default="",
                        help="results go to bayes_factor_gate<suffix>.json (e.g. _full for another protocol)")
    args = parse_benchmark_args(parser, threads=1, seed=False)
    if any(b < 1 for b in args.batches):
        parser.error(f"--batches must be positive, got {args.batches}")
    args.train_subset = args.train_subset or None
    # what run_one reads besides the above: the gate of bayes_factor_table's defaults
    args.threshold, args.log_threshold, args.spare_first_last = 1.0, None, False
    config = {k: v for k, v in vars(args).items() if k not in ("runs_file", "suffix")}
    config["reductions"] = [r for r in (
        f"epochs {args.epochs} (paper 25)" if args.epochs != 25 else None,
        f"train subset {args.train_subset} of the training part" if args.train_subset else None,
        f"seeds {args.seeds}") if r]
    print_header(__file__, seeds=args.seeds, config=config)

    runs_file = Path(args.runs_file or RESULTS_DIR / f"{NAME}{args.suffix}.runs.json")
    cache = RunCache(runs_file)
    jobs = [(d, b, s) for d in args.datasets for b in [FULL, *args.batches] for s in args.seeds]
    runs: list[dict[str, Any]] = []
    data: dict[str, Any] | None = None
    loaded = None
    for dataset, b, seed in tqdm(jobs, desc=NAME, mininterval=5):
        key = RunCache.key(dataset, args.model, args.sparsity, b, seed, args.epochs, args.train_subset,
                           args.val_fraction, args.batch_size, args.lr, args.prior_scale)
        if key not in cache:
            if loaded != dataset:
                data, loaded = load_data(dataset, args), dataset
            if data is None:
                continue
            method = "bayes-magnitude" if b == FULL else "bayes-magnitude-batch"
            r = run_one(dataset, args.model, args.sparsity, method, seed, args, data,
                        likelihood_batch=None if b == FULL else int(b))
            cache.put(key, {**r, "batch": b})
        runs.append(cache[key])

    be_rows = break_even_rows(runs)
    rows = sweep_rows(runs, args.sparsity)
    print(format_table(be_rows))
    print()
    print(format_table(rows))
    png = RESULTS_DIR / f"{NAME}{args.suffix}.png"
    if runs:
        plot(runs, args.batches, png)
    path = write_results(__file__, config=config, seeds=args.seeds, rows=rows, suffix=args.suffix,
                         extra={"break_even": be_rows, "plots": [png.name] if runs else []})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
