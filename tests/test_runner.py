"""Batch notebook runs: grid files, refusals, parallel runs with one results table, handouts that read offline."""

from __future__ import annotations

import csv
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest

import phi3kit as kit
from phi3kit.cli import main
from phi3kit.metrics import RECORD_MIME, Metrics
from phi3kit.runner import GridError, collect_records, external_references, load_grid, to_html

ROOT = Path(__file__).resolve().parents[1]
OPENVINO = ROOT / "notebooks" / "openvino.ipynb"
# The grid runs use openvino.ipynb's load, generate and record cells only (named like it, so values are checked as
# for it): a kernel each costs a load, not the whole notebook. test_notebooks.py checks the real one records.
SMALL = ROOT / "tests" / "data" / "small-notebook" / "openvino.ipynb"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def grid_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    return path


def test_grid_file_expands_every_combination(tmp_path: Path) -> None:
    g = load_grid(grid_file(tmp_path, f"""
notebook: {OPENVINO}
grid: {{precision: [int4, int8], max_new_tokens: [16, 32]}}
fixed: {{model: pocket}}
"""))
    assert g.notebook == OPENVINO
    assert g.runs() == [
        {"model": "pocket", "precision": "int4", "max_new_tokens": 16},
        {"model": "pocket", "precision": "int4", "max_new_tokens": 32},
        {"model": "pocket", "precision": "int8", "max_new_tokens": 16},
        {"model": "pocket", "precision": "int8", "max_new_tokens": 32},
    ]
    assert g.label(g.runs()[1]) == "precision-int4_max_new_tokens-32"


def test_notebook_path_is_found_beside_the_grid_file(tmp_path: Path) -> None:
    shutil.copy(OPENVINO, tmp_path / "nb.ipynb")
    assert load_grid(grid_file(tmp_path, "notebook: nb.ipynb\ngrid: {precision: [int8]}")).notebook.name == "nb.ipynb"


@pytest.mark.parametrize(
    ("text", "error", "message"),
    [
        ("grid: {precison: [int4]}", kit.UnknownChoiceError, "precison.*Valid choices.*precision"),
        ("fixed: {max_tokens: 5}", kit.UnknownChoiceError, "max_tokens"),
        ("grid: {precision: int4}", GridError, "must be a non-empty list.*precision: \\['int4'\\]"),
        ("grid: {precision: []}", GridError, "non-empty list"),
        ("grid: {precision: [int4]}\nfixed: {precision: int8}", GridError, "both in grid and in fixed"),
        ("grid: {max_new_tokens: ['32']}", GridError, "max_new_tokens.*is int; got '32'"),
        ("fixed: {do_sample: 1}", GridError, "do_sample.*is bool"),
        ("grids: {precision: [int4]}", kit.UnknownChoiceError, "key in grid.yaml.*grids"),
    ],
)
def test_bad_grid_files_are_refused(tmp_path: Path, text: str, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        load_grid(grid_file(tmp_path, f"notebook: {OPENVINO}\n{text}"))


def test_grid_file_without_a_notebook_is_refused(tmp_path: Path) -> None:
    with pytest.raises(GridError, match="names no notebook"):
        load_grid(grid_file(tmp_path, "grid: {precision: [int4]}"))
    with pytest.raises(GridError, match="not found"):
        load_grid(grid_file(tmp_path, "notebook: missing.ipynb"))


def test_unknown_grid_parameter_on_the_command_line_exits_2(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(OPENVINO), "-g", "precison", "int4,int8", "-o", str(tmp_path)]) == 2
    assert "Unknown parameter of openvino.ipynb: 'precison'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # refused before anything ran


def test_records_are_collected_from_notebook_outputs(tmp_path: Path) -> None:
    m = Metrics(prompt_tokens=5, new_tokens=3, ttft_s=0.1, token_latencies_s=[0.1, 0.02, 0.02])
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("kit.record(m)")
    cell.outputs = [nbformat.v4.new_output("display_data", data={RECORD_MIME: {"label": "a", **m.to_dict()},
                                                                 "text/plain": "recorded"})]
    nb.cells = [cell, nbformat.v4.new_code_cell("1")]
    nbformat.write(nb, str(tmp_path / "x.ipynb"))
    (record,) = collect_records(tmp_path / "x.ipynb")
    assert record["label"] == "a" and record["new_tokens"] == 3 and record["tokens_per_s"] == pytest.approx(50.0)


