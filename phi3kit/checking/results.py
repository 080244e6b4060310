"""What `phi3kit check` found on one machine, as plain data that travels as JSON to the instructor."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

STATUSES = ("PASS", "FAIL", "SKIPPED")
FORMAT = 1  # bump when the JSON's shape changes; the room merge refuses other formats


@dataclass
class RouteResult:
    """One route x device x precision x canary: PASS, FAIL or SKIPPED, and why."""

    backend: str
    device: str
    precision: str = ""
    runtime: str = ""
    canary: str = "pocket"
    status: str = "SKIPPED"
    reason: str = ""
    proof: str = ""  # the device that really ran, or why it cannot be read
    load_s: float | None = None
    answer_s: float | None = None
    tokens_per_s: float | None = None
    details: list[str] = field(default_factory=list)

    @property
    def route(self) -> str:
        runtime = f"/{self.runtime}" if self.runtime else ""
        precision = f":{self.precision}" if self.precision else ""
        return f"{self.backend}{runtime}{precision}@{self.device}"


@dataclass
class MachineReport:
    """A machine's identity, devices, drivers and route table."""

    machine: str
    os: str
    python: str
    kit: str
    cpu: str = ""
    devices: list[dict[str, str]] = field(default_factory=list)  # backend, device, name, driver
    drivers: list[dict[str, str]] = field(default_factory=list)  # device, version, status, message, get
    routes: list[RouteResult] = field(default_factory=list)
    started: str = ""
    format: int = FORMAT

    @property
    def failed(self) -> list[RouteResult]:
        return [r for r in self.routes if r.status == "FAIL"]

    @property
    def exit_code(self) -> int:
        """0 when nothing failed (SKIPPED is not a failure), 1 on any FAIL."""
        return 1 if self.failed else 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MachineReport:
        routes = [RouteResult(**r) for r in data.get("routes", [])]
        return cls(**{**data, "routes": routes})

    def table(self) -> str:
        """The route table as plain text (what the command prints)."""
        rows = [("route", "canary", "status", "load s", "tok/s", "device proof", "reason")]
        for r in self.routes:
            rows.append((r.route, r.canary, r.status, _num(r.load_s), _num(r.tokens_per_s), r.proof, r.reason))
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        lines = []
        for row in rows:
            head = "  ".join(cell.ljust(w) for cell, w in zip(row[:5], widths, strict=False))
            reason = row[6] if len(row[6]) <= 160 else row[6][:157] + "..."  # whole in the JSON and the HTML
            lines.append(f"{head}  {row[5]}" + (f" | {reason}" if reason else ""))
        return "\n".join(lines)


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.1f}"
