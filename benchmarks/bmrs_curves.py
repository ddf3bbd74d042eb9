"""BMRS figures: accuracy vs compression, rank correlation of criteria, BMRS_U vs p1.

For each data set a noise model (the paper's MLP for it, or LeNet-5) is trained without
pruning; then, as in Figures 2-4 of Wright et al. (NeurIPS 2024):

* Figure 2: post-training pruning by each criterion (``post_training_curve``): the
  structures are ranked once, removed progressively, each point fine-tuned for one epoch
  with the training's own KL weight and noise learning rate, and evaluated on the test set.
  The threshold-free stopping points (where dF turns negative) of the exact BMRS_N, of the
  released code's BMRS_N (``bmrs_n_code``) and of BMRS_U-8/4 are marked; they are where
  those rules would stop removing, with no threshold to choose.
* Figure 3: Spearman rank correlation between the criteria's structure scores.
* Figure 4: BMRS_U's threshold-free compression and accuracy (one fine-tuning epoch) as
  its reduced prior's precision p1 varies.

BMRS_N and ``bmrs_n_code`` rank the structures alike (their dF differ by a constant), so
they share one curve.

    python benchmarks/bmrs_curves.py --datasets mnist fashion-mnist --epochs 10 --seed 0
"""

from __future__ import annotations

import argparse
import copy
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import RESULTS_DIR, format_table, parse_benchmark_args, print_header, write_results  # noqa: E402
from bmrs_table import make_model  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from pyro_prune.convert import compression  # noqa: E402
from pyro_prune.data import load_dataset, train_val_split  # noqa: E402
from pyro_prune.inference import evaluate, fit, post_training_curve  # noqa: E402
from pyro_prune.reduction import structure_removals, structure_scores  # noqa: E402

NAME = "bmrs_curves"
#: one curve per ranking (bmrs_n_code ranks as bmrs_n does)
CURVE_CRITERIA = ["bmrs_n", "bmrs_u8", "snr", "e_theta", "l2"]
RANK_CRITERIA = ["bmrs_n", "bmrs_u8", "bmrs_u4", "snr", "e_theta", "l2"]
#: threshold-free rules whose stopping point is marked on the curves
STOP_CRITERIA = ["bmrs_n", "bmrs_n_code", "bmrs_u8", "bmrs_u4"]
P1_VALUES = [1, 2, 4, 6, 8, 10, 12, 16]


def stop_point(model: Any, criterion: str, **kwargs: Any) -> tuple[Any, float]:
    """A copy of ``model`` with the criterion's threshold-free removals applied, and its compression."""
    pruned = copy.deepcopy(model)
    for name, remove in structure_removals(pruned, criterion, **kwargs).items():
        pruned.gates()[name].prune(remove)
    return pruned, compression(pruned)


