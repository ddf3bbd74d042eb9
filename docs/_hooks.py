"""Build hooks of the documentation site (named in ``mkdocs.yml``).

* The navigation lists only the pages that exist, so a page named there before it is
  written does not break the strict build; a page written but not named there is added
  under "More" (so no page is left out of the site).
* Without the markdown-exec plugin (the fast build, ``mkdocs.fast.yml``) the executed blocks
  (```` ```python exec="on" ... ````) are shown as code, as the full build shows their
  source, instead of being rejected by superfences (which would turn the page's text between
  two such blocks into code).
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


#: the options of markdown-exec's code blocks (only ``title`` stays, as the full build keeps it)
_EXEC_OPTIONS = ("exec", "session", "source", "result", "html", "id", "idprefix", "returncode",
                 "updatetoc", "tabs", "workdir", "width")


def _exec_block_validator(language: str, inputs: dict, options: dict, attrs: dict, md: Any) -> bool:
    if inputs.get("exec", "no").lower() not in ("on", "yes", "true", "1"):
        return False  # an ordinary code block: superfences formats it as usual
    options["shown"] = bool(inputs.get("source"))
    for key in _EXEC_OPTIONS:
        inputs.pop(key, None)
    attrs.update(inputs)
    return True


def _exec_block_format(src: str, language: str, class_name: str, options: dict, md: Any,
                       **kwargs: Any) -> str:
    from pymdownx.superfences import fence_code_format

    if not options.get("shown"):
        return ""  # a block whose source the full build hides (it shows only its output)
    return fence_code_format(src, language, class_name, options, md, **kwargs)


def on_config(config: Any, **_: Any) -> Any:
    docs = Path(config["docs_dir"])
    plugins = config.get("plugins")
    if plugins is not None and "markdown-exec" not in plugins:
        fences = config["mdx_configs"].setdefault("pymdownx.superfences", {}).setdefault("custom_fences", [])
        fences.append({"name": "python", "class": "python", "validator": _exec_block_validator,
                       "format": _exec_block_format})
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
