"""The token-label example of docs/transformers.md (its ``session="lm"`` blocks) runs and says
what the page says. The page's other blocks, BERT on the digits, run when the site is built."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parent.parent / "docs" / "transformers.md"


@pytest.mark.slow
def test_the_language_model_example_fits_token_labels(capsys) -> None:
    pytest.importorskip("transformers")
    blocks = re.findall(r'```python[^\n]*session="lm"[^\n]*\n(.*?)```', PAGE.read_text(), re.S)
    assert len(blocks) == 1
    namespace: dict = {}
    exec(compile(blocks[0], f"{PAGE.name} lm block", "exec"), namespace)
    out = capsys.readouterr().out
    assert "logits (2, 8, 12)" in out
    before, after = (float(v) for v in re.findall(r"'loss': ([0-9.]+)", out))
    assert after < 0.5 * before  # the page says the loss falls: it must
    small, model, x = namespace["small"], namespace["model"], namespace["x"]
    assert float((small(x) - model.predict(x)).abs().max()) < 1e-4
