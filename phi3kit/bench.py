"""`phi3kit bench`: routes side by side, measured the way OpenVINO's llm_bench and ORT GenAI's benchmark_e2e do.

Per route: export and load time, time to first token for prompts of exact token lengths, second-token
latency, time per output token, decode tokens/s, peak RSS and the model's size on disk, with quality
beside it (perplexity and greedy agreement with the PyTorch reference, see `phi3kit.quality`).

The rules that keep the numbers honest:
* warm-up runs are excluded (the first run compiles kernels and allocates memory);
* every timed run gets a fresh prompt, starting somewhere new in the eval text (OpenVINO GenAI's
  prefix cache would otherwise skip the prompt and fake the TTFT);
* greedy decoding with exactly `max_new_tokens` new tokens (`ignore_eos`), so a route that stops
  early cannot look faster;
* each route runs in its own process by default, so its memory is returned and its peak RSS is its own.
"""

from __future__ import annotations

import csv
import gc
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import psutil

from . import backends
from .backends.base import Log, run_logged
from .config import GenerationConfig, LoadConfig
from .errors import Phi3kitError
from .quality import agreement, eval_text, perplexity, quality_segments

DEFAULT_ROUTES = "transformers:fp32,openvino:int4,openvino:int8,ortgenai:int4"
REFERENCE = "transformers:fp32"
ROUTE_FORMAT = "backend[/runtime]:precision[@device], e.g. openvino:int4, openvino/optimum:int8, ortgenai:int4@CPU"
# Files that hold weights in an export folder (tokenizer models are not counted).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".onnx", ".data", ".onnx_data")
_BYTES = {"fp32": 4, "float32": 4, "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2}
# PyTorch loads a checkpoint and converts it: measured ~1.5x the converted weights in RSS (FACTS.md),
# most of it page cache that can be given back; 1.3x of anonymous memory is the floor we check against.
TORCH_RAM_FACTOR = 1.3
LIBRARIES = ("torch", "transformers", "openvino", "openvino-genai", "optimum-intel", "nncf", "onnxruntime-genai")


class BenchError(Phi3kitError, ValueError):
    """A benchmark setting cannot be used (route syntax, prompt length)."""


# --- routes --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Route:
    """One way to run the model: a backend, its runtime, a precision and a device."""

    backend: str
    precision: str
    runtime: str | None = None
    device: str = "CPU"

    @classmethod
    def parse(cls, spec: str | Route) -> Route:
        if isinstance(spec, Route):
            return spec
        m = re.fullmatch(r"\s*([\w-]+)(?:/([\w-]+))?:(\w+)(?:@([\w.:-]+))?\s*", str(spec))
        if not m:
            raise BenchError(f"Cannot read the route {spec!r}. Write {ROUTE_FORMAT}.")
        backend, runtime, precision, device = m.groups()
        return cls(backend, precision, runtime, device or "CPU")

    @property
    def resolved_runtime(self) -> str:
        if self.runtime:
            return self.runtime
        try:
            return backends.get(self.backend).default_runtime()
        except Phi3kitError:  # an unknown backend: `problem()` says so
            return "default"

    @property
    def label(self) -> str:
        device = "" if self.device == "CPU" else f"@{self.device}"
        return f"{self.backend}/{self.resolved_runtime}:{self.precision}{device}"

    def config(self, model: str, cache_dir: str | None = None) -> LoadConfig:
        return LoadConfig(model=model, backend=self.backend, precision=self.precision, device=self.device,
                          runtime=self.runtime, cache_dir=cache_dir)


def parse_routes(routes: str | Sequence[str | Route]) -> list[Route]:
    """'transformers:fp32,openvino:int4' or a list of specs -> Routes (duplicates removed, order kept)."""
    items = routes.split(",") if isinstance(routes, str) else list(routes)
    out: list[Route] = []
    for item in items:
        if isinstance(item, str) and not item.strip():
            continue
        route = Route.parse(item)
        if route not in out:
            out.append(route)
    if not out:
        raise BenchError(f"No routes given. Write a comma-separated list of {ROUTE_FORMAT}.")
    return out


def parse_lengths(lengths: str | int | Sequence[int]) -> list[int]:
    """'128,512', 128 or [128, 512] -> [128, 512]; every length a positive integer."""
    items = str(lengths).split(",") if isinstance(lengths, str | int) else list(lengths)
    try:
        out = [int(x) for x in items if str(x).strip()]
    except ValueError as exc:
        raise BenchError(f"prompt lengths must be whole numbers of tokens, got {lengths!r}. Fix: e.g. '128,512'.") \
            from exc
    if not out or min(out) <= 0:
        raise BenchError(f"prompt lengths must be positive token counts, got {lengths!r}. Fix: e.g. '128,512'.")
    return out


def problem(route: Route) -> str | None:
    """Why `route` cannot run on this machine (unknown choice, missing package, missing device), or None."""
    try:
        backend = backends.get(route.backend)
        runtime = route.runtime or backend.default_runtime()
        if runtime not in backend.runtimes:
            return f"backend {route.backend} has no runtime {runtime!r} (it has: {', '.join(backend.runtimes)})"
        if route.precision not in backend.precisions:
            return (f"backend {route.backend} has no precision {route.precision!r} "
                    f"(it has: {', '.join(backend.precisions)})")
        devices = backend.devices(runtime)
    except (Phi3kitError, ImportError) as exc:
        return str(exc)
    if route.device not in devices and route.device.upper() not in devices:
        return f"device {route.device} is not available to {route.backend} here (available: {', '.join(devices)})"
    return None


def available(routes: str | Sequence[str | Route]) -> list[tuple[Route, str | None]]:
    """Each route with None if it runs here, else the reason it is skipped."""
    return [(r, problem(r)) for r in parse_routes(routes)]


# --- prompts ---------------------------------------------------------------------------------------
class Prompts:
    """Chat prompts of an exact token count cut from the eval text, each one starting somewhere new.

    The ids are the chat template's head, a slice of the text's ids, and the template's tail, so the
    count is exact (re-tokenizing a cut text could merge tokens at the edges). Successive prompts start
    STRIDE tokens apart, so no two share a prefix beyond the template's first tokens.
    """

    STRIDE = 101  # prime: starts cycle through every position of the text before repeating

    def __init__(self, tokenizer: Any, text: str | None = None) -> None:
        sentinel = "\x00PHI3KIT\x00"
        templated = tokenizer.apply_chat_template([{"role": "user", "content": sentinel}],
                                                  add_generation_prompt=True, tokenize=False)
        before, after = templated.split(sentinel)
        self.head = self._ids(tokenizer, before)
        self.tail = self._ids(tokenizer, after)
        self.body = self._ids(tokenizer, text if text is not None else eval_text())
        self.made = 0

    @staticmethod
    def _ids(tokenizer: Any, text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]) if text else []

    @property
    def overhead(self) -> int:
        return len(self.head) + len(self.tail)

    def make(self, n_tokens: int) -> list[int]:
        """A fresh prompt of exactly `n_tokens` ids."""
        k = n_tokens - self.overhead
        if k < 1:
            raise BenchError(f"A prompt of {n_tokens} tokens cannot hold the chat template ({self.overhead} tokens) "
                             f"and any text. Fix: use prompt lengths of at least {self.overhead + 1}.")
        start = (self.made * self.STRIDE) % len(self.body)
        self.made += 1
        body = [self.body[(start + i) % len(self.body)] for i in range(k)]
        return self.head + body + self.tail


