"""How accurate can a network of the pruned size be? Plain networks of given widths, from scratch.

The Table-1 goal of the default recipe (``docs/defaults.md``) asks for at least the paper's
BMRS_N compression with test accuracy within 1 point of our unpruned network. This
benchmark measures what a network of that size reaches when it is simply trained with the
same budget: a reference for what pruning to that size can give (not a ceiling: a pruned
network can beat its own architecture trained from scratch):

* ``kept``: for each run of the default recipe (``bmrs_defaults_recipe.json``, its
  ``kept`` structures per gate), the **same architecture trained from scratch**: a plain
  deterministic network with exactly the kept widths / channels per layer;
* a **frontier** of dense networks of a *family* (:data:`FAMILIES`: every gated layer
  scaled by one factor, i.e. uniform hidden widths for the MLPs and channels and neurons
  together for LeNet-5, or LeNet-5's fully connected layers only): ``scaled <f>``, the
  family scaled by ``f``, several sizes around the paper's compression, and ``paper``,
  the largest network of the family whose compression is at least the paper's BMRS_N
  compression (:data:`PLAN`).

Every architecture is built by the library from its model class (``MLP`` / ``LeNet5`` with
deterministic structure masks, ``gate="mask"``), its gates set to keep the first ``k``
structures, converted by :func:`pyro_prune.convert.to_deterministic` to a physically
smaller ``nn.Module`` and re-initialised (``reset_parameters`` of every layer, so the
initialisation is PyTorch's default for the smaller fan-in); compression is counted by
:func:`pyro_prune.convert.compression`, as for the pruned runs. Training as in the
default recipe's runs: the same 80/20 split (``train_val_split(..., val_fraction=0.2,
seed=seed)``), Adam with lr 1e-3, batch 128, cross-entropy, the same number of epochs
(10 + 3 = 13); test accuracy on the test set. Adam's learning rate is constant, so the
accuracy after epoch 13 of a longer run is that of a 13-epoch run of the same seed: the
networks of :data:`LONG` train ``--long-epochs`` (30) once and report both.

Each finished run is cached in ``benchmarks/results/capacity_bound.runs.json``
(resumable); the table goes to ``capacity_bound.json``.

    python benchmarks/capacity_bound.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Mapping
from typing import Any

import _common
import torch
from bmrs_table import MLP_HIDDEN, PAPER_BMRS_N
from torch import nn
from torch.nn import functional as F  # noqa: N812

from pyro_prune.convert import compression, count_params, to_deterministic
from pyro_prune.data import load_dataset, train_val_split
from pyro_prune.models import MLP, LeNet5
from pyro_prune.models.base import PrunableNet

CONFIGS = [("mnist", "mlp"), ("fashion-mnist", "mlp"), ("mnist", "lenet5"), ("fashion-mnist", "lenet5")]
#: families of dense networks: the gates a family scales (by name prefix; the others keep
#: their full width). "all": every gated layer (uniform hidden widths for the MLPs, channels
#: and neurons together for LeNet-5); "fc": LeNet-5's fully connected layers only, both
#: convolutions at full width (they hold few parameters).
FAMILIES = {"all": "", "fc": "fc"}
#: per configuration: ("kept",) the default recipe's architectures; ("paper", family) the
#: largest network of the family at the paper's compression; ("scaled", family, factor)
PLAN: dict[tuple[str, str], list[tuple[Any, ...]]] = {
    ("mnist", "mlp"): [("kept",), ("scaled", "all", 0.2), ("paper", "all")],
    ("fashion-mnist", "mlp"): [("kept",), ("paper", "all"), ("scaled", "all", 0.2)],
    ("mnist", "lenet5"): [("kept",), ("paper", "all"), ("paper", "fc")],
    ("fashion-mnist", "lenet5"): [("kept",), ("paper", "all"), ("paper", "fc")],
}
#: the networks (labels of :func:`network_label`) trained ``--long-epochs``: is the gap one of training time?
LONG: dict[tuple[str, str], list[str]] = {
    ("fashion-mnist", "mlp"): ["paper (all)"],
    ("fashion-mnist", "lenet5"): ["paper (fc)"],
}
#: the default recipe's runs (their ``kept`` widths) and the unpruned references
RECIPE = _common.RESULTS_DIR / "bmrs_defaults_recipe.json"
TABLE = _common.RESULTS_DIR / "bmrs_table.json"


def masked_model(model_name: str, info: Any) -> PrunableNet:
    """The Table-1 network (``bmrs_table.py``'s sizes) with deterministic structure masks."""
    if model_name == "mlp":
        return MLP(info.input_dim, MLP_HIDDEN.get(info.name, [100]), info.num_classes, gate="mask")
    c, h, _ = info.input_shape
    return LeNet5(c, info.num_classes, h, gate="mask")


def set_widths(model: PrunableNet, widths: Mapping[str, int]) -> PrunableNet:
    """Keep the first ``widths[gate]`` structures of every gate of ``model`` (in place)."""
    gates = model.gates()
    if set(widths) != set(gates):
        raise ValueError(f"widths must name every gate {sorted(gates)}, got {sorted(widths)}")
    for name, gate in gates.items():
        k = int(widths[name])
        if not 1 <= k <= gate.num_structures:
            raise ValueError(f"widths[{name!r}] must lie in [1, {gate.num_structures}], got {k}")
        gate.kept.copy_(torch.arange(gate.num_structures) < k)
    return model


def scaled_widths(model: PrunableNet, scale: float, family: str = "all") -> dict[str, int]:
    """The width of every gate of ``family`` times ``scale``, rounded, at least 1; the others full."""
    prefix = FAMILIES[family]
    return {name: max(1, min(g.num_structures, round(g.num_structures * scale))) if name.startswith(prefix)
            else g.num_structures for name, g in model.gates().items()}


def widths_at_compression(model: PrunableNet, target: float, family: str = "all") -> dict[str, int]:
    """The largest architecture of ``family`` whose compression is at least ``target``."""
    top = max(g.num_structures for g in model.gates().values())
    best: tuple[int, dict[str, int]] | None = None
    for k in range(1, top + 1):
        widths = scaled_widths(model, k / top, family)
        comp = compression(set_widths(model, widths))
        params = count_params(model)
        if comp >= target and (best is None or params > best[0]):
            best = (params, widths)
    if best is None:
        raise ValueError(f"no {family!r} architecture reaches compression {target}")
    return best[1]


def plain_network(model: PrunableNet) -> nn.Module:
    """The masked ``model`` as a physically smaller plain network, freshly initialised."""
    net = to_deterministic(model)
    for module in net.modules():
        if module is not net and callable(getattr(module, "reset_parameters", None)):
            module.reset_parameters()
    return net.train()


def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 2000) -> float:
    net.eval()
    with torch.no_grad():
        correct = sum(int((net(x[i:i + batch]).argmax(-1) == y[i:i + batch]).sum())
                      for i in range(0, len(y), batch))
    net.train()
    return correct / len(y)


