"""Fixtures shared by the test modules."""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
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
def benchmark_module() -> Callable[[str], ModuleType]:
    """Import a script of ``benchmarks/`` by name (they are scripts, not a package)."""
    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load


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


@pytest.fixture
def user_data_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The ``my_data.py`` of docs/scale_out.md (the user's data for ``fit --data``) as a module
    in ``tmp_path``, on ``sys.path``; returns its name (fresh for every test)."""
    page = (ROOT / "docs" / "scale_out.md").read_text()
    found = re.search(r'```python[^\n]*title="my_data.py"[^\n]*\n(.*?)```', page, re.S)
    assert found is not None, "docs/scale_out.md has no my_data.py block"
    name = f"my_data_{re.sub(r'[^0-9A-Za-z_]', '_', tmp_path.name)}"
    (tmp_path / f"{name}.py").write_text(found.group(1))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


@pytest.fixture
def error_line(capsys: pytest.CaptureFixture[str]) -> Callable[[], str]:
    """Read what a command printed on stderr since the last read: one line, no traceback
    (how the CLI reports a user mistake); returns that line."""
    def read() -> str:
        err = capsys.readouterr().err.strip()
        assert "Traceback" not in err
        lines = err.splitlines()
        assert len(lines) == 1, err
        return lines[0]
    return read


@pytest.fixture(scope="session")
def write_uci_yacht() -> Callable[..., Path]:
    """A writer of a synthetic ``uci/yacht`` in the benchmark layout under ``root``: ``table``
    (308 rows: 6 features, then the target) as ``data.txt`` in ``fmt``, and split 0 (277 train
    and 31 test rows, permuted by ``rng`` after the table was drawn); returns the folder."""
    def write(root: Path, table: np.ndarray, rng: np.random.Generator, fmt: str = "%.18e") -> Path:
        folder = root / "uci" / "yacht"
        folder.mkdir(parents=True, exist_ok=True)
        np.savetxt(folder / "data.txt", table, fmt=fmt)
        np.savetxt(folder / "index_features.txt", np.arange(6), fmt="%d")
        np.savetxt(folder / "index_target.txt", [6], fmt="%d")
        order = rng.permutation(308)
        np.savetxt(folder / "index_train_0.txt", order[:277], fmt="%d")
        np.savetxt(folder / "index_test_0.txt", order[277:], fmt="%d")
        return folder
    return write
