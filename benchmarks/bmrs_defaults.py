"""The default pruning recipe, measured: criteria side by side, the init sweep, the KL weight.

Continuous pruning as in ``bmrs_table.py`` (the BMRS Table 1 protocol: MLP and LeNet-5 on
MNIST / Fashion-MNIST, an 80/20 train/val split, test accuracy on the test set,
compression counted on the converted network), but every run is made the way a user makes
it: ``fit(model, train, epochs=..., val=val, seed=seed, schedule=ContinuousPruning(...))``
with the library's defaults (batch 128, lr 1e-3, ``kl_scale="auto"``, ``noise_lr=0.03``,
criterion ``bmrs``), changing one thing per experiment:

* ``init``: the initial ``loc`` of every noise posterior (``init_loc`` of
  :class:`~pyro_prune.models.noise.MultiplicativeNoise`, whose signal reference
  ``theta_ref`` follows it) in {0, -2, -4}, for the default criterion on every seed and, on
  the first seed only, for the alternatives whose decision at the tie depends on it; a
  method named ``<method>_ref0`` runs ``<method>`` with ``reference_loc=0`` (the noise
  multiplies by ``theta`` itself, so a start below 0 also shrinks the initial signal);
* ``criteria``: the reduced priors and decision rules not in ``bmrs_table.py``: the whole
  off range (``bmrs_u_off``) and the joint BMR of a structure's noise and its Gaussian
  incoming weights (``bmrs_joint``, on the same network with ``weights="gaussian"``, whose
  unpruned reference is ``none_gaussian`` and whose noise-only criterion is the default's,
  ``bmrs_gaussian``);
* ``kl``: the KL weight (the temperature) from ``elbo`` (1) to ``paper``
  (``num_data / num_structures``);
* ``recipe``: the default recipe on the four Table-1 configurations (its fine-tuning epochs
  at the ELBO's weight, ``ContinuousPruning(finetune_kl_scale="elbo")``);
* ``one_draw``: the same with one noise draw per training step shared by the batch
  (``fit(per_example_noise=False)``, the cheaper step of ``training_speed.py``) instead of
  one per example;
* ``noise_lr``: the learning rate of the noise posteriors (``fit(noise_lr=...)``, default
  0.03) from ``lr`` (1e-3, no separate rate) to 0.1, on the four Table-1 configurations (a
  method ``bmrs_noise_lr<value>`` runs the default recipe at that rate; the default's rate
  is run here too, so that every rate is measured on the same code);
* ``noise_lr_init``: the init sweep of the default recipe at ``noise_lr`` 0.005 (and of the
  MNIST MLP at 0.0025, run with ``--epochs 20``);
* ``noise_lr_travel``: the MNIST MLP at 0.01, 0.005 and 0.0025, run with ``--epochs`` 5, 10
  and 20 (the same rate x steps: how far the posteriors get);
* ``kl_warmup``: the default recipe with the KL weight warmed up over the first ``W`` training
  epochs, geometrically from 1 (the ELBO's) to the training weight (method
  ``bmrs_warmup<W>``; ``ContinuousPruning(kl_warmup_epochs=W)``): the structures' posteriors are first fitted
  at a low temperature, then tempered;
* ``paths``: why the start matters (MNIST MLP, seed 0, a few epochs): per epoch, the
  tempered loss, the compression and the state of the kept noise posteriors (median
  ``log sigma``, share of prior-like ones with ``log sigma > 2``, median multiplier
  ``E[theta] / theta_ref``) for starts at the top of the prior range and 4 below it, and
  for the same starts with the range's top moved (``log_high``), which separates the
  distance to the top from the start itself.

``--finetune-kl train`` fine-tunes at the training weight instead (the recipe before the
fine-tuning weight became ``"elbo"``); its runs keep the cache keys they had then.

Each finished run is cached in ``benchmarks/results/bmrs_defaults_<experiment>.runs.json``
(resumable; two experiments may run in parallel). The table of an experiment goes to
``bmrs_defaults_<experiment>.json``.

    python benchmarks/bmrs_defaults.py --experiment init --epochs 10 --finetune 3
    python benchmarks/bmrs_defaults.py --experiment paths --epochs 4 --finetune 0
    python benchmarks/bmrs_defaults.py --experiment plot   # results/bmrs_defaults_kl.png
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import _common
import torch
from bmrs_table import MLP_HIDDEN, PAPER_BMRS_N

from pyro_prune.convert import compression
from pyro_prune.data import load_dataset, train_val_split
from pyro_prune.inference import ContinuousPruning, evaluate, fit
from pyro_prune.inference.fit import DEFAULT_NOISE_LR
from pyro_prune.models import MLP, LeNet5

CONFIGS = [("fashion-mnist", "mlp"), ("mnist", "mlp"), ("mnist", "lenet5"), ("fashion-mnist", "lenet5")]

#: the noise learning rates of the ``noise_lr`` experiment: from ``lr`` (no separate rate) up
NOISE_LRS = (1e-3, 3e-3, 5e-3, 1e-2, 3e-2, 1e-1)
NOISE_LR_PREFIX = "bmrs_noise_lr"


def noise_lr_method(noise_lr: float) -> str:
    """The method name of the default recipe at ``noise_lr`` (``bmrs_noise_lr0.003``)."""
    return f"{NOISE_LR_PREFIX}{noise_lr:g}"


#: (method, init_loc, kl_scale) per experiment and configuration; ``None`` = the default.
#: Rows that ``bmrs_table.py`` already has (every criterion at init_loc 0 with the KL weights
#: "elbo" and "paper", 3 seeds) are not repeated here.
#: the KL warm-up over 3 epochs at noise_lr 0.01 (its init sweep on the MNIST MLP alone)
WARMUP3_NOISE_LR001 = f"bmrs_warmup3_{noise_lr_method(0.01).removeprefix('bmrs_')}"

PLANS: dict[str, dict[tuple[str, str], list[tuple[str, float, Any]]]] = {
    "init": {
        ("mnist", "mlp"): [("bmrs", init, None) for init in (0.0, -2.0, -4.0)]
        + [("bmrs_n", 0.0, None), ("none", -4.0, None)]
        + [("bmrs_ref0", init, None) for init in (-2.0, -4.0)] + [("none_ref0", -4.0, None)],
        ("mnist", "lenet5"): [("bmrs", init, None) for init in (-2.0, -4.0)]  # 0: bmrs_table.py's
        + [("bmrs_ref0", -4.0, None)],
        ("fashion-mnist", "mlp"): [("bmrs", init, None) for init in (0.0, -2.0, -4.0)]  # 0: also "recipe"
        + [("bmrs_ref0", init, None) for init in (-2.0, -4.0)]
        + [(m, -4.0, None) for m in ("bmrs_n_ref0", "bmrs_u8_ref0", "bmrs_u_off_ref0")],
        ("fashion-mnist", "lenet5"): [("bmrs", init, None) for init in (-2.0, -4.0)],  # 0: "recipe"
    },
    "criteria": {
        ("fashion-mnist", "mlp"): [("bmrs_u_off", 0.0, None), ("none_gaussian", 0.0, None),
                                   ("bmrs_joint", 0.0, None), ("bmrs_gaussian", 0.0, None),
                                   # the paper's weight as a number: it weights every KL term
                                   ("none_gaussian", 0.0, 320.0)],
        ("mnist", "mlp"): [("none_gaussian", 0.0, None), ("bmrs_joint", 0.0, None),
                           ("bmrs_gaussian", 0.0, None)],
    },
    "kl": {
        ("mnist", "mlp"): [("bmrs", 0.0, kl) for kl in (4.0, 16.0)],
        ("mnist", "lenet5"): [("bmrs", 0.0, kl) for kl in (8.0, 40.0)],
        ("fashion-mnist", "lenet5"): [("bmrs", 0.0, kl) for kl in (8.0, 40.0)],
    },
    "recipe": {config: [("bmrs", 0.0, None)] for config in CONFIGS},
    # the default recipe with one noise draw per step (``per_example_noise=False``) instead of
    # one per example: does the cheaper step change what is pruned?
    "one_draw": {config: [("bmrs_one_draw", 0.0, None)] for config in CONFIGS},
    # the default recipe at a noise learning rate: method "bmrs_noise_lr<value>"
    "noise_lr": {config: [(noise_lr_method(v), 0.0, None) for v in NOISE_LRS] for config in CONFIGS},
    # the init sweep at noise_lr 0.005 (the rate that meets the accuracy goal on the MNIST
    # configurations): does the compression still not hinge on the start?
    # (and on the MNIST MLP at 0.0025, run with --epochs 20: the same rate x steps)
    "noise_lr_init": {config: [(noise_lr_method(v), init, None)
                               for v in ((0.005, 0.0025) if config == ("mnist", "mlp") else (0.005,))
                               for init in (0.0, -2.0, -4.0)]
                      for config in CONFIGS},
    # the posteriors' travel, rate x steps: the MNIST MLP at rates whose product with the
    # run's steps is that of 0.005 over 10 epochs (run with --epochs 5, 10 and 20)
    "noise_lr_travel": {("mnist", "mlp"): [(noise_lr_method(v), 0.0, None) for v in (0.01, 0.005, 0.0025)]},
    # the KL weight warmed up over the first W epochs: method "bmrs_warmup<W>"
    # (and "bmrs_warmup<W>_noise_lr<value>": the same at that noise learning rate)
    "kl_warmup": {config: [(f"bmrs_warmup{w}", init, None) for w in (3, 5) for init in (0.0, -2.0, -4.0)]
                  + [(WARMUP3_NOISE_LR001, init, None)
                     for init in ((0.0, -2.0, -4.0) if config == ("mnist", "mlp") else (0.0,))]
                  for config in CONFIGS},
    # (start, top of the prior range): method "paths_top<B>"
    "paths": {
        ("mnist", "mlp"): [("paths_top0", 0.0, None), ("paths_top0", -4.0, None),
                           ("paths_top4", 0.0, None), ("paths_top-4", -4.0, None)],
    },
}
#: the fine-tuning KL weights ``--finetune-kl`` takes: ``ContinuousPruning(finetune_kl_scale=...)``
FINETUNE_KL = {"elbo": "elbo", "train": None}


class RecordingPruning(ContinuousPruning):
    """The default schedule, recording the kept noise posteriors before each decision."""

    def on_epoch_end(self, model: Any, epoch: int, *, epochs: int | None = None) -> dict[str, Any]:
        net = model.model if hasattr(model, "model") else model
        gates = [g for g in net.noise_layers().values()]
        log_scale = torch.cat([g.log_scale.detach()[g.kept] for g in gates])
        multiplier = torch.cat([g.output_scale().detach()[g.kept] for g in gates])
        row = {"median_log_scale": float(log_scale.median()),
               "prior_like_share": float((log_scale > 2.0).double().mean()),
               "median_multiplier": float(multiplier.median())}
        row.update(super().on_epoch_end(model, epoch, epochs=epochs))
        return row


def make_model(name: str, info: Any, *, weights: str = "point", init_loc: float = 0.0,
               reference_loc: float | None = None, **noise: float) -> Any:
    if name == "mlp":
        return MLP(info.input_dim, MLP_HIDDEN.get(info.name, [100]), info.num_classes,
                   weights=weights, init_loc=init_loc, reference_loc=reference_loc, **noise)
    c, h, _ = info.input_shape
    return LeNet5(c, info.num_classes, h, weights=weights, init_loc=init_loc,
                  reference_loc=reference_loc, **noise)


def run_one(dataset: str, model_name: str, seed: int, method: str, init_loc: float, kl: Any,
            args: argparse.Namespace, data: dict[str, Any]) -> dict[str, Any]:
    """One training run with the library defaults but for ``method``, ``init_loc`` and ``kl``."""
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    name = method
    ref0 = method.endswith("_ref0")
    method = method.removesuffix("_ref0")
    gaussian = method in ("bmrs_joint", "none_gaussian", "bmrs_gaussian")
    per_example = method != "bmrs_one_draw"
    warmup = 0
    if method.startswith("bmrs_warmup"):  # "bmrs_warmup<W>" or "bmrs_warmup<W>_noise_lr<value>"
        warmup_part, _, lr_part = method.removeprefix("bmrs_warmup").partition("_")
        warmup = int(warmup_part)
        method = f"bmrs_{lr_part}" if lr_part else "bmrs"
    noise_lr = float(method.removeprefix(NOISE_LR_PREFIX)) if method.startswith(NOISE_LR_PREFIX) else None
    if method in ("bmrs_gaussian", "bmrs_one_draw") or noise_lr is not None or warmup:
        method = "bmrs"  # the default criterion
    noise = {"log_high": float(method.removeprefix("paths_top"))} if method.startswith("paths") else {}
    model = make_model(model_name, data["info"], weights="gaussian" if gaussian else "point",
                       init_loc=init_loc, reference_loc=0.0 if ref0 else None, **noise)
    kw: dict[str, Any] = {} if kl is None else {"kl_scale": kl}
    if not per_example:
        kw["per_example_noise"] = False
    if noise_lr is not None:
        kw["noise_lr"] = noise_lr
    finetune_kl = FINETUNE_KL[args.finetune_kl]
    if method.startswith("none"):
        res = fit(model, data["train"], epochs=args.epochs + args.finetune, val=data["val"],
                  seed=seed, progress=False, **kw)
    else:
        if method.startswith("paths"):
            schedule: ContinuousPruning = RecordingPruning(finetune_epochs=args.finetune,
                                                           finetune_kl_scale=finetune_kl)
        elif warmup:
            schedule = ContinuousPruning(finetune_epochs=args.finetune, finetune_kl_scale=finetune_kl,
                                         kl_warmup_epochs=warmup)
        elif method == "bmrs":
            schedule = ContinuousPruning(finetune_epochs=args.finetune, finetune_kl_scale=finetune_kl)
        else:
            schedule = ContinuousPruning(method, finetune_epochs=args.finetune,
                                         finetune_kl_scale=finetune_kl)
        res = fit(model, data["train"], epochs=args.epochs, val=data["val"], seed=seed,
                  schedule=schedule, progress=False, **kw)
    metrics = evaluate(model, data["test"])
    run = {
        "dataset": dataset, "model": model_name, "method": name, "seed": seed,
        "init_loc": init_loc, "kl_scale": "auto" if kl is None else kl,
        "kl_value": res.config["kl_scale"], "test_accuracy": metrics["accuracy"],
        "compression": compression(model), "kept": model.kept_counts(),
        "val_accuracy": res.last.get("val_accuracy"), "time_s": time.perf_counter() - t0,
        "finetune_kl": args.finetune_kl, "noise_lr": res.config["noise_lr"],
    }
    if warmup:
        run["warmup_epochs"] = warmup
        run["epochs"] = [{k: h.get(k) for k in ("epoch", "kl_scale", "loss", "val_accuracy", "compression")}
                         for h in res.history]
    if method.startswith("paths"):
        run["log_high"] = noise["log_high"]
        run["epochs"] = [{k: h.get(k) for k in ("epoch", "loss", "val_accuracy", "compression", "removed",
                                                  "median_log_scale", "prior_like_share", "median_multiplier")}
                         for h in res.history]
    return run


def kl_gradients() -> list[dict[str, float]]:
    """``KL(q || p)`` of one structure and its gradient in ``loc`` and ``log_scale``, at the top
    of the prior range (``loc = 0``) and 4 below it, for a narrow to a wide posterior."""
    from pyro_prune.models.noise import MultiplicativeNoise

    out = []
    for loc in (0.0, -4.0):
        for log_scale in (-5.0, -2.0, 0.0, 1.0, 2.0):
            gate = MultiplicativeNoise(1, init_loc=loc, init_log_scale=log_scale).double()
            kl = gate.kl_divergence()
            kl.backward()
            assert gate.loc.grad is not None and gate.log_scale.grad is not None
            out.append({"loc": loc, "log_scale": log_scale, "kl": float(kl.detach()),
                        "dkl_dloc": float(gate.loc.grad) + 0.0,  # no -0
                        "dkl_dlog_scale": float(gate.log_scale.grad) + 0.0})
    return out


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in runs:
        key = (r["dataset"], r["model"], r["method"], r["init_loc"], str(r["kl_scale"]),
               r.get("finetune_kl", "train"))  # runs cached without it fine-tuned at the training weight
        groups.setdefault(key, []).append(r)
    out = []
    for (dataset, model, method, init_loc, kl, finetune_kl), rs in groups.items():
        comp = [100 * r["compression"] for r in rs]
        acc = [100 * r["test_accuracy"] for r in rs]
        paper = PAPER_BMRS_N.get((model, dataset))
        out.append({
            "dataset": dataset, "model": model, "method": method, "init_loc": init_loc,
            "kl_scale": kl, "kl_value": rs[0]["kl_value"], "finetune_kl": finetune_kl, "seeds": len(rs),
            "compression_%": statistics.mean(comp),
            "compression_std": statistics.stdev(comp) if len(comp) > 1 else 0.0,
            "accuracy_%": statistics.mean(acc),
            "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
            "paper_bmrs_n_compression_%": paper[0] if paper else None,
        })
    out.sort(key=lambda r: (r["dataset"], r["model"], r["method"], -r["init_loc"], r["kl_value"],
                            r["finetune_kl"]))
    return out


def plot_kl_curve(path: Path) -> Path:
    """Compression and test accuracy against the KL weight, from the result files."""
    import matplotlib.pyplot as plt
    from make_tables import kl_curve_points

    points = kl_curve_points()
    models = sorted({(p["dataset"], p["model"]) for p in points})
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for dataset, model in models:
        pts = [p for p in points if (p["dataset"], p["model"]) == (dataset, model)]
        x = [p["kl_value"] for p in pts]
        label = f"{model} / {dataset}"
        axes[0].plot(x, [100 * p["compression"] for p in pts], "o-", label=label)
        line = axes[1].plot(x, [100 * p["accuracy"] for p in pts], "o-", label=label)[0]
        axes[1].axhline(100 * pts[0]["unpruned_elbo_accuracy"], color=line.get_color(), ls=":",
                        label=f"{label}: unpruned, ELBO weight")
        for p in pts:
            if p["kl_scale"].startswith("auto"):
                for ax, key in ((axes[0], "compression"), (axes[1], "accuracy")):
                    ax.plot([p["kl_value"]], [100 * p[key]], "*", ms=14, color=line.get_color())
    for ax, name in ((axes[0], "compression %"), (axes[1], "test accuracy %")):
        ax.set_xscale("log")
        ax.set_xlabel("KL weight (kl_scale; 1 = ELBO, star = default 'auto' = 'paper')")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle("Continuous pruning with the default criterion against the KL weight (seed 0)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", required=True, choices=[*sorted(PLANS), "plot"],
                        help="an experiment to run (or tabulate), or 'plot': the KL-weight figure "
                             "of docs/defaults.md from the result files")
    parser.add_argument("--configs", nargs="+", default=None, metavar="DATASET:MODEL",
                        help="restrict to these configurations (default: the experiment's)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--finetune", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=None,
                        help="restrict to these methods of the experiment's plan")
    parser.add_argument("--init-locs", nargs="+", type=float, default=None,
                        help="restrict to these starts (init_loc) of the experiment's plan")
    parser.add_argument("--finetune-kl", choices=sorted(FINETUNE_KL), default="elbo",
                        help="KL weight of the fine-tuning epochs: 'elbo' (the default recipe) or "
                             "'train' (the training weight)")
    parser.add_argument("--cached-only", action="store_true", help="tabulate cached runs only")
    parser.add_argument("--suffix", default="",
                        help="write bmrs_defaults_<experiment><suffix>.json and its runs file (e.g. "
                             "'_20+3' for a run of the experiment with another epoch budget)")
    args = _common.parse_benchmark_args(parser, seed=False, threads=1)
    if args.experiment == "plot":
        print(f"wrote {plot_kl_curve(_common.RESULTS_DIR / 'bmrs_defaults_kl.png')}")
        return
    plan = PLANS[args.experiment]
    if args.configs:
        wanted = {tuple(c.split(":")) for c in args.configs}
        plan = {k: v for k, v in plan.items() if k in wanted}
    runs_file = _common.RESULTS_DIR / f"bmrs_defaults_{args.experiment}{args.suffix}.runs.json"
    config = {"experiment": args.experiment, "epochs": args.epochs, "finetune": args.finetune,
              "finetune_kl": args.finetune_kl,
              "protocol": ("paper: 50 epochs + 10 fine-tuning, 80/20 split; this run: "
                           f"{args.epochs} + {args.finetune}, the library defaults otherwise "
                           "(batch 128, lr 1e-3, kl_scale auto, noise_lr 0.03, criterion bmrs; "
                           "each run's finetune_kl: 'elbo', the default, fine-tunes at the ELBO's "
                           "weight, 'train' at the training weight)"
                           + ("; the noise layers' signal reference theta_ref = exp(init_loc)"
                              if args.experiment == "init" else "")
                           + ("; each run's noise_lr as its method says (bmrs_noise_lr<value>)"
                              if args.experiment == "noise_lr" else "")),
              "default_noise_lr": DEFAULT_NOISE_LR,
              "plan": {f"{d}:{m}": v for (d, m), v in plan.items()}}
    _common.print_header(__file__, seeds=args.seeds, config=config)
    cache = _common.RunCache(runs_file)
    runs: list[dict[str, Any]] = []
    for (dataset, model_name), items in plan.items():
        full = load_dataset(dataset, "train")
        test = load_dataset(dataset, "test")
        for seed in args.seeds:
            train, val = train_val_split(full, val_fraction=0.2, seed=seed)
            data = {"train": train, "val": val, "test": test, "info": full.info}
            for method, init_loc, kl in items:
                if (args.methods and method not in args.methods
                        or args.init_locs and init_loc not in args.init_locs):
                    continue
                if args.experiment == "init" and method != "bmrs" and seed != args.seeds[0]:
                    continue  # the comparison rows of the init sweep: first seed only
                base = [dataset, model_name, seed, method, init_loc, kl, args.epochs, args.finetune]
                # runs fine-tuned at the training weight keep the keys they had before the option
                keys = {ft: _common.RunCache.key(*base, *([] if ft == "train" else [ft])) for ft in FINETUNE_KL}
                key = keys[args.finetune_kl]
                if key not in cache and not args.cached_only:
                    r = cache.put(key, run_one(dataset, model_name, seed, method, init_loc, kl,
                                               args, data))
                    print(f"  {dataset} {model_name} seed={seed} {method} init={init_loc} kl={kl} "
                          f"finetune at {args.finetune_kl}: acc={r['test_accuracy']:.4f} "
                          f"comp={r['compression']:.3f} ({r['time_s']:.0f} s)", flush=True)
                runs += [cache[k] for k in keys.values() if k in cache]  # every cached variant
    table = summarise(runs)
    extra: dict[str, Any] = {"runs": runs}
    if args.experiment == "paths":
        extra["kl_gradients"] = kl_gradients()
    if args.cached_only:  # record the command that trains the runs, not the tabulation
        sys.argv = [a for a in sys.argv if a != "--cached-only"]
    print(_common.format_table(table, ["dataset", "model", "method", "init_loc", "kl_scale", "kl_value",
                               "finetune_kl", "seeds",
                               "compression_%", "compression_std", "accuracy_%", "accuracy_std"]))
    path = _common.write_results(__file__, config=config, seeds=args.seeds, rows=table, extra=extra,
                         suffix=f"_{args.experiment}{args.suffix}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
