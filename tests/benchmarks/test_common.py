"""The benchmarks' shared run cache (benchmarks/_common.py)."""

from __future__ import annotations

import json
from pathlib import Path


def test_run_cache_resumes_with_every_finished_run(tmp_path: Path, benchmark_module) -> None:
    RunCache = benchmark_module("_common").RunCache
    path = tmp_path / "results" / "bench.runs.json"
    cache = RunCache(path)
    key = RunCache.key("digits", "mlp", 0, [1.5, None])
    assert key == json.dumps(["digits", "mlp", 0, [1.5, None]])  # the format older files use
    assert key not in cache and cache.keys() == []
    assert cache.put(key, {"accuracy": 0.9}) == {"accuracy": 0.9}
    cache.put(RunCache.key("digits", "mlp", 1, [1.5, None]), {"accuracy": 0.8})
    assert sorted(p.name for p in path.parent.iterdir()) == ["bench.runs.json"]  # no temporary left
    again = RunCache(path)
    assert key in again and again[key] == {"accuracy": 0.9} and len(again.keys()) == 2


def test_run_caches_of_two_processes_keep_each_others_runs(tmp_path: Path, benchmark_module) -> None:
    RunCache = benchmark_module("_common").RunCache
    path = tmp_path / "bench.runs.json"
    first, second = RunCache(path), RunCache(path)  # both loaded the empty file
    first.put(RunCache.key("a"), 1)
    second.put(RunCache.key("b"), 2)
    first.put(RunCache.key("c"), 3)
    assert RunCache(path).runs == {RunCache.key(k): v for k, v in (("a", 1), ("b", 2), ("c", 3))}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.runs.json"]
