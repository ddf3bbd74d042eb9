"""Continuous pruning under Pyro's Gaussian autoguides: which criterion, on the defaults.

An autoguide's posterior of each structure's ``theta`` is logit-normal on the prior's range
``[e^A, e^B]`` (``docs/guides_and_reports.md``), not the built-in truncated log-normal: its
density vanishes at the edge ``A`` where BMRS_N's reduced prior sits, while BMRS_U's reduced
prior lies inside the range. Measured here on the digits with the README's settings (MLP
64-100-100-10, Adam lr 1e-2, batch 64, ``ContinuousPruning()`` with its 10 fine-tuning epochs,
``kl_scale`` "auto", ``noise_lr`` 0.03 for the guide's parameters), every guide started at
the model (``init_loc_fn=init_to_model(model)``): the compression and test accuracy of
``bmrs``, ``bmrs_u8`` and ``bmrs_u4`` under ``AutoNormal`` (point and Gaussian weights) and
``AutoDiagonalNormal`` (point weights: with Gaussian weights its joint Normal cannot weight
the noise apart from the weights under "auto"), against the built-in guide with the default
criterion, at two training budgets.

    python benchmarks/autoguide_criteria.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
import warnings
from typing import Any

import _common as common
import torch

NAME = "autoguide_criteria"
HIDDEN, LR, BATCH = [100, 100], 1e-2, 64
EPOCHS = [20, 60]
#: (weights, guide, criterion); "builtin" is the network's own guide, None the default criterion
SETTINGS = [
    *[("point", guide, c) for guide in ("AutoNormal", "AutoDiagonalNormal") for c in ("bmrs", "bmrs_u8", "bmrs_u4")],
    ("point", "builtin", None),
    *[("gaussian", "AutoNormal", c) for c in ("bmrs", "bmrs_u8", "bmrs_u4")],
    ("gaussian", "builtin", None),
]


def run_one(weights: str, guide_name: str, criterion: str | None, epochs: int, seed: int) -> dict[str, Any]:
    import pyro
    from pyro.infer import autoguide

    from pyro_prune import compression
    from pyro_prune.data import load_dataset
    from pyro_prune.inference import ContinuousPruning, evaluate, fit, init_to_model
    from pyro_prune.models import MLP

    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    torch.manual_seed(seed)
    pyro.clear_param_store()
    model = MLP(64, HIDDEN, 10, weights=weights)
    guide = None if guide_name == "builtin" else getattr(autoguide, guide_name)(
        model, init_loc_fn=init_to_model(model))
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "pruning would empty ...": reported as compression
        result = fit(model, train, epochs=epochs, lr=LR, batch_size=BATCH, guide=guide, seed=seed,
                     progress=False, schedule=ContinuousPruning(criterion))
    return {"criterion_used": result.report.criterion, "compression": compression(model),
            "test_accuracy": evaluate(model, test)["accuracy"], "kept": model.kept_counts(),
            "time_s": time.perf_counter() - t0}


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from pyro_prune.inference.schedules import AUTOGUIDE_CRITERION

    out = []
    for (weights, guide, criterion), epochs in itertools.product(SETTINGS, EPOCHS):
        rs = [r for r in rows if (r["weights"], r["guide"], r["criterion"], r["epochs"])
              == (weights, guide, criterion, epochs)]
        if not rs:
            continue
        comp = [100 * r["compression"] for r in rs]
        acc = [100 * r["test_accuracy"] for r in rs]
        out.append({"weights": weights, "guide": guide, "criterion": rs[0]["criterion_used"],
                    # ContinuousPruning()'s criterion for this guide
                    "default": criterion is None or (guide != "builtin" and criterion == AUTOGUIDE_CRITERION),
                    "epochs": epochs, "seeds": len(rs),
                    "compression_%": statistics.fmean(comp),
                    "compression_std": statistics.stdev(comp) if len(comp) > 1 else 0.0,
                    "accuracy_%": statistics.fmean(acc),
                    "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", nargs="+", type=int, default=EPOCHS)
    args = common.parse_benchmark_args(parser, threads=1, seed=False)
    config = {"data": "digits", "network": f"MLP(64, {HIDDEN}, 10)", "lr": LR, "batch_size": BATCH,
              "schedule": "ContinuousPruning(criterion) (10 fine-tuning epochs)", "kl_scale": "auto",
              "noise_lr": 0.03, "guide_start": "init_to_model(model)", "epochs": args.epochs,
              "settings": SETTINGS}
    common.print_header(__file__, seeds=args.seeds, config=config)
    cache = common.RunCache(common.RESULTS_DIR / f"{NAME}.runs.json")
    rows = []
    for (weights, guide, criterion), epochs, seed in itertools.product(SETTINGS, args.epochs, args.seeds):
        run = cache.get_or_run(run_one, weights, guide, criterion, epochs, seed)
        rows.append({"weights": weights, "guide": guide, "criterion": criterion, "epochs": epochs,
                     "seed": seed, **run})
        print(f"{weights} {guide} {run['criterion_used']} {epochs} epochs seed {seed}: "
              f"compression {run['compression']:.3f}, accuracy {run['test_accuracy']:.4f} "
              f"({run['time_s']:.0f}s)", flush=True)
    common.finish_with_summary(__file__, config=config, seeds=args.seeds, rows=rows, summary=summarise(rows))


if __name__ == "__main__":
    main()
