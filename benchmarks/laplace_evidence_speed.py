"""Time and memory of ``log_evidence`` against network size, diagonal vs Kronecker GGN.

MLPs ``784 -> w -> w -> 10`` (ReLU) on ``--examples`` MNIST training images, categorical
likelihood. For each width and curvature structure a fresh process builds the network and
the data, then calls :func:`pyro_prune.laplace.log_evidence` ``--repeats`` times; reported:
the median wall time, and the peak resident memory the calls add (the kernel's peak
resident set ``VmHWM``, reset just before the calls, minus the resident set then). One
thread (``--threads``).

    python benchmarks/laplace_evidence_speed.py --widths 64 256 1024 --examples 1000
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

from _common import format_table, parse_benchmark_args, print_header, write_results

NAME = "laplace_evidence_speed"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    """Reset the kernel's peak resident set (``VmHWM``; Linux >= 4.0). False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _peak_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(width: int, hessian: str, examples: int, repeats: int) -> dict[str, Any]:
    import torch
    from torch import nn

    from pyro_prune.data import load_dataset
    from pyro_prune.laplace import log_evidence

    torch.manual_seed(0)
    data = load_dataset("mnist", "train", flatten=True)
    x, y = data.tensors
    x, y = x[:examples].contiguous(), y[:examples].contiguous()
    net = nn.Sequential(nn.Linear(784, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))
    params = sum(p.numel() for p in net.parameters())
    del data
    gc.collect()
    before = _rss_bytes()
    if not _reset_peak():
        raise SystemExit("cannot reset the peak resident set (/proc/self/clear_refs): Linux >= 4.0 needed")
    times = []
    value = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = float(log_evidence(net, (x, y), prior_scale=1.0, hessian=hessian))
        times.append(time.perf_counter() - t0)
    peak = _peak_bytes()
    return {"width": width, "params": params, "hessian": hessian, "examples": examples,
            "time_s": statistics.median(times), "times_s": times,
            "peak_extra_mb": max(0, peak - before) / 2**20, "log_evidence": value}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", nargs="+", type=int, default=[64, 256, 1024])
    parser.add_argument("--hessians", nargs="+", default=["diag", "kron"])
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parse_benchmark_args(parser, threads=1, seed=False)
    if args.child is not None:
        print(json.dumps(child(int(args.child[0]), args.child[1], args.examples, args.repeats)))
        return
    config = {k: v for k, v in vars(args).items() if k != "child"}
    config["network"] = "MLP 784 -> w -> w -> 10, ReLU; categorical likelihood; MNIST training images"
    print_header(__file__, seeds=[0], config=config)
    rows = []
    for width in args.widths:
        for hessian in args.hessians:
            cmd = [sys.executable, __file__, "--child", str(width), hessian, "--examples", str(args.examples),
                   "--repeats", str(args.repeats), "--threads", str(args.threads)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            row = json.loads(out)
            rows.append(row)
            print(f"width {width} ({row['params']} params) {hessian}: {row['time_s']:.2f}s, "
                  f"+{row['peak_extra_mb']:.0f} MB", flush=True)
    by = {(r["width"], r["hessian"]): r for r in rows}
    for r in rows:
        d = by.get((r["width"], "diag"))
        r["time_vs_diag"] = r["time_s"] / d["time_s"] if d else None
    print(format_table(rows, ["width", "params", "hessian", "time_s", "time_vs_diag", "peak_extra_mb"]))
    print(f"wrote {write_results(__file__, config=config, seeds=[0], rows=rows)}")


if __name__ == "__main__":
    main()
