"""Write a notebook from a list of (kind, source) cells: how the kit's notebooks are authored.

Notebooks are edited in JupyterLab too; this keeps the initial authoring reviewable as text.
`python tools/nbcells.py` is not needed to use the kit.
"""

from __future__ import annotations

from pathlib import Path

import nbformat


def write(path: str | Path, cells: list[tuple[str, str]], title: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "title": title,
    }
    for kind, src in cells:
        src = src.strip("\n")
        if kind == "md":
            nb.cells.append(nbformat.v4.new_markdown_cell(src))
        else:
            cell = nbformat.v4.new_code_cell(src)
            if kind == "parameters":
                cell.metadata["tags"] = ["parameters"]
            nb.cells.append(cell)
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:02d}"
    nbformat.write(nb, str(path))
