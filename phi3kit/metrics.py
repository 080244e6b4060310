"""Timings and memory of one generation, the numbers the seed tutorial never showed."""

from __future__ import annotations

import statistics
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil


@dataclass
class Metrics:
    """TTFT is prompt processing plus the first token; tokens/s counts decode steps only.

    In a chat, a backend that keeps its KV cache reads only the part of the prompt it does not hold yet:
    `reused_tokens` of the prompt came from the cache, `prefilled_tokens` were read for this answer, and the
    TTFT is what this answer really took (the rewind and the prefill of the new part), not a full prefill's.
    """

    prompt_tokens: int = 0
    reused_tokens: int = 0
    prefilled_tokens: int = 0
    new_tokens: int = 0
    load_s: float = 0.0
    ttft_s: float = 0.0
    total_s: float = 0.0
    token_latencies_s: list[float] = field(default_factory=list)
    peak_rss_mb: float = 0.0
    finish_reason: str = ""
    source: str = ""  # where the model came from: a ready-made repo, a folder, the checkpoint the kit exported
    recipe: str = ""  # how its weights were made (the kit's recipe, or a ready-made folder's publisher's)
    tuned: str = ""  # the runtime settings `phi3kit tune` chose for this export here ('' for the defaults)

    @property
    def tpot_s(self) -> float:
        """Mean time per output token after the first (TPOT)."""
        rest = self.token_latencies_s[1:]
        return statistics.fmean(rest) if rest else 0.0

    @property
    def tokens_per_s(self) -> float:
        rest = self.token_latencies_s[1:]
        return len(rest) / sum(rest) if rest and sum(rest) > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(tpot_s=self.tpot_s, tokens_per_s=self.tokens_per_s)
        return d

    def summary(self) -> str:
        return (
            f"{self.new_tokens} tokens ({self.finish_reason}) | load {self.load_s:.2f} s | "
            f"TTFT {self.ttft_s * 1000:.0f} ms{self._reuse_note} | TPOT {self.tpot_s * 1000:.1f} ms | "
            f"{self.tokens_per_s:.1f} tokens/s | peak RSS {self.peak_rss_mb:.0f} MB"
        )

    @property
    def _reuse_note(self) -> str:
        if not self.reused_tokens:
            return ""
        return f" ({self.prefilled_tokens} prompt tokens read, {self.reused_tokens} reused)"

    def _repr_html_(self) -> str:
        rows = [
            ("prompt tokens", f"{self.prompt_tokens}{self._reuse_note}"),
            ("new tokens", f"{self.new_tokens} ({self.finish_reason})"),
            ("load time", f"{self.load_s:.2f} s"),
            ("time to first token", f"{self.ttft_s * 1000:.1f} ms"),
            ("time per output token", f"{self.tpot_s * 1000:.2f} ms"),
            ("decode speed", f"{self.tokens_per_s:.1f} tokens/s"),
            ("peak memory (RSS)", f"{self.peak_rss_mb:.0f} MB"),
            *((("model", self.source),) if self.source else ()),
            *((("weights", self.recipe),) if self.recipe else ()),
            *((("runtime settings", self.tuned),) if self.tuned else ()),
        ]
        import pandas as pd

        return pd.DataFrame(rows).to_html(index=False, header=False)

    def plot(self, ax: Any = None, title: str = "Per-token latency") -> Any:
        """Latency of every generated token; the first bar is the time to first token."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(8, 3))
        ms = [t * 1000 for t in self.token_latencies_s]
        ax.bar(range(1, len(ms) + 1), ms, color=["tab:orange"] + ["tab:blue"] * (len(ms) - 1))
        ax.set_xlabel("token")
        ax.set_ylabel("latency (ms)")
        if len(ms) > 1:
            ax.set_yscale("log")
        ax.set_title(f"{title}: TTFT {self.ttft_s * 1000:.0f} ms, {self.tokens_per_s:.1f} tokens/s")
        return ax


_CLEAR_REFS = "/proc/self/clear_refs"
_active = 0  # PeakMemory blocks open now: only the outermost may reset the kernel's high-water mark
_active_lock = threading.Lock()


def _kernel_hwm_mb() -> float | None:
    """Linux's own peak RSS of this process (VmHWM), or None where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_kernel_hwm() -> bool:
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")  # 5: reset the peak RSS to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


class PeakMemory:
    """This process's peak RSS during a block (`peak_mb`).

    On Linux the kernel keeps the high-water mark itself (VmHWM, reset through /proc/self/clear_refs),
    so nothing runs beside the model. Elsewhere a thread samples RSS every `interval_s`: a 10 ms sampler
    slowed full-size int4 decode on 2 cores by 9% (docs/benchmarks.md), so the default is 0.1 s.
    A block opened inside another one does not reset the mark: it may then report the outer block's
    peak (too high, never too low).
    """

    def __init__(self, interval_s: float = 0.1, *, sampler: bool = False) -> None:
        self._proc = psutil.Process()
        self._interval = interval_s
        self._force_sampler = sampler  # the thread even where the kernel keeps the mark (tests)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._kernel = False
        self.peak_mb = self._rss_mb()

    def _rss_mb(self) -> float:
        return self._proc.memory_info().rss / 2**20

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak_mb = max(self.peak_mb, self._rss_mb())

    def __enter__(self) -> PeakMemory:
        global _active
        with _active_lock:
            outermost = _active == 0
            _active += 1
            if not self._force_sampler and _kernel_hwm_mb() is not None:
                self._kernel = (not outermost) or _reset_kernel_hwm()
        self.peak_mb = self._rss_mb()
        if not self._kernel:
            self._thread = threading.Thread(target=self._run, name="phi3kit-peak-memory", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        global _active
        self._stop.set()
        if self._thread:
            self._thread.join()
        hwm = _kernel_hwm_mb() if self._kernel else None
        self.peak_mb = max(self.peak_mb, self._rss_mb(), hwm or 0.0)
        with _active_lock:
            _active -= 1


RECORD_MIME = "application/vnd.phi3kit.metrics+json"


def record(metrics: Metrics, **labels: Any) -> None:
    """Store these metrics in the executed notebook, where `phi3kit run` collects them into its results table.

    Shows one summary line; the numbers travel as a JSON output under RECORD_MIME (papermill keeps it).
    """
    data = {**labels, **metrics.to_dict()}
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        get_ipython = None  # type: ignore[assignment]
    if get_ipython is None or get_ipython() is None:
        print(f"recorded: {metrics.summary()}")
        return
    display({RECORD_MIME: data, "text/plain": f"recorded: {metrics.summary()}"}, raw=True)
