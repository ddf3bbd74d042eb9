"""W2 neuron pruning of a Bayesian MLP on Fashion-MNIST (Kuboň, TU Delft 2025, Figs. 1 and 4).

Protocol: an MLP 784-[hidden]-10 with Gaussian weights (prior N(0, 1), mean-field Normal
posterior) and a deterministic mask gate on every hidden neuron, fitted by SVI (full ELBO,
fast engine: local reparameterisation); then the iterative W2 search
(:func:`pyro_prune.inference.w2_prune`, the default lambda) on training inputs, once per neuron
score (``activation`` = E[z^2], the reference's score, and ``contribution`` =
E[z^2] sum_k E[w_kj^2]). Reported: fraction of hidden neurons pruned, test accuracy of the
posterior-mean network and of the Bayesian model average (``draws`` draws), predictive W2
between the full and the pruned network on test inputs (absolute, and relative to the empty
network), the Spearman correlation between the W2 scores and Gaussian BMR (-dF), the cost
curve (shape, sparsity, total; Figure 1) and test accuracy along the path. Lottery ticket
(Figure 4): the pruned architecture is retrained from the original initialisation of its
kept neurons and from a fresh random initialisation, with the same number of epochs.

Reductions against the reference (stated in the output): one hidden layer, a few epochs,
one seed, the W2 search on a 512-input subset of the training set with 32 draws.

    python benchmarks/w2_fashion_mnist.py --hidden 400 --epochs 10 --seed 0
"""

from __future__ import annotations

import argparse
import copy
import time
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from _common import (  # noqa: E402
    RESULTS_DIR,
    add_w2_args,
    format_table,
    parse_benchmark_args,
    print_header,
    write_results,
)
from scipy.stats import spearmanr  # noqa: E402

from pyro_prune.data import load_dataset  # noqa: E402
from pyro_prune.inference import evaluate, fit, w2_prune  # noqa: E402
from pyro_prune.models import MLP  # noqa: E402
from pyro_prune.predictive import apply_mask, evaluate_predictive, neuron_w2, w2_shift  # noqa: E402
from pyro_prune.reduction import structure_scores  # noqa: E402

SCRIPT = "w2_fashion_mnist"
REFERENCE = "Kuboň (TU Delft 2025): over 80% of neurons pruned, accuracy stable up to that point"


def make_model(hidden: int, prior_scale: float, seed: int) -> MLP:
    torch.manual_seed(seed)
    net = MLP(784, [hidden], 10, weights="gaussian", gate="mask", prior_scale=prior_scale)
    return net


