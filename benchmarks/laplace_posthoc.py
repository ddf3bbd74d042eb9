"""Post-hoc Laplace BMR on trained plain networks, beside Torch-Pruning's criteria.

Networks, trained to the MAP under a Gaussian prior ``N(0, s_train^2)`` on every parameter
(Adam lr 1e-3, batch 128, ``mean CE + |w|^2 / (2 s_train^2 N)``), on the full training set:

* ``lenet5``: LeNet-5 (conv 6-16 5x5, FC 120-84, ReLU, max-pool), written as an ordinary
  ``nn.Module``;
* ``resnet``: the package's :class:`~pyro_prune.models.ResNet` (BasicBlocks with BatchNorm,
  small widths, stated in the JSON) with deterministic mask gates, trained as a plain
  network and converted to a plain module with nothing removed (``to_deterministic``), so
  both pruners see the same ordinary module.

Then, with no fine-tuning:

* **Laplace BMR** (:func:`pyro_prune.laplace.laplace_prune`): the Laplace posterior
  ``N(w*, P^-1)`` (GGN curvature, Kronecker-factored), the Gaussian BMR of each neuron /
  channel (its weight row, bias, BatchNorm entries and outgoing columns, jointly under the
  Kronecker posterior), removal where ``dF >= 0``, the prior scale fitted by maximising the
  evidence, and the kept weights moved to the *reduced posterior mean* (the conditional mean
  given the removed weights at 0). It stops by itself; the rows give the compression and test
  accuracy there. ``laplace-bmr-kron-nomean`` keeps the kept weights at ``w*`` (the same
  removals), to show what the reduced mean does.
* **Torch-Pruning** (``torch-pruning``, the ``bench`` extra) on the same trained network, with
  its own importance criteria (``MagnitudeImportance`` p=1 and p=2, ``TaylorImportance``)
  and its ``MetaPruner``, told to remove the same number of channels / neurons per layer as
  Laplace BMR did: same architecture, same compression, each criterion picks which.

Compression = parameters removed / parameters of the unpruned network (biases and BatchNorm
affine parameters counted). Reduced protocol (CPU): a few epochs; the Laplace curvature on a
seeded subset of the training set (``--curvature-subset``), scaled to the full set. Trained
weights are cached in ``benchmarks/.cache`` and finished runs in
``benchmarks/results/laplace_posthoc.runs.json``, so reruns only tabulate. The summary rows give
the median over seeds and the range (min-max).

    python benchmarks/laplace_posthoc.py --models lenet5 resnet --datasets mnist fashion-mnist --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from _common import (
    RESULTS_DIR,
    RunCache,
    format_table,
    parse_benchmark_args,
    print_header,
    write_results,
)
from torch import nn

from pyro_prune.convert import count_params, to_deterministic
from pyro_prune.data import load_dataset
from pyro_prune.laplace import laplace_prune

NAME = "laplace_posthoc"
CACHE = Path(__file__).resolve().parent / ".cache"
RUNS_FILE = RESULTS_DIR / f"{NAME}.runs.json"
RESNET_WIDTHS = (8, 16, 32)
TP_CRITERIA = ("tp-l1", "tp-l2", "tp-taylor")


class LeNet5(nn.Module):
    """LeNet-5 as it is usually written in plain PyTorch."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def train(net: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, prior_scale: float,
          seed: int, lr: float = 1e-3, batch_size: int = 128) -> None:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    n = len(x)
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=g)
        net.train()
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            penalty = sum(p.square().sum() for p in net.parameters()) / (2 * prior_scale**2 * n)
            loss = F.cross_entropy(net(x[idx]), y[idx]) + penalty
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"  epoch {epoch + 1}/{epochs}: last batch loss {float(loss):.4f}", flush=True)
    net.eval()


def build(model: str, num_classes: int) -> nn.Module:
    if model == "lenet5":
        return LeNet5(num_classes)
    from pyro_prune.models import ResNet

    return ResNet(1, num_classes, widths=RESNET_WIDTHS, blocks_per_stage=1, image_size=28, gate="mask").net


def epochs_of(model: str, args: argparse.Namespace) -> int:
    return args.epochs if model == "lenet5" else args.resnet_epochs


