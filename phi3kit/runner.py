"""Run notebooks headless with papermill, safely: unknown parameters are errors, outputs never overwrite.

One notebook (`run_notebook`) or every combination of a parameter grid (`run_grid`, in parallel, one kernel
each), with HTML handouts that read offline and one results table of what each run recorded.
"""

from __future__ import annotations

import ast
import csv
import errno
import functools
import itertools
import math
import os
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import HEADLESS_ENV
from .errors import NotebookRunError, ParameterError, Phi3kitError, UnknownChoiceError
from .safefs import atomic_path, atomic_write, free_path, storage_error, writable_dir
from .text import utf8_text

# The kernel `phi3kit run` starts is this interpreter, whatever kernelspecs are installed: a `python3`
# kernelspec from another installation on the Jupyter path would otherwise win ("No module named phi3kit").
KERNEL_NAME = "phi3kit-own-python"


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
    import warnings

    import papermill

    with warnings.catch_warnings():  # `out` may be the temporary name a result is written under (no .ipynb)
        warnings.filterwarnings("ignore", message=r"The specified file .* does not end in one of")
        papermill.execute_notebook(str(notebook), str(out), parameters=parameters, cwd=str(Path(notebook).parent),
                                   progress_bar=False, execution_timeout=timeout_s, kernel_name=KERNEL_NAME,
                                   kernel_manager_class=kernel_manager_class())


@dataclass
class NotebookRun:
    notebook: Path
    html: Path | None
    parameters: dict[str, Any]


def find_notebook(notebook: str | Path) -> Path:
    """`notebook` as an existing .ipynb file, or ParameterError saying where it was looked for."""
    path = Path(notebook)
    if path.suffix != ".ipynb":
        raise ParameterError(f"{notebook} is not a notebook (.ipynb) or a grid file (.yaml). Fix: e.g. "
                             "phi3kit run notebooks/openvino.ipynb -p model pocket.")
    if not path.is_file():
        where = "" if path.is_absolute() else f" (relative paths start in {Path.cwd()})"
        raise ParameterError(f"Notebook {notebook} does not exist{where}. Fix: check the path; the kit's notebooks "
                             "are notebooks/openvino.ipynb, directml.ipynb, npu.ipynb and compare.ipynb.")
    return path


def notebook_parameters(notebook: str | Path) -> dict[str, dict[str, Any]]:
    """Name -> {type, default, help} from the notebook's `parameters` cell."""
    path = find_notebook(notebook)
    return {k: dict(v) for k, v in _inspect(str(path), path.stat().st_mtime_ns).items()}


@functools.lru_cache(maxsize=32)
def _inspect(path: str, _mtime_ns: int) -> dict[str, Any]:
    """papermill's reading of a parameters cell, once per version of the file (every check asks for it)."""
    import papermill

    return dict(papermill.inspect_notebook(path))


def check_parameters(notebook: str | Path, parameters: dict[str, Any]) -> None:
    """papermill only warns about an unknown name and runs the default: we refuse instead."""
    known = notebook_parameters(notebook)
    for name in parameters:
        if name not in known:
            raise UnknownChoiceError(f"parameter of {Path(notebook).name}", name, known,
                                     hint="(papermill would silently run with the default value.)")


_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def coerce(notebook: str | Path, raw: dict[str, str]) -> dict[str, Any]:
    """Turn command-line strings into the types the parameters cell declares; ParameterError when one does not read.

    Unknown names are left to `check_parameters` (which lists the known ones).
    """
    known = notebook_parameters(notebook)
    out: dict[str, Any] = {}
    for name, value in raw.items():
        kind = known.get(name, {}).get("inferred_type_name", "str")
        default = known.get(name, {}).get("default", "")
        out[name] = _coerce_one(Path(notebook).name, name, kind, value, default)
    return out


def _coerce_one(notebook: str, name: str, kind: str, value: str, default: str) -> Any:
    utf8_text(value, f"parameter {name}")
    bad = f"parameter {name} of {notebook} is {kind}"
    if kind == "int":
        try:
            return int(value.strip())
        except ValueError:
            raise ParameterError(f"{bad}; got {value!r}, which is not a whole number. Fix: e.g. -p {name} "
                                 f"{default or 128}.") from None
    if kind == "float":
        try:
            number = float(value.strip())
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise ParameterError(f"{bad}; got {value!r}, which is not a finite number. Fix: e.g. -p {name} "
                                 f"{default or 0.5}.")
        return number
    if kind == "bool":
        if value.strip().lower() not in _TRUE + _FALSE:
            raise ParameterError(f"{bad}; got {value!r}. Fix: -p {name} true, or -p {name} false.")
        return value.strip().lower() in _TRUE
    return value


