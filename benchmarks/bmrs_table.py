"""BMRS Table 1 protocol: continuous pruning of an MLP and LeNet5 on MNIST / Fashion-MNIST.

Methods: none (no pruning), L2 (the unpruned model pruned by the L2 norm of incoming
weights to BMRS_N's compression, then fine-tuned), scratch (BMRS_N's final layer widths
trained from a fresh initialisation for all the epochs), E[theta] (< 0.1), SNR (< 1), BMRS_N,
BMRS_U-8 and BMRS_U-4 (threshold-free: dF >= 0). Continuous pruning after every epoch,
then fine-tuning epochs without pruning, an 80/20 train/val split of the training set,
test accuracy on the test set. Compression = parameters removed / parameters of the
unpruned network, counted on the converted (physically smaller) network.

The paper trains 50 epochs + 10 fine-tuning; ``--epochs``/``--finetune`` may reduce that,
and the reduction is written into the output. Each finished run is cached in
``benchmarks/results/bmrs_table.runs.json`` so an interrupted benchmark resumes.

    python benchmarks/bmrs_table.py --datasets mnist fashion-mnist --models mlp lenet5 \
        --seeds 0 1 2 --epochs 50 --finetune 10 --kl-scale elbo paper

``bmrs_n`` is the exact operator of DESIGN.md; ``bmrs_n_code`` the authors' released
code (without the -0.5 log 2 pi term), listed so both stopping points can be compared.

``scratch`` is not ``capacity_bound.py``'s "same architecture" row: that one trains a plain
deterministic network (no noise, no KL) of the default recipe's widths; ``scratch`` trains
the noise model with this table's objective (KL weight, noise learning rate, epochs) at the
widths where this table's own ``bmrs_n_code`` (or ``bmrs_n``) run stopped, seed for seed.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from _common import (
    RESULTS_DIR,
    RunCache,
    format_table,
    parse_benchmark_args,
    print_header,
    write_results,
)

from pyro_prune.data import load_dataset, train_val_split
from pyro_prune.inference import ContinuousPruning, evaluate, fit, prune_to_compression
from pyro_prune.models import MLP, LeNet5

# The paper's MLP sizes and its BMRS_N row (compression %, accuracy %).
MLP_HIDDEN = {"mnist": [100] * 7, "fashion-mnist": [150], "cifar10": [150] * 5}
PAPER_BMRS_N = {
    ("mlp", "mnist"): (48.9, 96.95), ("mlp", "fashion-mnist"): (93.2, 84.99),
    ("mlp", "cifar10"): (76.4, 43.59), ("lenet5", "mnist"): (86.9, 95.59),
    ("lenet5", "fashion-mnist"): (88.0, 77.90), ("lenet5", "cifar10"): (62.9, 66.14),
}
CRITERIA = {"e_theta": {}, "snr": {}, "bmrs_n": {}, "bmrs_n_code": {}, "bmrs_u8": {"p1": 8},
            "bmrs_u4": {"p1": 4}}
METHODS = ["none", "l2", "scratch", *CRITERIA]
RUNS_FILE = RESULTS_DIR / "bmrs_table.runs.json"


def make_model(name: str, info: Any) -> torch.nn.Module:
    if name == "mlp":
        return MLP(info.input_dim, MLP_HIDDEN.get(info.name, [100]), info.num_classes)
    if name == "lenet5":
        c, h, _ = info.input_shape
        return LeNet5(c, info.num_classes, h)
    raise ValueError(f"unknown model {name!r}")


def run_one(dataset: str, model_name: str, seed: int, kl_scale: str, args: argparse.Namespace,
            data: dict[str, Any], methods: list[str],
            earlier: Sequence[dict[str, Any]] = (), noise_draws: str | None = None) -> list[dict[str, Any]]:
    """Train ``methods`` for one (dataset, model, seed, KL weighting).

    ``earlier`` holds cached rows of the same configuration; L2 and scratch take their
    target (BMRS_N's, else bmrs_n_code's compression and widths) from them when this run
    trains no BMRS_N variant. L2 prunes the unpruned network, so it trains ``none`` too.
    """
    train, val, test = data["train"], data["val"], data["test"]
    kw = dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, val=val, seed=seed,
              progress=not args.quiet, kl_scale=kl_scale, noise_lr=args.noise_lr)
    if noise_draws is not None:  # else fit's default estimator
        kw["per_example_noise"] = noise_draws == "per_example"
    rows = []

    def record(method: str, model, t0: float, history=None, **extra: Any) -> None:
        metrics = evaluate(model, test)
        from pyro_prune.convert import compression

        rows.append({
            "dataset": dataset, "model": model_name, "method": method, "seed": seed,
            "kl_scale": kl_scale, "test_accuracy": metrics["accuracy"],
            "compression": compression(model), "kept": model.kept_counts(),
            "val_accuracy": history[-1].get("val_accuracy") if history else None,
            "time_s": time.perf_counter() - t0, **extra,
        })
        if noise_draws is not None:
            rows[-1]["noise_draws"] = noise_draws
        print(f"  {dataset} {model_name} seed={seed} kl={kl_scale} {noise_draws or ''} {method}: "
              f"acc={rows[-1]['test_accuracy']:.4f} comp={rows[-1]['compression']:.3f}", flush=True)

    base = None
    if {"none", "l2"} & set(methods):
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        base = make_model(model_name, data["info"])
        res = fit(base, train, **{**kw, "epochs": args.epochs + args.finetune})
        record("none", base, t0, res.history)
    comps: dict[str, float] = {}
    kepts: dict[str, dict[str, int]] = {}
    for crit, ckw in CRITERIA.items():
        if crit not in methods:
            continue
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        model = make_model(model_name, data["info"])
        name = "bmrs_u" if crit.startswith("bmrs_u") else crit
        sched = ContinuousPruning(name, every=1, finetune_epochs=args.finetune, **ckw)
        res = fit(model, train, schedule=sched, **kw)
        record(crit, model, t0, res.history)
        comps[crit] = rows[-1]["compression"]
        kepts[crit] = rows[-1]["kept"]
    # L2 is pruned to BMRS_N's compression; where the exact BMRS_N removed nothing, to the
    # released-code variant's, so that the baseline is not trivially the unpruned network
    for r in earlier:
        comps.setdefault(r["method"], r["compression"])
        kepts.setdefault(r["method"], r["kept"])
    target = next((m for m in ("bmrs_n", "bmrs_n_code") if comps.get(m, 0.0) > 0), None)
    if "scratch" in methods and target is not None:
        # the pruned shape, trained from scratch with the same objective and epochs: does
        # pruning find more than the architecture it ends with (Liu et al., ICLR 2019)?
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        model = make_model(model_name, data["info"])
        for name, gate in model.gates().items():
            gate.prune(torch.arange(gate.num_structures) >= kepts[target][name])
        res = fit(model, train, **{**kw, "epochs": args.epochs + args.finetune})
        record("scratch", model, t0, res.history, matched_to=target)
    if "l2" in methods and base is not None and target is not None:
        t0 = time.perf_counter()
        model = copy.deepcopy(base)
        prune_to_compression(model, "l2", comps[target])
        res = fit(model, train, **{**kw, "epochs": args.finetune})
        record("l2", model, t0, res.history, matched_to=target)
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    seen: set[tuple] = set()
    for r in rows:  # a method trained by two cached runs of one seed counts once
        ident = (r["dataset"], r["model"], r["kl_scale"], r.get("noise_draws"), r["method"], r["seed"])
        if ident in seen:
            continue
        seen.add(ident)
        groups.setdefault(ident[:-1], []).append(r)
    out = []
    for (dataset, model, kl, draws, method), rs in groups.items():
        acc = [100 * r["test_accuracy"] for r in rs]
        comp = [100 * r["compression"] for r in rs]
        paper = PAPER_BMRS_N.get((model, dataset)) if method == "bmrs_n" else None
        out.append({
            "dataset": dataset, "model": model, "kl_scale": kl,
            **({"noise_draws": draws} if draws is not None else {}),
            "method": method, "seeds": len(rs),
            "compression_%": statistics.mean(comp),
            "compression_std": statistics.stdev(comp) if len(comp) > 1 else 0.0,
            "accuracy_%": statistics.mean(acc),
            "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
            "paper_compression_%": paper[0] if paper else None,
            "paper_accuracy_%": paper[1] if paper else None,
        })
    reference = {(r["dataset"], r["model"], r["kl_scale"], r.get("noise_draws")): r["accuracy_%"]
                 for r in out if r["method"] == "none"}
    for r in out:  # the goal: within 1 point of our own unpruned network
        ref = reference.get((r["dataset"], r["model"], r["kl_scale"], r.get("noise_draws")))
        r["accuracy_change_vs_none"] = None if ref is None else r["accuracy_%"] - ref
    order = {m: i for i, m in enumerate(METHODS)}
    out.sort(key=lambda r: (r["dataset"], r["model"], r["kl_scale"], order.get(r["method"], 99),
                            r.get("noise_draws") or ""))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["mnist", "fashion-mnist"])
    parser.add_argument("--models", nargs="+", default=["mlp", "lenet5"], choices=["mlp", "lenet5"])
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--finetune", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--noise-lr", type=float, default=None,
                        help="learning rate of the noise posteriors (default: --lr)")
    parser.add_argument("--kl-scale", nargs="+", default=["elbo", "paper"], choices=["elbo", "paper"])
    parser.add_argument("--noise-draws", nargs="+", default=[None], choices=["per_example", "per_step"],
                        help="the fast ELBO's noise estimator(s) compared side by side "
                             "(fit's per_example_noise; default: fit's default)")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--runs-file", default=str(RUNS_FILE),
                        help="cache of finished runs (JSON); separate files let runs go in parallel")
    parser.add_argument("--suffix", default="",
                        help="results go to bmrs_table<suffix>.json (e.g. _full for the 50 + 10 protocol)")
    parser.add_argument("--cached-only", action="store_true",
                        help="tabulate the cached runs of the given grid, train nothing")
    args = parse_benchmark_args(parser, seed=False)
    runs_file = Path(args.runs_file)
    config = {k: v for k, v in vars(args).items() if k not in ("quiet", "runs_file", "cached_only", "suffix")}
    config["protocol"] = ("paper: 50 epochs + 10 fine-tuning, 80/20 split; this run: "
                          f"{args.epochs} + {args.finetune}"
                          + (f", noise posteriors at lr {args.noise_lr}" if args.noise_lr else ""))
    print_header(__file__, seeds=args.seeds, config=config)
    cache = RunCache(runs_file)
    all_rows: list[dict[str, Any]] = []
    for dataset in args.datasets:
        try:
            full = load_dataset(dataset, "train")
            test = load_dataset(dataset, "test")
        except (FileNotFoundError, ValueError) as err:
            print(f"skipping {dataset}: {err}")
            continue
        for seed in args.seeds:
            train, val = train_val_split(full, val_fraction=0.2, seed=seed)
            data = {"train": train, "val": val, "test": test, "info": full.info}
            for model_name in args.models:
                for kl, draws in itertools.product(args.kl_scale, args.noise_draws):
                    config_key = [dataset, model_name, seed, kl, args.epochs, args.finetune,
                                  args.batch_size, args.lr, args.noise_lr]
                    if draws is not None:  # keys of runs with fit's default estimator unchanged
                        config_key.append(draws)
                    # runs of this configuration cached under any method set; train only
                    # the methods none of them has
                    same = [k for k in cache.keys() if json.loads(k)[:-1] == config_key]
                    earlier = [r for k in same for r in cache[k]]
                    missing = sorted(set(args.methods) - {r["method"] for r in earlier})
                    if missing and not args.cached_only:
                        key = RunCache.key(*config_key, missing)
                        cache.put(key, run_one(dataset, model_name, seed, kl, args, data, missing,
                                               earlier, draws))
                        same.append(key)
                    all_rows.extend(r for k in same for r in cache[k] if r["method"] in args.methods)
    table = summarise(all_rows)
    print(format_table(table, ["dataset", "model", "kl_scale", "noise_draws", "method", "seeds", "compression_%",
                               "compression_std", "accuracy_%", "accuracy_std",
                               "paper_compression_%", "paper_accuracy_%"]))
    if args.cached_only:  # record the command that trains the runs, not the tabulation
        sys.argv = [a for a in sys.argv if a != "--cached-only"]
    path = write_results(__file__, config=config, seeds=args.seeds, rows=table,
                         extra={"runs": all_rows}, suffix=args.suffix)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
