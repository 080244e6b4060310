"""OpenVINO GenAI on the NPU: the export and pipeline settings OpenVINO documents, the driver checks, the limits.

The NPU compiles static shapes and runs only symmetric 4-bit (or fp16) weights, so its route differs
from the CPU's in export settings, pipeline options, driver requirements and context limits.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ...cache import ExportCache, slug
from ...config import LoadConfig
from ...context import Limits
from ...devices import device_family
from ...drivers import judge, rule_for
from ...errors import NPUDriverError as NPUDriverError  # defined in errors.py; its import name here kept
from ...errors import UnknownChoiceError, last_line
from ...machine import library_version

# OpenVINO's "GenAI on NPU" guide: LLMs for the NPU must be exported with symmetric 4-bit weights and
# ratio 1.0, channel-wise (group size -1: fastest) or group-wise 128 (the guide's advice for models
# up to ~4-5B parameters, Phi-3-mini included, when accuracy matters more); fp16 also runs.
# The kit names channel-wise int4 "int4-cw" on every device (OpenVINO's hub organisation marks those
# folders `-cw-`); group-wise NPU int4 is precision "int4" with group_size=128 and ratio 1.0.
NPU_PRECISIONS = ("int4", "int4-cw", "fp16")
NPU_GROUP_SIZES = (-1, 128)
# The NPU compiles static shapes: the prompt may hold MAX_PROMPT_LEN tokens and the context
# MAX_PROMPT_LEN + MIN_RESPONSE_LEN (OpenVINO's defaults, made visible here).
NPU_MAX_PROMPT_LEN = 1024
NPU_MIN_RESPONSE_LEN = 128
NPU_GENERATE_HINTS = ("FAST_COMPILE", "BEST_PERF")
# The NPU driver each platform needs (Windows 32.0.100.3104 for LLMs) lives in phi3kit/data/drivers.yaml with its
# source and download page: phi3kit.drivers judges it for this module, the doctor and `phi3kit check`.


def is_npu(device: str) -> bool:
    return device_family(device) == "NPU"


def npu_blob_dir(cache_dir: str | None, info: NPUInfo | None = None) -> Path:
    """Where the NPU's compiled blobs go (CACHE_DIR): beside the exports, one folder per NPU driver and OpenVINO
    version, so a driver upgrade never reuses a blob the old driver compiled (openvino.genai#2082). `info`: the
    NPU as read (None: read it now)."""
    info = info if info is not None else npu_info()
    driver = info.driver_version if info is not None and info.driver_version is not None else "unknown"
    return ExportCache(cache_dir).root / "npu-blobs" / slug(f"openvino-{library_version('openvino')}-driver-{driver}")


def npu_preset(cfg: LoadConfig, max_prompt_len: int = NPU_MAX_PROMPT_LEN,
               min_response_len: int = NPU_MIN_RESPONSE_LEN, generate_hint: str | None = None,
               blob_cache: bool = True) -> LoadConfig:
    """`cfg` with the export and pipeline settings OpenVINO documents for LLMs on the NPU.

    The export settings (int4 symmetric, ratio 1.0: precision "int4-cw", channel-wise, unless
    group_size=128 was chosen) apply on every device, so the same export (or the same ready-made
    `-cw-` folder) can be tried on the CPU. The pipeline options
    (MAX_PROMPT_LEN, MIN_RESPONSE_LEN, GENERATE_HINT, CACHE_DIR) are NPU-only: the CPU plugin
    rejects them, so they are added only when `cfg.device` is an NPU. Explicit runtime_config
    entries win.
    """
    if cfg.backend != "openvino":
        raise UnknownChoiceError("backend for the NPU preset", cfg.backend, ["openvino"],
                                 hint="The NPU preset configures OpenVINO GenAI.")
    precision = cfg.precision or "int4"
    if precision not in NPU_PRECISIONS:
        raise UnknownChoiceError("precision for the NPU preset", precision, NPU_PRECISIONS,
                                 hint="The NPU runs LLMs with symmetric 4-bit weights (int4) or fp16.")
    changes: dict[str, Any] = {"precision": precision}
    if precision in ("int4", "int4-cw"):
        group = cfg.group_size if cfg.group_size is not None else -1
        if group not in NPU_GROUP_SIZES or (precision == "int4-cw" and group != -1):
            raise UnknownChoiceError("group_size for the NPU", group, [str(g) for g in NPU_GROUP_SIZES],
                                     hint="-1 = channel-wise (fastest), 128 = group-wise (more accurate).")
        if cfg.ratio not in (None, 1.0):
            raise UnknownChoiceError("ratio for the NPU", cfg.ratio, ["1.0"], hint="Every layer must be int4.")
        if not cfg.sym:
            raise UnknownChoiceError("sym for the NPU", cfg.sym, ["True"], hint="The NPU needs symmetric int4.")
        if group == -1:  # channel-wise: the named precision, whose export settings are fixed
            changes.update(precision="int4-cw", group_size=None, ratio=None)
        else:
            changes.update(group_size=group, ratio=1.0)
    props = dict(cfg.runtime_config)
    if is_npu(cfg.device):
        if (cfg.runtime or "genai") != "genai":
            raise UnknownChoiceError("runtime for the NPU", cfg.runtime, ["genai"],
                                     hint="LLMs run on the NPU through OpenVINO GenAI's LLMPipeline.")
        if generate_hint is not None and generate_hint not in NPU_GENERATE_HINTS:
            raise UnknownChoiceError("GENERATE_HINT", generate_hint, NPU_GENERATE_HINTS)
        for key, value in (("MAX_PROMPT_LEN", max_prompt_len), ("MIN_RESPONSE_LEN", min_response_len),
                           ("GENERATE_HINT", generate_hint)):
            if value is not None:
                props.setdefault(key, value)
        if blob_cache:
            props.setdefault("CACHE_DIR", str(npu_blob_dir(cfg.cache_dir)))
    return replace(cfg, runtime_config=props, **changes)


@dataclass
class NPUInfo:
    """What OpenVINO says about the NPU: its name, driver, and the compiler inside the driver."""

    name: str
    driver_version: int | None
    compiler_version: str | None  # major.minor
    errors: list[str]


def decode_compiler_version(value: int) -> str:
    """NPU_COMPILER_VERSION packs major (16 high bits) and minor (16 low bits)."""
    return f"{value >> 16}.{value & 0xFFFF}"


def npu_info(core: Any = None) -> NPUInfo | None:
    """The NPU's properties, or None when OpenVINO lists no NPU."""
    if core is None:  # the process's one Core (creating another loads every device plugin again)
        from . import devices

        core = devices.core()
    npu = next((d for d in core.available_devices if is_npu(d)), None)
    if npu is None:
        return None
    values: dict[str, Any] = {}
    errors: list[str] = []
    for prop in ("FULL_DEVICE_NAME", "NPU_DRIVER_VERSION", "NPU_COMPILER_VERSION"):
        try:
            values[prop] = core.get_property(npu, prop)
        except RuntimeError as exc:
            errors.append(f"{prop}: {last_line(exc)}")
    compiler = values.get("NPU_COMPILER_VERSION")
    driver = values.get("NPU_DRIVER_VERSION")
    return NPUInfo(str(values.get("FULL_DEVICE_NAME", "NPU")), None if driver is None else int(driver),
                   None if compiler is None else decode_compiler_version(int(compiler)), errors)


def driver_url(platform: str = sys.platform) -> str:
    """Where to get the Intel NPU driver on this platform (data/drivers.yaml)."""
    rule = rule_for("NPU", platform)
    return rule.get if rule else "https://github.com/intel/linux-npu-driver/releases"


def npu_driver_problem(info: NPUInfo, platform: str = sys.platform) -> str | None:
    """Why this NPU's driver cannot run LLMs, with the fix; None when nothing is known to be wrong."""
    url = driver_url(platform)
    if info.compiler_version is None and any("COMPILER" in e for e in info.errors):
        return (f"OpenVINO sees the NPU ({info.name}) but cannot load its compiler, which ships with the NPU "
                f"driver ({'; '.join(info.errors)}). Fix: install or update the Intel NPU driver: {url}")
    verdict = judge("NPU", info.driver_version, platform)
    if info.driver_version is None and platform == "win32":
        return (f"OpenVINO sees the NPU ({info.name}) but cannot read its driver version. "
                f"Fix: install or update the Intel NPU driver: {url}")
    if verdict.problem:
        return f"The NPU driver is too old for LLMs: build {info.driver_version}. {verdict.message}"
    return None


def npu_compile_failure(exc: BaseException, info: NPUInfo | None, platform: str = sys.platform) -> str:
    """What to tell a user whose NPU failed to compile the model (the runtime's message is one line of C++)."""
    seen = f"{info.name}, driver {info.driver_version}, compiler {info.compiler_version}" if info else "none"
    return (f"The NPU could not compile this model ({last_line(exc)}). NPU seen: {seen}. The usual causes: an NPU "
            f"driver older than this OpenVINO needs (update it: {driver_url(platform)}), or an export without the NPU "
            "preset (int4 needs sym=True, ratio=1.0, group_size -1 or 128: use npu_preset()).")


def npu_limits(props: dict[str, Any], context_length: int) -> Limits:
    """The NPU compiles fixed shapes: prompts up to MAX_PROMPT_LEN, prompt + answer up to MAX_PROMPT_LEN +
    MIN_RESPONSE_LEN (and never past the model's own window)."""
    max_prompt = int(props.get("MAX_PROMPT_LEN", NPU_MAX_PROMPT_LEN))
    total = max_prompt + int(props.get("MIN_RESPONSE_LEN", NPU_MIN_RESPONSE_LEN))
    return Limits(min(total, context_length), min(max_prompt, context_length - 1),
                  f"the NPU pipeline, compiled for MAX_PROMPT_LEN={max_prompt} + MIN_RESPONSE_LEN={total - max_prompt}",
                  f"Or load with larger shapes: npu_preset(..., max_prompt_len={_round_up(max_prompt + 1)}, "
                  "min_response_len=...); compiling takes longer.")


def check_npu_context(n_prompt: int, max_new_tokens: int, props: dict[str, Any],
                      context_length: int = 2**31) -> None:
    """The NPU compiles fixed shapes: refuse what would not fit, naming the option to raise."""
    npu_limits(props, context_length).check(n_prompt, max_new_tokens)


def _round_up(n: int, step: int = 256) -> int:
    return -(-n // step) * step
