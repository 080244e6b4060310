"""Store outputs only for the cells tests check (`# NBVAL_CHECK_OUTPUT`), from a run with the test values.

    python tools/store_outputs.py notebooks/openvino.ipynb notebooks/fa/openvino.ipynb
    python tools/store_outputs.py --all        # every notebook in every language

Runs the notebook with conftest's NOTEBOOK_TEST_PARAMETERS through papermill, then writes
the source notebook back with every other output and execution count cleared.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import NOTEBOOK_TEST_PARAMETERS  # noqa: E402
from phi3kit.runner import execute, merge_streams  # noqa: E402

MARK = "# NBVAL_CHECK_OUTPUT"


def store(path: Path) -> None:
    # An isolated export cache, as the tests run: nothing `phi3kit tune` stored elsewhere reaches these outputs.
    os.environ.setdefault("PHI3KIT_CACHE", tempfile.mkdtemp(prefix="phi3kit-store-"))
    nb = nbformat.read(str(path), as_version=4)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / path.name
        execute(path, out, NOTEBOOK_TEST_PARAMETERS[path.name], None)
        ran = {c.id: c for c in nbformat.read(str(out), as_version=4).cells if c.cell_type == "code"}
    count = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if MARK in cell.source:
            count += 1
            cell.outputs = merge_streams(ran[cell.id].outputs)
            cell.execution_count = count
        else:
            cell.outputs, cell.execution_count = [], None
    nbformat.write(nb, str(path))
    print(f"{path}: stored outputs of {count} checked cell(s)")


if __name__ == "__main__":
    args = sys.argv[1:]
    if args == ["--all"]:
        root = Path(__file__).resolve().parents[1] / "notebooks"
        args = [str(p) for p in sorted(root.glob("*.ipynb")) + sorted(root.glob("*/*.ipynb"))]
    for arg in args:
        store(Path(arg))
