"""Throughput of the reduction operators (structures per second).

Evaluates every dF operator of :mod:`pyro_prune.reduction` on ``--n`` structures (default
10^6) in float32 with ``--threads`` torch threads (default 2), and reports the median over
``--repeats`` timed runs (after two warm-up runs) as structures per second. The noise
posteriors are drawn uniformly over the documented box, ``loc`` in [-30, 10] and
``log(scale)`` in [-20, 5], so every numerical branch (central, shallow and deep tails) is
exercised; the Gaussian operator gets one weight per "structure" with means ~N(0, 0.1^2)
and scales in [1e-3, 1]. The 1-minute load average before and after is recorded, since the
machine may be shared.

    python benchmarks/reduction_speed.py            # writes benchmarks/results/reduction_speed.json
    python benchmarks/reduction_speed.py --n 100000 --repeats 3
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import format_table, median_time, print_header, set_threads, write_results  # noqa: E402

from pyro_prune import reduction  # noqa: E402

GOAL = {"bmrs_n": 1e7}  # structures per second, float32, 2 threads


def _load() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:  # pragma: no cover - not available on every platform
        return None


def make_inputs(n: int, dtype: torch.dtype, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    loc = torch.rand(n, generator=g, dtype=torch.float64) * 40.0 - 30.0
    log_scale = torch.rand(n, generator=g, dtype=torch.float64) * 25.0 - 20.0
    w_loc = torch.randn(n, generator=g, dtype=torch.float64) * 0.1
    w_log_scale = (torch.rand(n, generator=g, dtype=torch.float64) - 1.0) * math.log(1e3)
    return {
        "loc": loc.to(dtype),
        "scale": log_scale.exp().to(dtype),
        "weight_loc": w_loc.to(dtype),
        "weight_scale": w_log_scale.exp().to(dtype),
    }


def operators(x: dict[str, torch.Tensor]) -> dict[str, tuple[str, Callable[[], Any]]]:
    loc, scale = x["loc"], x["scale"]
    return {
        "bmrs_n": ("dF BMRS_N, reduced LogN(A, 1e-12)", lambda: reduction.delta_f_lognormal(loc, scale)),
        "bmrs_u8": ("dF BMRS_U, p1=8, p2=23", lambda: reduction.delta_f_loguniform(loc, scale, p1=8)),
        "bmrs_u4": ("dF BMRS_U, p1=4, p2=23", lambda: reduction.delta_f_loguniform(loc, scale, p1=4)),
        "gaussian_bmr": (
            "dF Gaussian BMR per weight, r=1e-8",
            lambda: reduction.delta_f_gaussian(x["weight_loc"], x["weight_scale"]),
        ),
        "e_theta": ("E[theta] (float64 inside)", lambda: reduction.expected_theta(loc, scale)),
        "snr": ("SNR (float64 inside)", lambda: reduction.snr(loc, scale)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="structures per call")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--repeats", type=int, default=9, help="timed runs (median reported)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", default=None, help="subset of operator names")
    parser.add_argument("--no-write", action="store_true", help="do not write the JSON file")
    args = parser.parse_args(argv)

    set_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    config = {"n": args.n, "threads": args.threads, "repeats": args.repeats, "warmup": 2,
              "dtype": args.dtype, "inputs": "loc ~ U(-30, 10), log scale ~ U(-20, 5)"}
    print_header(__file__, seeds=[args.seed], config=config)
    load_before = _load()
    print(f"load average (1 min) before: {load_before}")

    x = make_inputs(args.n, dtype, args.seed)
    rows = []
    for name, (what, fn) in operators(x).items():
        if args.only and name not in args.only:
            continue
        out = fn()
        assert out.shape == (args.n,) and bool(torch.isfinite(out).all()), name
        seconds = median_time(fn, repeats=args.repeats, warmup=2)
        row = {"operator": name, "what": what, "median_s": seconds,
               "structures_per_s": args.n / seconds}
        if name in GOAL:
            row["goal_per_s"] = GOAL[name]
            row["meets_goal"] = bool(args.n / seconds >= GOAL[name])
        rows.append(row)
        print(f"  {name:13s} {args.n / seconds:12.4g} structures/s")
    load_after = _load()
    print(f"load average (1 min) after: {load_after}")
    print()
    print(format_table(rows, ["operator", "what", "structures_per_s", "median_s", "meets_goal"]))
    if not args.no_write:
        path = write_results(__file__, config=config, seeds=[args.seed], rows=rows,
                             extra={"load_average_1min": {"before": load_before, "after": load_after}})
        print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
