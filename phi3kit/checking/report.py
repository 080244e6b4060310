"""One machine's check as files the instructor collects: <machine>.json (for the room table) and a one-page
HTML that opens offline (no script, no stylesheet from the network), in the handouts' plain style."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

from .results import MachineReport

STYLE = """
body{font-family:-apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:70em;color:#212121;line-height:1.4}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.5em}
table{border-collapse:collapse;font-size:.9em}th,td{border:1px solid #ddd;padding:.3em .6em;text-align:left;
vertical-align:top}th{background:#f5f5f5}
.PASS{background:#e8f5e9}.FAIL{background:#ffebee}.SKIPPED{background:#fafafa;color:#757575}
.problem{color:#b71c1c}code{background:#f5f5f5;padding:0 .2em}
"""


def write_report(report: MachineReport, folder: str | Path) -> tuple[Path, Path]:
    """Write <machine>.json and <machine>.html into `folder` (each replaced whole, never half-written)."""
    from ..safefs import atomic_write

    folder = Path(folder)
    json_path = atomic_write(folder / f"{report.machine}.json",
                             json.dumps(report.to_dict(), indent=1, ensure_ascii=False))
    html_path = atomic_write(folder / f"{report.machine}.html", to_html(report))
    return json_path, html_path


def _table(header: list[str], rows: list[list[str]], classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{escape(classes[i])}"' if classes else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def to_html(report: MachineReport) -> str:
    """The report as one self-contained page: machine, devices, drivers, and the route table with times."""
    failed = len(report.failed)
    verdict = "all routes PASS" if not failed else f"{failed} route(s) FAIL"
    machine = _table(["machine", "OS", "CPU", "Python", "phi3kit", "checked (UTC)"],
                     [[report.machine, report.os, report.cpu, report.python, report.kit, report.started]])
    devices = _table(["backend", "device", "name", "driver"],
                     [[d.get("backend", ""), d.get("device", ""), d.get("name", ""), d.get("driver", "")]
                      for d in report.devices])
    drivers = _table(["device", "version", "status", "what to do"],
                     [[d["device"], d["version"], d["status"], d["message"]] for d in report.drivers]) \
        if report.drivers else "<p>No NPU or GPU driver was found to judge.</p>"
    routes = _table(["route", "canary", "status", "load s", "answers s", "tokens/s", "device proof", "reason"],
                    [[r.route, r.canary, r.status, _n(r.load_s), _n(r.answer_s), _n(r.tokens_per_s), r.proof,
                      r.reason] for r in report.routes], [r.status for r in report.routes])
    details = "".join(f"<li><b>{escape(r.route)}</b>: {escape(d)}</li>" for r in report.routes for d in r.details)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>phi3kit check: '
            f"{escape(report.machine)}</title><style>{STYLE}</style></head><body>"
            f"<h1>phi3kit check: {escape(report.machine)} ({escape(verdict)})</h1>{machine}"
            f"<h2>Routes</h2>{routes}" + (f"<h2>Details</h2><ul>{details}</ul>" if details else "")
            + f"<h2>Devices</h2>{devices}<h2>Drivers</h2>{drivers}"
            "<p>PASS: the route gave the known answers on that device. FAIL: wrong answers, a silent fallback to "
            "another device, or a driver known not to work. SKIPPED: not installed or not on this machine "
            "(not a failure).</p></body></html>")


def _n(x: float | None) -> str:
    return "" if x is None else f"{x:.1f}"
