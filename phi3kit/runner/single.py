"""One notebook run: checked, executed in its own kernel, written whole or kept as <name>-failed.ipynb."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import NotebookRunError, Phi3kitError
from ..safefs import atomic_path, atomic_write, free_path, writable_dir
from . import kernel
from .handouts import render_html
from .kernel import tidy
from .languages import output_name
from .params import find_notebook, validate


@dataclass
class NotebookRun:
    notebook: Path
    html: Path | None
    parameters: dict[str, Any]


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
            kernel.execute(notebook, tmp, parameters, timeout_s)
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
