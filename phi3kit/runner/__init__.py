"""Run notebooks headless with papermill, safely: unknown parameters are errors, outputs never overwrite.

One notebook (`run_notebook`) or every combination of a parameter grid (`run_grid`, in parallel, one kernel
each), with HTML handouts that read offline and one results table of what each run recorded.

Rooms, one job each: `kernel` (the kernel a run executes in), `params` (checks before a kernel starts),
`languages` (a notebook's language and its translations), `handouts` (offline HTML), `single` (one run),
`grid` (a parameter grid's runs), `results` (what the runs recorded, as CSV).
"""

from __future__ import annotations

from ..errors import GridError
from ..safefs import free_path
from .grid import GRID_KEYS, Grid, load_grid, run_grid
from .handouts import OFFLINE_TEMPLATE, external_references, hoist_direction, html_exporter, render_html, to_html
from .kernel import KERNEL_NAME, execute, kernel_manager_class, merge_streams, tidy
from .languages import localized, notebook_language, output_name
from .params import (
    NOTEBOOK_BACKENDS,
    absolute_paths,
    check_parameters,
    check_types,
    check_values,
    coerce,
    find_notebook,
    notebook_parameters,
    validate,
)
from .results import GridResult, GridRun, collect_records, write_results
from .single import NotebookRun, run_notebook

__all__ = [
    "GRID_KEYS", "KERNEL_NAME", "NOTEBOOK_BACKENDS", "OFFLINE_TEMPLATE", "Grid", "GridError", "GridResult", "GridRun",
    "NotebookRun", "absolute_paths", "check_parameters", "check_types", "check_values", "coerce", "collect_records",
    "execute", "external_references", "find_notebook", "free_path", "hoist_direction", "html_exporter",
    "kernel_manager_class", "load_grid", "localized", "merge_streams", "notebook_language", "notebook_parameters",
    "output_name", "render_html", "run_grid", "run_notebook", "tidy", "to_html", "validate", "write_results",
]
