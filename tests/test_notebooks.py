"""Notebooks headless with papermill, as `phi3kit run` and the README's main command run them."""

from __future__ import annotations

import shutil
from html import unescape
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest

import phi3kit as kit
from phi3kit.diagnostics import RECOMMENDED_MODEL
from phi3kit.runner import check_parameters, collect_records, free_path, notebook_parameters, run_notebook

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
# openvino.ipynb's parameters, load, generate and record cells only: a kernel that costs a load, not a whole notebook
SMALL = Path(__file__).resolve().parent / "data" / "small-notebook" / "openvino.ipynb"
SHARED = {"model", "prefer", "precision", "device", "max_new_tokens", "prompt", "system", "do_sample", "cache_dir"}


@pytest.mark.parametrize("name", ["openvino.ipynb", "npu.ipynb", "directml.ipynb"])
def test_parameters_are_typed_and_documented(name: str) -> None:
    params = notebook_parameters(NOTEBOOKS / name)
    assert SHARED <= set(params)
    for p in params.values():
        assert p["inferred_type_name"] in {"str", "int", "bool", "float"}, p
        assert p["help"], f"{p['name']} needs a help comment"
    # the real Phi-3-mini by its catalog alias (ready-made where published); tests run them on the pocket model
    assert params["model"]["default"].strip("\"'") == RECOMMENDED_MODEL


def test_unknown_parameter_is_an_error() -> None:
    with pytest.raises(kit.UnknownChoiceError, match="max_tokens.*Valid choices.*max_new_tokens"):
        check_parameters(NOTEBOOKS / "openvino.ipynb", {"max_tokens": 5})


def test_results_are_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / "a.ipynb").write_text("{}")
    (tmp_path / "a-1.ipynb").write_text("{}")
    assert free_path(tmp_path / "a.ipynb", overwrite=False).name == "a-2.ipynb"
    assert free_path(tmp_path / "a.ipynb", overwrite=True).name == "a.ipynb"


@pytest.mark.slow
def test_openvino_notebook_runs_headless(openvino_headless: SimpleNamespace, tmp_path: Path) -> None:
    """openvino.ipynb headless through `phi3kit run` (its Chinese edition: the run conftest.py makes once for this
    test, test_security's and test_codepage's)."""
    h = openvino_headless
    assert h.run.returncode == 0, h.stderr[-2000:]
    nb = nbformat.read(str(h.notebook), as_version=4)
    texts = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert h.answer + "\n" in texts  # the streamed answer, stored as one output (not one per chunk)
    kinds = {k for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) for k in o.get("data", {})}
    assert "image/png" in kinds and "text/html" in kinds  # the latency plot and the metrics table
    html = unescape(h.html.read_text(encoding="utf-8"))
    assert h.answer in html and "data:image/png;base64" in html and "tokens/s" in html
    # What a grid's results table reads (test_runner.py runs grids on SMALL): the notebook records its run.
    (rec,) = collect_records(h.notebook)
    assert (rec["precision"], rec["device"], rec["runtime"]) == ("int8", "CPU", "genai")
    assert rec["tokens_per_s"] > 0 and 0 < rec["new_tokens"] <= h.max_new_tokens and rec["prompt_tokens"] > 5
    # A second run into the same folder (same output name, openvino.ipynb) keeps the first's result.
    # (SMALL writes openvino.ipynb: the first result takes that name in the copy)
    folder = tmp_path / "out"
    shutil.copytree(h.out, folder)
    first = (folder / h.notebook.name).rename(folder / "openvino.ipynb")
    again = run_notebook(SMALL, folder, {"model": "pocket", "precision": "int8"}, html=False)
    assert again.notebook != first and first.exists() and again.notebook.exists()
    assert first.read_bytes() == h.notebook.read_bytes()
