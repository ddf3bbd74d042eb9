"""Shared helpers for the benchmark scripts: environment facts, timing and result files.

Every benchmark prints a table and writes ``benchmarks/results/<script>.json`` with the keys
``config``, ``seeds``, ``versions``, ``machine`` and ``rows``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

try:  # the cache's file lock (POSIX); elsewhere one process per cache file
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

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
    try:  # the compiled noise kernels (the ``fast`` extra)
        import numba

        out["numba"] = numba.__version__
    except ImportError:
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


def epochs_for(n_train: int, batch_size: int, steps: int) -> int:
    """Epochs that give about ``steps`` optimiser steps on ``n_train`` examples."""
    return max(1, math.ceil(steps / math.ceil(n_train / batch_size)))


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


class RunCache:
    """The finished runs of a benchmark, keyed by their settings, in one JSON file.

    A key is the JSON text of the list of settings that define a run (:meth:`key`); every
    :meth:`put` rewrites the file under a temporary name and renames it, so an interrupted
    benchmark resumes with every run it finished and never leaves a truncated file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.runs: dict[str, Any] = json.loads(self.path.read_text()) if self.path.exists() else {}

    @staticmethod
    def key(*settings: Any) -> str:
        return json.dumps(list(settings))

    def __contains__(self, key: str) -> bool:
        return key in self.runs

    def __getitem__(self, key: str) -> Any:
        return self.runs[key]

    def keys(self) -> list[str]:
        return list(self.runs)

    def get_or_run(self, run: Callable[..., Any], *settings: Any) -> Any:
        """The stored run of ``settings`` (:meth:`key`), or ``run(*settings)``, stored under them."""
        key = self.key(*settings)
        return self[key] if key in self else self.put(key, run(*settings))

    def put(self, key: str, run: Any) -> Any:
        """Store ``run`` under ``key`` and write the file; returns ``run``.

        The file is re-read under an exclusive lock and merged before it is written, so two
        benchmark processes sharing one cache keep each other's runs.
        """
        self.runs[key] = run
        self.path.parent.mkdir(parents=True, exist_ok=True)
        folder = os.open(self.path.parent, os.O_RDONLY)  # the lock: the folder itself, no lock file
        try:
            if fcntl is not None:
                fcntl.flock(folder, fcntl.LOCK_EX)
            on_disk = json.loads(self.path.read_text()) if self.path.exists() else {}
            self.runs = {**on_disk, **self.runs}
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.runs, indent=1))
            tmp.replace(self.path)
        finally:
            os.close(folder)  # closing releases the flock
        return run


def finish_with_summary(script: str, *, config: dict[str, Any], seeds: Sequence[int],
                        rows: Sequence[dict[str, Any]], summary: Sequence[dict[str, Any]]) -> None:
    """Print the summary table and write the results (the rows, the summary beside them)."""
    print(format_table(summary))
    print(f"wrote {write_results(script, config=config, seeds=seeds, rows=rows, extra={'summary': list(summary)})}")


def print_header(script: str, *, seeds: Sequence[int], config: dict[str, Any]) -> None:
    """Print the seed, versions and hardware before a benchmark's table."""
    print(f"# {Path(script).stem}")
    print(f"seeds: {list(seeds)}")
    print(f"versions: {versions()}")
    print(f"machine: {machine()}")
    print(f"config: {config}")


def median_of_runs(runs: list[list[dict[str, Any]]], keys: Sequence[str],
                   figures: Sequence[str]) -> list[dict[str, Any]]:
    """One row per row of the first run: the medians over the runs of the timed ``figures``.

    The runs must list the same rows (same ``keys``) in the same order. Ratios are taken
    within each run (variants timed side by side) and their median reported; ``<figure>_runs``
    keeps every run's value.
    """
    out = []
    for i, first in enumerate(runs[0]):
        same = [run[i] for run in runs]
        if any(tuple(r[k] for k in keys) != tuple(first[k] for k in keys) for r in same):
            raise RuntimeError("the runs timed different variants")
        row = dict(first)
        for key in figures:
            row[f"{key}_runs"] = [r[key] for r in same]
            row[key] = statistics.median(row[f"{key}_runs"])
        out.append(row)
    return out


def rows_of_fresh_processes(script: str, argv: Sequence[str], runs: int) -> list[list[dict[str, Any]]]:
    """Run ``script argv --runs 1 --run-output FILE`` in ``runs`` fresh processes; their rows.

    A timing benchmark measures in fresh processes because on a shared machine the spread
    from one process to the next exceeds the spread within one.
    """
    import subprocess
    import tempfile

    out: list[list[dict[str, Any]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(runs):
            path = Path(tmp) / f"run{k}.json"
            cmd = [sys.executable, str(Path(script).resolve()), *argv, "--runs", "1", "--run-output", str(path)]
            print(f"run {k + 1} of {runs}", flush=True)
            subprocess.run(cmd, check=True)
            out.append(json.loads(path.read_text()))
    return out
