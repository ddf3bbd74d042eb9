"""The top-level package exports the pipeline's verbs, imported on first use."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pyro_prune

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", sorted(set(pyro_prune.__all__) - {"__version__"}))
def test_every_export_is_the_subpackage_object(name: str) -> None:
    module = importlib.import_module(pyro_prune._EXPORTS[name])
    assert getattr(pyro_prune, name) is getattr(module, name)
    assert name in dir(pyro_prune)


def test_unknown_names_raise_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'prune_everything'"):
        pyro_prune.prune_everything  # noqa: B018
    assert not hasattr(pyro_prune, "Fit")


def test_importing_the_package_loads_no_stage() -> None:
    code = ("import sys, pyro_prune; "
            "print(sorted(m for m in sys.modules if m.startswith('pyro_prune.') or m in ('torch', 'pyro')))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert out.strip() == "[]"


def test_all_lists_every_export() -> None:
    assert pyro_prune.__all__ == ["__version__", *pyro_prune._EXPORTS]
