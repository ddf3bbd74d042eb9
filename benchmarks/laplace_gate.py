"""The Bayes-factor gate on Laplace evidence, beside Magnitude and the paper's columns.

Same protocol and code as ``bayes_factor_table.py`` (FCN 512-256-128 and CNN, Gaussian prior
N(0, 1), Adam lr 1e-3, batch 64, magnitude candidates to the target sparsity after every
epoch), with the gate ``BayesFactorPruning(evidence="laplace")``: the candidate is applied when
the Laplace evidence of the pruned network (re-linearised at its weights, Kronecker-factored
GGN with the removed weights' posterior marginals) is at least that of the current network.
Each decision's terms (both log evidences, the likelihood change, the Occam change) are kept.
The Magnitude, point-ratio Bayes Magnitude and minibatch columns are read from
``bayes_factor_table.json`` / ``bayes_factor_table_cnn.json`` (same protocol, seeds 0-2), the
paper's from its Table 1.

Reduced protocol (CPU), written into the JSON: 5 epochs (paper 25), a 10,000-example
training subset, one seed, the gate's curvature from a seeded 1,000-example subset of it
(scaled to the whole subset; the likelihood is always over all of it), the CNN's first conv
and output layer spared (as in ``bayes_factor_table_cnn.json``). Finished runs are cached in
``benchmarks/results/laplace_gate.runs.json``.

    python benchmarks/laplace_gate.py --datasets mnist fashion-mnist --models fcn
    python benchmarks/laplace_gate.py --models cnn --epochs 3 --curvature-subset 500 \
        --variants laplace-fit --suffix _cnn   # the CNN rows, reduced further
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from _common import (
    RESULTS_DIR,
    RunCache,
    format_table,
    parse_benchmark_args,
    print_header,
    write_results,
)
from bayes_factor_table import LABELS, PAPER, load_data, run_one

NAME = "laplace_gate"
RUNS_FILE = RESULTS_DIR / f"{NAME}.runs.json"
#: variant -> bayes_factor_table method: the training prior N(0, 1), or each model's
#: evidence maximised over the prior scale
VARIANTS = {"laplace": "bayes-magnitude-laplace", "laplace-fit": "bayes-magnitude-laplace-fit"}
#: results of bayes_factor_table.py with the same protocol, per model
BASELINES = {"fcn": "bayes_factor_table.json", "cnn": "bayes_factor_table_cnn.json"}


def baseline_rows(model: str) -> dict[tuple[str, float, str], dict[str, Any]]:
    path = RESULTS_DIR / BASELINES[model]
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return {(r["dataset"], r["sparsity"], r["method"]): r for r in data["rows"] if r["model"] == model}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["mnist", "fashion-mnist"])
    parser.add_argument("--models", nargs="+", default=["fcn", "cnn"], choices=["fcn", "cnn"])
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.25, 0.5, 0.75, 0.9, 0.99])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--train-subset", type=int, default=10000)
    parser.add_argument("--curvature-subset", type=int, default=1000)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--cached-only", action="store_true", help="tabulate the cached runs, train nothing")
    parser.add_argument("--suffix", default="", help="write results/laplace_gate<suffix>.json (another protocol)")
    args = parse_benchmark_args(parser, threads=1, seed=False)
    # what run_one reads: bayes_factor_table's defaults
    args.val_fraction, args.batch_size, args.lr = 0.1, 64, 1e-3
    args.threshold, args.log_threshold, args.prior_scale = 1.0, None, 1.0
    config = {k: v for k, v in vars(args).items() if k not in ("cached_only", "suffix")}
    config["gate"] = ('BayesFactorPruning(r, "magnitude", evidence="laplace", hessian="kron"), '
                      "accept when log BF >= 0; variant laplace-fit: fit_prior_scale=True")
    config["reductions"] = [f"epochs {args.epochs} (paper 25)", f"train subset {args.train_subset}",
                            f"seed {args.seed} (baselines: seeds 0-2)",
                            f"gate curvature on {args.curvature_subset} examples of the subset",
                            "CNN: first conv and output layer spared"]
    for model in args.models:  # say where the baseline columns were trained longer or shorter
        path = RESULTS_DIR / BASELINES[model]
        base_epochs = json.loads(path.read_text())["config"]["epochs"] if path.exists() else None
        if base_epochs is not None and base_epochs != args.epochs:
            config["reductions"].append(f"{model.upper()} baseline columns (Magnitude, point ratio): "
                                        f"{base_epochs} epochs")
    print_header(__file__, seeds=[args.seed], config=config)
    cache = RunCache(RUNS_FILE)
    rows: list[dict[str, Any]] = []
    for dataset in args.datasets:
        data = None
        for model in args.models:
            base = baseline_rows(model)
            args.spare_first_last = model == "cnn"
            for variant, sparsity in [(v, r) for v in args.variants for r in args.sparsities]:
                parts: list[Any] = [dataset, model, sparsity, args.seed, args.epochs, args.train_subset,
                                    args.curvature_subset]
                key = RunCache.key(*(parts if variant == "laplace" else parts + [variant]))
                if key not in cache:
                    if args.cached_only:
                        continue
                    if data is None:
                        data = load_data(dataset, args)
                    if data is None:
                        break
                    cache.put(key, run_one(dataset, model, sparsity, VARIANTS[variant], args.seed, args, data,
                                           curvature_subset=args.curvature_subset, keep_terms=True))
                run = cache[key]
                first = next(h for h in run["history"] if h["log_bayes_factor"] is not None)
                decided = [h for h in run["history"] if h["log_bayes_factor"] is not None]
                row: dict[str, Any] = {
                    "dataset": dataset, "model": model, "sparsity": sparsity, "variant": variant,
                    "laplace_accuracy": run["test_accuracy"], "laplace_sparsity": run["sparsity"],
                    "accepted_epochs": run["accepted_epochs"],
                    "first_log_bf": first["log_bayes_factor"],
                    "first_delta_log_likelihood": first["delta_log_likelihood"],
                    "first_delta_log_occam": first["delta_log_occam"],
                    "first_prior_scales": [first.get("prior_scale_current"), first.get("prior_scale_pruned")],
                    "decisions": [[h["epoch"], h["log_bayes_factor"], h["delta_log_likelihood"],
                                   h["delta_log_occam"], h["pruned"]] for h in decided],
                    "time_s": run["time_s"],
                }
                for method in ("magnitude", "bayes-magnitude", "bayes-magnitude-batch"):
                    b = base.get((dataset, sparsity, LABELS[method]))
                    row[f"{method}_accuracy"] = None if b is None else b["accuracy"]
                    row[f"{method}_sparsity"] = None if b is None else b["sparsity_reached"]
                paper = PAPER.get((dataset, model, sparsity), {})
                row["paper_magnitude"] = paper.get("magnitude")
                row["paper_bayes_magnitude"] = paper.get("bayes-magnitude")
                rows.append(row)
                print(f"{dataset} {model} r={sparsity} {variant}: accepted {run['accepted_epochs']} "
                      f"acc {run['test_accuracy']:.4f} sparsity {run['sparsity']:.3f} "
                      f"first log BF {first['log_bayes_factor']:.1f} = dlik {first['delta_log_likelihood']:.1f}"
                      f" + dOccam {first['delta_log_occam']:.1f} ({run['time_s']:.0f}s)", flush=True)
    print(format_table(rows, ["dataset", "model", "sparsity", "variant", "accepted_epochs", "laplace_sparsity",
                              "laplace_accuracy", "magnitude_accuracy", "bayes-magnitude_sparsity",
                              "first_log_bf", "first_delta_log_likelihood", "first_delta_log_occam"]))
    if args.cached_only:  # record the command that trains the runs, not the tabulation
        sys.argv = [a for a in sys.argv if a != "--cached-only"]
    out = write_results(__file__, config=config, seeds=[args.seed], rows=rows, suffix=args.suffix)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
