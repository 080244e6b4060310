"""A scripted chat per route, the KV cache kept between answers (reuse on) and not (off), in one run.

    python benchmarks/chat.py [--model pocket] [--turns 12] [--turn-tokens 150] [--max-new-tokens 64]
                              [--routes transformers:fp32 ortgenai:fp32 openvino:fp32:genai ...] [--out FILE.md]

Each turn asks a new question made of fresh text (about --turn-tokens tokens, words drawn from the pocket model's
training answers with a seed per turn and per run: the "on" and "off" runs never share a prompt, so no runtime's
own prefix cache can serve one run from the other). Greedy answers of up to --max-new-tokens. Per turn and
route: the time to first token as the chat experienced it, and how many prompt tokens were read (prefilled) and
how many came from the cache (reused). A route whose runtime caches prefixes by itself (OpenVINO GenAI's
LLMPipeline) shows it in its TTFTs even where the kit reports no reuse. A warm-up answer per route is excluded.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import statistics
import time
from pathlib import Path
from typing import Any

import phi3kit as kit
from phi3kit import pocket

ROUTES = ["transformers:fp32", "ortgenai:fp32", "openvino:fp32:genai", "openvino:fp32:optimum", "llamacpp:f16"]


def installed(route: str) -> bool:
    backend = route.split(":")[0]
    module = {"ortgenai": "onnxruntime_genai", "openvino": "openvino_genai", "llamacpp": "llama_cpp"}.get(backend)
    return module is None or importlib.util.find_spec(module) is not None


def questions(session: kit.Session, turns: int, tokens: int, seed: int) -> list[str]:
    """`turns` fresh questions of about `tokens` tokens each (seeded: a run can be repeated)."""
    words = " ".join(q["answer"] for q in pocket.load_qa()).split()
    out = []
    for turn in range(turns):
        rng = random.Random(f"{seed}-{turn}")
        text = f"Question {turn + 1}:"
        while len(session.tokenizer(text, add_special_tokens=False)["input_ids"]) < tokens:
            text += " " + " ".join(rng.choice(words) for _ in range(8))
        out.append(text + " What do you make of it?")
    return out


def play(session: kit.Session, reuse: bool, asks: list[str], max_new_tokens: int) -> list[dict[str, Any]]:
    session.reuse_cache = reuse
    conv = kit.Conversation(session, "Answer briefly.", max_new_tokens=max_new_tokens)
    rows = []
    try:
        for turn, q in enumerate(asks, 1):
            start = time.perf_counter()
            r = conv.say(q).consume()
            m = r.metrics
            rows.append({"turn": turn, "reuse": reuse, "prompt": m.prompt_tokens, "prefilled": m.prefilled_tokens,
                         "reused": m.reused_tokens, "ttft_s": m.ttft_s, "answer_s": time.perf_counter() - start,
                         "new": m.new_tokens, "trimmed": r.trimmed_turns})
    finally:
        session.reuse_cache = True
    return rows


def run(route: str, a: argparse.Namespace, log: Any = print) -> dict[str, Any]:
    backend, precision, *rest = route.split(":")
    runtime = rest[0] if rest else None
    s = kit.load(a.model, backend, precision, "CPU", runtime, log=lambda m: None)
    try:
        s.generate("Warm-up: hello.", max_new_tokens=8).consume()
        out: dict[str, Any] = {"route": route, "reuses_cache": s.backend.reuses_cache}
        for reuse, seed in ((False, 1), (True, 2)):
            rows = play(s, reuse, questions(s, a.turns, a.turn_tokens, seed), a.max_new_tokens)
            out["on" if reuse else "off"] = rows
            log(f"{route} reuse {'on' if reuse else 'off'}: " + ", ".join(
                f"t{r['turn']} {r['ttft_s'] * 1000:.0f} ms/{r['prefilled']}" for r in rows))
        return out
    finally:
        s.close()


def table(results: list[dict[str, Any]]) -> str:
    """Markdown: per route and turn, TTFT and tokens prefilled with reuse off and on; then the summary."""
    lines = ["| route | turn | prompt tokens (off / on) | prefilled off | prefilled on | TTFT off ms | TTFT on ms |",
             "|---|---|---|---|---|---|---|"]
    summary = ["| route | TTFT turn 2 on ms | TTFT last turn on ms | last / 2 (on) | last / 2 (off) | "
               "chat total off s | chat total on s | off / on |", "|---|---|---|---|---|---|---|---|"]
    for res in results:
        off, on = res["off"], res["on"]
        for a, b in zip(off, on, strict=True):
            lines.append(f"| {res['route']} | {a['turn']} | {a['prompt']} / {b['prompt']} | {a['prefilled']} | "
                         f"{b['prefilled']} | {a['ttft_s'] * 1000:.0f} | {b['ttft_s'] * 1000:.0f} |")
        t_off, t_on = sum(r["answer_s"] for r in off), sum(r["answer_s"] for r in on)
        summary.append(
            f"| {res['route']} | {on[1]['ttft_s'] * 1000:.0f} | {on[-1]['ttft_s'] * 1000:.0f} | "
            f"{on[-1]['ttft_s'] / on[1]['ttft_s']:.2f} | {off[-1]['ttft_s'] / off[1]['ttft_s']:.2f} | {t_off:.1f} | "
            f"{t_on:.1f} | {t_off / t_on:.2f} |")
    return "\n".join(summary) + "\n\n" + "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="pocket")
    ap.add_argument("--turns", type=int, default=12)
    ap.add_argument("--turn-tokens", type=int, default=150)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--routes", nargs="+", default=[r for r in ROUTES if installed(r)])
    ap.add_argument("--out", type=Path, help="also write the tables (Markdown) to this file")
    a = ap.parse_args()
    if a.turns < 2:
        ap.error("--turns must be 2 or more (the summary compares the last turn with turn 2)")
    results = [run(route, a) for route in a.routes]
    text = table(results)
    print(text)
    if a.out:
        a.out.write_text(f"`{' '.join(['python benchmarks/chat.py', *map(str, _argv(a))])}`\n\n{text}",
                         encoding="utf-8")
    print("median TTFT on / off per route:", {r["route"]: round(
        statistics.median(x["ttft_s"] for x in r["on"][1:]) / statistics.median(x["ttft_s"] for x in r["off"][1:]), 2)
        for r in results})


def _argv(a: argparse.Namespace) -> list[str]:
    return ["--model", a.model, "--turns", a.turns, "--turn-tokens", a.turn_tokens, "--max-new-tokens",
            a.max_new_tokens, "--routes", *a.routes]


if __name__ == "__main__":
    main()
