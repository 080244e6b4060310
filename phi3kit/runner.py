"""Run notebooks headless with papermill, safely: unknown parameters are errors, outputs never overwrite.

One notebook (`run_notebook`) or every combination of a parameter grid (`run_grid`, in parallel, one kernel
each), with HTML handouts that read offline and one results table of what each run recorded.
"""

from __future__ import annotations

import csv
import itertools
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import Phi3kitError, UnknownChoiceError

# The kernel `phi3kit run` starts is this interpreter, whatever kernelspecs are installed: a `python3`
# kernelspec from another installation on the Jupyter path would otherwise win ("No module named phi3kit").
KERNEL_NAME = "phi3kit-own-python"
HEADLESS_ENV = "PHI3KIT_HEADLESS"  # set in the kernels the kit runs headless: no one can click a panel there


def kernel_manager_class() -> type:
    """A jupyter_client kernel manager whose KERNEL_NAME is this Python (sys.executable) running ipykernel."""
    import ipykernel.kernelspec
    from jupyter_client import AsyncKernelManager
    from jupyter_client.kernelspec import KernelSpecManager

    class OwnKernelSpecs(KernelSpecManager):
        def get_kernel_spec(self, kernel_name: str) -> Any:
            if kernel_name != KERNEL_NAME:
                return super().get_kernel_spec(kernel_name)
            spec = ipykernel.kernelspec.get_kernel_dict()
            spec["env"] = {HEADLESS_ENV: "1"}
            return self.kernel_spec_class(resource_dir=ipykernel.kernelspec.RESOURCES, **spec)

    class OwnKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs: Any) -> None:
            kwargs.setdefault("kernel_spec_manager", OwnKernelSpecs())
            super().__init__(**kwargs)

    return OwnKernelManager


def execute(notebook: str | Path, out: str | Path, parameters: dict[str, Any], timeout_s: int | None) -> None:
    """papermill.execute_notebook in this interpreter's own kernel, headless."""
    import papermill

    papermill.execute_notebook(str(notebook), str(out), parameters=parameters, cwd=str(Path(notebook).parent),
                               progress_bar=False, execution_timeout=timeout_s, kernel_name=KERNEL_NAME,
                               kernel_manager_class=kernel_manager_class())


@dataclass
class NotebookRun:
    notebook: Path
    html: Path | None
    parameters: dict[str, Any]


def notebook_parameters(notebook: str | Path) -> dict[str, dict[str, Any]]:
    """Name -> {type, default, help} from the notebook's `parameters` cell."""
    import papermill

    return {k: dict(v) for k, v in papermill.inspect_notebook(str(notebook)).items()}


def check_parameters(notebook: str | Path, parameters: dict[str, Any]) -> None:
    """papermill only warns about an unknown name and runs the default: we refuse instead."""
    known = notebook_parameters(notebook)
    for name in parameters:
        if name not in known:
            raise UnknownChoiceError(f"parameter of {Path(notebook).name}", name, known,
                                     hint="(papermill would silently run with the default value.)")


def free_path(path: Path, overwrite: bool) -> Path:
    """`path`, or `name-1.ext`, `name-2.ext`... so an earlier result is never overwritten."""
    if overwrite or not path.exists():
        return path
    n = 1
    while (candidate := path.with_name(f"{path.stem}-{n}{path.suffix}")).exists():
        n += 1
    return candidate


def coerce(notebook: str | Path, raw: dict[str, str]) -> dict[str, Any]:
    """Turn command-line strings into the types the parameters cell declares."""
    known = notebook_parameters(notebook)
    out: dict[str, Any] = {}
    for name, value in raw.items():
        kind = known.get(name, {}).get("inferred_type_name", "str")
        if kind == "int":
            out[name] = int(value)
        elif kind == "float":
            out[name] = float(value)
        elif kind == "bool":
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"parameter {name} is a bool; got {value!r} (use true or false)")
            out[name] = value.lower() in ("true", "1", "yes")
        else:
            out[name] = value
    return out


def merge_streams(outputs: list[Any]) -> list[Any]:
    """One stdout entry instead of one per streamed chunk, as Jupyter itself saves a cell."""
    merged: list[Any] = []
    for o in outputs:
        if o.output_type == "stream" and merged and merged[-1].output_type == "stream" and merged[-1].name == o.name:
            merged[-1].text += o.text
        else:
            merged.append(o)
    return merged


def tidy(notebook: Path) -> None:
    """papermill stores every streamed chunk as its own output; handouts would show one per line."""
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = merge_streams(cell.outputs)
    nbformat.write(nb, str(notebook))


