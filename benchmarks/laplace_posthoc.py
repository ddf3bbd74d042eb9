"""Post-hoc Laplace BMR on trained plain networks, beside Torch-Pruning's criteria.

A plain LeNet-5 (conv 6-16 5x5, FC 120-84, ReLU, max-pool; written as an ordinary
``nn.Module``) is trained to the MAP under a Gaussian prior ``N(0, s_train^2)`` (Adam,
``mean CE + |w|^2 / (2 s_train^2 N)``). Then, with no fine-tuning:

* **Laplace BMR** (:func:`pyro_prune.laplace.laplace_prune`): the Laplace posterior
  ``N(w*, P^-1)`` (GGN curvature, Kronecker or diagonal), Gaussian BMR of each neuron's /
  channel's weights (Kronecker: the row jointly; diagonal: mean field), removal where
  ``dF >= 0``, with the prior scale fitted by maximising the evidence (the default) or set to
  the training prior ``s_train``. It stops by itself; the table gives the compression and
  test accuracy there.
* **Torch-Pruning** (``torch-pruning``, the ``bench`` extra) on the same trained network, with
  its own importance criteria (``MagnitudeImportance`` p=1 and p=2, ``TaylorImportance``)
  and its ``MetaPruner``, told to remove the same number of channels / neurons per layer as
  Laplace BMR did: same architecture, same compression, each criterion picks which.

Compression = parameters removed / parameters of the unpruned network (biases counted).
Reduced protocol (CPU): a few epochs on the full training set; the Laplace curvature on a
seeded subset of the training set (``--curvature-subset``), scaled to the full set. Trained
weights are cached in ``benchmarks/.cache`` so reruns resume.

    python benchmarks/laplace_posthoc.py --datasets mnist fashion-mnist --epochs 3
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from _common import format_table, parse_benchmark_args, print_header, write_results
from torch import nn

from pyro_prune.convert import count_params
from pyro_prune.data import load_dataset
from pyro_prune.laplace import laplace_prune

NAME = "laplace_posthoc"
CACHE = Path(__file__).resolve().parent / ".cache"


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["mnist", "fashion-mnist"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-prior-scale", type=float, default=0.1)
    parser.add_argument("--curvature-subset", type=int, default=2000)
    parser.add_argument("--taylor-examples", type=int, default=2000,
                        help="training examples of the gradient TaylorImportance uses")
    parser.add_argument("--hessians", nargs="+", default=["kron", "diag"])
    args = parse_benchmark_args(parser, threads=1, seed=False)
    config = {k: v for k, v in vars(args).items()}
    config["network"] = "LeNet-5 (conv 6-16 5x5, FC 120-84), plain nn.Module"
    config["protocol"] = ("Adam lr 1e-3, batch 128, MAP under N(0, s_train^2) on every parameter; "
                          "no fine-tuning after pruning; Torch-Pruning told the per-layer counts "
                          "Laplace BMR removed; test accuracy on the official test set")
    print_header(__file__, seeds=[args.seed], config=config)
    rows: list[dict[str, Any]] = []
    for dataset in args.datasets:
        train_set, test_set = load_dataset(dataset, "train"), load_dataset(dataset, "test")
        x, y = train_set.tensors
        xt, yt = test_set.tensors
        torch.manual_seed(args.seed)
        net = LeNet5(train_set.info.num_classes)
        CACHE.mkdir(exist_ok=True)
        path = CACHE / f"{NAME}_{dataset}_lenet5_s{args.seed}_e{args.epochs}_p{args.train_prior_scale:g}.pt"
        if path.exists():
            net.load_state_dict(torch.load(path, weights_only=True))
            net.eval()
        else:
            t0 = time.perf_counter()
            train(net, x, y, epochs=args.epochs, prior_scale=args.train_prior_scale, seed=args.seed)
            print(f"{dataset}: trained in {time.perf_counter() - t0:.0f}s", flush=True)
            tmp = path.with_suffix(".tmp")
            torch.save(net.state_dict(), tmp)
            tmp.replace(path)
        total = count_params(net)
        base = accuracy(net, xt, yt)
        rows.append({"dataset": dataset, "method": "unpruned", "compression": 0.0,
                     "test_accuracy": base, "kept": widths(net), "time_s": 0.0})
        print(f"{dataset}: unpruned test accuracy {base:.4f}, {total} parameters", flush=True)
        variants = [(h, None) for h in args.hessians] + [(args.hessians[0], args.train_prior_scale)]
        for hessian, prior in variants:
            t0 = time.perf_counter()
            small, removals = laplace_prune(net, (x, y), hessian=hessian, prior_scale=prior,
                                            curvature_subset=args.curvature_subset)
            seconds = time.perf_counter() - t0
            label = f"laplace-bmr-{hessian}" + ("" if prior is None else f"-s{prior:g}")
            model_gates = {name: int(r.sum()) for name, r in removals.items()}
            removed = {name.removesuffix("_gate"): k for name, k in model_gates.items()}
            row = {"dataset": dataset, "method": label, "prior_scale": "fitted" if prior is None else prior,
                   "compression": 1 - count_params(small) / total, "test_accuracy": accuracy(small, xt, yt),
                   "kept": {n: widths(net)[n] - removed.get(n, 0) for n in widths(net)}, "time_s": seconds}
            rows.append(row)
            print(f"  {row['method']}: compression {row['compression']:.3f}, accuracy "
                  f"{row['test_accuracy']:.4f}, kept {row['kept']} ({seconds:.0f}s)", flush=True)
            if not any(removed.values()):
                continue
            for criterion in ("tp-l1", "tp-l2", "tp-taylor"):
                sub = args.taylor_examples
                pruned = torch_pruning_run(net, removed, criterion, x[:sub], y[:sub])
                tp_row = {"dataset": dataset, "method": f"{criterion} @ {label}",
                          "compression": 1 - count_params(pruned) / total,
                          "test_accuracy": accuracy(pruned, xt, yt), "kept": widths(pruned), "time_s": None}
                rows.append(tp_row)
                print(f"  {tp_row['method']}: compression {tp_row['compression']:.3f}, accuracy "
                      f"{tp_row['test_accuracy']:.4f}, kept {tp_row['kept']}", flush=True)
    print(format_table(rows, ["dataset", "method", "compression", "test_accuracy", "kept", "time_s"]))
    out = write_results(__file__, config=config, seeds=[args.seed], rows=rows)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
