"""Proving this machine's routes (`check`), and reading a room's reports (`check --room`)."""

from __future__ import annotations

import argparse
from typing import Any


def add_check(sub: Any) -> None:
    p = sub.add_parser("check", help="prove this machine's routes: known answers, the device that really ran, "
                                     "drivers; --room merges many machines' reports")
    p.add_argument("-o", "--output-dir", default=None,
                   help="write <machine>.json and <machine>.html here (collect the JSON for --room)")
    p.add_argument("--room", default=None, metavar="FOLDER",
                   help="merge the <machine>.json files in FOLDER into one table (nothing is run)")
    p.add_argument("--backend", action="append", default=[], help="check only this backend (repeatable)")
    p.add_argument("--device", action="append", default=[], help="check only this device (repeatable)")
    p.add_argument("--runtime", action="append", default=[], help="check only this runtime, e.g. genai (repeatable)")
    p.add_argument("--model", action="append", default=[],
                   help="also check a real Phi-3 model (alias, hub id or folder) from the cache or a pack")
    p.add_argument("--download", action="store_true", help="let --model download a model that is not here yet")
    p.add_argument("--long", action="store_true",
                   help="with --model: add the long-prompt canary (a fact early in a prompt near the route's limit; "
                        "minutes on a CPU)")
    p.add_argument("--csv", default=None, help="with --room: also write the table as CSV")
    p.set_defaults(func=cmd_check)


def room_text(table: Any) -> str:
    """The room for a terminal: a route x machine grid of statuses, then what each machine needs."""
    grid = table.drop(columns=["ready", "needs driver", "failed", "skipped"]).T
    lines = [grid.to_string(), ""]
    for machine, row in table.iterrows():
        ready = len(row["ready"].split(", ")) if row["ready"] else 0
        lines.append(f"{machine}: {ready} route(s) ready, {row['skipped']} skipped")
        for driver in filter(None, row["needs driver"].split("\n")):
            lines.append(f"  needs driver: {driver}")
        for failed in filter(None, row["failed"].split("\n")):
            lines.append(f"  FAIL {failed}")
    return "\n".join(lines)


def cmd_check(a: argparse.Namespace) -> int:
    """Exit 0 when every route PASSes (SKIPPED is not a failure), 1 on a FAIL; refused input exits 2 upstream."""
    if a.room:
        from ..checking import read_room, room_table

        table = room_table(read_room(a.room))
        print(room_text(table))
        if a.csv:
            from ..safefs import atomic_write

            atomic_write(a.csv, table.to_csv())
        return 0
    from ..checking import check_machine

    report = check_machine(a.output_dir, routes=a.backend, devices=a.device, runtimes=a.runtime, models=a.model,
                           long=a.long, download=a.download, log=lambda m: None)
    print(f"phi3kit check on {report.machine} ({report.os}, {report.cpu})")
    print(report.table())
    for d in report.drivers:
        print(f"driver: {d['message']}")
    if a.output_dir:
        print(f"report: {a.output_dir}/{report.machine}.json and .html")
    failed = len(report.failed)
    print("all routes PASS" if not failed else f"{failed} route(s) FAIL")
    return report.exit_code