# Notebook -> the backend its `model`, `precision`, `device`... parameters load with (the notebook's own call).
NOTEBOOK_BACKENDS = {"openvino": "openvino", "directml": "ortgenai"}


def _defaults(known: dict[str, dict[str, Any]]) -> dict[str, Any]:
    values = {}
    for name, info in known.items():
        try:
            values[name] = ast.literal_eval(str(info.get("default")))
        except (ValueError, SyntaxError):
            values[name] = info.get("default")
    return values


def check_values(notebook: str | Path, parameters: dict[str, Any]) -> None:
    """What the notebook would refuse in its first cells, refused now with the kit's own checks (before a kernel).

    The generation settings go through GenerationConfig, the model, backend, precision, runtime, device and
    prefer through the checks `kit.export` starts with (the catalog, the route plan, the backend's choices and
    devices), built as the notebook builds them; nothing is downloaded or loaded.
    """
    from .config import GenerationConfig, LoadConfig

    notebook = Path(notebook)
    values = {**_defaults(notebook_parameters(notebook)), **parameters}
    if "max_new_tokens" in parameters or "do_sample" in parameters:
        GenerationConfig(max_new_tokens=values.get("max_new_tokens", 128), do_sample=bool(values.get("do_sample")))
    if "group_size" in parameters:  # the NPU notebook's: LoadConfig's own range check
        LoadConfig(group_size=values["group_size"])
    if "routes" in parameters or "prompt_lengths" in parameters:  # the compare notebook's benchmark
        from .bench.routes import parse_lengths, parse_routes, refuse_unknown

        for route in parse_routes(str(values.get("routes", ""))):
            refuse_unknown(route)
        parse_lengths(str(values.get("prompt_lengths", "")))
    backend = NOTEBOOK_BACKENDS.get(notebook.stem)
    if backend is None or not set(parameters) & {"model", "precision", "device", "runtime", "prefer",
                                                 "fallback_to_cpu", "build_target", "block_size"}:
        return  # the defaults are the notebook's own business (e.g. DML on a machine without it)
    from .backends import get
    from .exporting import complete, plan

    options: dict[str, Any] = {"device": values.get("device", "CPU"), "prefer": values.get("prefer") or None}
    if backend == "openvino":
        options["runtime"] = values.get("runtime") or None
    else:
        options.update(fallback_to_cpu=bool(values.get("fallback_to_cpu")),
                       build_target=values.get("build_target") or None, group_size=values.get("block_size") or None)
    cfg = complete(LoadConfig(model=str(values.get("model")), backend=backend, precision=values.get("precision"),
                              **options))
    plan(cfg)
    get(backend).check(cfg, device=True)


def absolute_paths(parameters: dict[str, Any], cwd: str | Path | None = None) -> dict[str, Any]:
    """Folders given relative to where the command ran, made absolute (the kernel runs in the notebook's folder).

    A `*_dir` parameter that names a file is refused; a relative `model` that is a folder here is made absolute.
    """
    base = Path(cwd or Path.cwd())
    out = dict(parameters)
    for name, value in parameters.items():
        if not isinstance(value, str) or not value.strip():
            continue
        path = Path(os.path.expanduser(value))
        if name.endswith("_dir"):
            full = path if path.is_absolute() else base / path
            if full.exists() and not full.is_dir():
                raise storage_error(NotADirectoryError(errno.ENOTDIR, "not a folder", str(full)), full,
                                    f"parameter {name} must name a folder (new or existing), not a file")
            out[name] = str(full)
        elif name == "model" and value != "pocket" and not path.is_absolute() and (base / path).is_dir():
            out[name] = str(base / path)
    return out


