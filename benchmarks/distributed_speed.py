"""Training throughput of :func:`~pyro_prune.inference.fit` on 1 and N processes (torchrun).

LeNet-5 on MNIST (a stratified subset of the training set), SVI with the default fast ELBO,
global batch ``--batch-size`` (each of N processes takes ``batch / N``), no pruning. Each
configuration runs under ``torchrun --nproc_per_node=N`` in fresh processes, ``--runs``
times, alternating, and reports the median of:

* ``examples_per_s``: training examples per second of the epochs after the first (the first
  warms up), as ``fit`` times them (the training pass, without evaluation);
* ``comm_ms_per_step``: wall time per step spent in the one all-reduce of the gradients
  (:class:`~pyro_prune.inference.distributed.GradientSync`), on rank 0;
* ``speedup``: examples/s over the 1-process figure of the same run.

On the CPU the processes use ``gloo`` and ``--threads`` threads each; with ``--device cuda``
each rank trains on ``cuda:LOCAL_RANK`` with NCCL (the data set is moved to the GPU once).

    python benchmarks/distributed_speed.py [--processes 1,2] [--runs 3] [--epochs 3]
        [--train-examples 12800] [--batch-size 128] [--threads 1] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import format_table, print_header, write_results

SEED = 0


def _worker(args: argparse.Namespace) -> None:
    import torch

    from pyro_prune.data import load_dataset, train_val_split
    from pyro_prune.inference import fit
    from pyro_prune.models import LeNet5

    torch.set_num_threads(args.threads)
    train = load_dataset("mnist", "train")
    if args.train_examples < len(train):
        _, train = train_val_split(train, val_fraction=args.train_examples / len(train), seed=SEED)
    torch.manual_seed(SEED)
    model = LeNet5(1, 10, 28)
    if args.device == "cuda":
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
        model.to(device)
        train = torch.utils.data.TensorDataset(*(t.to(device) for t in train.tensors))
    result = fit(model, train, epochs=args.epochs, batch_size=args.batch_size, lr=1e-3, seed=SEED,
                 progress=False)
    rank = int(os.environ.get("RANK", 0))
    if rank == 0:
        steps = -(-len(train) // args.batch_size)
        rows = result.history[1:] or result.history
        epoch_s = statistics.median(float(r["epoch_time_s"]) for r in rows)
        comm = [float(r.get("comm_time_s", 0.0)) for r in rows]
        Path(args.worker_output).write_text(json.dumps({
            "processes": result.config["world_size"], "backend": result.config["backend"] or "-",
            "device": args.device, "examples": len(train), "steps_per_epoch": steps,
            "epoch_s": epoch_s, "examples_per_s": len(train) / epoch_s,
            "comm_ms_per_step": 1e3 * statistics.median(comm) / steps,
            "final_loss": float(result.history[-1]["loss"]),
        }))


def _launch(n: int, args: argparse.Namespace, path: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}",
           "--rdzv_backend=c10d", "--rdzv_endpoint=localhost:0", str(Path(__file__).resolve()),
           "--worker-output", str(path), "--epochs", str(args.epochs),
           "--train-examples", str(args.train_examples), "--batch-size", str(args.batch_size),
           "--threads", str(args.threads), "--device", args.device]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{n} processes failed:\n{done.stderr[-4000:]}")
    row = json.loads(path.read_text())
    row["wall_s"] = time.perf_counter() - t0
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", default="1,2", help="process counts, comma-separated")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-examples", type=int, default=12800)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--worker-output", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--suffix", default="", help="result file suffix (e.g. _gpu)")
    args = parser.parse_args(argv)
    if args.worker_output:
        _worker(args)
        return
    counts = [int(c) for c in args.processes.split(",")]
    config = {"model": "LeNet5(1, 10, 28)", "data": "mnist", "train_examples": args.train_examples,
              "epochs": args.epochs, "batch_size": args.batch_size, "threads": args.threads,
              "device": args.device, "processes": counts, "runs": args.runs,
              "load": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    print_header(__file__, seeds=[SEED], config=config)
    runs: list[list[dict[str, Any]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.runs):
            run = []
            for n in counts:
                run.append(_launch(n, args, Path(tmp) / f"run{k}_{n}.json"))
                print(f"run {k + 1}/{args.runs}, {n} processes: "
                      f"{run[-1]['examples_per_s']:.0f} examples/s", flush=True)
            base = run[0]["examples_per_s"]
            for row in run:
                row["speedup"] = row["examples_per_s"] / base
            runs.append(run)
    rows = []
    for i, first in enumerate(runs[0]):
        row = dict(first)
        for key in ("examples_per_s", "epoch_s", "comm_ms_per_step", "speedup", "wall_s"):
            values = [run[i][key] for run in runs]
            row[key] = statistics.median(values)
            row[f"{key}_runs"] = values
        rows.append(row)
    config["load_after"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(format_table(rows, ["processes", "backend", "device", "examples_per_s", "epoch_s",
                              "comm_ms_per_step", "speedup"]))
    path = write_results(__file__, config=config, seeds=[SEED], rows=rows, suffix=args.suffix)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
