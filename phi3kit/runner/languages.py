"""Which language a notebook is written in, and where its other languages live (notebooks/<lang>/)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UnknownChoiceError


def notebook_language(nb: Any) -> str:
    """The language a notebook's prose is written in (phi3kit's metadata; English when it has none)."""
    return str(nb.metadata.get("phi3kit", {}).get("lang", "en"))


def localized(notebook: str | Path, lang: str) -> Path:
    """The `lang` version of a kit notebook: notebooks/<name>.ipynb is English, notebooks/<lang>/<name>.ipynb the rest.

    Accepts either form of the path, so `phi3kit run notebooks/openvino.ipynb --lang fa` and
    `--lang en` on a translated path both work.
    """
    path = Path(notebook)
    base = path.parent.parent if _is_language_folder(path.parent) else path.parent
    target = base / path.name if lang == "en" else base / lang / path.name
    if not target.is_file():
        found = sorted(["en"] * (base / path.name).is_file() + [d.name for d in base.iterdir()
                       if _is_language_folder(d) and (d / path.name).is_file()]) if base.is_dir() else []
        raise UnknownChoiceError(f"language for {path.name}", lang, found, hint=f"({target} does not exist.)")
    return target


def _is_language_folder(folder: Path) -> bool:
    """notebooks/fr/ and the like: a short lowercase name holding notebooks written in that language."""
    return len(folder.name) in (2, 3) and folder.name.isalpha() and folder.name.islower() and folder.is_dir()


def output_name(notebook: Path) -> str:
    """openvino.ipynb, or openvino-fa.ipynb for the Persian one: runs of two languages never collide."""
    import nbformat

    lang = notebook_language(nbformat.read(str(notebook), as_version=4))
    return notebook.name if lang == "en" else f"{notebook.stem}-{lang}{notebook.suffix}"
