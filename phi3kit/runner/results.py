"""What a grid's runs recorded (`kit.record`), gathered into one CSV table."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..safefs import atomic_path


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

    from ..metrics import RECORD_MIME

    nb = nbformat.read(str(notebook), as_version=4)
    return [dict(o["data"][RECORD_MIME]) for c in nb.cells if c.cell_type == "code"
            for o in c.get("outputs", []) if RECORD_MIME in o.get("data", {})]


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
