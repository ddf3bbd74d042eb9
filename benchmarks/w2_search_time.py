"""Wall time of the W2 neuron search against network size (Fashion-MNIST BNN MLPs).

The iterative search (:func:`pyro_prune.inference.w2_prune`, default settings: 2% of the
structures removed per step, so about 50 steps whatever the size, 512 inputs x 32 posterior
draws) on MLPs 784-[width]x3-10 with Gaussian weights and a mask gate on every hidden neuron,
from a few hundred to a few thousand hidden neurons. Each network is first fitted briefly by
SVI (a training subset and one epoch: the point is the search's cost, not the accuracy);
reported: hidden neurons, search steps, seconds, seconds per step, and the prune ratio the
search chose. Goal of the method's issue: a network with a few thousand neurons in minutes
on 2 cores.

    python benchmarks/w2_search_time.py [--widths 128 256 512 1024] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import torch
from _common import format_table, parse_benchmark_args, print_header, write_results
from torch.utils.data import TensorDataset

from pyro_prune.data import load_dataset
from pyro_prune.inference import fit, w2_prune
from pyro_prune.models import MLP


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", nargs="+", type=int, default=[128, 256, 512, 1024],
                        help="width of each of the three hidden layers")
    parser.add_argument("--train-subset", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=1)
    args = parse_benchmark_args(parser)
    config = {**vars(args), "dataset": "fashion-mnist",
              "search": "w2_prune defaults: batch 0.02, 512 inputs, 32 draws, lambda 0.3"}
    print_header(__file__, seeds=[args.seed], config=config)
    full = load_dataset("fashion-mnist", "train", flatten=True)
    x, y = full.tensors
    train = TensorDataset(x[: args.train_subset], y[: args.train_subset])
    rows: list[dict[str, Any]] = []
    for width in args.widths:
        torch.manual_seed(args.seed)
        net = MLP(784, [width] * 3, 10, weights="gaussian", gate="mask")
        t0 = time.perf_counter()
        fit(net, train, epochs=args.epochs, batch_size=128, lr=3e-3, seed=args.seed, progress=False)
        fit_s = time.perf_counter() - t0
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        t0 = time.perf_counter()
        res = w2_prune(net, train, seed=args.seed)
        search_s = time.perf_counter() - t0
        steps = len(res.path) - 1
        rows.append({"hidden": f"{width}x3", "neurons": 3 * width, "steps": steps,
                     "search_s": search_s, "s_per_step": search_s / steps,
                     "pruned_%": 100 * res.best["prune_ratio"], "fit_s": fit_s,
                     "load_avg_1min": load})
        print(format_table(rows[-1:]), flush=True)
    print()
    print(format_table(rows))
    path = write_results(__file__, config=config, seeds=[args.seed], rows=rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