def run_dataset(dataset: str, args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    full = load_dataset(dataset, "train")
    test = load_dataset(dataset, "test")
    train, _ = train_val_split(full, val_fraction=0.2, seed=args.seed)
    # training, curve fine-tuning and the p1 sweep share the KL weight and noise learning rate
    fit_kwargs = {"kl_scale": args.kl_scale, "noise_lr": args.noise_lr}
    torch.manual_seed(args.seed)
    model = make_model(args.model, full.info)
    fit(model, train, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
        progress=not args.quiet, **fit_kwargs)
    base_acc = evaluate(model, test)["accuracy"]
    print(f"{dataset} {args.model}: unpruned test accuracy {base_acc:.4f}")
    tag = f"{dataset}_{args.model}"
    rows: list[dict[str, Any]] = []

    # Figure 2: accuracy vs compression, the threshold-free stops marked
    fractions = [float(f) for f in np.linspace(0.0, args.max_fraction, args.points)]
    curves = {crit: post_training_curve(model, train, test, crit, fractions=fractions,
                                        finetune_epochs=1, batch_size=args.batch_size,
                                        seed=args.seed, progress=not args.quiet, fit_kwargs=fit_kwargs)
              for crit in CURVE_CRITERIA}
    stops = {crit: stop_point(model, crit)[1] for crit in STOP_CRITERIA}
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for crit, pts in curves.items():
        ax.plot([100 * p["compression"] for p in pts], [100 * p["accuracy"] for p in pts],
                marker="o", ms=3, label=crit if crit != "bmrs_n" else "bmrs_n / bmrs_n_code")
        rows += [{"figure": "accuracy_vs_compression", "dataset": dataset, "model": args.model,
                  "criterion": crit, "fraction": p["fraction"], "compression": p["compression"],
                  "accuracy": p["accuracy"]} for p in pts]
    for i, (crit, comp) in enumerate(stops.items()):
        ax.axvline(100 * comp, color=f"C{i + 5}", ls="--", lw=1, label=f"{crit} stop (dF >= 0)")
        rows.append({"figure": "stop", "dataset": dataset, "model": args.model, "criterion": crit,
                     "compression": comp})
    ax.axhline(100 * base_acc, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("compression (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(max(0.0, 100 * base_acc - 30), 100 * base_acc + 3)
    ax.set_title(f"{args.model} on {dataset}: post-training pruning (1 epoch fine-tuning per point)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    pngs = [f"{NAME}_{tag}_accuracy.png"]
    fig.savefig(RESULTS_DIR / pngs[-1], dpi=110)
    plt.close(fig)

    # Figure 3: Spearman rank correlation between the criteria's scores
    scores = {}
    for crit in RANK_CRITERIA:
        per_gate = structure_scores(model, crit)
        scores[crit] = torch.cat([per_gate[n].flatten() for n in model.gates()]).double().numpy()
    k = len(RANK_CRITERIA)
    rho = np.eye(k)
    for i in range(k):
        for j in range(i + 1, k):
            rho[i, j] = rho[j, i] = spearmanr(scores[RANK_CRITERIA[i]], scores[RANK_CRITERIA[j]]).statistic
            rows.append({"figure": "spearman", "dataset": dataset, "model": args.model,
                         "a": RANK_CRITERIA[i], "b": RANK_CRITERIA[j], "rho": float(rho[i, j])})
    fig, ax = plt.subplots(figsize=(5, 4.3))
    im = ax.imshow(rho, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(k), RANK_CRITERIA, rotation=45)
    ax.set_yticks(range(k), RANK_CRITERIA)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{rho[i, j]:.2f}", ha="center", va="center", fontsize=8)
    ax.set_title(f"Spearman rank correlation, {args.model} on {dataset}", fontsize=9)
    fig.colorbar(im)
    fig.tight_layout()
    pngs.append(f"{NAME}_{tag}_spearman.png")
    fig.savefig(RESULTS_DIR / pngs[-1], dpi=110)
    plt.close(fig)

    # Figure 4: BMRS_U vs p1, one fine-tuning epoch after its threshold-free removals
    p1_rows = []
    for p1 in P1_VALUES:
        pruned, comp = stop_point(model, "bmrs_u", p1=p1)
        fit(pruned, train, epochs=1, batch_size=args.batch_size, seed=args.seed, progress=False,
            **fit_kwargs)
        p1_rows.append({"figure": "bmrs_u_p1", "dataset": dataset, "model": args.model, "p1": p1,
                        "compression": comp, "accuracy": evaluate(pruned, test)["accuracy"]})
    rows += p1_rows
    fig, ax1 = plt.subplots(figsize=(5, 3.5))
    ax1.plot([r["p1"] for r in p1_rows], [100 * r["compression"] for r in p1_rows], "o-", label="compression")
    ax1.set_xlabel("p1 (reduced prior upper bound 2^-p1)")
    ax1.set_ylabel("compression (%)")
    ax2 = ax1.twinx()
    ax2.plot([r["p1"] for r in p1_rows], [100 * r["accuracy"] for r in p1_rows], "s--", color="C1",
             label="test accuracy")
    ax2.set_ylabel("test accuracy (%)")
    ax1.set_title(f"BMRS_U vs p1, {args.model} on {dataset}", fontsize=9)
    fig.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    pngs.append(f"{NAME}_{tag}_p1.png")
    fig.savefig(RESULTS_DIR / pngs[-1], dpi=110)
    plt.close(fig)

    print(format_table([r for r in rows if r["figure"] == "stop"], ["criterion", "compression"]))
    print(format_table([r for r in rows if r["figure"] == "spearman"], ["a", "b", "rho"]))
    print(format_table(p1_rows, ["p1", "compression", "accuracy"]))
    return rows, {"dataset": dataset, "model": args.model, "unpruned_accuracy": base_acc, "plots": pngs}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["mnist", "fashion-mnist"])
    parser.add_argument("--model", default="mlp", choices=["mlp", "lenet5"])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--points", type=int, default=12, help="points per curve")
    parser.add_argument("--max-fraction", type=float, default=0.95,
                        help="largest fraction of structures removed on a curve")
    parser.add_argument("--kl-scale", default="paper", choices=["elbo", "paper"])
    parser.add_argument("--noise-lr", type=float, default=3e-2,
                        help="learning rate of the noise posteriors (as in bmrs_table.py)")
    parser.add_argument("--quiet", action="store_true")
    args = parse_benchmark_args(parser, argv, threads=1)
    config = {k: v for k, v in vars(args).items() if k != "quiet"}
    config["protocol"] = ("paper: Figures 2-4, trained 50 epochs; this run: "
                          f"{args.epochs} epochs, 80/20 split, 1 fine-tuning epoch per point")
    print_header(__file__, seeds=[args.seed], config=config)
    rows: list[dict[str, Any]] = []
    per_dataset = []
    for dataset in args.datasets:
        try:
            r, info = run_dataset(dataset, args)
        except FileNotFoundError as err:
            print(f"NOTE: skipped {dataset} (files not present: {err})")
            continue
        rows += r
        per_dataset.append(info)
    if not rows:
        raise SystemExit("no data set could be loaded")
    path = write_results(__file__, config=config, seeds=[args.seed], rows=rows,
                         extra={"datasets": per_dataset})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