# Handouts must read on workshop Wi-Fi: the lab template's require.js, MathJax, mermaid and widget
# loaders all come from CDNs. This template drops them; text, code, tables and embedded plots need no
# script. A widget shows its text fallback (its live view needs the widget JavaScript).
OFFLINE_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block data_widget_view scoped -%}
<div class="jp-OutputArea-output jp-RenderedText"><pre>{{ output.data.get('text/plain', '') | escape }}</pre></div>
{%- endblock data_widget_view -%}
"""
_EXTERNAL = re.compile(r"<(script|link|img|iframe)\b[^>]*\b(src|href)\s*=\s*[\"']?\s*(https?:)?//", re.IGNORECASE)


def external_references(html: str) -> list[str]:
    """Tags that would fetch from the network (script, link, img, iframe with an http(s) or // URL)."""
    return [m.group(0) for m in _EXTERNAL.finditer(html)]


def html_exporter(offline: bool = True, lang: str = "en") -> Any:
    """nbconvert's HTMLExporter with plots embedded; offline: no CDN script or stylesheet."""
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    if not offline:
        return HTMLExporter(embed_images=True, language_code=lang)
    return HTMLExporter(embed_images=True, extra_loaders=[DictLoader({"phi3kit-offline.html.j2": OFFLINE_TEMPLATE})],
                        template_file="phi3kit-offline.html.j2", language_code=lang)


# A translated markdown cell is wrapped in <div dir="rtl" lang="fa">, a blank line, its markdown, </div>.
# With embed_images, nbconvert re-parses each HTML block on its own, which closes that opening tag on the
# spot and leaves the prose outside it, left to right. The handout moves the wrapper's direction onto the
# cell's rendered markdown instead (JupyterLab, parsing the cell whole, nests it as written).
_EMPTIED_WRAPPER = re.compile(
    r'(<div class="[^"]*\bjp-RenderedMarkdown\b[^"]*"[^>]*)>\s*<div dir="(rtl|ltr)" lang="([\w-]+)">\s*</div>')


def hoist_direction(body: str) -> str:
    """The handout's HTML with each emptied direction wrapper's `dir` and `lang` on its cell's markdown."""
    return _EMPTIED_WRAPPER.sub(r'\1 dir="\2" lang="\3">', body)


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


def to_html(notebook: str | Path, overwrite: bool = False, offline: bool = True) -> Path:
    """A handout: the executed notebook as one self-contained HTML file that reads without a network.

    The page's `lang` is the notebook's language; right-to-left prose carries its own `dir="rtl"`
    (the translated notebooks wrap it), so code and outputs stay left to right.
    """
    import nbformat

    notebook = Path(notebook)
    nb = nbformat.read(str(notebook), as_version=4)
    body, _ = html_exporter(offline, notebook_language(nb)).from_notebook_node(nb)
    body = hoist_direction(body)
    if offline and (refs := external_references(body)):
        raise RuntimeError(f"the offline handout still references the network: {refs[:3]}")
    out = free_path(notebook.with_suffix(".html"), overwrite)
    out.write_text(body, encoding="utf-8")
    return out


def output_name(notebook: Path) -> str:
    """openvino.ipynb, or openvino-fa.ipynb for the Persian one: runs of two languages never collide."""
    import nbformat

    lang = notebook_language(nbformat.read(str(notebook), as_version=4))
    return notebook.name if lang == "en" else f"{notebook.stem}-{lang}{notebook.suffix}"


def run_notebook(notebook: str | Path, output_dir: str | Path, parameters: dict[str, Any] | None = None,
                 html: bool = True, overwrite: bool = False, timeout_s: int | None = None) -> NotebookRun:
    """Execute `notebook` with `parameters` into `output_dir`; write an HTML handout beside it."""
    notebook = Path(notebook).resolve()
    parameters = dict(parameters or {})
    check_parameters(notebook, parameters)
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = free_path(out_dir / output_name(notebook), overwrite)
    execute(notebook, out, parameters, timeout_s)
    tidy(out)
    return NotebookRun(out, to_html(out, overwrite) if html else None, parameters)


# --- batch runs over a parameter grid ----------------------------------------------------------------
GRID_KEYS = ("notebook", "grid", "fixed")
_TYPES: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


@dataclass
class Grid:
    """A notebook and the parameter values to run it with: every combination of `grid`, plus `fixed`.

    YAML: `{notebook: notebooks/openvino.ipynb, grid: {precision: [int4, int8]}, fixed: {model: pocket}}`.
    """

    notebook: Path
    grid: dict[str, list[Any]] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.notebook = Path(self.notebook)
        for name, values in self.grid.items():
            if not isinstance(values, list) or not values:
                raise GridError(f"grid.{name} must be a non-empty list of values, got {values!r}. "
                                f"Fix: write {name}: [{values!r}], or move it to fixed.")
        both = sorted(set(self.grid) & set(self.fixed))
        if both:
            raise GridError(f"{', '.join(both)} is both in grid and in fixed. Fix: keep each parameter in one place.")
        check_parameters(self.notebook, {**self.fixed, **self.grid})
        check_types(self.notebook, {**self.fixed, **{k: v for k, vs in self.grid.items() for v in vs}})

    def runs(self) -> list[dict[str, Any]]:
        """Every combination, in the order the grid lists them, each with the fixed values."""
        names = list(self.grid)
        return [{**self.fixed, **dict(zip(names, combo, strict=True))}
                for combo in itertools.product(*(self.grid[n] for n in names))]

    def label(self, parameters: dict[str, Any]) -> str:
        """What sets a run apart, for its file name: the grid values only."""
        from .cache import slug

        return slug("_".join(f"{k}-{parameters[k]}" for k in self.grid), limit=120) if self.grid else "run"


class GridError(Phi3kitError, ValueError):
    """A grid file cannot be used as written."""


def check_types(notebook: str | Path, values: dict[str, Any]) -> None:
    """A value of the wrong type would reach the notebook as-is (papermill does not convert): refuse it."""
    known = notebook_parameters(notebook)
    for name, value in values.items():
        kind = known.get(name, {}).get("inferred_type_name", "None")
        ok = _TYPES.get(kind)
        if ok and (not isinstance(value, ok) or (kind in ("int", "float") and isinstance(value, bool))):
            raise GridError(f"parameter {name} of {Path(notebook).name} is {kind}; got {value!r} "
                            f"({type(value).__name__}). Fix: write a {kind} value (in YAML, quote strings, "
                            "leave numbers unquoted).")


def load_grid(path: str | Path, overrides: dict[str, Any] | None = None) -> Grid:
    """Read a grid YAML file; a relative notebook path is looked up from the current folder, then the file's."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise GridError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise GridError(f"{path} must hold a mapping with keys {', '.join(GRID_KEYS)}.")
    unknown = sorted(set(data) - set(GRID_KEYS))
    if unknown:
        raise UnknownChoiceError(f"key in {path.name}", unknown[0], GRID_KEYS)
    if "notebook" not in data:
        raise GridError(f"{path} names no notebook. Fix: add `notebook: notebooks/openvino.ipynb`.")
    notebook = Path(data["notebook"])
    if not notebook.is_absolute() and not notebook.exists():
        notebook = path.parent / notebook
    if not notebook.is_file():
        raise GridError(f"{path}: notebook {data['notebook']!r} not found (looked in {Path.cwd()} and {path.parent}).")
    for key in ("grid", "fixed"):
        if not isinstance(data.get(key) or {}, dict):
            raise GridError(f"{path}: {key} must be a mapping of parameter names to values.")
    return Grid(notebook, dict(data.get("grid") or {}), {**(data.get("fixed") or {}), **(overrides or {})})


@dataclass
class GridRun:
    """One executed combination: where its notebook and handout are, how it went, what it recorded."""

    parameters: dict[str, Any]
    notebook: Path
    html: Path | None = None
    status: str = "pending"  # ok | failed
    error: str = ""
    seconds: float = 0.0
    records: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class GridResult:
    runs: list[GridRun]
    csv: Path

    @property
    def failed(self) -> list[GridRun]:
        return [r for r in self.runs if r.status != "ok"]


def collect_records(notebook: Path) -> list[dict[str, Any]]:
    """The metrics a notebook stored with `kit.record(...)`, in cell order."""
    import nbformat

    from .metrics import RECORD_MIME

    nb = nbformat.read(str(notebook), as_version=4)
    return [dict(o["data"][RECORD_MIME]) for c in nb.cells if c.cell_type == "code"
            for o in c.get("outputs", []) if RECORD_MIME in o.get("data", {})]


def _execute(notebook: str, out: str, parameters: dict[str, Any], html: bool,
             timeout_s: int | None) -> tuple[str, str, float, str | None]:
    """Run one combination (in a worker process): (status, error, seconds, html path)."""
    from papermill.exceptions import PapermillExecutionError

    start = time.perf_counter()
    status, error = "ok", ""
    try:
        execute(notebook, out, parameters, timeout_s)
    except PapermillExecutionError as exc:
        status, error = "failed", f"{exc.ename}: {exc.evalue}"
    except Exception as exc:  # noqa: BLE001 - the kernel died or timed out: report it, keep the other runs
        status, error = "failed", f"{type(exc).__name__}: {exc}"
    page = None
    if Path(out).is_file():
        tidy(Path(out))
        if html:
            page = str(to_html(Path(out), overwrite=True))
    return status, error, time.perf_counter() - start, page


def _execute_main() -> None:
    """Entry point of a run's own process: read the job, execute it, write the outcome as JSON."""
    import json
    import sys

    job = json.loads(Path(sys.argv[1]).read_text())
    result = _execute(job["notebook"], job["out"], job["parameters"], job["html"], job["timeout_s"])
    Path(sys.argv[2]).write_text(json.dumps(result))


def _execute_in_process(notebook: str, out: str, parameters: dict[str, Any], html: bool,
                        timeout_s: int | None) -> tuple[str, str, float, str | None]:
    """`_execute` in a fresh Python process (works from a script, a notebook or stdin alike)."""
    import json
    import sys
    import tempfile

    from .procs import run

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="phi3kit-run-") as tmp:
        job, result = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job.write_text(json.dumps({"notebook": notebook, "out": out, "parameters": parameters, "html": html,
                                   "timeout_s": timeout_s}))
        proc = run([sys.executable, "-c", "from phi3kit.runner import _execute_main; _execute_main()",
                    str(job), str(result)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if result.is_file():
            status, error, seconds, page = json.loads(result.read_text())
            return status, error, seconds, page
    tail = " | ".join(line for line in proc.stderr.splitlines()[-3:] if line.strip())
    return "failed", f"the run's process exited with code {proc.returncode}: {tail}", time.perf_counter() - start, None


def run_grid(grid: Grid, output_dir: str | Path, jobs: int = 1, html: bool = True, overwrite: bool = False,
             timeout_s: int | None = None, log: Callable[[str], None] = print) -> GridResult:
    """Execute every combination (each in its own kernel, `jobs` at a time) and write results.csv.

    Parallel runs of the same export are safe: the export cache builds an entry under a file lock,
    so the second run waits for the first's export and reuses it.
    """
    if jobs < 1:
        raise GridError(f"jobs must be at least 1, got {jobs}.")
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs: list[GridRun] = []
    taken: set[Path] = set()
    for params in grid.runs():
        path = free_path(out_dir / f"{grid.notebook.stem}-{grid.label(params)}.ipynb", overwrite)
        while path in taken:  # the same combination twice in one grid
            path = path.with_name(f"{path.stem}-1{path.suffix}")
        taken.add(path)
        runs.append(GridRun(params, path))
    notebook = str(grid.notebook.resolve())

    def finish(run: GridRun, result: tuple[str, str, float, str | None]) -> None:
        run.status, run.error, run.seconds, page = result
        run.html = Path(page) if page else None
        if run.notebook.is_file():
            run.records = collect_records(run.notebook)
        log(f"{run.status:6} {run.seconds:6.1f} s  {run.notebook.name}" + (f"  ({run.error})" if run.error else ""))

    if jobs == 1:
        for run in runs:
            finish(run, _execute(notebook, str(run.notebook), run.parameters, html, timeout_s))
    else:
        from concurrent.futures import ThreadPoolExecutor

        # Threads only wait: each run is its own Python process with its own kernel, so nothing is shared.
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = [(run, pool.submit(_execute_in_process, notebook, str(run.notebook), run.parameters, html,
                                         timeout_s)) for run in runs]
            for run, future in futures:
                finish(run, future.result())
    return GridResult(runs, write_results(runs, free_path(out_dir / "results.csv", overwrite)))


def write_results(runs: list[GridRun], path: Path) -> Path:
    """One row per recorded metrics (a run that recorded nothing still gets a row): parameters, status, numbers."""
    rows = []
    for i, run in enumerate(runs, 1):
        base = {"run": i, "status": run.status, "notebook": run.notebook.name,
                "html": run.html.name if run.html else "", "seconds": round(run.seconds, 2), "error": run.error,
                **run.parameters}
        for rec in run.records or [{}]:
            rows.append({**base, **{k: v for k, v in rec.items() if not isinstance(v, list | dict)}})
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path
