"""Bayes-factor pruning, Table 1 protocol of Mathew & Rowe (arXiv 2308.02451).

Methods: Random and Magnitude (prune every Linear/Conv2d layer to the target sparsity after
the first epoch, keep the pruned weights at zero) and their Bayesian versions Bayes Random
and Bayes Magnitude (after every epoch a candidate pruning to the target is applied only if
its Bayes factor against the unpruned network is >= the threshold, default 1). Networks:
the paper's FCN (512-256-128) and CNN (conv 32-64, FC 256-128-64), Gaussian prior
N(0, 1) on every weight, trained to the MAP with Adam (lr 1e-3, batch 64). The log
likelihood of the Bayes factor is summed over the whole training part; the
``*-batch`` methods evaluate it on one fresh minibatch of 64 training examples per
decision instead (``likelihood="batch"``, a likelihood tempered by 64/N). Reported: test
accuracy (mean and std over seeds) and the sparsity reached; a Bayes run whose gate never
opened stays dense, which the ``reached`` column shows.

The paper's protocol is 25 epochs, sparsities 25/50/75/90/99 %, 4 methods, FCN and CNN on
MNIST, Fashion-MNIST and CIFAR-10, several seeds. Every reduction made on the command line
(epochs, seeds, a stratified subset of the training data, ...) is written into the
``config`` of ``benchmarks/results/bayes_factor_table.json``. Finished runs are cached in
``benchmarks/results/bayes_factor_table.runs.json``, so an interrupted benchmark resumes.

    python benchmarks/bayes_factor_table.py --datasets mnist fashion-mnist --models fcn \
        --seeds 0 1 2 --epochs 5 --train-subset 12000
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _common import RESULTS_DIR, format_table, parse_benchmark_args, print_header, write_results
from tqdm.auto import tqdm

from pyro_prune.data import load_dataset, train_val_split
from pyro_prune.inference import evaluate, fit
from pyro_prune.inspect.plots import plot_learning_curves
from pyro_prune.models import CNN, FCN
from pyro_prune.models.fcn import prunable_layers
from pyro_prune.reduction import prune_count
from pyro_prune.reduction.bayes_factor_pruning import BayesFactorPruning

NAME = "bayes_factor_table"
RUNS_FILE = RESULTS_DIR / f"{NAME}.runs.json"
METHODS = {  # CLI name -> (PruneMethod value, gate, likelihood data of the Bayes factor, evidence)
    "random": ("random", False, "full", "point"),
    "bayes-random": ("random", True, "full", "point"),
    "bayes-random-batch": ("random", True, "batch", "point"),
    "magnitude": ("magnitude", False, "full", "point"),
    "bayes-magnitude": ("magnitude", True, "full", "point"),
    "bayes-magnitude-batch": ("magnitude", True, "batch", "point"),
    "bayes-magnitude-laplace": ("magnitude", True, "full", "laplace"),
    "bayes-magnitude-laplace-fit": ("magnitude", True, "full", "laplace-fit"),
}
LABELS = {"random": "Random", "bayes-random": "Bayes Random",
          "bayes-random-batch": "Bayes Random (minibatch BF)", "magnitude": "Magnitude",
          "bayes-magnitude": "Bayes Magnitude",
          "bayes-magnitude-batch": "Bayes Magnitude (minibatch BF)",
          "bayes-magnitude-laplace": "Bayes Magnitude (Laplace evidence)",
          "bayes-magnitude-laplace-fit": "Bayes Magnitude (Laplace evidence, fitted prior scale)"}
#: The paper's Table 1 test accuracies that this benchmark compares with (only the cells
#: quoted here; other cells print "-"). Key: (dataset, model, sparsity) -> {method: acc}.
PAPER = {
    ("mnist", "fcn", 0.9): {"random": 0.9624, "bayes-random": 0.9657, "magnitude": 0.9768,
                            "bayes-magnitude": 0.9772},
    ("fashion-mnist", "fcn", 0.9): {"random": 0.8416, "bayes-random": 0.8443,
                                    "magnitude": 0.8750, "bayes-magnitude": 0.8675},
    ("mnist", "cnn", 0.99): {"magnitude": 0.9826, "bayes-magnitude": 0.9804},
}
for _cell in PAPER.values():  # the minibatch-gate rows compare with the same Bayes columns
    for _m in ("bayes-random", "bayes-magnitude"):
        if _m in _cell:
            _cell[f"{_m}-batch"] = _cell[_m]
PAPER_PROTOCOL = ("paper: 25 epochs, full training set, sparsities 25/50/75/90/99 %, "
                  "Random / Bayes Random / Magnitude / Bayes Magnitude, FCN and CNN on MNIST, "
                  "Fashion-MNIST and CIFAR-10")


def make_model(name: str, info: Any, prior_scale: float) -> torch.nn.Module:
    if name == "fcn":
        return FCN(info.input_dim, info.num_classes, prior_scale=prior_scale)
    if name == "cnn":
        c, h, _ = info.input_shape
        return CNN(c, info.num_classes, h, prior_scale=prior_scale)
    raise ValueError(f"unknown model {name!r}")


def pruned_layers(model: torch.nn.Module, spare_first_last: bool) -> list[str] | None:
    """The layers the schedule prunes: all (``None``) or all but the first and the output."""
    return list(prunable_layers(model))[1:-1] if spare_first_last else None


def goal_sparsity(model_name: str, info: Any, sparsity: float, args: argparse.Namespace) -> float:
    """Sparsity of all weights once the pruned layers are at ``sparsity`` (the ``reached`` goal).

    With every layer pruned this is ``sparsity`` up to rounding; with the first and the output
    layer spared it is lower (the spared weights count as kept).
    """
    model = make_model(model_name, info, args.prior_scale)
    layers = prunable_layers(model)
    names = pruned_layers(model, args.spare_first_last) or list(layers)
    total = sum(layer.weight.numel() for layer in layers.values())
    return sum(prune_count(layers[n].weight.numel(), sparsity) for n in names) / total


def _compact_history(history: list[dict[str, Any]], keep_terms: bool = False) -> list[dict[str, Any]]:
    keys: tuple[str, ...] = ("epoch", "loss", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                             "sparsity", "log_bayes_factor", "break_even_examples", "pruned", "epoch_time_s")
    if keep_terms:
        keys += ("log_evidence_current", "log_evidence_pruned", "delta_log_likelihood", "delta_log_occam",
                 "prior_scale_current", "prior_scale_pruned")
    return [{k: r.get(k) for k in keys} for r in history]


def run_one(dataset: str, model_name: str, sparsity: float, method: str, seed: int,
            args: argparse.Namespace, data: dict[str, Any], *,
            likelihood_batch: int | None = None, curvature_subset: int | None = None,
            keep_terms: bool = False) -> dict[str, Any]:
    """Train one network with one method; ``likelihood_batch``: ``B`` of the ``*-batch`` gates.

    ``curvature_subset``: examples of the Laplace gate's curvature (``None``: all);
    ``keep_terms``: keep the evidence terms of every decision in the compact history.
    """
    prune_method, gate, likelihood, evidence = METHODS[method]
    torch.manual_seed(seed)
    model = make_model(model_name, data["info"], args.prior_scale)
    layers = pruned_layers(model, args.spare_first_last)
    sched = BayesFactorPruning(sparsity, prune_method, threshold=None if args.log_threshold is not None else args.threshold,
                               log_threshold=args.log_threshold, gate=gate, seed=seed,
                               likelihood=likelihood, layers=layers,
                               likelihood_batch=likelihood_batch if likelihood == "batch" else None,
                               evidence=evidence.removesuffix("-fit"), curvature_subset=curvature_subset,
                               fit_prior_scale=evidence.endswith("-fit"))
    t0 = time.perf_counter()
    res = fit(model, data["train"], epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
              val=data["val"], schedule=sched, seed=seed, progress=False)
    seconds = time.perf_counter() - t0
    test = evaluate(model, data["test"])
    decided = [r["log_bayes_factor"] for r in res.history if r["log_bayes_factor"] is not None]
    return {
        "dataset": dataset, "model": model_name, "target_sparsity": sparsity, "method": method,
        "seed": seed, "test_accuracy": test["accuracy"], "test_loss": test["loss"],
        "sparsity": res.history[-1]["sparsity"], "accepted_epochs": sched.accepted_epochs,
        "first_log_bf": decided[0] if decided else None,
        "max_log_bf": max(decided) if decided else None,
        "time_s": seconds, "epoch_time_s": statistics.median(r["epoch_time_s"] for r in res.history),
        "history": _compact_history(res.history, keep_terms),
    }


def summarise(runs: list[dict[str, Any]], goals: dict[tuple[str, str, float], float]
              ) -> list[dict[str, Any]]:
    """Rows per (dataset, model, sparsity, method); ``goals`` as :func:`goal_sparsity`."""
    groups: dict[tuple, dict[str, list[dict[str, Any]]]] = {}
    for r in runs:
        groups.setdefault((r["dataset"], r["model"], r["target_sparsity"]), {}).setdefault(
            r["method"], []).append(r)
    rows = []
    for (dataset, model, sparsity), by_method in sorted(groups.items()):
        paper = PAPER.get((dataset, model, sparsity), {})
        for method in METHODS:
            rs = by_method.get(method)
            if not rs:
                continue
            acc = [r["test_accuracy"] for r in rs]
            goal = goals.get((dataset, model, sparsity), sparsity)
            reached = sum(r["sparsity"] >= goal - 1e-3 for r in rs)
            rows.append({
                "dataset": dataset, "model": model, "sparsity": sparsity, "method": LABELS[method],
                "seeds": len(rs), "accuracy": statistics.mean(acc),
                "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                "paper_accuracy": paper.get(method),
                "sparsity_reached": statistics.mean(r["sparsity"] for r in rs),
                "reached": f"{reached}/{len(rs)}",
                "max_log_bf": max((r["max_log_bf"] for r in rs if r["max_log_bf"] is not None),
                                  default=None),
            })
    return rows


def print_wide(rows: list[dict[str, Any]]) -> None:
    """One line per (dataset, model, sparsity): ours (reached sparsity) | paper, per method."""
    cells: dict[tuple, dict[str, dict[str, Any]]] = {}
    for r in rows:
        cells.setdefault((r["dataset"], r["model"], r["sparsity"]), {})[r["method"]] = r
    head = ["dataset", "model", "sparsity"] + [LABELS[m] for m in METHODS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (dataset, model, sparsity), by in cells.items():
        out = [dataset, model, f"{100 * sparsity:g}%"]
        for method in METHODS:
            r = by.get(LABELS[method])
            if r is None:
                out.append("")
                continue
            paper = "-" if r["paper_accuracy"] is None else f"{r['paper_accuracy']:.4f}"
            out.append(f"{r['accuracy']:.4f}±{r['accuracy_std']:.4f} "
                       f"(sp {r['sparsity_reached']:.2f}) / {paper}")
        lines.append("| " + " | ".join(out) + " |")
    print("ours: mean±std test accuracy (sp = sparsity reached) / paper")
    print("\n".join(lines))


def load_data(dataset: str, args: argparse.Namespace) -> dict[str, Any] | None:
    try:
        full = load_dataset(dataset, "train")
        test = load_dataset(dataset, "test")
    except (FileNotFoundError, ValueError) as err:
        print(f"NOTE: skipping {dataset}: its files are not available ({err})", flush=True)
        return None
    train, val = train_val_split(full, val_fraction=args.val_fraction, seed=0)
    if args.train_subset is not None and args.train_subset < len(train):
        _, train = train_val_split(train, val_fraction=args.train_subset / len(train), seed=0)
    return {"train": train, "val": val, "test": test, "info": full.info}


def dataset_info(dataset: str) -> Any | None:
    """The data set's shapes (from its test split), ``None`` when its files are absent."""
    try:
        return load_dataset(dataset, "test").info
    except (FileNotFoundError, ValueError):
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["mnist", "fashion-mnist", "cifar10"])
    parser.add_argument("--models", nargs="+", default=["fcn", "cnn"], choices=["fcn", "cnn"])
    parser.add_argument("--methods", nargs="+", default=[m for m in METHODS if "laplace" not in m],
                        choices=list(METHODS))  # the Laplace gate: benchmarks/laplace_gate.py
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.25, 0.5, 0.75, 0.9, 0.99])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--train-subset", type=int, default=None,
                        help="train on a stratified subset of this many examples")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threshold", type=float, default=1.0, help="beta, as a Bayes factor")
    parser.add_argument("--log-threshold", type=float, default=None,
                        help="log beta in nats instead of --threshold")
    parser.add_argument("--prior-scale", type=float, default=1.0)
    parser.add_argument("--plot-sparsity", type=float, default=0.9,
                        help="learning curves (PNG) of the first seed at this sparsity")
    parser.add_argument("--runs-file", default=str(RUNS_FILE),
                        help="cache of finished runs (JSON); separate files let runs go in parallel")
    parser.add_argument("--suffix", default="",
                        help="results go to bayes_factor_table<suffix>.json (e.g. _full for another grid)")
    parser.add_argument("--spare-first-last", action="store_true",
                        help="leave the first and the output layer unpruned (the paper prunes every layer)")
    parser.add_argument("--cached-only", action="store_true",
                        help="tabulate the cached runs of the given grid, train nothing")
    args = parse_benchmark_args(parser, threads=1, seed=False)
    config = {k: v for k, v in vars(args).items() if k not in ("suffix", "runs_file", "cached_only")}
    runs_file = Path(args.runs_file)
    config["protocol"] = PAPER_PROTOCOL
    config["reductions"] = [
        f"epochs {args.epochs} (paper 25)" if args.epochs != 25 else None,
        f"train subset {args.train_subset} of the training part" if args.train_subset else None,
        f"seeds {args.seeds}",
        f"datasets {args.datasets}", f"models {args.models}", f"sparsities {args.sparsities}",
        f"methods {args.methods}",
        "first and output layers left unpruned" if args.spare_first_last else None,
    ]
    config["reductions"] = [r for r in config["reductions"] if r]
    config["evaluation"] = ("test accuracy on the official test set; a validation part "
                            f"({args.val_fraction:g} of the training set, seed 0) is tracked per epoch; "
                            "log BF on the full training part (nats; *-batch methods: on 64 "
                            "examples drawn per decision), accept when BF >= threshold")
    print_header(__file__, seeds=args.seeds, config=config)
    cache: dict[str, dict[str, Any]] = json.loads(runs_file.read_text()) if runs_file.exists() else {}
    runs: list[dict[str, Any]] = []
    skipped: list[str] = []
    jobs = [(d, m, s, meth, seed) for d in args.datasets for m in args.models
            for s in args.sparsities for meth in args.methods for seed in args.seeds]
    data_cache: dict[str, dict[str, Any] | None] = {}
    infos: dict[str, Any] = {}
    bar = tqdm(jobs, desc=NAME, mininterval=5)
    for dataset, model_name, sparsity, method, seed in bar:
        key_parts = [dataset, model_name, sparsity, method, seed, args.epochs, args.train_subset,
                     args.val_fraction, args.batch_size, args.lr, args.threshold, args.prior_scale]
        if args.log_threshold is not None:
            key_parts.append(args.log_threshold)
        if args.spare_first_last:
            key_parts.append("spare-first-last")
        key = json.dumps(key_parts)
        if key in cache:
            runs.append(cache[key])
            continue
        if args.cached_only:
            continue
        if dataset not in data_cache:
            data_cache = {dataset: load_data(dataset, args)}  # one data set in memory at a time
            if data_cache[dataset] is None:
                skipped.append(dataset)
            else:
                infos[dataset] = data_cache[dataset]["info"]
        data = data_cache[dataset]
        if data is None:
            continue
        cache[key] = r = run_one(dataset, model_name, sparsity, method, seed, args, data)
        runs_file.parent.mkdir(parents=True, exist_ok=True)
        runs_file.write_text(json.dumps(cache, indent=1))
        bar.write(f"{dataset} {model_name} r={sparsity} {LABELS[method]} seed={seed}: "
                  f"acc={r['test_accuracy']:.4f} sparsity={r['sparsity']:.3f} "
                  f"accepted={r['accepted_epochs']} max logBF={r['max_log_bf']} "
                  f"({r['time_s']:.0f}s, {r['epoch_time_s']:.1f}s/epoch)")
        runs.append(r)
    bar.close()
    goals: dict[tuple[str, str, float], float] = {}
    for r in runs:
        cell = (r["dataset"], r["model"], r["target_sparsity"])
        if cell not in goals:
            info = infos.get(r["dataset"]) or dataset_info(r["dataset"])
            goals[cell] = (goal_sparsity(r["model"], info, r["target_sparsity"], args)
                           if info is not None else r["target_sparsity"])
    rows = summarise(runs, goals)
    print(format_table(rows, ["dataset", "model", "sparsity", "method", "seeds", "accuracy",
                              "accuracy_std", "paper_accuracy", "sparsity_reached", "reached",
                              "max_log_bf"]))
    print()
    print_wide(rows)
    pngs = []
    for dataset in args.datasets:
        for model_name in args.models:
            hist = {LABELS[r["method"]]: r["history"] for r in runs
                    if r["dataset"] == dataset and r["model"] == model_name
                    and r["target_sparsity"] == args.plot_sparsity and r["seed"] == args.seeds[0]}
            if hist:
                path = RESULTS_DIR / (f"{NAME}{args.suffix}_{dataset}_{model_name}"
                                      f"_r{round(100 * args.plot_sparsity)}.png")
                log_beta = args.log_threshold if args.log_threshold is not None else math.log(args.threshold)
                plot_learning_curves(hist, path, log_threshold=log_beta,
                                     title=f"{dataset} {model_name}, target sparsity "
                                           f"{args.plot_sparsity:g}, seed {args.seeds[0]}")
                pngs.append(path.name)
    if skipped:
        print(f"NOTE: skipped (files not present): {sorted(set(skipped))}")
    if args.cached_only:  # record the command that trains the runs, not the tabulation
        sys.argv = [a for a in sys.argv if a != "--cached-only"]
    path = write_results(__file__, config=config, seeds=args.seeds, rows=rows, suffix=args.suffix,
                         extra={"runs": runs, "paper": {f"{k[0]}/{k[1]}/{k[2]}": v for k, v in PAPER.items()},
                                "skipped": sorted(set(skipped)), "plots": pngs})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
