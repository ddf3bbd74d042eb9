"""BMRS figures: accuracy vs compression, rank correlation of criteria, BMRS_U vs p1.

* Figure 2 of the paper: a trained (unpruned) noise model is pruned post-training by each
  criterion, structures removed progressively with one epoch of fine-tuning per point;
  the threshold-free stopping point of BMRS_N (where dF turns negative) is marked.
* Figure 3: Spearman rank correlation between the criteria's structure scores.
* Figure 4: BMRS_U's threshold-free compression and accuracy as its reduced prior's
  precision p1 varies.

    python benchmarks/bmrs_curves.py --dataset mnist --epochs 10 --seed 0
"""

from __future__ import annotations

import argparse
import copy

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
from pyro_prune.inference import (  # noqa: E402
    evaluate,
    fit,
    post_training_curve,
    structure_removals,
    structure_scores,
)

CURVE_CRITERIA = ["bmrs_n", "snr", "e_theta", "l2"]
RANK_CRITERIA = ["bmrs_n", "bmrs_u", "snr", "e_theta", "l2"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--model", default="mlp", choices=["mlp", "lenet5"])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--points", type=int, default=12)
    parser.add_argument("--kl-scale", default="paper", choices=["elbo", "paper"])
    args = parse_benchmark_args(parser)
    config = vars(args)
    print_header(__file__, seeds=[args.seed], config=config)

    full = load_dataset(args.dataset, "train")
    test = load_dataset(args.dataset, "test")
    train, _ = train_val_split(full, val_fraction=0.2, seed=args.seed)
    torch.manual_seed(args.seed)
    model = make_model(args.model, full.info)
    fit(model, train, epochs=args.epochs, seed=args.seed, kl_scale=args.kl_scale, progress=True)
    base_acc = evaluate(model, test)["accuracy"]
    print(f"unpruned test accuracy {base_acc:.4f}")

    # Figure 2: accuracy vs compression
    fractions = list(np.linspace(0.0, 0.95, args.points))
    curves = {}
    for crit in CURVE_CRITERIA:
        curves[crit] = post_training_curve(model, train, test, crit, fractions=fractions,
                                           finetune_epochs=1, seed=args.seed)
    fig, ax = plt.subplots(figsize=(6, 4))
    for crit, pts in curves.items():
        ax.plot([100 * p["compression"] for p in pts], [100 * p["accuracy"] for p in pts],
                marker="o", ms=3, label=crit)
    stop = curves["bmrs_n"][0]["stop_fraction"]
    stop_model = copy.deepcopy(model)
    for name, remove in structure_removals(stop_model, "bmrs_n").items():
        stop_model.gates()[name].prune(remove)
    ax.axvline(100 * compression(stop_model), color="k", ls="--", lw=1, label="BMRS_N stop (dF<0)")
    ax.set_xlabel("compression (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{args.model} on {args.dataset}: post-training pruning")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS_DIR / "bmrs_curves_accuracy.png", dpi=120)
    plt.close(fig)

    # Figure 3: Spearman rank correlation between the criteria
    scores = {}
    for crit in RANK_CRITERIA:
        per_gate = structure_scores(model, crit)
        scores[crit] = torch.cat([per_gate[n].flatten() for n in model.gates()]).numpy()
    k = len(RANK_CRITERIA)
    rho = np.ones((k, k))
    for i in range(k):
        for j in range(k):
            if i != j:
                rho[i, j] = spearmanr(scores[RANK_CRITERIA[i]], scores[RANK_CRITERIA[j]]).statistic
    fig, ax = plt.subplots(figsize=(4.5, 4))
    im = ax.imshow(rho, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(k), RANK_CRITERIA, rotation=45)
    ax.set_yticks(range(k), RANK_CRITERIA)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{rho[i, j]:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im)
    fig.tight_layout()
    fig.savefig(RESULTS_DIR / "bmrs_curves_spearman.png", dpi=120)
    plt.close(fig)

    # Figure 4: BMRS_U vs p1
    p1_rows = []
    for p1 in [1, 2, 4, 6, 8, 10, 12, 16]:
        pruned = copy.deepcopy(model)
        for name, remove in structure_removals(pruned, "bmrs_u", p1=p1).items():
            pruned.gates()[name].prune(remove)
        fit(pruned, train, epochs=1, seed=args.seed, kl_scale=args.kl_scale, progress=False)
        p1_rows.append({"p1": p1, "compression": compression(pruned),
                        "accuracy": evaluate(pruned, test)["accuracy"]})
    fig, ax1 = plt.subplots(figsize=(5, 3.5))
    ax1.plot([r["p1"] for r in p1_rows], [100 * r["compression"] for r in p1_rows], "o-", label="compression")
    ax1.set_xlabel("p1 (reduced prior upper bound 2^-p1)")
    ax1.set_ylabel("compression (%)")
    ax2 = ax1.twinx()
    ax2.plot([r["p1"] for r in p1_rows], [100 * r["accuracy"] for r in p1_rows], "s--", color="C1",
             label="accuracy")
    ax2.set_ylabel("test accuracy (%)")
    fig.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(RESULTS_DIR / "bmrs_curves_p1.png", dpi=120)
    plt.close(fig)

    rows = [{"figure": "accuracy_vs_compression", **p} for pts in curves.values() for p in pts]
    rows += [{"figure": "spearman", "a": RANK_CRITERIA[i], "b": RANK_CRITERIA[j], "rho": float(rho[i, j])}
             for i in range(k) for j in range(k) if i < j]
    rows += [{"figure": "bmrs_u_p1", **r} for r in p1_rows]
    print(format_table([r for r in rows if r["figure"] == "spearman"]))
    print(format_table(p1_rows))
    path = write_results(__file__, config=config, seeds=[args.seed], rows=rows,
                         extra={"unpruned_accuracy": base_acc, "bmrs_n_stop_fraction": stop})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
