"""Facts about this machine that several rooms need: the CPU and its instruction sets, the libraries
installed and their versions, and the hardware a measurement belongs to. Read here once; the doctor
reports them, benchmarks and tuning results record them.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Callable
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import psutil

from . import env

LIBRARIES = ("phi3kit", "torch", "transformers", "openvino", "openvino-genai", "openvino-tokenizers", "optimum-intel",
             "nncf", "onnxruntime-genai", "onnxruntime-genai-directml", "onnxruntime-genai-cuda",
             "intel-npu-acceleration-library")
# py-cpuinfo flag (Linux spells them as /proc/cpuinfo does, its CPUID table on Windows without the
# underscore) -> what LLM inference gets from it.
ISA_FLAGS = {
    "avx2": "AVX2",
    "avx_vnni": "AVX-VNNI",
    "avxvnni": "AVX-VNNI",
    "avx512f": "AVX-512",
    "avx512_vnni": "AVX-512 VNNI",
    "avx512vnni": "AVX-512 VNNI",
    "avx512_bf16": "AVX-512 BF16",
    "amx_tile": "AMX",
    "amx_int8": "AMX-INT8",
    "amx_bf16": "AMX-BF16",
}


def isa_features(flags: set[str]) -> list[str]:
    """The instruction sets that matter for LLM inference, in a stable order."""
    return list(dict.fromkeys(name for flag, name in ISA_FLAGS.items() if flag in flags))


def capabilities_isa(caps: list[str]) -> list[str]:
    """What OpenVINO's CPU OPTIMIZATION_CAPABILITIES imply, where no flag list is available."""
    out = []
    if "BF16" in caps:
        out.append("BF16 compute (AVX-512 BF16 or AMX)")
    if "FP16" in caps:
        out.append("FP16 compute (AMX-FP16 or AVX512-FP16)")
    if "INT8" in caps:
        out.append("INT8")
    return out


# py-cpuinfo's answer, handed down to the processes the kit starts (kernels, exports, benchmark workers): the
# same machine, so each of them need not probe again. Never read from a file: a cache folder travels to other PCs.
CPU_PROBE_ENV = env.CPU_PROBE


@lru_cache(maxsize=1)
def _pycpuinfo() -> dict[str, Any]:
    """py-cpuinfo's answer, probed once per process tree (about a second of CPU and a child process each time)."""
    try:
        inherited = json.loads(env.text(CPU_PROBE_ENV) or "")
        if isinstance(inherited, dict):
            return inherited
    except ValueError:
        pass  # unset or mangled: probe
    import cpuinfo  # py-cpuinfo: /proc/cpuinfo on Linux, CPUID on Windows and elsewhere; about a second

    info = dict(cpuinfo.get_cpu_info())
    env.hand_down(CPU_PROBE_ENV, json.dumps(info, default=str))  # inherited by every child started from now on
    return info


def cpu_info(core: Any = None, probe: Callable[[], dict[str, Any]] | None = None) -> tuple[str, list[str], str]:
    """The CPU's name, the instruction sets that matter, and where they were read from.

    py-cpuinfo reads the flags on every OS. Where it sees no AVX-512 BF16 or AMX (its CPUID table on
    Windows stops short of those), OpenVINO's OPTIMIZATION_CAPABILITIES say whether the CPU computes bf16.
    `probe` replaces py-cpuinfo (tests drive any machine's answer through it).
    """
    info = (probe or _pycpuinfo)()
    name = str(info.get("brand_raw") or platform.processor() or platform.machine())
    isa = isa_features({str(f).lower() for f in info.get("flags", [])})
    source = "py-cpuinfo"
    if core is not None and not any(x in isa for x in ("AVX-512 BF16", "AMX-BF16")):
        try:
            extra = [x for x in capabilities_isa(list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")))
                     if x.startswith("BF16")]
        except RuntimeError:
            extra = []
        if extra:
            isa += extra
            source += " + OpenVINO OPTIMIZATION_CAPABILITIES"
    return name, isa, source


NOT_INSTALLED = "not installed"  # what a report shows for a distribution that is absent


def installed_version(name: str) -> str | None:
    """The installed version of a distribution, or None: the one place the kit asks importlib.metadata."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def library_version(name: str) -> str:
    """The installed version of a distribution, or "not installed" (for reports)."""
    return installed_version(name) or NOT_INSTALLED


def major_minor(name: str) -> str:
    """The installed version's major.minor (what an export's cache key records), or "not installed"."""
    found = installed_version(name)
    return ".".join(found.split(".")[:2]) if found else NOT_INSTALLED


def hardware() -> dict[str, Any]:
    """The machine the numbers belong to."""
    name, isa, _ = cpu_info()  # AVX2 only or AVX-512/VNNI/AMX decides int4 speed as much as bandwidth does
    vm = psutil.virtual_memory()
    return {"cpu": name or platform.machine(), "isa": isa, "cores_physical": psutil.cpu_count(logical=False),
            "cores_logical": psutil.cpu_count(),
            "ram_total_gb": round(vm.total / 1e9, 1), "ram_available_gb": round(vm.available / 1e9, 1),
            "os": platform.platform(), "python": platform.python_version(),
            "libraries": {lib: library_version(lib) for lib in LIBRARIES}}