# --- results ---------------------------------------------------------------------------------------
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
    max_new_tokens: int = 64
    runs: int = 3
    warmup: int = 1
    quality: bool = True
    quality_tokens: int = 1024
    quality_window: int = 512
    agreement_prompts: int = 8
    agreement_tokens: int = 32
    cache_dir: str | None = None


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


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
                tok_s = _median([x.tokens_per_s for x in runs])
                row = {**base, "prompt_tokens": n, "runs": len(runs),
                       "new_tokens": _median([x.new_tokens for x in runs]),
                       "ttft_ms": _median([x.ttft_s for x in runs]) * 1000,
                       "second_token_ms": _median([x.second_token_s for x in runs]) * 1000,
                       "tpot_ms": _median([x.tpot_s for x in runs]) * 1000, "tokens_per_s": tok_s,
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

    def table(self) -> str:
        """A fixed-width table for the terminal."""
        header, rows, notes = self._cells()
        cells = [header, *rows]
        widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
        lines = ["  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(c, widths, strict=True)))
                 for c in cells]
        return "\n".join(lines + notes)

    __str__ = __repr__ = table

    def to_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame(self.rows(), columns=list(ROW_FIELDS))

    def _repr_html_(self) -> str:
        from html import escape

        header, rows, notes = self._cells()
        head = "".join(f"<th>{escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td style='text-align:{'left' if i == 0 else 'right'}'>{escape(v)}</td>"
                                        for i, v in enumerate(row)) + "</tr>" for row in rows)
        return f"<table><tr>{head}</tr>{body}</table>" + "".join(f"<p>{escape(n)}</p>" for n in notes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, out_dir: str | Path, stem: str = "bench", overwrite: bool = False) -> tuple[Path, Path]:
        """Write `stem.csv` (the rows) and `stem.json` (everything, per-token latencies included)."""
        from .runner import free_path

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        csv_path = free_path(out / f"{stem}.csv", overwrite)
        json_path = free_path(csv_path.with_suffix(".json"), overwrite)
        with csv_path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(ROW_FIELDS))
            writer.writeheader()
            writer.writerows(self.rows())
        json_path.write_text(json.dumps(self.to_dict(), indent=1, default=str), encoding="utf-8")
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
            ttft = [_median([x.ttft_s for x in r.runs if x.prompt_tokens == n]) * 1000 for r in ok]
            speed = [_median([x.tokens_per_s for x in r.runs if x.prompt_tokens == n]) for r in ok]
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


