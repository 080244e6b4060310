"""Side-by-side speed of the kit's routes on the pocket model, in one process.

    python benchmarks/pocket_speed.py [--model pocket] [--runs 10]

Each timed run uses a different training question (a fresh prompt, so OpenVINO GenAI's prefix
cache cannot fake the TTFT); one warm-up run per route is excluded. Prints medians and ratios
against the PyTorch fp32 reference.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import phi3kit as kit
from phi3kit import pocket

ROUTES = [
    ("transformers", "fp32", None),
    ("openvino", "fp32", "genai"),
    ("openvino", "fp16", "genai"),
    ("openvino", "int8", "genai"),
    ("openvino", "int4", "genai"),
    ("openvino", "int8", "optimum"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="pocket")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    a = ap.parse_args()
    questions = [q["question"] for q in pocket.load_qa()]
    rows = []
    for backend, precision, runtime in ROUTES:
        s = kit.load(a.model, backend, precision, "CPU", runtime, log=lambda m: None)
        s.generate(questions[-1], max_new_tokens=a.max_new_tokens).consume()  # warm-up
        ms = [s.generate(q, max_new_tokens=a.max_new_tokens).consume().metrics for q in questions[: a.runs]]
        rows.append({
            "route": f"{backend}/{runtime or 'pytorch'} {precision}",
            "load_s": s.load_s,
            "ttft_ms": statistics.median(m.ttft_s for m in ms) * 1000,
            "tok_s": statistics.median(m.tokens_per_s for m in ms),
            "tokens": statistics.mean(m.new_tokens for m in ms),
            "rss_mb": max(m.peak_rss_mb for m in ms),
        })
        s.close()
    ref = rows[0]
    print(f"{'route':28} {'load s':>7} {'TTFT ms':>8} {'tok/s':>8} {'x tok/s':>8} {'x TTFT':>7} {'tokens':>6}")
    for r in rows:
        print(f"{r['route']:28} {r['load_s']:7.2f} {r['ttft_ms']:8.1f} {r['tok_s']:8.1f} "
              f"{r['tok_s'] / ref['tok_s']:8.2f} {ref['ttft_ms'] / r['ttft_ms']:7.2f} {r['tokens']:6.1f}")


if __name__ == "__main__":
    from phi3kit.errors import Phi3kitError

    try:
        main()
    except Phi3kitError as exc:  # one paragraph naming the problem and the fix, no traceback
        sys.exit(f"benchmarks/pocket_speed.py: error: {exc}")
