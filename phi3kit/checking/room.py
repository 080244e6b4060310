"""`phi3kit check --room FOLDER`: many machines' reports in one table, so the instructor sees which laptops are
ready for which route, which need a driver, and what failed.

The JSON files come from learners' machines: each is checked for shape before a value is used, and a bad
one is refused with its name and what is wrong.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import CheckReportError
from .results import FORMAT, STATUSES, MachineReport, RouteResult

MAX_BYTES = 5 * 2**20  # a report is a few kilobytes; anything this large is not one
_TEXT = {"machine", "os", "python", "kit", "cpu", "started"}
_REQUIRED = ("machine", "os", "python", "kit")
_ROUTE_TEXT = {"backend", "device", "precision", "runtime", "canary", "status", "reason", "proof"}
_ROUTE_NUMBERS = {"load_s", "answer_s", "tokens_per_s"}


def read_report(path: Path) -> MachineReport:
    """One machine's JSON, validated: CheckReportError names the file and the problem."""
    def bad(why: str) -> CheckReportError:
        return CheckReportError(f"{path.name} is not a phi3kit check report: {why}. Fix: collect the file that "
                                "`phi3kit check -o DIR` wrote on that machine, or remove it from the folder.", path)

    if path.stat().st_size > MAX_BYTES:
        raise bad(f"it is {path.stat().st_size} bytes, more than a report's {MAX_BYTES}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise bad(f"not UTF-8 JSON ({exc})") from None
    if not isinstance(data, dict):
        raise bad("the top level is not an object")
    if data.get("format") != FORMAT:
        raise bad(f"format {data.get('format')!r}, this phi3kit reads format {FORMAT} (update phi3kit on one side)")
    unknown = set(data) - set(MachineReport.__dataclass_fields__)
    if unknown:
        raise bad(f"unknown fields {sorted(unknown)}")
    for key in _TEXT:
        if not isinstance(data.get(key, ""), str):
            raise bad(f"{key!r} is not text")
    if missing := [k for k in _REQUIRED if k not in data]:
        raise bad(f"no {', '.join(missing)}")
    if not data["machine"]:
        raise bad("no machine name")
    for key in ("devices", "drivers"):
        rows = data.get(key, [])
        if not isinstance(rows, list) or not all(isinstance(r, dict) and all(isinstance(v, str) for v in r.values())
                                                 for r in rows):
            raise bad(f"{key!r} is not a list of text rows")
    routes = data.get("routes", [])
    if not isinstance(routes, list):
        raise bad("'routes' is not a list")
    for i, r in enumerate(routes):
        fields = set(r) if isinstance(r, dict) else set()
        if not fields or fields - set(RouteResult.__dataclass_fields__) or not {"backend", "device"} <= fields:
            raise bad(f"route {i} is not a route row (backend, device, status...)")
        if r.get("status") not in STATUSES:
            raise bad(f"route {i} has status {r.get('status')!r}, not one of {', '.join(STATUSES)}")
        if any(not isinstance(r.get(k, ""), str) for k in _ROUTE_TEXT) or not r.get("backend"):
            raise bad(f"route {i} has a field that is not text")
        if any(r.get(k) is not None and not isinstance(r.get(k), (int, float)) for k in _ROUTE_NUMBERS):
            raise bad(f"route {i} has a time that is not a number")
        if not isinstance(r.get("details", []), list):
            raise bad(f"route {i} has details that are not a list")
    return MachineReport.from_dict(data)


def read_room(folder: str | Path) -> list[MachineReport]:
    """Every *.json report in `folder`, sorted by machine; refuses a folder with none or a machine twice."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckReportError(f"{folder} is not a folder. Fix: give --room the folder where the learners' "
                               "<machine>.json files were collected.", folder)
    files = sorted(folder.glob("*.json"))
    if not files:
        raise CheckReportError(f"{folder} holds no .json report. Fix: collect each learner's <machine>.json "
                               "(written by `phi3kit check -o DIR`) into it.", folder)
    reports = [read_report(p) for p in files]
    names = [r.machine for r in reports]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise CheckReportError(f"machine {', '.join(twice)} has more than one report in {folder}. Fix: keep the "
                               "newest one.", folder)
    return sorted(reports, key=lambda r: r.machine)


def room_table(reports: list[MachineReport]) -> Any:
    """One row per machine (pandas): each route's status, the drivers it needs, and what failed."""
    import pandas as pd

    rows = []
    for rep in reports:
        row: dict[str, Any] = {"machine": rep.machine, "os": rep.os}
        for r in rep.routes:
            if r.precision:  # installed routes; a missing runtime is counted in `skipped`
                row[f"{r.canary}:{r.route}" if r.canary != "pocket" else r.route] = r.status
        row["ready"] = ", ".join(r.route for r in rep.routes if r.status == "PASS")
        row["needs driver"] = "\n".join(f"{d['device']} {d['version']} ({d['status']}): {d.get('get', '')}"
                                         for d in rep.drivers if d.get("status") in ("too old", "known bad"))
        row["failed"] = "\n".join(f"{r.route}: {r.reason}" for r in rep.failed)  # one line per failed route
        row["skipped"] = sum(r.status == "SKIPPED" for r in rep.routes)
        rows.append(row)
    frame = pd.DataFrame(rows).set_index("machine")
    tail = ["ready", "needs driver", "failed", "skipped"]
    return frame[[c for c in frame.columns if c not in tail] + tail].fillna("-")
