"""W2 neuron pruning of Bayesian MLPs on UCI regression (Kuboň, TU Delft 2025; Figure 3).

Protocol: the standard Hernández-Lobato & Adams (2015) splits (90% train / 10% test, inputs
and targets standardised on the training rows), an MLP with Gaussian weights (prior
N(0, 1)), a mask gate on every hidden neuron and a Gaussian likelihood with learned noise,
fitted by SVI (full ELBO, fast engine) for a fixed number of optimiser steps; then the
iterative W2 search (the default lambda, both neuron scores) on the training inputs. Reported: hidden
neurons pruned, test RMSE of the predictive mean and test log likelihood (both in the
original target units, ``draws`` posterior draws) before and after pruning, and the Spearman
correlation of the W2 scores with Gaussian BMR (-dF). Figure 3: prune ratio and RMSE change
against lambda (default activation score), re-selected along the stored search path of the
first split.

Reductions against the reference (stated in the output): 2 of the 20 splits by default, one
training seed per split, a fixed step budget instead of tuned epochs.

    python benchmarks/w2_uci.py --datasets boston-housing concrete energy yacht --splits 0 1
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from _common import (  # noqa: E402
    RESULTS_DIR,
    add_w2_args,
    epochs_for,
    format_table,
    parse_benchmark_args,
    print_header,
    write_results,
)
from scipy.stats import spearmanr  # noqa: E402

from pyro_prune.data import load_dataset  # noqa: E402
from pyro_prune.inference import fit, w2_prune  # noqa: E402
from pyro_prune.models import MLP  # noqa: E402
from pyro_prune.predictive import evaluate_predictive, neuron_w2  # noqa: E402
from pyro_prune.reduction import structure_scores  # noqa: E402

SCRIPT = "w2_uci"
LAMBDAS = [0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0]
SCORES = ("activation", "contribution")
SWEEP_SCORE = "activation"  # the default score of w2_prune


def train_uci(name: str, split: int, hidden: list[int], *, steps: int, batch_size: int, lr: float,
              prior_scale: float, seed: int) -> dict[str, Any]:
    """Fit a Bayesian MLP on one split; returns the model, the data and the target scale."""
    train = load_dataset(f"uci/{name}", "train", split_index=split)
    test = load_dataset(f"uci/{name}", "test", split_index=split)
    torch.manual_seed(seed)
    net = MLP(train.tensors[0].shape[1], hidden, 1, likelihood="gaussian", weights="gaussian",
              gate="mask", prior_scale=prior_scale)
    epochs = epochs_for(len(train), batch_size, steps)
    t0 = time.perf_counter()
    fit(net, train, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, progress=False)
    return {"net": net, "train": train, "test": test, "epochs": epochs,
            "fit_s": time.perf_counter() - t0,
            "target_std": float(train.info.normalization.target_std)}


def metrics(run: dict[str, Any], mask: Any, draws: int, seed: int) -> dict[str, float]:
    return evaluate_predictive(run["net"], run["test"], mask=mask, draws=draws, seed=seed,
                               target_scale=run["target_std"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["boston-housing", "concrete", "energy", "yacht"])
    parser.add_argument("--splits", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--hidden", nargs="+", type=int, default=[50, 50])
    parser.add_argument("--steps", type=int, default=3000)
    add_w2_args(parser, lr=1e-2, batch_size=32, eval_draws=200)
    args = parse_benchmark_args(parser)
    config = {**vars(args), "lambdas_figure3": LAMBDAS, "sweep_score": SWEEP_SCORE,
              "reductions": [f"splits {args.splits} of 20", "one training seed per split",
                             f"{args.steps} optimiser steps per fit"]}
    print_header(SCRIPT, seeds=[args.seed], config=config)

    rows: list[dict[str, Any]] = []
    sweeps: dict[str, list[dict[str, float]]] = {}
    for name in args.datasets:
        for split in args.splits:
            run = train_uci(name, split, args.hidden, steps=args.steps, batch_size=args.batch_size,
                            lr=args.lr, prior_scale=args.prior_scale, seed=args.seed)
            net, x_train = run["net"], run["train"].tensors[0]
            full = metrics(run, None, args.eval_draws, args.seed)
            bmr = torch.cat(list(structure_scores(net, "gaussian_bmr").values()))
            for score in SCORES:
                t0 = time.perf_counter()
                res = w2_prune(net, x_train, lam=args.lam, draws=args.draws, score=score, seed=args.seed)
                search_s = time.perf_counter() - t0
                pruned = metrics(run, res.mask, args.eval_draws, args.seed)
                w2s = torch.cat(list(neuron_w2(net, None, x_train, draws=args.draws, score=score,
                                               seed=args.seed).values()))
                rows.append({
                    "dataset": name, "split": split, "score": score, "n_train": len(x_train),
                    "epochs": run["epochs"], "hidden": "x".join(map(str, args.hidden)),
                    "kept": res.best["kept"], "pruned_%": 100 * res.best["prune_ratio"],
                    "rmse_full": full["rmse"], "rmse_pruned": pruned["rmse"],
                    "rmse_change_%": 100 * (pruned["rmse"] / full["rmse"] - 1),
                    "ll_full": full["ll"], "ll_pruned": pruned["ll"],
                    "spearman_vs_bmr": float(spearmanr(w2s.numpy(), bmr.numpy()).statistic),
                    "fit_s": run["fit_s"], "search_s": search_s,
                })
                print(format_table(rows[-1:]), flush=True)
                if split == args.splits[0] and score == SWEEP_SCORE:
                    sweep = []
                    for lam in LAMBDAS:
                        sel = res.select(lam)
                        m = metrics(run, sel.mask, args.eval_draws, args.seed)
                        sweep.append({"lam": lam, "prune_ratio": sel.best["prune_ratio"],
                                      "rmse_change_%": 100 * (m["rmse"] / full["rmse"] - 1)})
                    sweeps[name] = sweep

    print()
    print(format_table(rows, ["dataset", "split", "score", "kept", "pruned_%", "rmse_full",
                              "rmse_pruned", "rmse_change_%", "ll_full", "ll_pruned",
                              "spearman_vs_bmr"]))
    print(f"\nFigure 3 ({SWEEP_SCORE} score, first split): prune ratio and RMSE change vs lambda")
    print(format_table([{"dataset": d, **r} for d, sw in sweeps.items() for r in sw]))

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, sw in sweeps.items():
        lams = [r["lam"] for r in sw]
        axes[0].plot(lams, [100 * r["prune_ratio"] for r in sw], marker="o", label=name)
        axes[1].plot(lams, [r["rmse_change_%"] for r in sw], marker="o", label=name)
    axes[0].set(xscale="log", xlabel="lambda", ylabel="neurons pruned (%)")
    axes[1].set(xscale="log", xlabel="lambda", ylabel="test RMSE change (%)")
    axes[1].axhline(5, color="k", ls=":", lw=1)
    for ax in axes:
        ax.axvline(args.lam, color="grey", ls="--", lw=1)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS_DIR / f"{SCRIPT}_lambda.png", dpi=120)
    path = write_results(__file__, config=config, seeds=[args.seed], rows=rows,
                         extra={"lambda_sweep": sweeps})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
