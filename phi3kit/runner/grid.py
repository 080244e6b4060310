"""Batch runs over a parameter grid: every combination, each in its own kernel, `jobs` at a time."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import GridError, UnknownChoiceError
from ..procs import json_job_main, run_json_job
from ..safefs import atomic_path, atomic_write, free_path, writable_dir
from . import kernel
from .handouts import render_html
from .kernel import tidy
from .params import absolute_paths, check_parameters, check_types, check_values, find_notebook
from .results import GridResult, GridRun, collect_records, write_results

GRID_KEYS = ("notebook", "grid", "fixed")


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
        from ..cache import slug

        return slug("_".join(f"{k}-{parameters[k]}" for k in self.grid), limit=120) if self.grid else "run"


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
                kernel.execute(notebook, tmp, parameters, timeout_s)
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
    """Entry point of a run's own process (procs.run_json_job): execute the job, write the outcome."""
    json_job_main(lambda job: _execute(job["notebook"], job["out"], job["parameters"], job["html"], job["timeout_s"]))


def _execute_in_process(notebook: str, out: str, parameters: dict[str, Any], html: bool,
                        timeout_s: int | None) -> tuple[str, str, float, str | None]:
    """`_execute` in a fresh Python process (works from a script, a notebook or stdin alike)."""
    start = time.perf_counter()
    job = {"notebook": notebook, "out": out, "parameters": parameters, "html": html, "timeout_s": timeout_s}
    result, rc, lines = run_json_job("phi3kit.runner.grid:_execute_main", job)
    if result is not None:
        status, error, seconds, page = result
        return status, error, seconds, page
    tail = " | ".join(line for line in lines[-3:] if line.strip())
    return "failed", f"the run's process exited with code {rc}: {tail}", time.perf_counter() - start, None


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
