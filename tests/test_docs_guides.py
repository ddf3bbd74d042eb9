"""The code blocks of docs/guides_and_reports.md run, in order, and say what the page says."""

from __future__ import annotations

from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parent.parent / "docs" / "guides_and_reports.md"


@pytest.mark.slow
def test_the_page_runs_block_by_block(capsys, run_docs_page) -> None:
    count, namespace = run_docs_page(PAGE)
    assert count == 4
    out = capsys.readouterr().out
    assert "bmrs_u4: removed" in out and "linear neurons" in out  # the default under an autoguide
    assert "bmrs_n: removed 0 of 22 conv channels, 0 of 204 linear neurons" in out
    assert "nothing removed: all dF < 0" in out
    assert namespace["lpd"].shape == (len(namespace["test"]),)
    assert namespace["result"].report.removed > 0  # the autoguide's posterior prunes
    from pyro_prune.inference import evaluate

    # Gaussian weights under an autoguide: predictions read the guide's fitted weights
    assert evaluate(namespace["bnn"], namespace["test"])["accuracy"] > 0.85
