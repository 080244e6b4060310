"""Memory and disk before work: will this export fit this machine?

Before an export starts (and before its checkpoint is downloaded), a preflight compares what it will
need (disk for the download and the export, RAM while converting) with what this machine has, so a
workshop laptop fails in a second with the fix instead of after twenty minutes with a full disk or a
killed process. Where a ready-made folder exists, the fix names it: it needs no conversion at all.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import env
from .errors import ResourceError
from .safefs import free_bytes
from .safefs import human_size as _size

SKIP_ENV = env.SKIP_PREFLIGHT
# Size of an export per model parameter. int4 measured: Phi-3-mini (3.8B) at int4 g128 ratio 0.6 wrote
# 2.78 GB (0.73 B/param; 40% of the layers stay int8); channel-wise ratio 1.0 wrote 2.01 GB (0.53 B/param).
# The others are their weights' width plus ~5%.
DISK_BYTES_PER_PARAM = {"int4": 0.75, "int4-cw": 0.55, "int8": 1.05, "fp16": 2.05, "bf16": 2.05, "fp32": 4.05,
                        # llamacpp: the F16 conversion (2.0 B/param) stays until the quantized file (measured on a
                        # 0.65B-param Phi-3: Q4_K_M 0.65, Q4_0 0.60 B/param) is written beside it.
                        "q4_k_m": 2.7, "q4_0": 2.65, "q8_0": 3.1, "f16": 2.05}
# Peak RAM of optimum-cli's export per parameter. int4 measured: 11.25 GB for Phi-3-mini from bf16
# (2.95 B/param); int8/fp16 go through the same load. fp32 (not measured on a full model) holds
# fp32 weights, 4 B/param, before writing them. Backends whose exporter needs more say so (ortgenai).
RAM_BYTES_PER_PARAM = {"int4": 3.0, "int4-cw": 3.0, "int8": 3.0, "fp16": 3.0, "bf16": 3.0, "fp32": 5.0}
RAM_BASE = 512 * 2**20  # Python, torch and the converter before any weight is read
DISK_MARGIN = 1.1
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


@dataclass
class FreeSpace:
    """What this machine can give an export: free disk at the cache folder, available RAM."""

    disk_bytes: int
    ram_bytes: int

    @classmethod
    def measure(cls, cache_root: Path) -> FreeSpace:
        import psutil

        return cls(free_bytes(cache_root), int(psutil.virtual_memory().available))  # the cache may not exist yet


@dataclass
class Job:
    """An export about to start: what it reads (and still has to download) and what it makes."""

    name: str
    backend: str
    precision: str
    params: int
    download_bytes: int = 0  # the checkpoint, when it is not on this machine yet
    ram_bytes_per_param: float | None = None  # None: RAM_BYTES_PER_PARAM (optimum-cli's, measured)
    alternative: str = ""  # a ready-made folder that needs no export, for the fix


@dataclass
class Needs:
    """What an export of `params` parameters at a precision is estimated to need."""

    params: int
    disk_bytes: int
    ram_bytes: int


def count_parameters(model_dir: Path) -> int:
    """Parameters in a checkpoint: exact from safetensors headers, else weight bytes / 2 (16-bit)."""
    total = 0
    for f in sorted(model_dir.rglob("*")):
        if not f.is_file() or f.suffix not in _WEIGHT_SUFFIXES:
            continue
        if f.suffix == ".safetensors":
            with f.open("rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                header: dict[str, Any] = json.loads(fh.read(n))
            total += sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")
        else:
            total += f.stat().st_size // 2
    return total


def _sizes(need: float, have: float) -> tuple[str, str]:
    """Both sizes, with more digits where one decimal would print a need equal to what is free."""
    a, b = _size(need), _size(have)
    if a == b and need >= 1e8:
        a, b = f"{need / 1e9:.3f} GB", f"{have / 1e9:.3f} GB"
    return a, b


def estimate(job: Job) -> Needs:
    per_param = job.ram_bytes_per_param or RAM_BYTES_PER_PARAM.get(job.precision, 5.0)
    disk = int(job.params * DISK_BYTES_PER_PARAM.get(job.precision, 4.05) * DISK_MARGIN) + job.download_bytes
    return Needs(job.params, disk, int(RAM_BASE + job.params * per_param))


def shortfalls(job: Job, cache_root: Path, free: FreeSpace | None = None) -> list[str]:
    """What the export would lack on this machine, each with its fix; empty when it fits."""
    needs = estimate(job)
    free = free or FreeSpace.measure(cache_root)
    what = f"Exporting {job.name!r} for {job.backend} at {job.precision} ({needs.params / 1e9:.2f}B parameters)"
    download = f", the {_size(job.download_bytes)} checkpoint download included," if job.download_bytes else ""
    ready = f" Or skip the export: {job.alternative}." if job.alternative else ""
    problems = []
    if needs.disk_bytes > free.disk_bytes:
        need, have = _sizes(needs.disk_bytes, free.disk_bytes)
        problems.append(
            f"{what} needs about {need} of disk{download} at {cache_root}, and "
            f"{have} is free. Fix: free some space, point the cache at a bigger disk (cache_dir= "
            f"or PHI3KIT_CACHE), or choose a smaller precision (int4 is smallest).{ready}")
    if needs.ram_bytes > free.ram_bytes:
        need, have = _sizes(needs.ram_bytes, free.ram_bytes)
        problems.append(
            f"{what} needs about {need} of RAM while converting, and {have} is "
            "available. Fix: close other programs, or export on a machine with more memory and copy the cache "
            f"folder over (exports are plain folders; `phi3kit pack` makes a workshop pack).{ready}")
    return problems


def preflight(job: Job, cache_root: Path, free: FreeSpace | None = None) -> None:
    """Raise ResourceError, naming the shortfall and the fix, when the export would not fit this machine."""
    if problems := shortfalls(job, cache_root, free):
        raise ResourceError(" ".join(problems) + f" The estimate may be cautious: to try anyway set {SKIP_ENV}=1 "
                            "(or skip_preflight=True in kit.export).")


def skip_requested(skip: bool | None = None) -> bool:
    """An explicit argument wins; otherwise PHI3KIT_SKIP_PREFLIGHT=1 (or true/yes)."""
    if skip is not None:
        return skip
    return env.switch(SKIP_ENV)
