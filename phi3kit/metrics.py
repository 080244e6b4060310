"""Timings and memory of one generation, the numbers the seed tutorial never showed."""

from __future__ import annotations

import statistics
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil


@dataclass
class Metrics:
    """TTFT is prompt processing plus the first token; tokens/s counts decode steps only."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    load_s: float = 0.0
    ttft_s: float = 0.0
    total_s: float = 0.0
    token_latencies_s: list[float] = field(default_factory=list)
    peak_rss_mb: float = 0.0
    finish_reason: str = ""

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
            f"TTFT {self.ttft_s * 1000:.0f} ms | TPOT {self.tpot_s * 1000:.1f} ms | "
            f"{self.tokens_per_s:.1f} tokens/s | peak RSS {self.peak_rss_mb:.0f} MB"
        )

    def _repr_html_(self) -> str:
        rows = [
            ("prompt tokens", self.prompt_tokens),
            ("new tokens", f"{self.new_tokens} ({self.finish_reason})"),
            ("load time", f"{self.load_s:.2f} s"),
            ("time to first token", f"{self.ttft_s * 1000:.1f} ms"),
            ("time per output token", f"{self.tpot_s * 1000:.2f} ms"),
            ("decode speed", f"{self.tokens_per_s:.1f} tokens/s"),
            ("peak memory (RSS)", f"{self.peak_rss_mb:.0f} MB"),
        ]
        body = "".join(f"<tr><th style='text-align:left'>{k}</th><td>{v}</td></tr>" for k, v in rows)
        return f"<table>{body}</table>"

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


class PeakMemory:
    """Samples this process's RSS in a thread; `peak_mb` is the highest value seen."""

    def __init__(self, interval_s: float = 0.01) -> None:
        self._proc = psutil.Process()
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.peak_mb = self._rss_mb()

    def _rss_mb(self) -> float:
        return self._proc.memory_info().rss / 2**20

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak_mb = max(self.peak_mb, self._rss_mb())

    def __enter__(self) -> PeakMemory:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.peak_mb = max(self.peak_mb, self._rss_mb())


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
