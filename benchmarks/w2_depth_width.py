"""Prune ratio reached by W2 neuron pruning against network depth and width (Kuboň 2025, Fig. 2).

Protocol: one UCI regression set and split (default concrete, split 0), Bayesian MLPs
(Gaussian weights, mask gates, Gaussian likelihood) fitted for a fixed number of optimiser
steps as in ``w2_uci.py``; (a) depth 1 to 4 hidden layers of width 32, (b) one hidden layer
of width 8 to 256. Each network is pruned by the W2 search (the default lambda, contribution score);
reported: neurons pruned, test RMSE before/after (original units) and its change.

Reductions against the reference (stated in the output): one data set, one split, one seed.

    python benchmarks/w2_depth_width.py --dataset concrete --depths 1 2 3 4 --widths 8 16 32 64 128 256
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from _common import (  # noqa: E402
    RESULTS_DIR,
    add_w2_args,
    format_table,
    parse_benchmark_args,
    print_header,
    write_results,
)
from w2_uci import metrics, train_uci  # noqa: E402

from pyro_prune.inference import w2_prune  # noqa: E402

SCRIPT = "w2_depth_width"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="concrete")
    parser.add_argument("--split", type=int, default=0)
    parser.add_argument("--depths", nargs="+", type=int, default=[1, 2, 3, 4])
    parser.add_argument("--depth-width", type=int, default=32)
    parser.add_argument("--widths", nargs="+", type=int, default=[8, 16, 32, 64, 128, 256])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--score", default="contribution", choices=["activation", "contribution"])
    add_w2_args(parser, lr=1e-2, batch_size=32, eval_draws=200)
    args = parse_benchmark_args(parser)
    config = {**vars(args), "reductions": ["one data set", "one split", "one seed",
                                           f"{args.steps} optimiser steps per fit"]}
    print_header(SCRIPT, seeds=[args.seed], config=config)

    settings = [("depth", d, [args.depth_width] * d) for d in args.depths]
    settings += [("width", w, [w]) for w in args.widths]
    rows: list[dict[str, Any]] = []
    for sweep, value, hidden in settings:
        run = train_uci(args.dataset, args.split, hidden, steps=args.steps, batch_size=args.batch_size,
                        lr=args.lr, prior_scale=args.prior_scale, seed=args.seed)
        full = metrics(run, None, args.eval_draws, args.seed)
        t0 = time.perf_counter()
        res = w2_prune(run["net"], run["train"].tensors[0], lam=args.lam, draws=args.draws,
                       score=args.score, seed=args.seed)
        pruned = metrics(run, res.mask, args.eval_draws, args.seed)
        rows.append({"sweep": sweep, "value": value, "hidden": "x".join(map(str, hidden)),
                     "neurons": sum(hidden), "kept": res.best["kept"],
                     "pruned_%": 100 * res.best["prune_ratio"],
                     "kept_per_layer": "/".join(str(v) for v in res.best["kept_per_gate"].values()),
                     "rmse_full": full["rmse"], "rmse_pruned": pruned["rmse"],
                     "rmse_change_%": 100 * (pruned["rmse"] / full["rmse"] - 1),
                     "fit_s": run["fit_s"], "search_s": time.perf_counter() - t0})
        print(format_table(rows[-1:]), flush=True)

    print()
    print(format_table(rows, ["sweep", "value", "hidden", "kept", "pruned_%", "kept_per_layer",
                              "rmse_full", "rmse_pruned", "rmse_change_%"]))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, sweep, label in ((axes[0], "depth", f"hidden layers (width {args.depth_width})"),
                             (axes[1], "width", "width (one hidden layer)")):
        sel = [r for r in rows if r["sweep"] == sweep]
        ax.plot([r["value"] for r in sel], [r["pruned_%"] for r in sel], marker="o", label="neurons pruned (%)")
        ax.plot([r["value"] for r in sel], [r["rmse_change_%"] for r in sel], marker="s",
                label="test RMSE change (%)")
        ax.set(xlabel=label, title=f"{args.dataset}, split {args.split}")
        if sweep == "width":
            ax.set_xscale("log", base=2)
        ax.axhline(0, color="grey", lw=0.5)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS_DIR / f"{SCRIPT}.png", dpi=120)
    path = write_results(__file__, config=config, seeds=[args.seed], rows=rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
