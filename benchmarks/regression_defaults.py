"""Continuous pruning of regression networks on the UCI sets, at the KL weights "paper" and "elbo".

The library's default MLP (point weights, multiplicative log-normal noise on every hidden
neuron, hidden widths 50 x 50) with a Gaussian likelihood whose noise is learned, on the
standard Hernandez-Lobato & Adams splits (the split index is also the training seed).
Every run is ``fit(model, train, epochs=E, lr=1e-2, batch_size=32, ...)`` with about
``--steps`` optimizer steps of training (``E`` from the training set's size) and the
library's defaults otherwise; the pruning runs add ``schedule=ContinuousPruning()`` (BMRS,
``noise_lr`` 0.03, 10 fine-tuning epochs at the ELBO's weight). Three settings per split:

* ``unpruned``: no pruning, KL weight ``"elbo"``: the reference;
* ``paper``: continuous pruning at the KL weight ``"paper"`` (``num_data / num_structures``);
* ``elbo``: continuous pruning at the KL weight ``"elbo"`` (1, the untempered posterior).

Reported: the compression (parameters removed of the converted network's), the hidden
widths kept, the test RMSE in the target's own units, and the test log likelihood per
example (nats, in the target's own units), each against the unpruned network of the same split.

    python benchmarks/regression_defaults.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from typing import Any

import _common as common
import torch

NAME = "regression_defaults"
DATASETS = ["boston-housing", "concrete", "energy", "kin8nm", "power-plant", "wine-quality-red", "yacht"]
SETTINGS = ["unpruned", "paper", "elbo"]
HIDDEN = [50, 50]
LR, BATCH = 1e-2, 32


def run_one(dataset: str, setting: str, split: int, steps: int) -> dict[str, Any]:
    from pyro_prune import compression
    from pyro_prune.data import load_dataset
    from pyro_prune.inference import ContinuousPruning, evaluate, fit
    from pyro_prune.models import MLP

    train = load_dataset(f"uci/{dataset}", "train", split_index=split)
    test = load_dataset(f"uci/{dataset}", "test", split_index=split)
    target_std = float(train.info.normalization.target_std)
    torch.manual_seed(split)
    model = MLP(train.tensors[0].shape[1], HIDDEN, 1, likelihood="gaussian")
    epochs = common.epochs_for(len(train), BATCH, steps)
    options: dict[str, Any] = {"kl_scale": "elbo"} if setting in ("unpruned", "elbo") else {"kl_scale": "paper"}
    if setting != "unpruned":
        options["schedule"] = ContinuousPruning()
    t0 = time.perf_counter()
    fit(model, train, epochs=epochs, lr=LR, batch_size=BATCH, seed=split, progress=False, **options)
    seconds = time.perf_counter() - t0
    after = evaluate(model, test)
    return {"epochs": epochs, "n_train": len(train), "kept": model.kept_counts(),
            "compression": compression(model),
            "test_rmse": after["rmse"] * target_std,
            # evaluate's loss is the NLL per example of the standardised target
            "test_log_likelihood": -after["loss"] - math.log(target_std),
            "obs_scale": float(model.obs_scale.detach()) * target_std, "time_s": seconds}


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per data set and pruning setting: means over splits, paired against unpruned."""
    out = []
    for dataset in DATASETS:
        base = {r["seed"]: r for r in rows if r["dataset"] == dataset and r["setting"] == "unpruned"}
        for setting in SETTINGS[1:]:
            runs = [r for r in rows if r["dataset"] == dataset and r["setting"] == setting and r["seed"] in base]
            if not runs:
                continue
            ratio = [r["test_rmse"] / base[r["seed"]]["test_rmse"] for r in runs]
            dll = [r["test_log_likelihood"] - base[r["seed"]]["test_log_likelihood"] for r in runs]
            out.append({
                "dataset": dataset, "kl_scale": setting, "splits": len(runs),
                "compression_%": 100 * statistics.fmean(r["compression"] for r in runs),
                "rmse_unpruned": statistics.fmean(base[r["seed"]]["test_rmse"] for r in runs),
                "rmse": statistics.fmean(r["test_rmse"] for r in runs),
                "rmse_ratio": statistics.fmean(ratio),
                "log_lik_unpruned": statistics.fmean(base[r["seed"]]["test_log_likelihood"] for r in runs),
                "log_lik": statistics.fmean(r["test_log_likelihood"] for r in runs),
                "log_lik_difference": statistics.fmean(dll),
            })
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="UCI splits (and training seeds)")
    parser.add_argument("--steps", type=int, default=3000, help="optimizer steps of training, about")
    parser.add_argument("--datasets", nargs="+", default=DATASETS, choices=DATASETS)
    args = common.parse_benchmark_args(parser, threads=1, seed=False)
    config = {"network": f"MLP(d, {HIDDEN}, 1, likelihood='gaussian'): point weights, log-normal noise per neuron",
              "lr": LR, "batch_size": BATCH, "steps": args.steps, "datasets": args.datasets,
              "settings": SETTINGS,
              "fit": "pruning: schedule=ContinuousPruning() (bmrs, noise_lr 0.03, 10 fine-tuning epochs at 'elbo')"}
    common.print_header(__file__, seeds=args.seeds, config=config)
    cache = common.RunCache(common.RESULTS_DIR / f"{NAME}.runs.json")
    rows = []
    for dataset in args.datasets:
        for seed in args.seeds:
            for setting in SETTINGS:
                run = cache.get_or_run(run_one, dataset, setting, seed, args.steps)
                rows.append({"dataset": dataset, "setting": setting, "seed": seed, **run})
                print(f"{dataset} split {seed} {setting}: kept {run['kept']}, compression {run['compression']:.3f}, "
                      f"rmse {run['test_rmse']:.4g}, log lik {run['test_log_likelihood']:.3f} ({run['time_s']:.0f}s)",
                      flush=True)
    common.finish_with_summary(__file__, config=config, seeds=args.seeds, rows=rows, summary=summarise(rows))


if __name__ == "__main__":
    main()
