"""Measuring routes: one route in this process, or in a fresh process of its own, and a whole benchmark run."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import psutil

from ..backends import get
from ..backends.base import Log
from ..config import BENCH_NEW_TOKENS, GenerationConfig
from ..errors import last_line
from ..procs import json_job_main, run_json_job
from .machine import hardware, memory_bandwidth_gbs
from .prompts import Prompts
from .quality import agreement_prompts, fill_agreement, perplexity, quality_segments
from .report import BenchReport, RouteResult, Run, Settings
from .routes import DEFAULT_ROUTES, REFERENCE, BenchError, Route, parse_lengths, parse_routes, problem, refuse_unknown

# Files that hold weights in an export folder (tokenizer models are not counted).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".onnx", ".data", ".onnx_data", ".gguf")
_BYTES = {"fp32": 4, "float32": 4, "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2}
# PyTorch loads a checkpoint and converts it: measured ~1.5x the converted weights in RSS on the full-size model,
# most of it page cache that can be given back; 1.3x of anonymous memory is the floor we check against.
TORCH_RAM_FACTOR = 1.3


def weights_mb(folder: Path) -> float:
    """Size of the weight files in an export folder (tokenizer models excluded)."""
    total = sum(p.stat().st_size for p in Path(folder).rglob("*")
                if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES) and "tokenizer" not in p.name)
    return total / 2**20


def weights_read_mb(route: Route, folder: Path, model_config: dict[str, Any]) -> float:
    """The bytes one decode step reads: the weights as the runtime holds them (PyTorch converts the checkpoint)."""
    size = weights_mb(folder)
    if get(route.backend).converts_on_load:
        stored = _BYTES.get(str(model_config.get("dtype") or model_config.get("torch_dtype") or "float32"), 4)
        return size * _BYTES.get(route.precision, stored) / stored
    return size


def export_seconds(export: Any) -> tuple[float, bool]:
    """(seconds the export took, whether it came from the cache): a cached entry reports its original build time."""
    if not export.cached:
        return export.seconds, False
    manifest = Path(export.path) / "phi3kit-manifest.json"
    if manifest.is_file():
        return float(json.loads(manifest.read_text(encoding="utf-8")).get("build_seconds", 0.0)), True
    return 0.0, True


def memory_problem(route: Route, source: Any) -> str | None:
    """A runtime that holds the whole model at the route's precision (PyTorch): refuse up front what would swap or
    be killed."""
    if not get(route.backend).converts_on_load:
        return None
    need_gb = weights_read_mb(route, source.path, source.config) * 2**20 * TORCH_RAM_FACTOR / 1e9
    free_gb = psutil.virtual_memory().available / 1e9
    if need_gb > free_gb:
        return (f"{route.label} holds the whole model at {route.precision}: about {need_gb:.1f} GB of RAM here, "
                f"{free_gb:.1f} GB is available. Fix: close other programs, or compare a smaller precision or the "
                "routes that run an export (OpenVINO, ONNX Runtime GenAI) instead.")
    return None


def _generate(session: Any, ids: list[int], gen: GenerationConfig) -> Any:
    from ..generate import Response

    session.check_fits(len(ids), gen.max_new_tokens)
    return Response(session, ids, gen).consume()


def _fingerprint(ids: list[int]) -> str:
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:12]


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
        r.status, r.note = "failed", f"{type(exc).__name__}: {last_line(exc)}"
    return r


class _Skip(Exception):
    pass


def _measure(route: Route, model: str, s: Settings, r: RouteResult, log: Log) -> None:
    from ..generate import Session
    from ..sources import resolve

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
            session.backend.free_for_logits()  # e.g. OpenVINO GenAI: perplexity loads a second copy of the export
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
def worker_main(argv: Sequence[str] | None = None) -> None:
    """Entry point of a route's own process (procs.run_json_job): measure, write the result."""
    json_job_main(lambda job: asdict(measure(Route(**job["route"]), job["model"], Settings(**job["settings"]),
                                             log=lambda m: print(m, flush=True))), argv)


def measure_isolated(route: Route, model: str, settings: Settings, log: Log = print) -> RouteResult:
    """`measure` in a fresh Python process: its memory is returned afterwards and its peak RSS is its own."""
    job = {"route": asdict(route), "model": model, "settings": asdict(settings)}
    result, rc, lines = run_json_job("phi3kit.bench.measure:worker_main", job, log)
    if result is not None:
        return RouteResult.from_dict(result)
    killed = " (killed: out of memory?)" if rc in (-9, 137) else ""
    note = f"its process exited with code {rc}{killed}: " + " | ".join(x for x in lines[-3:] if x)
    return RouteResult(route=route.label, backend=route.backend, runtime=route.resolved_runtime,
                       precision=route.precision, device=route.device, status="failed", note=note)


def run(model: str = "pocket", routes: str | Sequence[str | Route] = DEFAULT_ROUTES,
        prompt_lengths: str | int | Sequence[int] = (128,), max_new_tokens: int = BENCH_NEW_TOKENS, runs: int = 3, *,
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
    for route in [*route_list, *([Route.parse(reference)] if quality else [])]:
        refuse_unknown(route)  # a mistyped route is an error, not a skip beside a 37 s reference run
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
