"""A scripted chat per route, the KV cache kept between answers (reuse on) and not (off), in one run.

    python benchmarks/chat.py [--model pocket] [--turns 12] [--turn-tokens 150] [--max-new-tokens 64]
                              [--routes transformers:fp32 ortgenai:fp32 openvino/genai:fp32 ...] [--out FILE.md]

The same as `phi3kit bench --chat N` (phi3kit/bench/chat.py, which says how it keeps the numbers honest); this
script also writes the tables to a file, with the command that reproduces them. Routes are written as
`phi3kit bench` writes them: backend[/runtime]:precision[@device].
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from phi3kit.bench.chat import CHAT_ROUTES, chat_table, run_chat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="pocket")
    ap.add_argument("--turns", type=int, default=12)
    ap.add_argument("--turn-tokens", type=int, default=150)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--routes", nargs="+", default=CHAT_ROUTES.split(","))
    ap.add_argument("--out", type=Path, help="also write the tables (Markdown) to this file")
    a = ap.parse_args()
    results = run_chat(a.model, a.routes, a.turns, a.turn_tokens, a.max_new_tokens)
    text = chat_table(results)
    print(text)
    if a.out:
        argv = ["--model", a.model, "--turns", a.turns, "--turn-tokens", a.turn_tokens, "--max-new-tokens",
                a.max_new_tokens, "--routes", *a.routes]
        a.out.write_text(f"`{' '.join(['python benchmarks/chat.py', *map(str, argv)])}`\n\n{text}", encoding="utf-8")
    print("median TTFT on / off per route:", {r["route"]: round(
        statistics.median(x["ttft_s"] for x in r["on"][1:]) / statistics.median(x["ttft_s"] for x in r["off"][1:]), 2)
        for r in results})


if __name__ == "__main__":
    from phi3kit.errors import Phi3kitError

    try:
        main()
    except Phi3kitError as exc:  # one paragraph naming the problem and the fix, no traceback
        sys.exit(f"benchmarks/chat.py: error: {exc}")
