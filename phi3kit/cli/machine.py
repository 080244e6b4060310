"""What this machine has: the devices each backend sees (`devices`), the doctor's report (`doctor`)."""

from __future__ import annotations

import argparse
from typing import Any

from .. import backends
from ..errors import Phi3kitError


def cmd_devices(a: argparse.Namespace) -> int:
    for name in backends.names():
        b = backends.get(name)
        for runtime in b.runtimes:
            try:
                devs = ", ".join(b.devices(runtime))
            except Phi3kitError as exc:
                devs = f"unavailable ({exc})"
            print(f"{name:13} {runtime:9} {devs}")
    return 0


def add_devices(sub: Any) -> None:
    p = sub.add_parser("devices", help="list the devices each backend sees")
    p.set_defaults(func=cmd_devices)


def cmd_doctor(a: argparse.Namespace) -> int:
    from ..diagnostics import doctor

    r = doctor()
    print(r.to_json() if a.json else r)
    return 0


def add_doctor(sub: Any) -> None:
    p = sub.add_parser("doctor", help="report this machine's hardware, drivers and libraries, and a route to take")
    p.add_argument("--json", action="store_true", help="print the facts and the recommendation as JSON")
    p.set_defaults(func=cmd_doctor)
