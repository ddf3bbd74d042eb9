"""Build hooks of the documentation site (named in ``mkdocs.yml``).

* The navigation lists only the pages that exist, so a page named there before it is
  written does not break the strict build; a page written but not named there is added
  under "More" (so no page is left out of the site).
* The figures that the benchmarks write next to their JSON (``benchmarks/results/*.png``)
  are served at ``benchmarks/results/`` so the generated results pages can show them
  without copying them into ``docs/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _prune(items: list[Any], docs: Path, listed: set[str]) -> list[Any]:
    kept: list[Any] = []
    for item in items:
        if isinstance(item, dict):
            (title, value), = item.items()
            if isinstance(value, list):
                sub = _prune(value, docs, listed)
                if sub:
                    kept.append({title: sub})
            elif str(value).startswith(("http://", "https://")) or (docs / str(value)).exists():
                listed.add(str(value))
                kept.append(item)
        elif (docs / str(item)).exists():
            listed.add(str(item))
            kept.append(item)
    return kept


def on_config(config: Any, **_: Any) -> Any:
    docs = Path(config["docs_dir"])
    if config["nav"]:
        listed: set[str] = set()
        nav = _prune(config["nav"], docs, listed)
        extra = sorted(p.relative_to(docs).as_posix() for p in docs.rglob("*.md")
                       if not p.name.startswith(("_", ".")) and p.relative_to(docs).as_posix() not in listed)
        if extra:
            nav.append({"More": extra})
        config["nav"] = nav
    return config


def on_files(files: Any, config: Any, **_: Any) -> Any:
    from mkdocs.structure.files import File

    for png in sorted((ROOT / "benchmarks" / "results").glob("*.png")):
        files.append(File(png.relative_to(ROOT).as_posix(), src_dir=str(ROOT),
                          dest_dir=config["site_dir"], use_directory_urls=config["use_directory_urls"]))
    return files
