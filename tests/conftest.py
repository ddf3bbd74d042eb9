"""Fixtures shared by the test modules."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def subprocess_env() -> dict[str, str]:
    """The environment of a child process (a launcher, a script): this checkout first on the
    path, one thread per process, and no launcher variables of an enclosing torchrun."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return env


@pytest.fixture
def run_docs_page() -> Callable[[Path], tuple[int, dict]]:
    """Run a docs page's ```python blocks in order in one namespace: (blocks, namespace)."""
    def run(page: Path) -> tuple[int, dict]:
        blocks = re.findall(r"```python\n(.*?)```", page.read_text(), re.S)
        namespace: dict = {}
        for i, block in enumerate(blocks):
            exec(compile(block, f"{page.name} block {i}", "exec"), namespace)
        return len(blocks), namespace
    return run
