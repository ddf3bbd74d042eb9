"""The README tells the truth: every Python block runs as it stands, each in a fresh
interpreter, and prints what the text says it prints; its links point at files that exist."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def _run(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "MPLBACKEND": "Agg", "PYRO_PRUNE_PROGRESS": "off"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"README block failed:\n{code}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_the_readme_is_a_front_door() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 260
    for heading in ("## Two commands", "## The pipeline in ten lines", "## Prune your own network",
                    "## Which criterion", "## The command line", "## Documentation"):
        assert heading in text
    pipeline = re.search(r"## The pipeline in ten lines\n\n```python\n(.*?)```", text, re.S)
    assert pipeline is not None and len(pipeline.group(1).strip().splitlines()) <= 14
    for target in re.findall(r"\]\(((?!https?://)[^)#]+)", text):  # relative links resolve
        assert (ROOT / target).exists(), target


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(_blocks())))
def test_every_block_runs_in_a_fresh_interpreter(index: int) -> None:
    out = _run(_blocks()[index])
    assert out.strip(), "every block prints what it shows"
    if index == 0:  # the pipeline prints accuracy, compression and size before/after
        m = re.search(r"test accuracy (\S+), compression (\S+)%, parameters (\d+) -> (\d+)", out)
        assert m is not None, out
        assert 0.8 <= float(m.group(1)) <= 1.0 and int(m.group(4)) < int(m.group(3))
