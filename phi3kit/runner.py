"""Run notebooks headless with papermill, safely: unknown parameters are errors, outputs never overwrite."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UnknownChoiceError


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


def to_html(notebook: Path, overwrite: bool = False) -> Path:
    """A handout: the executed notebook as one HTML file with its plots embedded."""
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(str(notebook), as_version=4))
    out = free_path(notebook.with_suffix(".html"), overwrite)
    out.write_text(body, encoding="utf-8")
    return out


def run_notebook(notebook: str | Path, output_dir: str | Path, parameters: dict[str, Any] | None = None,
                 html: bool = True, overwrite: bool = False, timeout_s: int | None = None) -> NotebookRun:
    """Execute `notebook` with `parameters` into `output_dir`; write an HTML handout beside it."""
    import papermill

    notebook = Path(notebook).resolve()
    parameters = dict(parameters or {})
    check_parameters(notebook, parameters)
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = free_path(out_dir / notebook.name, overwrite)
    papermill.execute_notebook(str(notebook), str(out), parameters=parameters, cwd=str(notebook.parent),
                               progress_bar=False, execution_timeout=timeout_s, kernel_name="python3")
    tidy(out)
    return NotebookRun(out, to_html(out, overwrite) if html else None, parameters)