def validate(notebook: str | Path, parameters: dict[str, Any]) -> dict[str, Any]:
    """Every check a run's parameters get before a kernel starts; the parameters with folders made absolute."""
    check_parameters(notebook, parameters)
    check_types(notebook, parameters)
    check_values(notebook, parameters)
    return absolute_paths(parameters)


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
    notebook = Path(notebook)
    return atomic_write(free_path(notebook.with_suffix(".html"), overwrite), render_html(notebook, offline))


def render_html(notebook: str | Path, offline: bool = True) -> str:
    """The handout's HTML for `notebook` (see `to_html`), not yet written anywhere."""
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    body, _ = html_exporter(offline, notebook_language(nb)).from_notebook_node(nb)
    body = hoist_direction(body)
    if offline and (refs := external_references(body)):
        raise RuntimeError(f"the offline handout still references the network: {refs[:3]}")
    return body


def output_name(notebook: Path) -> str:
    """openvino.ipynb, or openvino-fa.ipynb for the Persian one: runs of two languages never collide."""
    import nbformat

    lang = notebook_language(nbformat.read(str(notebook), as_version=4))
    return notebook.name if lang == "en" else f"{notebook.stem}-{lang}{notebook.suffix}"


def run_notebook(notebook: str | Path, output_dir: str | Path, parameters: dict[str, Any] | None = None,
                 html: bool = True, overwrite: bool = False, timeout_s: int | None = None) -> NotebookRun:
    """Execute `notebook` with `parameters` into `output_dir`; write an HTML handout beside it.

    Everything that can be checked is checked before the kernel starts (names, types, the kit's own checks of
    the values, the output folder). The notebook and its handout are written whole or not at all: an
    interrupt or a full disk leaves earlier results as they were (`overwrite` replaces them only on success).
    A notebook that stops at an error is kept as <name>-failed.ipynb, and NotebookRunError (exit 1) leads
    with the notebook's own error message.
    """
    notebook = find_notebook(notebook).resolve()
    parameters = validate(notebook, dict(parameters or {}))
    out_dir = writable_dir(output_dir, fix="choose an output folder you can write to (-o FOLDER)")
    out = free_path(out_dir / output_name(notebook), overwrite)
    page = free_path(out.with_suffix(".html"), overwrite) if html else None
    with atomic_path(out, fix="free some space, or choose another output folder (-o FOLDER)") as tmp:
        try:
            execute(notebook, tmp, parameters, timeout_s)
        except Exception as exc:  # noqa: BLE001 - a cell's error, a dead kernel, a timeout: keep what ran, say why
            if isinstance(exc, OSError) and exc.errno is not None:  # the notebook could not be written: atomic_path
                raise  # makes it a StorageError naming it (a cell timeout is an OSError too, without an errno)
            raise _failed_run(exc, tmp, out) from exc
        tidy(tmp)
        handout_error = None
        if page is not None:
            try:
                body = render_html(tmp)
            except Exception as exc:  # noqa: BLE001 - the executed notebook is kept all the same, then this is raised
                handout_error = exc
            else:
                atomic_write(page, body)
    if handout_error is not None:
        raise handout_error
    return NotebookRun(out, page, parameters)