def offline_sample(tmp_path: Path) -> Path:
    """A notebook with what handouts hold: markdown with math, text, an embedded plot, a widget."""
    import base64

    png = base64.b64encode(bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201a5f0e1"
        "d00000000049454e44ae426082")).decode()
    nb = nbformat.v4.new_notebook()
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}, "version_major": 2,
                                                                            "version_minor": 0}}
    plot = nbformat.v4.new_code_cell("response.metrics.plot();")
    plot.outputs = [nbformat.v4.new_output("display_data", data={"image/png": png, "text/plain": "<Figure>"})]
    widget = nbformat.v4.new_code_cell("kit.chat(session)")
    widget.outputs = [nbformat.v4.new_output("display_data", data={
        "application/vnd.jupyter.widget-view+json": {"model_id": "abc", "version_major": 2, "version_minor": 0},
        "text/plain": "ChatPanel(fallback text)"})]
    text = nbformat.v4.new_code_cell("print('streamed answer')")
    text.outputs = [nbformat.v4.new_output("stream", name="stdout", text="streamed answer\n")]
    nb.cells = [nbformat.v4.new_markdown_cell("# Handout\n\nDecode speed is $\\frac{n}{t}$ tokens/s."), text, plot,
                widget]
    path = tmp_path / "handout.ipynb"
    nbformat.write(nb, str(path))
    return path


def test_html_handout_reads_offline(tmp_path: Path) -> None:
    import nbformat as nbf
    from nbconvert import HTMLExporter

    path = offline_sample(tmp_path)
    default, _ = HTMLExporter().from_notebook_node(nbf.read(str(path), as_version=4))
    assert external_references(default)  # nbconvert's own template fetches require.js, MathJax... from CDNs
    html = to_html(path).read_text(encoding="utf-8")
    assert external_references(html) == []
    assert "<script src" not in html and "cdnjs" not in html and "unpkg" not in html
    assert 'src="data:image/png;base64,' in html
    assert "streamed answer" in html and "ChatPanel(fallback text)" in html and "Decode speed" in html


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium: apt-get install -y chromium")
def test_html_handout_renders_in_chromium_without_network(tmp_path: Path) -> None:
    page = to_html(offline_sample(tmp_path))
    shot = tmp_path / "handout.png"
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--host-resolver-rules=MAP * ~NOTFOUND", "--window-size=1000,800"]  # no name resolves: no network
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert "streamed answer" in dom.stdout and "data:image/png" in dom.stdout, dom.stderr[-2000:]
    subprocess.run([*flags, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 1000


@pytest.mark.slow
def test_grid_runs_in_parallel_into_one_results_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grid = grid_file(tmp_path, f"""
notebook: {SMALL}
grid: {{precision: [int4, int8]}}
fixed: {{model: pocket, prompt: "Who are you?"}}
""")
    out = tmp_path / "out"
    assert main(["run", str(grid), "--jobs", "2", "-p", "max_new_tokens", "24", "-o", str(out)]) == 0
    assert "2 of 2 runs succeeded" in capsys.readouterr().out
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["precision"], r["status"]) for r in rows] == [("int4", "ok"), ("int8", "ok")]
    for r in rows:
        assert r["model"] == "pocket" and r["max_new_tokens"] == "24" and r["runtime"] == "genai"
        assert float(r["tokens_per_s"]) > 0 and 0 < int(r["new_tokens"]) <= 24 and int(r["prompt_tokens"]) > 5
        assert (out / r["notebook"]).is_file() and (out / r["html"]).is_file()
        assert external_references((out / r["html"]).read_text(encoding="utf-8")) == []
    assert {r["notebook"] for r in rows} == {"openvino-precision-int4.ipynb", "openvino-precision-int8.ipynb"}
    # Run again: new files next to the old ones, nothing overwritten.
    assert main(["run", str(SMALL), "-g", "precision", "int8", "-p", "model", "pocket", "-p", "max_new_tokens",
                 "8", "-o", str(out), "--no-html"]) == 0
    assert (out / "openvino-precision-int8-1.ipynb").is_file() and (out / "results-1.csv").is_file()
    assert len(list(csv.DictReader((out / "results.csv").open()))) == 2
