"""docs/laplace.md tells the truth: its code runs (its tables are checked with the results pages)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "laplace.md"


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