def train_from_scratch(model: PrunableNet, data: dict[str, Any], *, seed: int, epochs: int,
                       lr: float, batch_size: int) -> dict[str, Any]:
    """Adam on the cross-entropy; the test accuracy after every epoch."""
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    net = plain_network(model)
    x, y = data["train"].tensors
    xt, yt = data["test"].tensors
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    order = torch.Generator().manual_seed(seed)
    test_acc = []
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=order).split(batch_size):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
        test_acc.append(accuracy(net, xt, yt))
    return {"params": count_params(net), "test_accuracy_per_epoch": test_acc,
            "time_s": time.perf_counter() - t0}


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def references(dataset: str, model_name: str, seeds: list[int]) -> dict[str, Any]:
    """The default recipe's runs and the unpruned network (ELBO weight) of the same seeds, as
    the docs' table of the default shows them (``bmrs_defaults_recipe.json``, ``bmrs_table.json``)."""
    def runs(path: Any) -> list[dict[str, Any]]:
        return list(json.loads(path.read_text()).get("runs", [])) if path.exists() else []

    default = {r["seed"]: r for r in runs(RECIPE)
               if (r["dataset"], r["model"], r["method"], r["init_loc"], r.get("finetune_kl"))
               == (dataset, model_name, "bmrs", 0.0, "elbo") and r["seed"] in seeds}
    unpruned = {r["seed"]: r for r in runs(TABLE)
                if (r["dataset"], r["model"], r["method"], r["kl_scale"]) == (dataset, model_name, "none", "elbo")
                and r["seed"] in seeds}
    return {"default": default, "unpruned_elbo": unpruned}


