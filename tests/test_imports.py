"""No import cycle: the module-level imports of the package form a DAG, and every module
imports alone, first, in an interpreter that has loaded nothing of the package."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "pyro_prune"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _module_level_imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The package's modules ``name`` imports when it is executed (not inside functions, not
    under ``if TYPE_CHECKING``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                    + ([base] if base else []))
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names)
            elif isinstance(node, ast.If):
                test = ast.unparse(node.test)
                if "TYPE_CHECKING" not in test:
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, (ast.Try, ast.With)):
                visit(node.body)
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
                visit(getattr(node, "orelse", []))
                visit(getattr(node, "finalbody", []))

    visit(ast.parse(path.read_text()).body)
    return {m for m in found if m in known and m != name}


def test_module_level_imports_have_no_cycle() -> None:
    modules = _modules()
    graph = {name: _module_level_imports(path, name, set(modules)) for name, path in modules.items()}
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                walk(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name)


# One interpreter loads the heavy third-party libraries once, then forks a child per module:
# each child starts with no module of the package loaded and imports just that one.
_FORK_EACH = r"""
import os, sys, traceback
import numpy, torch, pyro, pyro.infer, scipy.special  # noqa: F401  (shared, not ours)
for heavy in ("matplotlib.pyplot", "arviz"):
    try:
        __import__(heavy)
    except ImportError:
        pass
failed = []
for name in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            assert not any(m == "pyro_prune" or m.startswith("pyro_prune.") for m in sys.modules)
            __import__(name)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if status:
        failed.append(name)
print("FAILED", " ".join(failed))
"""


@pytest.mark.slow
def test_every_module_imports_alone() -> None:
    # pyro_prune.lightning is left to the static check: importing Lightning alone takes ~12 s
    names = sorted(set(_modules()) - {"pyro_prune.lightning"})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, "-c", _FORK_EACH, *names], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "FAILED", proc.stderr[-5000:]


#: the pipeline's order: a stage may import the stages above it, never one below
_LOWER_STAGES = {
    "pyro_prune.distributions": ("pyro_prune.models", "pyro_prune.inference", "pyro_prune.reduction",
                                 "pyro_prune.predictive", "pyro_prune.convert", "pyro_prune.inspect",
                                 "pyro_prune.arviz", "pyro_prune.plots", "pyro_prune.cli",
                                 "pyro_prune.data"),
    "pyro_prune.data": ("pyro_prune.models", "pyro_prune.inference", "pyro_prune.reduction",
                        "pyro_prune.predictive", "pyro_prune.convert", "pyro_prune.inspect",
                        "pyro_prune.arviz", "pyro_prune.plots", "pyro_prune.cli"),
    "pyro_prune.models": ("pyro_prune.inference", "pyro_prune.reduction", "pyro_prune.predictive",
                          "pyro_prune.inspect", "pyro_prune.arviz", "pyro_prune.plots", "pyro_prune.cli"),
}


def test_stages_import_only_the_stages_above_them() -> None:
    modules = _modules()
    for name, path in modules.items():
        for stage, below in _LOWER_STAGES.items():
            if name == stage or name.startswith(stage + "."):
                imported = _module_level_imports(path, name, set(modules))
                wrong = sorted(m for m in imported if m.startswith(below))
                assert not wrong, f"{name} ({stage}) imports a later stage: {wrong}"


def _subpackage(module: str) -> str | None:
    """The stage package of a module (``pyro_prune.graph.ops`` -> ``graph``); ``None`` for
    the package's own top-level modules (``pyro_prune._checks``, ``pyro_prune.runs``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (PACKAGE / parts[1]).is_dir()) else None


def _private_imports_across_packages() -> list[str]:
    modules = _modules()
    found = []
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        own = _subpackage(name)
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            if not base.startswith("pyro_prune.") or _subpackage(base) in (None, own):
                continue  # outside the package, from the package's own top level, or within one stage
            private = [p for p in base.split(".") if p.startswith("_") and not p.startswith("__")]
            private += [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
            if private:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {', '.join(private)} from {base}")
    return found


def test_no_private_name_is_imported_across_packages() -> None:
    """A stage package uses another only through its public names (private ones may change)."""
    assert _private_imports_across_packages() == []
