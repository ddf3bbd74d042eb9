"""docs/laplace.md tells the truth: its code runs (its tables are checked with the results pages)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "laplace.md"


@pytest.mark.slow
def test_laplace_page_code_runs(capsys, run_docs_page) -> None:
    pytest.importorskip("asdl")
    count, namespace = run_docs_page(PAGE)
    assert count == 3
    out = capsys.readouterr().out
    assert "log BF = " in out and "evidence-maximising prior scale" in out
    assert namespace["small"] is not None and isinstance(namespace["removals"], dict)