def sliced_copy(initial: dict[str, torch.Tensor], kept: torch.Tensor, hidden_kept: int,
                prior_scale: float) -> MLP:
    """The pruned architecture with the original initial values of its kept neurons."""
    net = MLP(784, [hidden_kept], 10, weights="gaussian", gate="mask", prior_scale=prior_scale)
    idx = torch.nonzero(kept).flatten()
    state = net.state_dict()
    for key in state:
        value = initial[key]
        if key.startswith("net.fc1.") or key == "net.fc1_gate.kept":
            value = value[idx]
        elif key.startswith("net.out.weight"):
            value = value[:, idx]
        state[key] = value.clone()
    net.load_state_dict(state)
    return net


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=10)
    add_w2_args(parser, lr=3e-3, batch_size=128, eval_draws=32)
    parser.add_argument("--max-inputs", type=int, default=512)
    parser.add_argument("--batch", type=float, default=0.02, help="fraction of neurons removed per step")
    parser.add_argument("--w2-test-inputs", type=int, default=1000)
    parser.add_argument("--lottery-epochs", type=int, default=None, help="default: --epochs")
    parser.add_argument("--quiet", action="store_true")
    args = parse_benchmark_args(parser)
    lottery_epochs = args.lottery_epochs or args.epochs
    config = {**vars(args), "lottery_epochs": lottery_epochs, "dataset": "fashion-mnist",
              "architecture": f"784-[{args.hidden}]-10, Gaussian weights, mask gates",
              "reference": REFERENCE,
              "reductions": [f"one hidden layer of {args.hidden}", f"{args.epochs} epochs",
                             "one seed", f"W2 search on {args.max_inputs} training inputs x "
                             f"{args.draws} draws", f"test W2 on {args.w2_test_inputs} test inputs"]}
    print_header(SCRIPT, seeds=[args.seed], config=config)

    train = load_dataset("fashion-mnist", "train", flatten=True)
    test = load_dataset("fashion-mnist", "test", flatten=True)
    x_test_w2 = test.tensors[0][: args.w2_test_inputs]

    net = make_model(args.hidden, args.prior_scale, args.seed)
    initial = copy.deepcopy(net.state_dict())
    t0 = time.perf_counter()
    fitted = fit(net, train, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, val=test,
                 seed=args.seed, progress=not args.quiet)
    fit_time = time.perf_counter() - t0
    full_mean = evaluate(net, test)
    full_bma = evaluate_predictive(net, test, draws=args.eval_draws, seed=args.seed)

    # correlation of the W2 scores with Gaussian BMR (-dF: higher = keep), full network
    bmr = structure_scores(net, "gaussian_bmr")["fc1_gate"]
    correlations = {}
    for score in ("activation", "contribution"):
        s = neuron_w2(net, None, train.tensors[0][: args.max_inputs], draws=args.draws, score=score,
                      seed=args.seed)["fc1_gate"]
        correlations[score] = float(spearmanr(s.numpy(), bmr.numpy()).statistic)

    rows: list[dict[str, Any]] = [{
        "score": "none (unpruned)", "hidden_kept": args.hidden, "pruned_%": 0.0,
        "acc_mean_%": 100 * full_mean["accuracy"], "acc_bma_%": 100 * full_bma["accuracy"],
        "nll_bma": full_bma["nll"], "w2_test": 0.0, "w2_test_rel": 0.0, "search_s": 0.0,
        "spearman_vs_bmr": None,
    }]
    paths: dict[str, Any] = {}
    results = {}
    for score in ("activation", "contribution"):
        t0 = time.perf_counter()
        res = w2_prune(net, train, lam=args.lam, batch=args.batch, draws=args.draws,
                       max_inputs=args.max_inputs, score=score, seed=args.seed,
                       progress=not args.quiet)
        search_time = time.perf_counter() - t0
        results[score] = res
        with apply_mask(net, res.mask):
            acc_mean = evaluate(net, test)["accuracy"]
        bma = evaluate_predictive(net, test, mask=res.mask, draws=args.eval_draws, seed=args.seed)
        shift = w2_shift(net, None, res.mask, x_test_w2, draws=args.draws, seed=args.seed)
        path_acc = []
        for step in range(len(res.path)):
            with apply_mask(net, res.mask_at(step)):
                path_acc.append(evaluate(net, test)["accuracy"])
        paths[score] = [{**{k: v for k, v in r.items() if k != "kept_per_gate"},
                         "test_accuracy": a} for r, a in zip(res.path, path_acc)]
        kept = res.best["kept"]
        rows.append({
            "score": score, "hidden_kept": kept, "pruned_%": 100 * res.best["prune_ratio"],
            "acc_mean_%": 100 * acc_mean, "acc_bma_%": 100 * bma["accuracy"], "nll_bma": bma["nll"],
            "w2_test": shift.w2, "w2_test_rel": shift.normalized, "search_s": search_time,
            "spearman_vs_bmr": correlations[score],
        })

    # lottery ticket: retrain the pruned architecture (contribution score's mask)
    best = results["contribution"]
    kept_mask = best.mask["fc1_gate"]
    k = int(kept_mask.sum())
    curves = {"full network": [100 * r["val_accuracy"] for r in fitted.history]}
    lottery_rows = []
    for arm in ("original init", "random init"):
        if arm == "original init":
            small = sliced_copy(initial, kept_mask, k, args.prior_scale)
        else:
            small = make_model(k, args.prior_scale, args.seed + 1000)
        hist = fit(small, train, epochs=lottery_epochs, batch_size=args.batch_size, lr=args.lr,
                   val=test, seed=args.seed, progress=not args.quiet).history
        curves[f"pruned, {arm}"] = [100 * r["val_accuracy"] for r in hist]
        lottery_rows.append({"arm": arm, "hidden": k, "epochs": lottery_epochs,
                             "acc_epoch1_%": curves[f"pruned, {arm}"][0],
                             "acc_final_%": curves[f"pruned, {arm}"][-1],
                             "acc_bma_%": 100 * evaluate_predictive(small, test, draws=args.eval_draws,
                                                                    seed=args.seed)["accuracy"]})

    print(f"\nfit: {fit_time:.0f} s; reference: {REFERENCE}")
    print(format_table(rows))
    print("\nlottery ticket (Figure 4)")
    print(format_table(lottery_rows))

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, score in zip(axes, ("activation", "contribution")):
        p = paths[score]
        ratio = [r["prune_ratio"] for r in p]
        ax.plot(ratio, [r["shape_cost"] for r in p], label="shape cost W2/W2_empty")
        ax.plot(ratio, [r["sparsity_cost"] for r in p], label=f"sparsity cost {args.lam} x kept")
        ax.plot(ratio, [r["cost"] for r in p], label="total cost", lw=2)
        ax.plot(ratio, [r["test_accuracy"] for r in p], "--", label="test accuracy (mean net)")
        chosen = results[score].best
        ax.axvline(chosen["prune_ratio"], color="k", ls=":", label=f"chosen ({100 * chosen['prune_ratio']:.0f}%)")
        ax.set(xlabel="prune ratio (hidden neurons removed)", title=f"Fashion-MNIST, score={score}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS_DIR / f"{SCRIPT}_cost.png", dpi=120)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, curve in curves.items():
        ax.plot(range(1, len(curve) + 1), curve, marker="o", label=name)
    ax.set(xlabel="epoch", ylabel="test accuracy (%)", title=f"lottery ticket, {k} of {args.hidden} neurons")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS_DIR / f"{SCRIPT}_lottery.png", dpi=120)

    path = write_results(__file__, config=config, seeds=[args.seed], rows=rows,
                         extra={"lottery": lottery_rows, "curves": curves, "paths": paths,
                                "fit_time_s": fit_time,
                                "history": [{k: v for k, v in r.items() if k != "kept"} for r in fitted.history]})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
