"""docs/own_network.md tells the truth: its code blocks run, in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "own_network.md"


@pytest.mark.slow
def test_the_own_network_page_runs() -> None:
    blocks = re.findall(r"```python[^\n]*\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) >= 3
    namespace: dict = {"__name__": "own_network_doc"}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)  # noqa: S102 - the page's own code
    assert namespace["smaller"].get_submodule("0").w.shape == (5, 8)
