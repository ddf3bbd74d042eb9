"""The benchmarks' shared run cache (benchmarks/_common.py)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _common():
    spec = importlib.util.spec_from_file_location("_common", ROOT / "benchmarks" / "_common.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_run_cache_resumes_with_every_finished_run(tmp_path: Path) -> None:
    RunCache = _common().RunCache
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
