"""Commands that measure: `tune` (runtime settings for one export), `bench` (routes side by side)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .. import bench
from ..bench.chat import CHAT_ROUTES, chat_table, run_chat
from ..config import BENCH_NEW_TOKENS, DEFAULT_MODEL, MAX_NEW_TOKENS
from .common import folder_arg, load_config, model_args


def cmd_tune(a: argparse.Namespace) -> int:
    from ..generate import Session
    from ..tuning import require_storable, tune

    if not a.dry_run:
        require_storable(a.cache_dir)  # before the load (an export can take minutes) and the measuring
    session = Session.load(load_config(a), log=lambda m: print(m, file=sys.stderr))
    result = tune(session, objective=a.objective, runs=a.runs, prompt_tokens=a.prompt_tokens,
                  new_tokens=a.new_tokens, only=a.only.split(",") if a.only else None, save=not a.dry_run,
                  log=lambda m: print(m, file=sys.stderr, flush=True))
    print(result)
    if result.save_error:  # the table above is the measurement; it just could not be kept
        print(f"phi3kit: error: the choice above was measured but not stored: {result.save_error}", file=sys.stderr)
        return 1
    if result.saved:
        print(f"saved: {result.saved} (applied on the next load of this export on this device; tuned=False or "
              "--untuned runs the defaults)")
    return 0


def add_tune(sub: Any) -> None:
    p = sub.add_parser("tune", help="time runtime settings for an export on this machine and keep the fastest")
    model_args(p)
    p.add_argument("--objective", default="answer", choices=("answer", "decode", "ttft"),
                   help="answer: time to a whole answer (default); decode: tokens/s; ttft: time to first token")
    p.add_argument("--runs", type=int, default=3, help="timed runs per candidate (the default runs twice as many)")
    p.add_argument("--prompt-tokens", type=int, default=256)
    p.add_argument("--new-tokens", type=int, default=MAX_NEW_TOKENS)
    p.add_argument("--only", default=None, help="comma separated candidate names (default: all for the device)")
    p.add_argument("--dry-run", action="store_true", help="measure and show, store nothing")
    p.set_defaults(func=cmd_tune)


def cmd_bench(a: argparse.Namespace) -> int:
    def log(message: str) -> None:
        if a.verbose or message.startswith("--- "):
            print(message, file=sys.stderr, flush=True)

    folder_arg(a.cache_dir, "--cache-dir")
    if a.chat is not None:
        return bench_chat(a, log)
    folder_arg(a.output_dir, "-o/--output-dir")
    report = bench.run(a.model, a.routes or bench.DEFAULT_ROUTES, a.prompt_lengths,
                       a.max_new_tokens, a.runs, warmup=a.warmup,
                       quality=not a.no_quality, reference=a.reference, quality_tokens=a.quality_tokens,
                       agreement_prompts=a.agreement_prompts, agreement_tokens=a.agreement_tokens,
                       isolate=not a.in_process, bandwidth=a.bandwidth, cache_dir=a.cache_dir, log=log)
    print(report.table())
    csv_path, json_path = report.save(a.output_dir, a.name, overwrite=a.overwrite)
    print(f"CSV:  {csv_path}\nJSON: {json_path}")
    return 1 if any(r.status == "failed" for r in report.routes) else 0


def bench_chat(a: argparse.Namespace, log: Any) -> int:
    """`--chat N`: the scripted N-turn chat per route, reuse off and on (bench/chat.py); a table, no files."""
    routes = CHAT_ROUTES if a.routes is None else a.routes
    results = run_chat(a.model, routes, a.chat, a.turn_tokens, a.max_new_tokens, cache_dir=a.cache_dir, log=log)
    print(chat_table(results))
    return 0 if results else 1


def add_bench(sub: Any) -> None:
    p = sub.add_parser("bench", help="benchmark routes side by side: TTFT, tokens/s, memory, size, quality")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"hub id, local folder, or 'pocket' (default: {DEFAULT_MODEL})")
    p.add_argument("--routes", default=None,
                   help=f"comma separated backend[/runtime]:precision[@device] (default: {bench.DEFAULT_ROUTES}; "
                        f"with --chat: {CHAT_ROUTES})")
    p.add_argument("--prompt-lengths", default="128", help="prompt sizes in tokens, comma separated (default 128)")
    p.add_argument("--max-new-tokens", type=int, default=BENCH_NEW_TOKENS,
                   help="tokens per timed run, always all of them (with --chat: the longest answer of a turn)")
    p.add_argument("--chat", type=int, default=None, metavar="N",
                   help="play a scripted N-turn chat per route instead, reuse off then on (--no-reuse's two "
                        "sides): TTFT and prompt tokens read per turn")
    p.add_argument("--turn-tokens", type=int, default=150, help="with --chat: tokens of each fresh question")
    p.add_argument("--runs", type=int, default=3, help="timed runs per prompt length (medians are reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    p.add_argument("--no-quality", action="store_true", help="skip perplexity and greedy agreement")
    p.add_argument("--reference", default="transformers:fp32", help="route greedy agreement is measured against")
    p.add_argument("--quality-tokens", type=int, default=1024, help="eval-text tokens for perplexity")
    p.add_argument("--agreement-prompts", type=int, default=8)
    p.add_argument("--agreement-tokens", type=int, default=32)
    p.add_argument("--in-process", action="store_true",
                   help="run every route in this process (faster to start; memory figures then overlap)")
    p.add_argument("--bandwidth", action="store_true", help="measure memory bandwidth and show the share of its limit")
    p.add_argument("--cache-dir", default=None, help="export cache (default: PHI3KIT_CACHE or the user cache dir)")
    p.add_argument("-o", "--output-dir", default="bench-results", help="where the CSV and JSON go")
    p.add_argument("--name", default="bench", help="file name stem (default: bench.csv / bench.json)")
    p.add_argument("--overwrite", action="store_true", help="replace earlier results instead of numbering new ones")
    p.add_argument("-v", "--verbose", action="store_true", help="show export and runtime output")
    p.set_defaults(func=cmd_bench)