def network_label(item: tuple[Any, ...]) -> str:
    """``kept``, ``paper (all)``, ``scaled 0.2 (all)``."""
    if item[0] == "kept":
        return "kept"
    if item[0] == "paper":
        return f"paper ({item[1]})"
    return f"scaled {item[2]:g} ({item[1]})"


def summarise(dataset: str, model_name: str, item: tuple[Any, ...], runs: list[dict[str, Any]],
              refs: dict[str, Any], epochs: int) -> dict[str, Any]:
    """One row: an architecture's mean (and std) over seeds against the references."""
    paper = PAPER_BMRS_N[(model_name, dataset)]
    seeds = [r["seed"] for r in runs]
    acc = [100 * r["test_accuracy_per_epoch"][epochs - 1] for r in runs]
    comp = [100 * r["compression"] for r in runs]
    ref = [100 * refs["unpruned_elbo"][s]["test_accuracy"] for s in seeds if s in refs["unpruned_elbo"]]
    default = [refs["default"][s] for s in seeds if s in refs["default"]]
    row: dict[str, Any] = {
        "dataset": dataset, "model": model_name, "network": network_label(item),
        "family": item[1] if len(item) > 1 else None, "scale": item[2] if len(item) > 2 else None,
        "widths": [list(r["widths"].values()) for r in runs], "seeds": len(runs),
        "params": statistics.mean(r["params"] for r in runs),
        "compression_%": mean_std(comp)[0], "compression_std": mean_std(comp)[1],
        "paper_bmrs_n_compression_%": paper[0], "paper_bmrs_n_accuracy_%": paper[1],
        "at_least_paper_compression": min(comp) >= paper[0],
        "epochs": epochs, "accuracy_%": mean_std(acc)[0], "accuracy_std": mean_std(acc)[1],
        "unpruned_elbo_accuracy_%": statistics.mean(ref) if len(ref) == len(runs) else None,
        "default_accuracy_%": (statistics.mean(100 * r["test_accuracy"] for r in default)
                               if len(default) == len(runs) else None),
        "default_compression_%": (statistics.mean(100 * r["compression"] for r in default)
                                  if len(default) == len(runs) else None),
        "long_epochs": None, "long_accuracy_%": None, "long_accuracy_std": None,
    }
    if row["unpruned_elbo_accuracy_%"] is not None:
        row["vs_unpruned_elbo"] = row["accuracy_%"] - row["unpruned_elbo_accuracy_%"]
    trained = max(r["epochs"] for r in runs)
    if trained > epochs:  # the seeds trained that long
        long_acc = [100 * r["test_accuracy_per_epoch"][trained - 1] for r in runs if r["epochs"] == trained]
        long_ref = [100 * refs["unpruned_elbo"][r["seed"]]["test_accuracy"] for r in runs
                    if r["epochs"] == trained and r["seed"] in refs["unpruned_elbo"]]
        row.update({"long_epochs": trained, "long_seeds": len(long_acc), "long_accuracy_%": mean_std(long_acc)[0],
                    "long_accuracy_std": mean_std(long_acc)[1]})
        if len(long_ref) == len(long_acc):
            row["long_unpruned_elbo_accuracy_%"] = statistics.mean(long_ref)
            row["long_vs_unpruned_elbo"] = row["long_accuracy_%"] - row["long_unpruned_elbo_accuracy_%"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=None, metavar="DATASET:MODEL",
                        help="restrict to these configurations (default: the four of Table 1)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=13, help="the default recipe's 10 + 3")
    parser.add_argument("--long-epochs", type=int, default=30,
                        help="the epochs of the networks in LONG (the table reports both budgets; 0: none)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--cached-only", action="store_true", help="tabulate cached runs only")
    args = _common.parse_benchmark_args(parser, seed=False, threads=1)
    configs = CONFIGS if not args.configs else [c for c in CONFIGS if f"{c[0]}:{c[1]}" in args.configs]
    config = {"epochs": args.epochs, "long_epochs": args.long_epochs,
              "long": {f"{d}:{m}": labels for (d, m), labels in LONG.items()},
              "lr": args.lr, "batch_size": args.batch_size,
              "plan": {f"{d}:{m}": [network_label(i) for i in items] for (d, m), items in PLAN.items()},
              "protocol": ("plain deterministic networks (no noise, no KL) trained from a fresh "
                           f"initialisation: Adam lr {args.lr:g}, batch {args.batch_size}, cross-entropy, "
                           f"{args.epochs} epochs (the default recipe's 10 + 3), 80/20 train/val split "
                           "seeded as the recipe's runs (the val part unused); test accuracy on the test set")}
    _common.print_header(__file__, seeds=args.seeds, config=config)
    cache = _common.RunCache(_common.RESULTS_DIR / "capacity_bound.runs.json")
    rows: list[dict[str, Any]] = []
    used: list[dict[str, Any]] = []
    for dataset, model_name in CONFIGS:
        train_now = (dataset, model_name) in configs and not args.cached_only
        full = load_dataset(dataset, "train")
        test = load_dataset(dataset, "test")
        model = masked_model(model_name, full.info)
        refs = references(dataset, model_name, args.seeds)
        for item in PLAN[(dataset, model_name)]:
            long_item = network_label(item) in LONG.get((dataset, model_name), [])
            epochs = args.long_epochs if long_item and args.long_epochs > args.epochs else args.epochs
            runs = []
            for seed in args.seeds:
                if item[0] == "kept":
                    if seed not in refs["default"]:
                        continue
                    widths = refs["default"][seed]["kept"]
                elif item[0] == "paper":
                    widths = widths_at_compression(model, PAPER_BMRS_N[(model_name, dataset)][0] / 100, item[1])
                else:
                    widths = scaled_widths(model, item[2], item[1])
                key = _common.RunCache.key(dataset, model_name, seed, widths, epochs, args.lr, args.batch_size)
                short = _common.RunCache.key(dataset, model_name, seed, widths, args.epochs, args.lr,
                                             args.batch_size)
                if key not in cache and short in cache and (args.cached_only or not train_now):
                    key = short  # a long network of which only the default budget was trained
                if key not in cache:
                    if not train_now:
                        continue
                    train, _ = train_val_split(full, val_fraction=0.2, seed=seed)
                    run = train_from_scratch(set_widths(model, widths), {"train": train, "test": test},
                                             seed=seed, epochs=epochs, lr=args.lr, batch_size=args.batch_size)
                    run.update({"dataset": dataset, "model": model_name, "seed": seed, "widths": widths,
                                "compression": compression(set_widths(model, widths)), "epochs": epochs})
                    cache.put(key, run)
                    acc = run["test_accuracy_per_epoch"]
                    print(f"  {dataset} {model_name} {network_label(item)} seed={seed} "
                          f"widths={list(widths.values())} comp={run['compression']:.3f} "
                          f"acc@{args.epochs}={acc[args.epochs - 1]:.4f} acc@{epochs}={acc[-1]:.4f} "
                          f"({run['time_s']:.0f} s)", flush=True)
                runs.append(cache[key])
            if runs:
                used += runs
                rows.append(summarise(dataset, model_name, item, runs, refs, args.epochs))
    print(_common.format_table(rows, ["dataset", "model", "network", "params", "compression_%",
                                      "accuracy_%", "accuracy_std", "unpruned_elbo_accuracy_%",
                                      "default_accuracy_%", "long_epochs", "long_accuracy_%"]))
    if args.cached_only:  # record the command that trains the runs, not the tabulation
        sys.argv = [a for a in sys.argv if a != "--cached-only"]
    path = _common.write_results(__file__, config=config, seeds=args.seeds, rows=rows, extra={"runs": used})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