# --- measuring one route -----------------------------------------------------------------------------
def weights_mb(folder: Path) -> float:
    """Size of the weight files in an export folder (tokenizer models excluded)."""
    total = sum(p.stat().st_size for p in Path(folder).rglob("*")
                if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES) and "tokenizer" not in p.name)
    return total / 2**20


def weights_read_mb(route: Route, folder: Path, model_config: dict[str, Any]) -> float:
    """The bytes one decode step reads: the weights as the runtime holds them (PyTorch converts the checkpoint)."""
    size = weights_mb(folder)
    if route.backend == "transformers":
        stored = _BYTES.get(str(model_config.get("dtype") or model_config.get("torch_dtype") or "float32"), 4)
        return size * _BYTES.get(route.precision, stored) / stored
    return size


def export_seconds(export: Any) -> tuple[float, bool]:
    """(seconds the export took, whether it came from the cache): a cached entry reports its original build time."""
    if not export.cached:
        return export.seconds, False
    manifest = Path(export.path) / "phi3kit-manifest.json"
    if manifest.is_file():
        return float(json.loads(manifest.read_text()).get("build_seconds", 0.0)), True
    return 0.0, True


def memory_problem(route: Route, source: Any) -> str | None:
    """PyTorch holds the whole model at the route's precision: refuse up front what would swap or be killed."""
    if route.backend != "transformers":
        return None
    need_gb = weights_read_mb(route, source.path, source.config) * 2**20 * TORCH_RAM_FACTOR / 1e9
    free_gb = psutil.virtual_memory().available / 1e9
    if need_gb > free_gb:
        return (f"PyTorch {route.precision} needs about {need_gb:.1f} GB of RAM here, {free_gb:.1f} GB is available. "
                "Fix: close other programs, or compare bf16 / the OpenVINO and ONNX Runtime GenAI routes instead.")
    return None


def _generate(session: Any, ids: list[int], gen: GenerationConfig) -> Any:
    from .generate import Response

    session.check_fits(len(ids), gen.max_new_tokens)
    return Response(session, ids, gen).consume()


def _fingerprint(ids: list[int]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:12]


