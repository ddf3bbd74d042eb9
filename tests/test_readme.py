"""The README tells the truth: its pipeline runs and its result tables match the JSON files."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def _make_tables():
    spec = importlib.util.spec_from_file_location("make_tables", ROOT / "benchmarks" / "make_tables.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_result_tables_are_built_from_the_committed_json() -> None:
    mt = _make_tables()
    text = README.read_text()
    assert mt.updated_readme(text) == text, "run python benchmarks/make_tables.py"
    # every committed result file with a section appears in the README
    for name in mt.SECTIONS:
        path = ROOT / "benchmarks" / "results" / f"{name}.json"
        if path.exists():
            import json

            command = json.loads(path.read_text())["command"]
            assert f"python benchmarks/{command}" in text


@pytest.mark.slow
def test_the_ten_line_pipeline_runs(capsys) -> None:
    block = re.search(r"## The pipeline in ten lines\n\n```python\n(.*?)```", README.read_text(), re.S)
    assert block is not None
    namespace: dict = {}
    exec(compile(block.group(1), "README.md", "exec"), namespace)
    net = namespace["net"]
    import torch

    from pyro_prune.convert import count_params

    assert isinstance(net, torch.nn.Module) and count_params(net) < count_params(namespace["model"].net)
    assert "elpd_loo" in capsys.readouterr().out


@pytest.mark.slow
def test_the_guide_runs_block_by_block(capsys) -> None:
    text = README.read_text()
    guide = text.split("## Guide", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", guide, re.S)
    assert len(blocks) >= 6
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md guide block {i}", "exec"), namespace)
    out = capsys.readouterr().out
    assert "elpd" in out or "rank" in out  # az.compare's table was printed
    assert namespace["net"] is not None and 0.0 <= namespace["search"].best["prune_ratio"] <= 1.0
    assert namespace["history"][-1]["sparsity"] in (0.0, pytest.approx(0.25, abs=1e-3))
