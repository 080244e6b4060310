"""`run`: notebooks headless with papermill, one or a parameter grid, with HTML handouts."""

from __future__ import annotations

import argparse
from typing import Any


def cmd_run(a: argparse.Namespace) -> int:
    from ..runner import coerce, find_notebook, localized, run_notebook

    target = a.notebook
    if target.endswith((".yaml", ".yml")) or a.grid:
        return _run_grid(a)
    find_notebook(target)
    if a.lang:
        target = str(localized(target, a.lang))
    raw = dict(a.parameter or [])
    result = run_notebook(target, a.output_dir, coerce(target, raw), html=not a.no_html,
                          overwrite=a.overwrite, timeout_s=a.timeout)
    print(f"executed notebook: {result.notebook}")
    if result.html:
        print(f"HTML handout:      {result.html}")
    return 0


def _run_grid(a: argparse.Namespace) -> int:
    """`phi3kit run grid.yaml` or `phi3kit run NOTEBOOK -g NAME V1,V2`: every combination, then one results table."""
    from ..runner import Grid, coerce, find_notebook, load_grid, localized, run_grid

    if a.notebook.endswith((".yaml", ".yml")):
        base = load_grid(a.notebook)
        notebook, grid, fixed = base.notebook, dict(base.grid), dict(base.fixed)
    else:
        notebook, grid, fixed = find_notebook(a.notebook), {}, {}
    if a.lang:
        notebook = localized(notebook, a.lang)
    for name, value in a.parameter or []:  # the command line wins over the file
        grid.pop(name, None)
        fixed.update(coerce(notebook, {name: value}))
    for name, values in a.grid or []:
        fixed.pop(name, None)
        grid[name] = [coerce(notebook, {name: v.strip()})[name] for v in values.split(",")]
    result = run_grid(Grid(notebook, grid, fixed), a.output_dir, jobs=a.jobs, html=not a.no_html,
                      overwrite=a.overwrite, timeout_s=a.timeout)
    print(f"{len(result.runs) - len(result.failed)} of {len(result.runs)} runs succeeded")
    print(f"results table: {result.csv}")
    return 1 if result.failed else 0


def add_run(sub: Any) -> None:
    p = sub.add_parser("run", help="execute a notebook headless (papermill), or a parameter grid, with HTML handouts")
    p.add_argument("notebook", help="a notebook, or a grid file (.yaml: notebook, grid, fixed)")
    p.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="set a notebook parameter (unknown names are an error)")
    p.add_argument("-g", "--grid", nargs=2, action="append", metavar=("NAME", "V1,V2"),
                   help="run once per value (comma separated); several -g run every combination")
    p.add_argument("-j", "--jobs", type=int, default=1, help="grid runs at a time, each in its own kernel (default 1)")
    p.add_argument("-o", "--output-dir", default="out", help="where executed notebooks go (default: out/)")
    p.add_argument("--no-html", action="store_true", help="skip the HTML handout")
    p.add_argument("--overwrite", action="store_true", help="replace earlier results instead of numbering new ones")
    p.add_argument("--timeout", type=int, default=None, help="seconds a cell may run (default: no limit)")
    p.add_argument("--lang", help="run the notebook's translation: fr, zh, fa, id, ro (en: the English one), "
                                   "i.e. notebooks/<lang>/<name>.ipynb")
    p.set_defaults(func=cmd_run)