def trained(model: str, dataset: str, seed: int, args: argparse.Namespace, x: torch.Tensor, y: torch.Tensor,
            num_classes: int) -> nn.Module:
    """The trained plain network (cached)."""
    torch.manual_seed(seed)
    net = build(model, num_classes)
    CACHE.mkdir(exist_ok=True)
    tag = "" if model == "lenet5" else f"_w{'-'.join(map(str, RESNET_WIDTHS))}"
    epochs = epochs_of(model, args)
    path = CACHE / f"{NAME}_{dataset}_{model}{tag}_s{seed}_e{epochs}_p{args.train_prior_scale:g}.pt"
    if path.exists():
        net.load_state_dict(torch.load(path, weights_only=True))
    else:
        t0 = time.perf_counter()
        train(net, x, y, epochs=epochs, prior_scale=args.train_prior_scale, seed=seed)
        print(f"{dataset} {model} seed {seed}: trained in {time.perf_counter() - t0:.0f}s", flush=True)
        tmp = path.with_suffix(".tmp")
        torch.save(net.state_dict(), tmp)
        tmp.replace(path)
    net.eval()
    if model == "resnet":  # the package's ResNet as a plain module (mask gates folded away)
        from pyro_prune.models import ResNet

        wrapper = ResNet(1, num_classes, widths=RESNET_WIDTHS, blocks_per_stage=1, image_size=28, gate="mask")
        wrapper.net.load_state_dict(net.state_dict())
        wrapper.eval()
        net = to_deterministic(wrapper, example_input=x[:2])
    return net


@torch.no_grad()
def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    net.eval()
    correct = sum(int((net(x[i : i + 2000]).argmax(-1) == y[i : i + 2000]).sum()) for i in range(0, len(x), 2000))
    return correct / len(x)


