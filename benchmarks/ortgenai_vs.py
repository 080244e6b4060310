"""ONNX Runtime GenAI against the PyTorch reference and OpenVINO GenAI, through the kit, in one process.

    python benchmarks/ortgenai_vs.py [--models pocket,random] [--runs 10] [--max-new-tokens 64]

`random` is `phi3kit.testing.make_random_phi3("mini-4k")` (tiny): it never says <|end|>, so every
run decodes max_new_tokens, while the pocket model stops after its memorized answer. Each timed
run uses a different training question (a fresh prompt: OpenVINO GenAI's prefix cache cannot fake
the TTFT); one warm-up run per route is excluded. Prints medians of the kit's own metrics
(`response.metrics`) and ratios against the PyTorch fp32 reference.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from typing import Any

import phi3kit as kit
from phi3kit import pocket

# (backend, precision, runtime, extra LoadConfig options)
ROUTES: list[tuple[str, str, str | None, dict[str, Any]]] = [
    ("transformers", "fp32", None, {}),
    ("ortgenai", "fp32", None, {}),
    ("ortgenai", "int8", None, {}),
    ("ortgenai", "int4", None, {}),
    ("ortgenai", "int4", None, {"build_target": "dml"}),  # the DirectML graph, run on the CPU
    ("openvino", "int8", "genai", {}),
    ("openvino", "int4", "genai", {}),
]


def label(backend: str, precision: str, runtime: str | None, extra: dict[str, Any]) -> str:
    name = {"transformers": "pytorch", "ortgenai": "ort-genai", "openvino": "openvino-genai"}[backend]
    return f"{name} {precision}" + (f" ({extra['build_target']} build)" if extra else "")


def bench(model: str, runs: int, max_new_tokens: int) -> list[dict[str, Any]]:
    questions = [q["question"] for q in pocket.load_qa()]
    rows = []
    for backend, precision, runtime, extra in ROUTES:
        s = kit.load(model, backend, precision, "CPU", runtime, log=lambda m: None, **extra)
        s.generate(questions[-1], max_new_tokens=max_new_tokens).consume()  # warm-up
        ms = [s.generate(q, max_new_tokens=max_new_tokens).consume().metrics for q in questions[:runs]]
        rows.append({
            "route": label(backend, precision, runtime, extra),
            "prompt": statistics.mean(m.prompt_tokens for m in ms),
            "ttft_ms": statistics.median(m.ttft_s for m in ms) * 1000,
            "tok_s": statistics.median(m.tokens_per_s for m in ms),
            "tokens": statistics.mean(m.new_tokens for m in ms),
        })
        s.close()
    return rows


def show(model: str, rows: list[dict[str, Any]]) -> None:
    ref = rows[0]
    print(f"\n{model}: prompts of {ref['prompt']:.0f} tokens on average")
    print(f"{'route':32} {'TTFT ms':>8} {'tok/s':>8} {'tok/s vs pt':>11} {'TTFT vs pt':>10} {'tokens':>6}")
    for r in rows:
        print(f"{r['route']:32} {r['ttft_ms']:8.1f} {r['tok_s']:8.1f} {r['tok_s'] / ref['tok_s']:10.2f}x "
              f"{ref['ttft_ms'] / r['ttft_ms']:9.2f}x {r['tokens']:6.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default="pocket,random", help="comma-separated: pocket, random, or model folders")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="phi3kit-bench-") as tmp:
        for model in a.models.split(","):
            path = model
            if model == "random":
                from phi3kit.testing import make_random_phi3

                path = str(make_random_phi3("mini-4k", f"{tmp}/random-mini-4k"))
            show(model, bench(path, a.runs, a.max_new_tokens))


if __name__ == "__main__":
    from phi3kit.errors import Phi3kitError

    try:
        main()
    except Phi3kitError as exc:  # one paragraph naming the problem and the fix, no traceback
        sys.exit(f"benchmarks/ortgenai_vs.py: error: {exc}")