def _failed_run(exc: Exception, tmp: Path, out: Path) -> Phi3kitError:
    """The error for a run that stopped: the notebook's own message first, and where the executed notebook is."""
    from papermill.exceptions import PapermillExecutionError

    if isinstance(exc, Phi3kitError):  # refused before anything ran (e.g. the output cannot be written)
        return exc
    if isinstance(exc, PapermillExecutionError):
        message = f"{exc.evalue} ({exc.ename} in cell [{exc.exec_count}] of the notebook.)"
    else:
        message = f"{type(exc).__name__}: {exc}"
    if not tmp.is_file():
        return NotebookRunError(f"{message} The notebook did not run.")
    failed = free_path(out.with_name(f"{out.stem}-failed{out.suffix}"), overwrite=False)
    try:
        tidy(tmp)
        os.replace(tmp, failed)
    except (OSError, ValueError):
        return NotebookRunError(f"{message} (The executed notebook could not be kept at {failed}.)")
    return NotebookRunError(f"{message} The executed notebook, with the error in it, is {failed}.", failed)


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
        for name in (*self.grid, *self.fixed):
            if not isinstance(name, str):
                raise GridError(f"parameter names are text; got {name!r} ({type(name).__name__}). Fix: write the "
                                "notebook's parameter name, e.g. precision: [int4, int8].")
        for name, values in self.grid.items():
            if not isinstance(values, list) or not values:
                raise GridError(f"grid.{name} must be a non-empty list of values, got {values!r}. "
                                f"Fix: write {name}: [{values!r}], or move it to fixed.")
        both = sorted(set(self.grid) & set(self.fixed))
        if both:
            raise GridError(f"{', '.join(both)} is both in grid and in fixed. Fix: keep each parameter in one place.")
        check_parameters(self.notebook, {**self.fixed, **self.grid})
        check_types(self.notebook, {**self.fixed, **{k: v for k, vs in self.grid.items() for v in vs}})
        self.fixed = absolute_paths(self.fixed)
        self.grid = {k: [absolute_paths({k: v})[k] for v in vs] for k, vs in self.grid.items()}

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
    except UnicodeDecodeError as exc:
        raise GridError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}). Fix: save it as UTF-8.") \
            from exc
    except OSError as exc:
        raise GridError(f"Cannot read the grid file {path}: {exc.strerror or exc}. Fix: check the path.") from exc
    if not isinstance(data, dict):
        raise GridError(f"{path} must hold a mapping with keys {', '.join(GRID_KEYS)}.")
    unknown = sorted(str(k) for k in set(data) - set(GRID_KEYS))
    if unknown:
        raise UnknownChoiceError(f"key in {path.name}", unknown[0], GRID_KEYS)
    if "notebook" not in data:
        raise GridError(f"{path} names no notebook. Fix: add `notebook: notebooks/openvino.ipynb`.")
    if not isinstance(data["notebook"], str) or not data["notebook"].strip() or "\0" in data["notebook"]:
        raise GridError(f"{path}: notebook must be a path, got {data['notebook']!r}. Fix: e.g. "
                        "`notebook: notebooks/openvino.ipynb`.")
    notebook = Path(data["notebook"])
    if not notebook.is_absolute() and not notebook.exists():
        notebook = path.parent / notebook
    if not notebook.is_file():
        raise GridError(f"{path}: notebook {data['notebook']!r} not found (looked in {Path.cwd()} and {path.parent}).")
    find_notebook(notebook)
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
    status, error, body = "ok", "", None
    try:
        # Written whole or not at all: a failed run's notebook is kept (it shows the error), an interrupted one not.
        with atomic_path(out, fix="free some space, or choose another output folder (-o FOLDER)") as tmp:
            try:
                execute(notebook, tmp, parameters, timeout_s)
            except PapermillExecutionError as exc:
                status, error = "failed", f"{exc.ename}: {exc.evalue}"
            except Exception as exc:  # noqa: BLE001 - the kernel died or timed out: report it, keep the other runs
                status, error = "failed", f"{type(exc).__name__}: {exc}"
            if not tmp.is_file():
                raise _NothingWritten
            tidy(tmp)
            if html:
                body = render_html(tmp)
    except _NothingWritten:
        pass
    page = str(atomic_write(Path(out).with_suffix(".html"), body)) if body is not None else None
    return status, error, time.perf_counter() - start, page


class _NothingWritten(Exception):
    """The kernel stopped before papermill wrote the notebook: there is nothing to put in place."""


def _execute_main() -> None:
    """Entry point of a run's own process: read the job, execute it, write the outcome as JSON."""
    import json
    import sys

    job = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    result = _execute(job["notebook"], job["out"], job["parameters"], job["html"], job["timeout_s"])
    Path(sys.argv[2]).write_text(json.dumps(result), encoding="utf-8")


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
                                   "timeout_s": timeout_s}), encoding="utf-8")
        proc = run([sys.executable, "-c", "from phi3kit.runner import _execute_main; _execute_main()",
                    str(job), str(result)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                   encoding="utf-8", errors="replace")
        if result.is_file():
            status, error, seconds, page = json.loads(result.read_text(encoding="utf-8"))
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
    for params in grid.runs():  # every combination's values pass the kit's checks before the first kernel starts
        check_values(grid.notebook, params)
    out_dir = writable_dir(output_dir, fix="choose an output folder you can write to (-o FOLDER)")
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
    with atomic_path(path, fix="free some space, or choose another output folder (-o FOLDER)") as tmp:
        with tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    return path
