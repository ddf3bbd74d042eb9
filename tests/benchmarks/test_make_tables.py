"""benchmarks/make_tables.py rewrites only the pages whose generated part changed and says so."""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def _docs_copy(mt, tmp_path: Path, monkeypatch) -> Path:
    """The pages make_tables writes, copied under ``tmp_path``, and the script pointed there."""
    docs = tmp_path / "docs"
    for page in [*mt.pages(), "defaults.md"]:
        (docs / page).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / "docs" / page, docs / page)
    monkeypatch.setattr(mt, "DOCS", docs)
    monkeypatch.setattr(mt, "DEFAULTS_PAGE", docs / "defaults.md")
    return docs


def _mtimes(docs: Path) -> dict[str, int]:
    return {p.relative_to(docs).as_posix(): p.stat().st_mtime_ns for p in docs.rglob("*.md")}


def test_up_to_date_pages_are_not_written_and_are_named_so(benchmark_module, tmp_path, monkeypatch,
                                                           capsys) -> None:
    mt = benchmark_module("make_tables")
    docs = _docs_copy(mt, tmp_path, monkeypatch)
    before = _mtimes(docs)
    assert mt.main([]) == 0
    out = capsys.readouterr().out
    assert "updated" not in out
    assert "already up to date: " in out and "docs/defaults.md" in out and "docs/results/bmrs.md" in out
    assert _mtimes(docs) == before  # nothing rewritten


def test_a_stale_page_is_the_only_one_rewritten_and_check_names_it(benchmark_module, tmp_path,
                                                                    monkeypatch, capsys) -> None:
    mt = benchmark_module("make_tables")
    docs = _docs_copy(mt, tmp_path, monkeypatch)
    page = docs / "results" / "bmrs.md"
    fresh = page.read_text()
    page.write_text(mt._splice(fresh, "an old table", "bmrs.md"))
    before = _mtimes(docs)

    assert mt.main(["--check"]) == 1
    out = capsys.readouterr().out
    assert "out of date (docs/results/bmrs.md)" in out
    assert page.read_text() != fresh and _mtimes(docs) == before  # --check writes nothing

    assert mt.main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "updated docs/results/bmrs.md"
    assert lines[1].startswith("already up to date: ") and "docs/results/bmrs.md" not in lines[1]
    assert page.read_text() == fresh
    after = _mtimes(docs)
    assert [name for name in after if after[name] != before[name]] == ["results/bmrs.md"]
    assert not [p for p in docs.rglob("*") if p.name.startswith(".")]  # no temporary left behind
    assert mt.main(["--check"]) == 0
