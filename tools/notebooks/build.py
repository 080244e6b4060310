"""Build every notebook in every language from its source: `python tools/notebooks/build.py` (`--check` only checks).

English sources: tools/notebooks/<name>.py. Translations: tools/notebooks/i18n/<lang>/<name>.yaml. Stored
outputs of checked cells (`# NBVAL_CHECK_OUTPUT`) survive a rebuild while the cell's code is unchanged;
refresh them with `python tools/store_outputs.py notebooks/<lang>/<name>.ipynb` after a change.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path


def _authoring_kit():
    """nb.py beside this file, as module `nb` (the sources import it), without putting this folder on sys.path:
    there `import openvino` would find the notebook source openvino.py instead of the library."""
    if "nb" not in sys.modules:
        spec = importlib.util.spec_from_file_location("nb", Path(__file__).resolve().parent / "nb.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["nb"] = module
        spec.loader.exec_module(module)
    return sys.modules["nb"]


_nb = _authoring_kit()
LANGUAGES, localize, notebook_path, render, source = (_nb.LANGUAGES, _nb.localize, _nb.notebook_path, _nb.render,
                                                      _nb.source)

NAMES = ("openvino", "directml", "npu", "compare")


def built(name: str, lang: str) -> tuple[Path, object]:
    import nbformat

    path = notebook_path(name, lang)
    keep = nbformat.read(str(path), as_version=4) if path.is_file() else None
    cells, title = localize(source(name).CELLS, lang, name)
    return path, render(cells, title, lang, name, keep)


def differences(path: Path, nb: object) -> list[str]:
    """What differs between the committed notebook and a fresh build (sources, tags, ids, metadata)."""
    import nbformat

    if not path.is_file():
        return [f"{path} is missing"]
    old = nbformat.read(str(path), as_version=4)
    new = nb  # type: ignore[assignment]
    out = []
    if old.metadata.get("phi3kit") != new.metadata.get("phi3kit") or old.metadata.get("title") != new.metadata.get(
            "title"):
        out.append("metadata")
    if [c.get("id") for c in old.cells] != [c.get("id") for c in new.cells]:
        out.append("cell ids or order")
    for a, b in zip(old.cells, new.cells, strict=False):
        if a.cell_type != b.cell_type or a.source != b.source or a.metadata.get("tags") != b.metadata.get("tags"):
            out.append(f"cell {b.get('id')}")
    return out


def skeleton(name: str, lang: str) -> Path:
    """A translation file to fill in: every cell that needs one, with its English text and hash."""
    import yaml
    I18N, cell_hash, has_comments = _nb.I18N, _nb.cell_hash, _nb.has_comments

    path = I18N / lang / f"{name}.yaml"
    old = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else {}
    entries = {}
    for cell in source(name).CELLS:
        if cell.kind != "md" and not has_comments(cell.source):
            continue
        prev = (old.get("cells") or {}).get(cell.id)
        if prev and prev.get("en") == cell_hash(cell.source):
            entries[cell.id] = prev
        else:
            entries[cell.id] = {"en": cell_hash(cell.source), "text": cell.source, "todo": True}
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"title": old.get("title", source(name).TITLE), "cells": entries}

    class Literal(str):
        pass

    yaml.add_representer(Literal, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|"))
    for entry in data["cells"].values():
        entry["text"] = Literal(str(entry["text"]).rstrip() + "\n")
    path.write_text(yaml.dump(data, allow_unicode=True, sort_keys=False, width=120), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    import nbformat

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--check", action="store_true", help="only report notebooks that differ from their sources")
    ap.add_argument("--lang", action="append", choices=list(LANGUAGES), help="only these languages (repeatable)")
    ap.add_argument("--skeleton", metavar="LANG", help="write i18n/LANG/<name>.yaml with the English texts to "
                    "translate (cells already translated and current are kept)")
    ap.add_argument("names", nargs="*", default=list(NAMES))
    a = ap.parse_args(argv)
    if a.skeleton:
        for name in a.names:
            print(f"wrote {skeleton(name, a.skeleton)}")
        return 0
    bad = 0
    for name in a.names:
        for lang in a.lang or LANGUAGES:
            path, nb = built(name, lang)
            if a.check:
                if diff := differences(path, nb):
                    print(f"{path}: differs from its source: {', '.join(diff)}")
                    bad += 1
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, str(path))
            print(f"wrote {path}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
