"""The machine the numbers belong to: CPU, ISA, memory, libraries, and the read bandwidth that bounds decode."""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import psutil

from ..diagnostics import LIBRARIES, cpu_info
from ..procs import popen


def hardware() -> dict[str, Any]:
    """The machine the numbers belong to."""
    name, isa, _ = cpu_info()  # AVX2 only or AVX-512/VNNI/AMX decides int4 speed as much as bandwidth does
    cpu = name or platform.machine()
    vm = psutil.virtual_memory()
    libs = {}
    for lib in LIBRARIES:
        try:
            libs[lib] = version(lib)
        except PackageNotFoundError:
            libs[lib] = "not installed"
    return {"cpu": cpu, "isa": isa, "cores_physical": psutil.cpu_count(logical=False),
            "cores_logical": psutil.cpu_count(),
            "ram_total_gb": round(vm.total / 1e9, 1), "ram_available_gb": round(vm.available / 1e9, 1),
            "os": platform.platform(), "python": platform.python_version(), "libraries": libs}


_READER = """
import sys, time
import numpy as np
a = np.ones(int(sys.argv[1]) * 2**20 // 4, dtype=np.int32)  # touched: every page resident before timing
a.max()
print("ready", flush=True)
for _ in sys.stdin:  # one line per round: all readers start together
    start = time.perf_counter()
    a.max()  # a reduction with almost no arithmetic: memory-bound
    print(time.perf_counter() - start, flush=True)
"""


def memory_bandwidth_gbs(workers: int | None = None, mb: int = 1024, repeats: int = 5) -> float:
    """Read bandwidth in GB/s: `workers` processes (default: physical cores) each sum their own buffer at once.

    Decode reads every weight once per token, so bandwidth / bytes read per token bounds tokens/s.
    """
    workers = workers or psutil.cpu_count(logical=False) or 1
    procs = [popen([sys.executable, "-c", _READER, str(mb)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, bufsize=1) for _ in range(workers)]
    try:
        for p in procs:
            if p.stdout is None or p.stdout.readline().strip() != "ready":
                raise RuntimeError(f"a bandwidth reader could not allocate {mb} MB (exit code {p.poll()})")
        rounds = []
        for _ in range(repeats):
            for p in procs:
                assert p.stdin is not None
                p.stdin.write("go\n")
                p.stdin.flush()
            rounds.append(max(float(p.stdout.readline()) for p in procs if p.stdout))  # the slowest bounds it
    finally:
        for p in procs:
            if p.stdin:
                p.stdin.close()
            p.wait()
    return workers * mb * 2**20 / min(rounds) / 1e9
