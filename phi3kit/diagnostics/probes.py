"""Reading this machine's facts: the OS, Windows' path settings, the caches, and each backend's probe
(through the registry and the Backend interface: device rows, CPU probe, status)."""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil

from .. import backends, drivers
from ..machine import cpu_info, installed_version
from ..safefs import free_bytes
from .facts import LONG_PATHS_KEY, Facts

ORT_BACKEND = "ortgenai"  # the registry name of the ONNX Runtime GenAI route
ORT_FLAVOURS = ("onnxruntime-genai-cuda", "onnxruntime-genai-directml", "onnxruntime-genai")


def windows_release(release: str, version: str, build: int | None = None) -> str:
    """'11' for Windows 11, which platform.release() calls '10' (Python < 3.12): its builds start at 22000."""
    if build is None:
        try:
            build = int(version.split(".")[2])
        except (IndexError, ValueError):
            return release
    return "11" if release == "10" and build >= 22000 else release


def os_description(system: str | None = None, release: str | None = None, version: str | None = None,
                   machine: str | None = None, build: int | None = None) -> str:
    """'Windows 11 (build 22631, AMD64)', 'Linux 6.8.0 (x86_64)': this machine's unless given."""
    system = platform.system() if system is None else system
    release = platform.release() if release is None else release
    machine = platform.machine() if machine is None else machine
    if system != "Windows":
        return f"{system} {release} ({machine})"
    version = platform.version() if version is None else version
    if build is None and sys.platform == "win32":
        build = sys.getwindowsversion().build  # type: ignore[attr-defined]
    name = windows_release(release, version, build)
    shown = build if build is not None else version
    return f"{system} {name} (build {shown}, {machine})"


def long_paths_enabled(registry: Any = None, platform_: str = sys.platform) -> bool | None:
    """Windows' LongPathsEnabled (HKLM\\SYSTEM\\CurrentControlSet\\Control\\FileSystem): off unless set to 1;
    None off Windows or where the registry cannot be read. `registry` replaces winreg (tests)."""
    if platform_ != "win32":
        return None
    if registry is None:
        import winreg as registry  # type: ignore[no-redef]
    try:
        with registry.OpenKey(registry.HKEY_LOCAL_MACHINE, LONG_PATHS_KEY) as key:
            value, _ = registry.QueryValueEx(key, "LongPathsEnabled")
    except FileNotFoundError:
        return False  # no value: the default, off
    except OSError:
        return None
    return bool(value)


def _hub_cache() -> str:
    try:
        from huggingface_hub import constants
    except ImportError:
        return ""
    return str(constants.HF_HUB_CACHE)


def _free_gb(path: Path) -> float:
    return free_bytes(path) / 1e9  # the cache folder may not exist yet: the disk it will live on


def _nvidia_gpus() -> list[str]:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, encoding="utf-8", errors="replace", timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.split(" (UUID")[0] for line in out.splitlines() if line.startswith("GPU ")]


def _ort(facts: Facts) -> None:
    facts.ort_flavour = next((f"{p} {v}" for p in ORT_FLAVOURS if (v := installed_version(p))), "")
    try:
        backend = backends.get(ORT_BACKEND)
    except Exception as exc:  # noqa: BLE001 - a report row, not a crash
        backend, facts.ort_devices = None, [f"unavailable: {exc}"]
    if backend is not None:
        facts.ort_backend = backend.name
        try:
            facts.ort_devices = list(backend.devices(backend.default_runtime()))
        except Exception as exc:  # noqa: BLE001 - a report row, not a crash
            facts.ort_devices = [f"unavailable: {exc}"]
    elif facts.ort_flavour and not facts.ort_devices:
        facts.ort_devices = ["CUDA"] if "cuda" in facts.ort_flavour else \
            ["DML"] if "directml" in facts.ort_flavour else ["CPU"]


def _openvino(facts: Facts) -> Any:
    try:
        facts.openvino_devices = backends.get("openvino").device_rows()
    except ImportError as exc:  # MissingDependencyError is one
        facts.openvino_error = f"openvino is not installed ({getattr(exc, 'name', None) or exc})"
        return None
    facts.npu_problem = next((d.pop("problem") for d in facts.openvino_devices if "problem" in d), "")
    return backends.get("openvino").cpu_probe()


def _npu_library() -> str:
    return backends.get("npu-library").status() or ""


def gather() -> Facts:
    """Everything `recommend()` and the report need, read from this machine."""
    from ..cache import default_cache_dir

    mem = psutil.virtual_memory()
    cache = default_cache_dir()
    facts = Facts(os=os_description(), ram_total_gb=mem.total / 1e9, ram_available_gb=mem.available / 1e9,
                  cache_dir=str(cache), disk_free_gb=_free_gb(cache), platform=sys.platform, python=sys.executable,
                  long_paths=long_paths_enabled(), hub_cache=_hub_cache())
    core = _openvino(facts)
    facts.cpu, facts.isa, facts.isa_source = cpu_info(core)
    _ort(facts)
    facts.nvidia_gpus = _nvidia_gpus()
    facts.npu_library = _npu_library()
    facts.drivers = [v.message for v in drivers.verdicts(facts.openvino_devices)]
    return facts
