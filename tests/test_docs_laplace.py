"""docs/laplace.md tells the truth: its code runs and its result tables match the JSON files."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "laplace.md"


def test_laplace_page_tables_are_built_from_the_committed_json() -> None:
    spec = importlib.util.spec_from_file_location("make_tables", ROOT / "benchmarks" / "make_tables.py")
    assert spec is not None and spec.loader is not None
    mt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mt)
    text = PAGE.read_text()
    assert mt.laplace_page(text) == text, "run python benchmarks/make_tables.py"


@pytest.mark.slow
def test_laplace_page_code_runs(capsys) -> None:
    pytest.importorskip("asdl")
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)
    assert len(blocks) == 3
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/laplace.md block {i}", "exec"), namespace)
    out = capsys.readouterr().out
    assert "log BF = " in out and "evidence-maximising prior scale" in out
    assert namespace["small"] is not None and isinstance(namespace["removals"], dict)
