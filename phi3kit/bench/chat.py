"""A scripted chat per route, the KV cache kept between answers (reuse on) and not (off): `phi3kit bench --chat N`
and benchmarks/chat.py.

Each turn asks a new question made of fresh text (about `turn_tokens` tokens, words drawn from the pocket model's
training answers with a seed per turn and per run: the "on" and "off" chats never share a prompt). Greedy answers
of up to `max_new_tokens`. Per turn and route: the time to first token as the chat experienced it, and how many
prompt tokens were read (prefilled) and how many came from the cache (reused). Each chat gets its own load: "off"
loads with `reuse_cache=False`, which also turns off a runtime's own prefix cache (OpenVINO GenAI's LLMPipeline),
so "off" is a full prefill at every turn. A warm-up answer per load is excluded.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ..backends.base import Log
from ..config import BENCH_NEW_TOKENS
from .routes import BenchError, Route, parse_routes, problem, refuse_unknown

# benchmarks/chat.py's routes: fp32 everywhere (f16 for llama.cpp), so reuse on and off give the same answers.
CHAT_ROUTES = "transformers:fp32,ortgenai:fp32,openvino/genai:fp32,openvino/optimum:fp32,llamacpp:f16"


def questions(session: Any, turns: int, tokens: int, seed: int) -> list[str]:
    """`turns` fresh questions of about `tokens` tokens each (seeded: a run can be repeated)."""
    from .. import pocket

    words = " ".join(q["answer"] for q in pocket.load_qa()).split()
    out = []
    for turn in range(turns):
        rng = random.Random(f"{seed}-{turn}")
        text = f"Question {turn + 1}:"
        while len(session.tokenizer(text, add_special_tokens=False)["input_ids"]) < tokens:
            text += " " + " ".join(rng.choice(words) for _ in range(8))
        out.append(text + " What do you make of it?")
    return out


def play(session: Any, asks: Sequence[str], max_new_tokens: int) -> list[dict[str, Any]]:
    """The chat, one row per turn (reuse as the session was loaded)."""
    from ..conversation import Conversation

    conv = Conversation(session, "Answer briefly.", max_new_tokens=max_new_tokens)
    rows = []
    for turn, q in enumerate(asks, 1):
        start = time.perf_counter()
        r = conv.say(q).consume()
        m = r.metrics
        rows.append({"turn": turn, "reuse": session.reuse_cache, "prompt": m.prompt_tokens,
                     "prefilled": m.prefilled_tokens, "reused": m.reused_tokens, "ttft_s": m.ttft_s,
                     "answer_s": time.perf_counter() - start, "new": m.new_tokens, "trimmed": r.trimmed_turns})
    return rows


def run_route(model: str, route: Route, turns: int, turn_tokens: int, max_new_tokens: int,
              cache_dir: str | None = None, log: Log = print) -> dict[str, Any]:
    """Reuse off, then on, each on its own load of `route`."""
    from ..generate import Session

    out: dict[str, Any] = {"route": route.label}
    for reuse, seed in ((False, 1), (True, 2)):
        session = Session.load(replace(route.config(model, cache_dir), reuse_cache=reuse), log=lambda m: None)
        try:
            session.generate("Warm-up: hello.", max_new_tokens=8).consume()
            out["reuses_cache"] = session.backend.reuses_cache
            rows = play(session, questions(session, turns, turn_tokens, seed), max_new_tokens)
        finally:
            session.close()
        out["on" if reuse else "off"] = rows
        log(f"{route.label} reuse {'on' if reuse else 'off'}: " + ", ".join(
            f"t{r['turn']} {r['ttft_s'] * 1000:.0f} ms/{r['prefilled']}" for r in rows))
    return out


def run_chat(model: str = "pocket", routes: str | Sequence[str | Route] = CHAT_ROUTES, turns: int = 12,
             turn_tokens: int = 150, max_new_tokens: int = BENCH_NEW_TOKENS, cache_dir: str | None = None,
             log: Log = print) -> list[dict[str, Any]]:
    """The scripted chat on every route that runs here (the others are logged as skipped)."""
    if not isinstance(turns, int) or turns < 2:
        raise BenchError(f"A chat benchmark needs 2 turns or more, got {turns!r} (the summary compares the last turn "
                         "with turn 2). Fix: --chat 2 or more.")
    if turn_tokens < 1 or max_new_tokens < 1:
        raise BenchError(f"A chat benchmark's questions and answers need tokens: got turn_tokens={turn_tokens}, "
                         f"max_new_tokens={max_new_tokens}. Fix: positive numbers "
                         f"(default 150 and {BENCH_NEW_TOKENS}).")
    results = []
    for route in parse_routes(routes):
        refuse_unknown(route)
        why = problem(route)
        if why:
            log(f"--- {route.label}: skipped ({why})")
            continue
        log(f"--- {route.label}")
        results.append(run_route(model, route, turns, turn_tokens, max_new_tokens, cache_dir, log))
    return results


def chat_table(results: list[dict[str, Any]]) -> str:
    """Markdown: the summary per route, then per route and turn, TTFT and tokens prefilled with reuse off and on."""
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
