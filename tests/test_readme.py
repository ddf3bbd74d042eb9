"""The README tells the truth: its code runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


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
