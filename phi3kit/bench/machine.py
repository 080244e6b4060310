"""The read bandwidth that bounds decode; the machine the numbers belong to is phi3kit.machine.hardware."""

from __future__ import annotations

import subprocess
import sys

import psutil

from ..machine import hardware  # noqa: F401 - measurements record the machine they ran on
from ..procs import popen

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
