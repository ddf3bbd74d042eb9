"""The documentation site builds strictly: every page in the navigation exists, every link
and anchor resolves, the API reference renders, and the result pages match the JSON files.

The tutorials' code is shown, not executed, here (``mkdocs.fast.yml``); ``make docs`` runs
them all. The build takes about 10 s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_result_pages_are_built_from_the_committed_json(benchmark_module) -> None:
    mt = benchmark_module("make_tables")
    pages = mt.pages()
    assert pages, "no result page"
    for page, sections in pages.items():
        path = ROOT / "docs" / page
        assert path.exists(), f"docs/{page} is missing: run python benchmarks/make_tables.py"
        text = path.read_text()
        assert mt.updated_page(text, page) == text, "run python benchmarks/make_tables.py"
        for name in sections:  # every committed result file appears with its command
            command = json.loads((ROOT / "benchmarks" / "results" / f"{name}.json").read_text())["command"]
            assert f"python benchmarks/{command}" in text, (page, name)
    assert mt.main(["--check"]) == 0


def test_sections_find_their_page(benchmark_module) -> None:
    mt = benchmark_module("make_tables")
    assert mt.page_of("bmrs_table_full") == "results/bmrs.md"
    assert mt.page_of("inference_speed") == "results/speed.md"
    assert mt.page_of("w2_uci") == "results/w2.md"
    assert mt.page_of("something_new") == mt.OTHER_PAGE
    # a figure link of a section is made relative to the page
    assert mt._for_page("### T\n![x](benchmarks/results/a.png)", "results/w2.md") == \
        "## T\n![x](../benchmarks/results/a.png)"


def test_the_navigation_lists_only_pages_that_exist(tmp_path) -> None:
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import _hooks
    finally:
        sys.path.pop(0)
    (tmp_path / "a.md").write_text("# a")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("# b")
    (tmp_path / "extra.md").write_text("# extra")
    config = {"docs_dir": str(tmp_path), "nav": [
        {"Home": "a.md"}, {"Group": [{"B": "sub/b.md"}, {"Missing": "missing.md"}]},
        {"Gone": [{"X": "x.md"}]}, {"Ext": "https://example.org"}]}
    nav = _hooks.on_config(config)["nav"]
    assert nav == [{"Home": "a.md"}, {"Group": [{"B": "sub/b.md"}]}, {"Ext": "https://example.org"},
                   {"More": ["extra.md"]}]


def test_the_site_builds_strictly(tmp_path) -> None:
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (make install-dev installs it)")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.fast.yml"),
         "-d", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    site = tmp_path / "site"
    assert (site / "index.html").is_file() and (site / "api" / "index.html").is_file()
    api = (site / "api" / "index.html").read_text()
    assert "to_inference_data" in api and "ContinuousPruning" in api
    tutorial = (site / "tutorials" / "bmrs_cnn" / "index.html").read_text()
    assert "ContinuousPruning" in tutorial
    # the benchmark figures are served where the result pages link them
    assert any((site / "benchmarks" / "results").glob("*.png"))
