"""What a benchmark measured: per-run records, per-route results, and the report (table, CSV, JSON, plots)."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..config import BENCH_NEW_TOKENS
from .routes import Route
from .stats import median


@dataclass
class Run:
    """One timed generation."""

    prompt_tokens: int
    new_tokens: int
    ttft_s: float
    second_token_s: float
    tpot_s: float
    tokens_per_s: float
    peak_rss_mb: float
    prompt_key: str  # a short fingerprint of the prompt ids: shows every run had a fresh prompt
    latencies_s: list[float] = field(default_factory=list)


@dataclass
class RouteResult:
    """Everything measured for one route; `status` is ok, skipped or failed, with `note` saying why."""

    route: str
    backend: str
    runtime: str
    precision: str
    device: str
    status: str = "ok"
    note: str = ""
    export_s: float = 0.0
    export_cached: bool = False
    load_s: float = 0.0
    warmup_s: float = 0.0
    load_peak_rss_mb: float = 0.0
    peak_rss_mb: float = 0.0
    size_mb: float = 0.0
    weights_read_mb: float = 0.0  # bytes a decode step reads (weights as held in memory)
    runs: list[Run] = field(default_factory=list)
    perplexity: float | None = None
    perplexity_tokens: int = 0
    perplexity_text: str = ""
    quality_note: str = ""
    greedy: list[list[int]] = field(default_factory=list)
    agreement: float | None = None
    prefix_match: float | None = None
    load_average: list[float] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RouteResult:
        d = dict(d)
        d["runs"] = [Run(**r) for r in d.get("runs", [])]
        return cls(**{k: v for k, v in d.items() if k in {f.name for f in fields(cls)}})


@dataclass
class Settings:
    """How each route is measured (the same for all routes of a report)."""

    prompt_lengths: list[int] = field(default_factory=lambda: [128])
    max_new_tokens: int = BENCH_NEW_TOKENS
    runs: int = 3
    warmup: int = 1
    quality: bool = True
    quality_tokens: int = 1024
    quality_window: int = 512
    agreement_prompts: int = 8
    agreement_tokens: int = 32
    cache_dir: str | None = None


ROW_FIELDS = ("route", "backend", "runtime", "precision", "device", "status", "prompt_tokens", "runs", "new_tokens",
              "ttft_ms", "second_token_ms", "tpot_ms", "tokens_per_s", "peak_rss_mb", "load_peak_rss_mb", "size_mb",
              "export_s", "export_cached", "load_s", "warmup_s", "perplexity", "agreement", "prefix_match",
              "bandwidth_limit_tokens_per_s", "share_of_limit", "note")


@dataclass(repr=False)
class BenchReport:
    """A benchmark's results: `rows()` (medians per route and prompt length), `save()`, `plot()`."""

    model: str
    settings: Settings
    routes: list[RouteResult]
    reference: str
    isolated: bool
    hardware: dict[str, Any] = field(default_factory=dict)
    bandwidth_gbs: float | None = None
    created: str = ""

    def rows(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for r in self.routes:
            base = {"route": r.route, "backend": r.backend, "runtime": r.runtime, "precision": r.precision,
                    "device": r.device, "status": r.status, "note": r.note}
            if r.status != "ok":
                out.append({k: base.get(k) for k in ROW_FIELDS})
                continue
            lengths = sorted({x.prompt_tokens for x in r.runs}) or [0]
            for n in lengths:
                runs = [x for x in r.runs if x.prompt_tokens == n]
                tok_s = median([x.tokens_per_s for x in runs])
                row = {**base, "prompt_tokens": n, "runs": len(runs),
                       "new_tokens": median([x.new_tokens for x in runs]),
                       "ttft_ms": median([x.ttft_s for x in runs]) * 1000,
                       "second_token_ms": median([x.second_token_s for x in runs]) * 1000,
                       "tpot_ms": median([x.tpot_s for x in runs]) * 1000, "tokens_per_s": tok_s,
                       "peak_rss_mb": max([x.peak_rss_mb for x in runs], default=0.0),
                       "load_peak_rss_mb": r.load_peak_rss_mb, "size_mb": r.size_mb, "export_s": r.export_s,
                       "export_cached": r.export_cached, "load_s": r.load_s, "warmup_s": r.warmup_s,
                       "perplexity": r.perplexity, "agreement": r.agreement, "prefix_match": r.prefix_match}
                if self.bandwidth_gbs and r.weights_read_mb:
                    limit = self.bandwidth_gbs * 1e9 / (r.weights_read_mb * 2**20)
                    row.update(bandwidth_limit_tokens_per_s=limit, share_of_limit=tok_s / limit)
                out.append({k: row.get(k) for k in ROW_FIELDS})
        return out

    def route(self, label: str) -> RouteResult:
        """The result of one route, by its label or spec ('openvino:int4' or 'openvino/genai:int4')."""
        want = Route.parse(label).label if ":" in label else label
        for r in self.routes:
            if r.route in (label, want):
                return r
        raise KeyError(f"no route {label!r} in this report (routes: {', '.join(r.route for r in self.routes)})")

    def _cells(self) -> tuple[list[str], list[list[str]], list[str]]:
        """Header, formatted rows of the routes that ran, and one note per route that did not."""
        cols = [("route", "route", "{}"), ("prompt", "prompt_tokens", "{}"), ("TTFT ms", "ttft_ms", "{:.1f}"),
                ("2nd tok ms", "second_token_ms", "{:.1f}"), ("TPOT ms", "tpot_ms", "{:.2f}"),
                ("tok/s", "tokens_per_s", "{:.1f}"), ("RSS MB", "peak_rss_mb", "{:.0f}"),
                ("size MB", "size_mb", "{:.1f}"), ("load s", "load_s", "{:.2f}"), ("export s", "export_s", "{:.1f}"),
                ("ppl", "perplexity", "{:.3f}"), ("agree", "agreement", "{:.3f}"), ("prefix", "prefix_match", "{:.1f}")]
        if self.bandwidth_gbs:
            cols.append(("% limit", "share_of_limit", "{:.0%}"))
        rows, notes = [], []
        for row in self.rows():
            if row["status"] != "ok":
                notes.append(f"{row['route']}: {row['status']}: {row['note']}")
                continue
            rows.append([("-" if row[k] is None else f.format(row[k])) for _, k, f in cols])
        return [h for h, _, _ in cols], rows, notes

    def _frame(self) -> tuple[Any, list[str]]:
        import pandas as pd

        header, rows, notes = self._cells()
        return pd.DataFrame(rows, columns=header), notes

    def table(self) -> str:
        """A fixed-width table for the terminal: routes left-aligned, numbers right-aligned."""
        frame, notes = self._frame()
        width = max([len("route"), *(len(v) for v in frame["route"])])
        text = frame.to_string(index=False, justify="right", formatters={"route": f"{{:<{width}}}".format})
        return "\n".join([text, *notes]) if len(frame) else "\n".join(notes)

    __str__ = __repr__ = table

    def to_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame(self.rows(), columns=list(ROW_FIELDS))

    def _repr_html_(self) -> str:
        from html import escape

        frame, notes = self._frame()
        return frame.to_html(index=False, escape=True) + "".join(f"<p>{escape(n)}</p>" for n in notes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, out_dir: str | Path, stem: str = "bench", overwrite: bool = False) -> tuple[Path, Path]:
        """Write `stem.csv` (the rows) and `stem.json` (everything, per-token latencies included)."""
        from ..safefs import atomic_path, atomic_write, free_path, writable_dir

        out = writable_dir(out_dir, "choose another output folder (-o)")
        csv_path = free_path(out / f"{stem}.csv", overwrite)
        json_path = free_path(csv_path.with_suffix(".json"), overwrite)
        with atomic_path(csv_path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:  # whole or not at all
            writer = csv.DictWriter(f, fieldnames=list(ROW_FIELDS))
            writer.writeheader()
            writer.writerows(self.rows())
        atomic_write(json_path, json.dumps(self.to_dict(), indent=1, default=str))
        return csv_path, json_path

    @classmethod
    def load(cls, path: str | Path) -> BenchReport:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
        d["settings"] = Settings(**d["settings"])
        d["routes"] = [RouteResult.from_dict(r) for r in d["routes"]]
        return cls(**d)

    def plot(self, figsize: tuple[float, float] = (12, 8)) -> Any:
        """TTFT, decode speed, memory and per-token latency of every route, side by side."""
        import matplotlib.pyplot as plt

        ok = [r for r in self.routes if r.status == "ok" and r.runs]
        fig, axes = plt.subplots(2, 2, figsize=figsize)
        lengths = sorted({x.prompt_tokens for r in ok for x in r.runs})
        width = 0.8 / max(len(lengths), 1)
        names = [r.route for r in ok]
        for j, n in enumerate(lengths):
            xs = [i + (j - (len(lengths) - 1) / 2) * width for i in range(len(ok))]
            ttft = [median([x.ttft_s for x in r.runs if x.prompt_tokens == n]) * 1000 for r in ok]
            speed = [median([x.tokens_per_s for x in r.runs if x.prompt_tokens == n]) for r in ok]
            axes[0, 0].bar(xs, ttft, width, label=f"{n}-token prompt")
            axes[0, 1].bar(xs, speed, width, label=f"{n}-token prompt")
        for ax, title, unit in ((axes[0, 0], "Time to first token", "ms"), (axes[0, 1], "Decode speed", "tokens/s")):
            ax.set_title(title)
            ax.set_ylabel(unit)
            ax.legend(fontsize="small")
        xs = list(range(len(ok)))
        axes[1, 0].bar([x - 0.2 for x in xs], [r.peak_rss_mb for r in ok], 0.4, label="peak RSS")
        axes[1, 0].bar([x + 0.2 for x in xs], [r.size_mb for r in ok], 0.4, label="weights on disk")
        axes[1, 0].set_title("Memory")
        axes[1, 0].set_ylabel("MB")
        axes[1, 0].legend(fontsize="small")
        for ax in (axes[0, 0], axes[0, 1], axes[1, 0]):
            ax.set_xticks(xs, names, rotation=20, ha="right", fontsize="small")
        longest = max(lengths, default=0)
        for r in ok:
            runs = sorted((x for x in r.runs if x.prompt_tokens == longest), key=lambda x: x.tokens_per_s)
            if runs:
                median_run = runs[len(runs) // 2]
                axes[1, 1].plot(range(1, len(median_run.latencies_s) + 1),
                                [t * 1000 for t in median_run.latencies_s], label=r.route)
        axes[1, 1].set_yscale("log")
        axes[1, 1].set_title(f"Per-token latency ({longest}-token prompt; token 1 = TTFT)")
        axes[1, 1].set_xlabel("token")
        axes[1, 1].set_ylabel("ms")
        axes[1, 1].legend(fontsize="small")
        fig.suptitle(f"{self.model}: {self.hardware.get('cpu', '')}", fontsize="medium")
        fig.tight_layout()
        return fig

    def quality_rows(self) -> list[dict[str, Any]]:
        """Per route: perplexity, greedy agreement with the reference, prefix match, size: the price of speed."""
        return [{"route": r.route, "perplexity": r.perplexity, "agreement": r.agreement,
                 "prefix_match": r.prefix_match, "size_mb": r.size_mb, "measured_on": r.perplexity_text,
                 "logits_from": r.quality_note}
                for r in self.routes if r.status == "ok"]

    def quality(self) -> Any:
        """`quality_rows()` as a DataFrame (a table in notebooks)."""
        import pandas as pd

        return pd.DataFrame(self.quality_rows())