def agreement_prompts(model: str, session: Any, n: int) -> list[list[int]]:
    """Prompt ids for greedy agreement: the pocket's own questions, or fresh 64-token cuts of the eval text."""
    if n <= 0:
        return []
    if model == "pocket":
        from . import pocket
        from .generate import to_messages

        return [session.encode(to_messages(qa["question"])) for qa in pocket.load_qa()[:n]]
    prompts = Prompts(session.tokenizer)
    prompts.made = 1000  # away from the speed prompts' starts
    return [prompts.make(min(64, session.context_length // 2)) for _ in range(n)]


def measure(route: Route, model: str, settings: Settings, log: Log = print) -> RouteResult:
    """Measure one route in this process; problems become a skipped or failed result, never an exception."""
    r = RouteResult(route=route.label, backend=route.backend, runtime=route.resolved_runtime,
                    precision=route.precision, device=route.device)
    r.load_average = list(os.getloadavg()) if hasattr(os, "getloadavg") else []
    if why := problem(route):
        r.status, r.note = "skipped", why
        return r
    try:
        _measure(route, model, settings, r, log)
    except _Skip as exc:
        r.status, r.note = "skipped", str(exc)
    except Exception as exc:  # noqa: BLE001 - one broken route must not lose the others' results
        r.status, r.note = "failed", f"{type(exc).__name__}: {_last_line(exc)}"
    return r


class _Skip(Exception):
    pass


def _last_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _measure(route: Route, model: str, s: Settings, r: RouteResult, log: Log) -> None:
    from .generate import Session
    from .sources import resolve

    cfg = route.config(model, s.cache_dir)
    if why := memory_problem(route, resolve(model)):
        raise _Skip(why)
    session = Session.load(cfg, log)
    try:
        r.export_s, r.export_cached = export_seconds(session.export)
        r.load_s, r.load_peak_rss_mb = session.load_s, session.load_peak_rss_mb
        r.size_mb = weights_mb(session.export.path)
        r.weights_read_mb = weights_read_mb(route, session.export.path, session.source.config)
        prompts = Prompts(session.tokenizer)
        gen = GenerationConfig(max_new_tokens=s.max_new_tokens, ignore_eos=True)
        if s.prompt_lengths:
            for _ in range(s.warmup):
                start = time.perf_counter()
                _generate(session, prompts.make(min(s.prompt_lengths)), gen)
                r.warmup_s += time.perf_counter() - start
        for n in s.prompt_lengths:
            for _ in range(s.runs):
                ids = prompts.make(n)
                m = _generate(session, ids, gen).metrics
                lat = list(m.token_latencies_s)
                r.runs.append(Run(prompt_tokens=len(ids), new_tokens=m.new_tokens, ttft_s=m.ttft_s,
                                  second_token_s=lat[1] if len(lat) > 1 else 0.0, tpot_s=m.tpot_s,
                                  tokens_per_s=m.tokens_per_s, peak_rss_mb=m.peak_rss_mb,
                                  prompt_key=_fingerprint(ids), latencies_s=lat))
        r.peak_rss_mb = max([x.peak_rss_mb for x in r.runs], default=r.load_peak_rss_mb)
        if s.quality:
            greedy = GenerationConfig(max_new_tokens=s.agreement_tokens)
            r.greedy = [_generate(session, ids, greedy).token_ids
                        for ids in agreement_prompts(model, session, s.agreement_prompts)]
            if route.backend == "openvino" and route.resolved_runtime == "genai":
                session.backend.close()  # perplexity loads the same export through optimum-intel: free this copy
                gc.collect()
            window = min(s.quality_window, session.context_length)
            segments, name = quality_segments(model, session.tokenizer, s.quality_tokens, window)
            ppl = perplexity(session, segments)
            r.perplexity, r.perplexity_tokens, r.quality_note = ppl.value, ppl.tokens, ppl.note
            r.perplexity_text = name
    finally:
        session.close()
        del session
        gc.collect()


# --- running routes in their own processes ------------------------------------------------------------
def _worker_main(argv: Sequence[str] | None = None) -> None:
    """Entry point of a route's own process: read the job, measure, write the result as JSON."""
    job_path, out_path = argv if argv is not None else sys.argv[1:3]
    job = json.loads(Path(job_path).read_text())
    result = measure(Route(**job["route"]), job["model"], Settings(**job["settings"]),
                     log=lambda m: print(m, flush=True))
    Path(out_path).write_text(json.dumps(asdict(result)))


def measure_isolated(route: Route, model: str, settings: Settings, log: Log = print) -> RouteResult:
    """`measure` in a fresh Python process: its memory is returned afterwards and its peak RSS is its own."""
    with tempfile.TemporaryDirectory(prefix="phi3kit-bench-") as tmp:
        job, out = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job.write_text(json.dumps({"route": asdict(route), "model": model, "settings": asdict(settings)}))
        cmd = [sys.executable, "-c", "from phi3kit.bench import _worker_main; _worker_main()", str(job), str(out)]
        rc, lines = run_logged(cmd, log)
        tail = lines[-20:]
        if out.is_file():
            return RouteResult.from_dict(json.loads(out.read_text()))
        killed = " (killed: out of memory?)" if rc in (-9, 137) else ""
        note = f"its process exited with code {rc}{killed}: " + " | ".join(x for x in tail[-3:] if x)
        return RouteResult(route=route.label, backend=route.backend, runtime=route.resolved_runtime,
                           precision=route.precision, device=route.device, status="failed", note=note)


def hardware() -> dict[str, Any]:
    """The machine the numbers belong to."""
    from .doctor import cpu_info

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


def run(model: str = "pocket", routes: str | Sequence[str | Route] = DEFAULT_ROUTES,
        prompt_lengths: str | int | Sequence[int] = (128,), max_new_tokens: int = 64, runs: int = 3, *,
        warmup: int = 1, quality: bool = True, reference: str = REFERENCE, quality_tokens: int = 1024,
        agreement_prompts: int = 8, agreement_tokens: int = 32, isolate: bool = True, bandwidth: bool = False,
        cache_dir: str | None = None, log: Log = print) -> BenchReport:
    """Benchmark `routes` on `model`; routes that cannot run here are skipped with the reason.

    Greedy agreement is measured against `reference` (PyTorch fp32): it runs for quality only when it
    is not among the routes.
    """
    route_list = parse_routes(routes)
    settings = Settings(prompt_lengths=parse_lengths(prompt_lengths), max_new_tokens=max_new_tokens, runs=runs,
                        warmup=warmup, quality=quality, quality_tokens=quality_tokens,
                        agreement_prompts=agreement_prompts, agreement_tokens=agreement_tokens,
                        cache_dir=cache_dir or None)
    GenerationConfig(max_new_tokens=max_new_tokens)  # validates before anything loads
    if runs < 1:
        raise BenchError(f"runs must be at least 1, got {runs}.")
    one = measure_isolated if isolate else measure
    report = BenchReport(model=model, settings=settings, routes=[], reference=Route.parse(reference).label,
                         isolated=isolate, hardware=hardware(), created=time.strftime("%Y-%m-%dT%H:%M:%S"))
    if bandwidth:
        report.bandwidth_gbs = memory_bandwidth_gbs()
    for route in route_list:
        log(f"--- {route.label}")
        report.routes.append(one(route, model, settings, log))
    if quality:
        ref_route = Route.parse(reference)
        ref = next((r for r in report.routes if r.route == ref_route.label), None)
        if ref is None:
            log(f"--- {ref_route.label} (reference for greedy agreement)")
            ref = one(ref_route, model, Settings(**{**asdict(settings), "prompt_lengths": [], "warmup": 0}), log)
        fill_agreement(report, ref)
    return report


def fill_agreement(report: BenchReport, ref: RouteResult) -> None:
    """Set each route's greedy agreement with the reference's outputs (or say why there is none)."""
    report.reference = ref.route
    for r in report.routes:
        if r.status == "ok" and ref.status == "ok" and r.greedy and ref.greedy:
            a = agreement(ref.greedy, r.greedy)
            r.agreement, r.prefix_match = a.identical, a.prefix
        elif r.status == "ok":
            r.quality_note = (r.quality_note + "; " if r.quality_note else "") + \
                f"no greedy agreement: reference {ref.route} {ref.status} ({ref.note})"


# --- the machine's limits and the kit's own cost ----------------------------------------------------------
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
    procs = [subprocess.Popen([sys.executable, "-c", _READER, str(mb)], stdin=subprocess.PIPE,
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


def median_interval(values: Sequence[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Bootstrap 95% interval of the median of `values` (percentile method, seeded: the same samples give the same
    interval)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    a = np.asarray(values, dtype=float)
    boot = np.median(a[rng.integers(0, len(a), size=(resamples, len(a)))], axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return float(lo), float(hi)


def kit_overhead(model: str = "pocket", precision: str = "int4", prompt_lengths: str | Sequence[int] = (128,),
                 max_new_tokens: int = 64, runs: int = 3, device: str = "CPU", cache_dir: str | None = None,
                 log: Log = print) -> list[dict[str, Any]]:
    """The kit's cost over calling OpenVINO GenAI directly: the same compiled pipeline, so only the wrapper differs.

    Direct: `pipe.generate(templated_text, config, streamer)` on the kit's own `LLMPipeline`, with a
    StreamerBase that timestamps tokens. Kit: `session.generate(text)`, TTFT counted from the call
    (templating and tokenizing included). A second pipeline would be a second copy of the weights in
    other pages, which times memory placement too (an earlier run against one saw +6.5% to +9.3%).
    Every call gets a fresh prompt of the same length, so the prefix cache helps neither side; pairs
    alternate their order, so drift cancels. Decode speed is judged by the median per-token latency,
    with a bootstrap 95% interval over the pairs' ratios. The kit's cost in milliseconds (per call,
    per token) does not grow with the model, so a small model measures it precisely and bounds the
    share on a big one.
    """
    import numpy as np
    import openvino_genai

    from .generate import Session

    session = Session.load(LoadConfig(model=model, backend="openvino", precision=precision, device=device,
                                      runtime="genai", cache_dir=cache_dir), log)
    pipe = session.backend.pipe
    prompts = Prompts(session.tokenizer)
    Status = openvino_genai.StreamingStatus

    class Stamps(openvino_genai.StreamerBase):
        def __init__(self) -> None:
            super().__init__()
            self.times: list[float] = []

        def write(self, token: Any) -> Any:
            self.times.append(time.perf_counter())
            return Status.RUNNING

        def end(self) -> None:
            pass

    def content(n: int) -> str:
        ids = prompts.make(n)[len(prompts.head): n - len(prompts.tail)]
        return session.tokenizer.decode(ids)

    def templated(text: str) -> str:
        return session.tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                     add_generation_prompt=True, tokenize=False)

    def direct(text: str) -> tuple[float, list[float]]:
        config = pipe.get_generation_config()
        config.max_new_tokens, config.ignore_eos, config.apply_chat_template = max_new_tokens, True, False
        config.stop_token_ids = set()
        config.do_sample = False
        prompt = templated(text)
        streamer = Stamps()
        start = time.perf_counter()
        pipe.generate(prompt, config, streamer)
        t = streamer.times
        return t[0] - start, [b - a for a, b in zip(t, t[1:], strict=False)]

    def kit(text: str) -> tuple[float, list[float]]:
        start = time.perf_counter()
        response = session.generate(text, max_new_tokens=max_new_tokens, ignore_eos=True)
        encoded = time.perf_counter() - start
        response.consume()
        m = response.metrics
        return encoded + m.ttft_s, m.token_latencies_s[1:]

    def interval(ratios: list[float]) -> tuple[float, float]:
        lo, hi = median_interval(ratios)
        return lo - 1, hi - 1

    def same_input(text: str) -> bool:
        """The ids the pipeline's own tokenizer makes of the direct call's text are the ids the kit sends."""
        direct_ids = np.asarray(pipe.get_tokenizer().encode(templated(text)).input_ids.data).reshape(-1).tolist()
        return direct_ids == session.generate(text, max_new_tokens=1).prompt_ids

    rows = []
    for n in parse_lengths(prompt_lengths):
        same_prompt = same_input(content(n))
        # Greedy ids are not compared: OpenVINO's CPU runs are not bit-reproducible (bf16, thread scheduling), so
        # two direct calls on one prompt can part after 60 of 64 tokens, and on random weights at the first.
        for f in (direct, kit):
            f(content(n))  # warm-up, excluded
        ttft: dict[str, list[float]] = {"direct": [], "kit": []}
        tpot: dict[str, list[float]] = {"direct": [], "kit": []}
        for i in range(runs):
            order = (("kit", kit), ("direct", direct)) if i % 2 == 0 else (("direct", direct), ("kit", kit))
            for name, f in order:
                first, gaps = f(content(n))
                ttft[name].append(first)
                tpot[name].append(_median(gaps))
        row: dict[str, Any] = {"prompt_tokens": n, "runs": runs, "new_tokens": max_new_tokens,
                               "same_prompt_ids": same_prompt}
        for key, name, samples in (("ttft", "ttft", ttft), ("tpot", "decode", tpot)):
            pairs = list(zip(samples["kit"], samples["direct"], strict=True))
            ratios = [k / d for k, d in pairs if d]
            row[f"kit_{key}_ms"], row[f"direct_{key}_ms"] = (_median(samples[x]) * 1000 for x in ("kit", "direct"))
            # the kit's cost in time, per call and per token: what carries over to a bigger model
            row[f"{key}_overhead_ms"] = _median([(k - d) * 1000 for k, d in pairs])
            row[f"{name}_overhead"] = _median(ratios) - 1 if ratios else math.nan
            row[f"{name}_overhead_95"] = interval(ratios) if ratios else (math.nan, math.nan)
        for side in ("kit", "direct"):
            row[f"{side}_tokens_per_s"] = 1000 / row[f"{side}_tpot_ms"] if row[f"{side}_tpot_ms"] else 0.0
        rows.append(row)
    session.close()
    return rows
