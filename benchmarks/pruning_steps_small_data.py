"""Continuous pruning on small data sets against the optimizer steps of its pruning epochs.

The command line's run on a UCI regression set: the default MLP (hidden 100 x 100, point
weights, log-normal noise per neuron, Gaussian likelihood), 20% of the training split held
out for validation (seeded), Adam lr 1e-2, batch 64, ``ContinuousPruning(finetune_epochs=5)``
and every other setting the library's default (``noise_lr`` 0.03, ``kl_scale`` "auto", which
is the ELBO's weight for a regression network). The pruning epochs are chosen to give a
multiple of the 267 optimizer steps the noise posteriors need to widen to their prior at that
``noise_lr`` (``pruning_steps_needed``). Reported: the compression and the test RMSE
(normalised targets) per multiple, which is how ``pyro-prune fit`` chooses its default epochs
on a small data set (``PRUNING_STEPS_MARGIN``).

    python benchmarks/pruning_steps_small_data.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import time
import warnings
from typing import Any

import _common as common
import torch

NAME = "pruning_steps_small_data"
DATASETS = ["boston-housing", "concrete", "energy", "yacht"]
MULTIPLES = [1.0, 1.25, 1.5, 2.0, 3.0, 4.0]
HIDDEN, LR, BATCH, FINETUNE = [100, 100], 1e-2, 64, 5


def run_one(dataset: str, multiple: float, seed: int) -> dict[str, Any]:
    from pyro_prune import compression
    from pyro_prune.data import load_dataset, train_val_split
    from pyro_prune.inference import ContinuousPruning, evaluate, fit
    from pyro_prune.inference.schedules import PruningStepsWarning, pruning_steps_needed
    from pyro_prune.models import MLP

    full, test = load_dataset(f"uci/{dataset}", "train"), load_dataset(f"uci/{dataset}", "test")
    train, val = train_val_split(full, val_fraction=0.2, seed=seed)
    steps_per_epoch = math.ceil(len(train) / BATCH)
    torch.manual_seed(seed)
    model = MLP(train.tensors[0].shape[1], HIDDEN, 1, likelihood="gaussian")
    needed = pruning_steps_needed(model, 0.03)
    assert needed is not None
    epochs = math.ceil(multiple * needed / steps_per_epoch)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PruningStepsWarning)  # the 1x row is meant to be short
        fit(model, train, epochs=epochs, lr=LR, batch_size=BATCH, val=val, seed=seed, progress=False,
            schedule=ContinuousPruning(finetune_epochs=FINETUNE))
    return {"steps_needed": needed, "steps_per_epoch": steps_per_epoch, "epochs": epochs,
            "pruning_steps": epochs * steps_per_epoch, "compression": compression(model),
            "test_rmse": evaluate(model, test)["rmse"], "kept": model.kept_counts(),
            "time_s": time.perf_counter() - t0}


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for dataset in DATASETS:
        for multiple in MULTIPLES:
            rs = [r for r in rows if r["dataset"] == dataset and r["multiple"] == multiple]
            if rs:
                out.append({"dataset": dataset, "multiple": multiple, "seeds": len(rs),
                            "epochs": rs[0]["epochs"], "pruning_steps": rs[0]["pruning_steps"],
                            "compression_%": 100 * statistics.fmean(r["compression"] for r in rs),
                            "compression_min_%": 100 * min(r["compression"] for r in rs),
                            "test_rmse": statistics.fmean(r["test_rmse"] for r in rs)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--datasets", nargs="+", default=DATASETS, choices=DATASETS)
    args = common.parse_benchmark_args(parser, threads=1, seed=False)
    config = {"network": f"MLP(d, {HIDDEN}, 1, likelihood='gaussian')", "lr": LR, "batch_size": BATCH,
              "val_fraction": 0.2, "finetune_epochs": FINETUNE, "multiples": MULTIPLES,
              "datasets": args.datasets, "noise_lr": 0.03}
    common.print_header(__file__, seeds=args.seeds, config=config)
    cache = common.RunCache(common.RESULTS_DIR / f"{NAME}.runs.json")
    rows = []
    for dataset, multiple, seed in itertools.product(args.datasets, MULTIPLES, args.seeds):
        run = cache.get_or_run(run_one, dataset, multiple, seed)
        rows.append({"dataset": dataset, "multiple": multiple, "seed": seed, **run})
        print(f"{dataset} x{multiple} seed {seed}: {run['epochs']} epochs, {run['pruning_steps']} steps, "
              f"compression {run['compression']:.3f}, rmse {run['test_rmse']:.4f} ({run['time_s']:.0f}s)", flush=True)
    common.finish_with_summary(__file__, config=config, seeds=args.seeds, rows=rows, summary=summarise(rows))


if __name__ == "__main__":
    main()
