"""`phi3kit bench`: routes side by side, measured the way OpenVINO's llm_bench and ORT GenAI's benchmark_e2e do.

Per route: export and load time, time to first token for prompts of exact token lengths, second-token
latency, time per output token, decode tokens/s, peak RSS and the model's size on disk, with quality
beside it (perplexity and greedy agreement with the PyTorch reference, see `phi3kit.bench.quality`).

The rules that keep the numbers honest:
* warm-up runs are excluded (the first run compiles kernels and allocates memory);
* every timed run gets a fresh prompt, starting somewhere new in the eval text (OpenVINO GenAI's
  prefix cache would otherwise skip the prompt and fake the TTFT);
* greedy decoding with exactly `max_new_tokens` new tokens (`ignore_eos`), so a route that stops
  early cannot look faster;
* each route runs in its own process by default, so its memory is returned and its peak RSS is its own.

One module per job: `routes` (what runs), `prompts` (what it reads), `measure` (timing, process
isolation), `machine` (CPU, libraries, bandwidth), `quality` (perplexity, agreement), `report`
(tables, CSV, JSON, plots), `chat` (`--chat N`: a scripted chat per route, the KV cache kept and not).
"""

from __future__ import annotations

from .machine import hardware, memory_bandwidth_gbs
from .measure import measure_isolated, run, weights_mb, weights_read_mb
from .prompts import Prompts, eval_text
from .quality import agreement, fill_agreement, perplexity
from .report import BenchReport, RouteResult, Run, Settings
from .routes import DEFAULT_ROUTES, REFERENCE, ROUTE_FORMAT, BenchError, Route, available, parse_lengths, parse_routes
from .stats import median, median_interval

__all__ = [
    "DEFAULT_ROUTES",
    "REFERENCE",
    "ROUTE_FORMAT",
    "agreement",
    "available",
    "BenchError",
    "BenchReport",
    "eval_text",
    "fill_agreement",
    "hardware",
    "measure_isolated",
    "median",
    "median_interval",
    "memory_bandwidth_gbs",
    "parse_lengths",
    "parse_routes",
    "perplexity",
    "Prompts",
    "Route",
    "RouteResult",
    "run",
    "Run",
    "Settings",
    "weights_mb",
    "weights_read_mb",
]