def widths(net: nn.Module) -> dict[str, int]:
    return {n: (m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
            for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def torch_pruning_run(net: nn.Module, removed: dict[str, int], criterion: str, x: torch.Tensor,
                      y: torch.Tensor) -> nn.Module:
    """Torch-Pruning's MetaPruner with ``criterion``, removing ``removed[layer]`` structures per layer."""
    import torch_pruning as tp

    model = copy.deepcopy(net).eval()
    importance = {"tp-l1": tp.importance.MagnitudeImportance(p=1),
                  "tp-l2": tp.importance.MagnitudeImportance(p=2),
                  "tp-taylor": tp.importance.TaylorImportance()}[criterion]
    modules = dict(model.named_modules())
    # MetaPruner removes n - int(n * (1 - ratio)): (k - 0.5) / n removes exactly k
    ratios = {modules[name]: (k - 0.5) / widths(model)[name] for name, k in removed.items() if k > 0}
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    pruner = tp.pruner.MetaPruner(model, x[:1], importance=importance, pruning_ratio=0.0,
                                  pruning_ratio_dict=ratios, ignored_layers=[last])
    if criterion == "tp-taylor":
        model.zero_grad()
        F.cross_entropy(model(x), y, reduction="sum").backward()
    pruner.step()
    model.zero_grad()
    return model


def run_one(model: str, dataset: str, seed: int, args: argparse.Namespace, data: dict[str, Any]) -> list[dict]:
    x, y, xt, yt = data["x"], data["y"], data["xt"], data["yt"]
    net = trained(model, dataset, seed, args, x, y, data["num_classes"])
    total = count_params(net)
    base_widths = widths(net)
    rows: list[dict[str, Any]] = [{"method": "unpruned", "compression": 0.0, "test_accuracy": accuracy(net, xt, yt),
                                   "kept": base_widths, "time_s": 0.0}]
    print(f"{dataset} {model} seed {seed}: unpruned test accuracy {rows[0]['test_accuracy']:.4f}, "
          f"{total} parameters", flush=True)
    removed: dict[str, int] = {}
    for label, reduced_mean in (("laplace-bmr-kron", True), ("laplace-bmr-kron-nomean", False)):
        t0 = time.perf_counter()
        small, _ = laplace_prune(net, (x, y), hessian="kron", curvature_subset=args.curvature_subset,
                                 reduced_mean=reduced_mean)
        seconds = time.perf_counter() - t0
        small_widths = widths(small)
        removed = {n: w - small_widths.get(n, 0) for n, w in base_widths.items()}
        rows.append({"method": label, "compression": 1 - count_params(small) / total,
                     "test_accuracy": accuracy(small, xt, yt), "kept": small_widths, "time_s": seconds})
        print(f"  {label}: compression {rows[-1]['compression']:.3f}, accuracy {rows[-1]['test_accuracy']:.4f}, "
              f"kept {small_widths} ({seconds:.0f}s)", flush=True)
    if any(removed.values()):
        for criterion in TP_CRITERIA:
            sub = args.taylor_examples
            pruned = torch_pruning_run(net, removed, criterion, x[:sub], y[:sub])
            rows.append({"method": criterion, "compression": 1 - count_params(pruned) / total,
                         "test_accuracy": accuracy(pruned, xt, yt), "kept": widths(pruned), "time_s": None})
            print(f"  {criterion}: compression {rows[-1]['compression']:.3f}, accuracy "
                  f"{rows[-1]['test_accuracy']:.4f}", flush=True)
    return rows


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median and range over seeds per (model, dataset, method)."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["model"], r["dataset"], r["method"]), []).append(r)
    out = []
    for (model, dataset, method), rs in groups.items():
        acc = [r["test_accuracy"] for r in rs]
        comp = [r["compression"] for r in rs]
        out.append({"model": model, "dataset": dataset, "method": method, "seeds": sorted(r["seed"] for r in rs),
                    "compression": statistics.median(comp), "compression_min": min(comp),
                    "compression_max": max(comp), "test_accuracy": statistics.median(acc),
                    "test_accuracy_min": min(acc), "test_accuracy_max": max(acc)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["lenet5", "resnet"], choices=["lenet5", "resnet"])
    parser.add_argument("--datasets", nargs="+", default=["mnist", "fashion-mnist"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=3, help="training epochs of LeNet-5")
    parser.add_argument("--resnet-epochs", type=int, default=1, help="training epochs of the ResNet")
    parser.add_argument("--train-prior-scale", type=float, default=0.1)
    parser.add_argument("--curvature-subset", type=int, default=2000)
    parser.add_argument("--taylor-examples", type=int, default=2000,
                        help="training examples of the gradient TaylorImportance uses")
    parser.add_argument("--train-only", action="store_true", help="train and cache the networks, prune nothing")
    parser.add_argument("--cached-only", action="store_true", help="tabulate the cached runs, compute nothing")
    args = parse_benchmark_args(parser, threads=1, seed=False)
    config = {k: v for k, v in vars(args).items() if k not in ("train_only", "cached_only")}
    config["networks"] = {"lenet5": "LeNet-5 (conv 6-16 5x5, FC 120-84), plain nn.Module",
                          "resnet": f"pyro_prune ResNet, widths {list(RESNET_WIDTHS)}, one BasicBlock per stage, "
                                    "BatchNorm, as a plain module"}
    config["protocol"] = ("Adam lr 1e-3, batch 128, MAP under N(0, s_train^2) on every parameter, full training set; "
                          "no fine-tuning after pruning; Torch-Pruning told the per-layer counts Laplace BMR removed; "
                          "test accuracy on the official test set; median and range over the seeds")
    print_header(__file__, seeds=args.seeds, config=config)
    cache = RunCache(RUNS_FILE)
    runs: list[dict[str, Any]] = []
    for dataset in args.datasets:
        data: dict[str, Any] | None = None
        for model in args.models:
            for seed in args.seeds:
                key = RunCache.key(model, dataset, seed, epochs_of(model, args), args.train_prior_scale,
                                   args.curvature_subset, args.taylor_examples)
                if args.cached_only and key not in cache:
                    continue
                if key not in cache or args.train_only:
                    if data is None:
                        train_set, test_set = load_dataset(dataset, "train"), load_dataset(dataset, "test")
                        x, y = train_set.tensors
                        xt, yt = test_set.tensors
                        data = {"x": x, "y": y, "xt": xt, "yt": yt, "num_classes": train_set.info.num_classes}
                    if args.train_only:
                        trained(model, dataset, seed, args, data["x"], data["y"], data["num_classes"])
                        continue
                    cache.put(key, run_one(model, dataset, seed, args, data))
                runs.extend({"model": model, "dataset": dataset, "seed": seed, **r} for r in cache[key])
    if args.train_only:
        return
    if args.cached_only:  # record the command that computes the runs, not the tabulation
        sys.argv = [a for a in sys.argv if a != "--cached-only"]
    rows = summarise(runs)
    print(format_table(rows, ["model", "dataset", "method", "seeds", "compression", "compression_min",
                              "compression_max", "test_accuracy", "test_accuracy_min", "test_accuracy_max"]))
    out = write_results(__file__, config=config, seeds=args.seeds, rows=rows, extra={"runs": runs})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
