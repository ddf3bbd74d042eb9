"""Shared helpers for the benchmark scripts: environment facts, timing and result files.

Every benchmark prints a table and writes ``benchmarks/results/<script>.json`` with the keys
``config``, ``seeds``, ``versions``, ``machine`` and ``rows``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def versions() -> dict[str, str]:
    """Versions of the libraries the numbers depend on."""
    import numpy
    import pyro
    import torch

    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "numpy": numpy.__version__,
    }
    try:
        import pyro_prune

        out["pyro_prune"] = pyro_prune.__version__
    except ImportError:  # pragma: no cover - benchmarks run from a checkout
        pass
    return out


def machine() -> dict[str, Any]:
    """The hardware the numbers were measured on."""
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }


def set_threads(n: int) -> None:
    """Pin torch's intra-op threads so timings are comparable across runs."""
    import torch

    torch.set_num_threads(n)


def parse_benchmark_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None, *,
                         threads: int = 2, seed: bool = True) -> argparse.Namespace:
    """Add the options every benchmark takes, parse ``argv`` and pin torch's threads.

    Adds ``--threads`` (default ``threads``) and, unless the script takes its own list of
    seeds, ``--seed`` (default 0).
    """
    if seed:
        parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=threads, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    return args


def add_w2_args(parser: argparse.ArgumentParser, *, lr: float, batch_size: int, eval_draws: int) -> None:
    """The options of the W2 benchmarks' Bayesian-MLP fit and neuron search."""
    from pyro_prune.inference import DEFAULT_LAMBDA

    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--prior-scale", type=float, default=1.0, help="the weight prior N(0, s^2)")
    parser.add_argument("--lam", type=float, default=DEFAULT_LAMBDA, help="lambda of the W2 search")
    parser.add_argument("--draws", type=int, default=32, help="posterior draws of the W2 search")
    parser.add_argument("--eval-draws", type=int, default=eval_draws,
                        help="posterior draws of the test metrics")


def median_time(fn: Callable[[], Any], *, repeats: int = 7, warmup: int = 2, number: int = 1) -> float:
    """Median wall time in seconds of ``number`` calls of ``fn``, over ``repeats`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - t0) / number)
    return statistics.median(times)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table of ``rows``."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def write_results(
    script: str,
    *,
    config: dict[str, Any],
    seeds: Sequence[int],
    rows: Sequence[dict[str, Any]],
    extra: dict[str, Any] | None = None,
    suffix: str = "",
) -> Path:
    """Write ``benchmarks/results/<script><suffix>.json`` and return its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    name = Path(script).stem
    payload: dict[str, Any] = {
        "script": f"benchmarks/{name}.py",
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else name,
        "config": config,
        "seeds": list(seeds),
        "versions": versions(),
        "machine": machine(),
        "rows": list(rows),
    }
    if extra:
        payload.update(extra)
    path = RESULTS_DIR / f"{name}{suffix}.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def print_header(script: str, *, seeds: Sequence[int], config: dict[str, Any]) -> None:
    """Print the seed, versions and hardware before a benchmark's table."""
    print(f"# {Path(script).stem}")
    print(f"seeds: {list(seeds)}")
    print(f"versions: {versions()}")
    print(f"machine: {machine()}")
    print(f"config: {config}")
