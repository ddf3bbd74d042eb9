"""The code blocks of docs/guides_and_reports.md run, in order, and say what the page says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parent.parent / "docs" / "guides_and_reports.md"


@pytest.mark.slow
def test_the_page_runs_block_by_block(capsys) -> None:
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)
    assert len(blocks) == 3
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"guides_and_reports.md block {i}", "exec"), namespace)
    out = capsys.readouterr().out
    assert "bmrs_u8: removed" in out and "linear neurons" in out
    assert "bmrs_n: removed 0 of 22 conv channels, 0 of 204 linear neurons" in out
    assert "nothing removed: all dF < 0" in out
    assert namespace["lpd"].shape == (len(namespace["test"]),)
    assert namespace["result"].report.removed > 0  # the autoguide's posterior prunes
