"""Device drivers: the versions each route needs (data/drivers.yaml, with sources) and what this machine has.

Wrong answers and silent CPU fallbacks on NPUs and GPUs often come down to a driver, so the doctor and
`phi3kit check` judge the version they read against one data file and name where to get a newer one.
The runtime's own report (OpenVINO's NPU_DRIVER_VERSION) is read by its backend; this module reads what
the operating system says (Windows: the PnP driver list; Linux: the kernel modules and packages).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

DRIVERS_FILE = Path(__file__).resolve().parent / "data" / "drivers.yaml"


@dataclass(frozen=True)
class DriverRule:
    """One row of data/drivers.yaml."""

    device: str
    platform: str
    minimum: str | None
    compare: str
    why: str
    source: str
    get: str
    known_bad: tuple[str, ...] = ()


@dataclass(frozen=True)
class Verdict:
    """A driver version judged: status is ok, too old, known bad, unknown (not read) or not judged (no rule)."""

    device: str
    version: str | None
    status: str
    message: str
    get: str = ""

    @property
    def problem(self) -> bool:
        return self.status in ("too old", "known bad")


def platform_name(platform: str = sys.platform) -> str:
    return "windows" if platform == "win32" else "linux"


@lru_cache(maxsize=1)
def rules() -> tuple[DriverRule, ...]:
    """Every row of data/drivers.yaml, read once."""
    import yaml

    data = yaml.safe_load(DRIVERS_FILE.read_text(encoding="utf-8"))
    return tuple(DriverRule(r["device"], r["platform"], r.get("minimum"), r.get("compare", "full"), r["why"],
                            r["source"], r["get"], tuple(str(v) for v in r.get("known_bad") or ()))
                 for r in data["drivers"])


def stale_cache_source() -> str:
    import yaml

    return str(yaml.safe_load(DRIVERS_FILE.read_text(encoding="utf-8"))["stale_cache_source"])


def rule_for(device: str, platform: str = sys.platform) -> DriverRule | None:
    family = _family(device)
    return next((r for r in rules() if r.device == family and r.platform == platform_name(platform)), None)


def _numbers(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in str(version).replace("-", ".").split(".") if p.strip().isdigit())


def judge(device: str, version: str | int | None, platform: str = sys.platform) -> Verdict:
    """This device's driver `version` against its row: why it is not enough, and where to get a newer one."""
    rule = rule_for(device, platform)
    if rule is None:
        return Verdict(device, None if version is None else str(version), "not judged",
                       f"no driver rule for {device} on {platform_name(platform)}")
    if version is None or not _numbers(str(version)):
        return Verdict(device, None, "unknown", f"the {device} driver version could not be read. Fix: install or "
                       f"update the driver: {rule.get}", rule.get)
    text = str(version)
    if text in rule.known_bad:
        return Verdict(device, text, "known bad", f"{device} driver {text} is known to fail ({rule.source}). "
                       f"Fix: install another version: {rule.get}", rule.get)
    if rule.minimum:
        have, need = _numbers(text), _numbers(rule.minimum)
        if rule.compare == "build":  # the runtime reports the last number only (Windows NPU: 3104)
            have, need = have[-1:], need[-1:]
        if have < need:
            return Verdict(device, text, "too old", f"{device} driver {text} is older than {rule.minimum}: "
                           f"{rule.why} ({rule.source}). Fix: update the driver: {rule.get}", rule.get)
        return Verdict(device, text, "ok", f"{device} driver {text} (minimum {rule.minimum})", rule.get)
    return Verdict(device, text, "ok", f"{device} driver {text} (no minimum published: {rule.why})", rule.get)


def verdicts(device_rows: list[dict[str, str]], platform: str = sys.platform) -> list[Verdict]:
    """Every driver version read on this machine, judged once: the runtimes' device rows (their `driver`) first,
    then what the operating system lists for the same device family."""
    out: dict[tuple[str, str | None], Verdict] = {}
    for row in device_rows:
        if row.get("driver"):
            v = judge(row["device"], row["driver"], platform)
            out[(_family(v.device), v.version)] = v
    for row in os_drivers(platform):
        v = judge(row["device"], row["version"], platform)
        out.setdefault((_family(v.device), v.version), v)
    return list(out.values())


def _family(device: str) -> str:
    return device.split(":")[0].split(".")[0].strip().upper()


# --- what the operating system says ------------------------------------------------------------------------------
# Windows: NPUs are PnP class ComputeAccelerator ("Neural processors"), GPUs class Display.
_WINDOWS_QUERY = ("Get-CimInstance Win32_PnPSignedDriver | Where-Object { $_.DeviceClass -in "
                  "@('COMPUTEACCELERATOR','DISPLAY') } | Select-Object DeviceName,DriverVersion,DeviceClass | "
                  "ConvertTo-Json -Compress")
_LINUX_MODULES = {"intel_vpu": "NPU", "i915": "GPU", "xe": "GPU"}


def os_drivers(platform: str = sys.platform) -> list[dict[str, str]]:
    """The NPU and GPU drivers the operating system lists: device, name, version, where it was read."""
    try:
        return _windows_drivers() if platform == "win32" else _linux_drivers(Path("/sys/module"))
    except (OSError, subprocess.SubprocessError, ValueError):
        return []


def _windows_drivers() -> list[dict[str, str]]:
    out = subprocess.run(["powershell", "-NoProfile", "-Command", _WINDOWS_QUERY], capture_output=True,
                         text=True, encoding="utf-8", errors="replace", timeout=60, check=False).stdout
    return windows_rows(json.loads(out) if out.strip() else [])


def windows_rows(data: Any) -> list[dict[str, str]]:
    """PowerShell's ConvertTo-Json (one object, or a list of them) as driver rows."""
    items = data if isinstance(data, list) else [data]
    family = {"COMPUTEACCELERATOR": "NPU", "DISPLAY": "GPU"}
    return [{"device": family.get(str(i.get("DeviceClass", "")).upper(), "?"), "name": str(i.get("DeviceName", "")),
             "version": str(i.get("DriverVersion", "")), "read_from": "Win32_PnPSignedDriver"}
            for i in items if isinstance(i, dict) and i.get("DriverVersion")]


def _linux_drivers(modules: Path) -> list[dict[str, str]]:
    rows = []
    for module, device in _LINUX_MODULES.items():
        folder = modules / module
        if folder.is_dir():
            version_file = folder / "version"
            version = version_file.read_text(encoding="utf-8").strip() if version_file.is_file() else "in-kernel"
            rows.append({"device": device, "name": module, "version": version, "read_from": str(folder)})
    return rows
