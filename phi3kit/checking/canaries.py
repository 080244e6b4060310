"""Canaries: questions with known answers, asked greedily, so a route that answers wrongly says so.

Wrong output with no error is the usual failure on new devices and drivers (garbage past 2,000 prompt
tokens on an NPU, junk characters after an upgrade). The pocket model knows its trained answers exactly,
so its canary runs everywhere offline; a real Phi-3 gets a few robust prompts and a long-prompt canary,
kept with their rationale in data/canaries.yaml.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..bench.quality import agreement
from ..devices import device_family

CANARIES_FILE = Path(__file__).resolve().parents[1] / "data" / "canaries.yaml"


@lru_cache(maxsize=1)
def data() -> dict[str, Any]:
    import yaml

    return yaml.safe_load(CANARIES_FILE.read_text(encoding="utf-8"))


@dataclass
class Outcome:
    """A canary's verdict: PASS, FAIL (reason names the question, expected, produced, where they part)."""

    status: str
    reason: str = ""
    answers: int = 0
    tokens: int = 0
    seconds: float = 0.0
    details: list[str] = field(default_factory=list)


def pocket_precisions(backend: str, device: str, default: str) -> list[str]:
    """What the pocket canary runs for this backend on this device family (the backend's default if unlisted)."""
    rows = data()["pocket"]["precisions"].get(backend)
    if rows is None:
        return [default]
    return list(rows.get(device_family(device), []))


def pocket_rule(device: str) -> tuple[str, float]:
    """(rule, threshold) for this device family: exact on the CPU (measured), agreement elsewhere."""
    rules = data()["pocket"]["rules"]
    rule = rules.get(device_family(device), rules["default"])
    return rule["rule"], float(rule.get("threshold", 1.0))


def where_they_part(expected: str, produced: str) -> str:
    """'at character N: expected '...x...', produced '...y...'' for the first difference."""
    n = next((i for i, (a, b) in enumerate(zip(expected, produced, strict=False)) if a != b),
             min(len(expected), len(produced)))
    start = max(0, n - 15)
    return (f"they part at character {n}: expected {expected[start:n + 15]!r}, "
            f"produced {produced[start:n + 15]!r}")


def judge_answer(question: str, expected: str, expected_ids: list[int], produced: str, produced_ids: list[int],
                 rule: str, threshold: float, stopped: bool) -> str | None:
    """None when the answer is right under `rule`; else the failure, naming question, both texts and the split."""
    if rule == "exact":
        if produced == expected and stopped:
            return None
        why = "did not stop after the answer" if produced == expected else where_they_part(expected, produced)
        return f"{question!r}: expected {expected!r}, produced {produced!r}; {why}"
    score = agreement([expected_ids], [produced_ids]).identical
    if score >= threshold:
        return None
    return (f"{question!r}: agreement {score:.2f} < {threshold:.2f}; expected {expected!r}, produced {produced!r}; "
            f"{where_they_part(expected, produced)}")


def run_pocket(session: Any, device: str) -> Outcome:
    """Ask the pocket its canary questions greedily; PASS when every answer is its trained one."""
    from .. import pocket

    spec = data()["pocket"]
    known = {x["question"]: x["answer"] for x in pocket.load_qa()}
    rule, threshold = pocket_rule(device)
    failures: list[str] = []
    tokens = 0
    seconds = 0.0
    for question in spec["questions"]:
        expected = known[question]
        response = session.generate(question, max_new_tokens=int(spec["max_new_tokens"]), do_sample=False)
        produced = response.text
        tokens += response.metrics.new_tokens
        seconds += response.metrics.total_s
        expected_ids = list(session.tokenizer(expected, add_special_tokens=False)["input_ids"])
        stopped = response.metrics.finish_reason == "stop"
        if (failed := judge_answer(question, expected, expected_ids, produced, response.token_ids, rule,
                                   threshold, stopped)):
            failures.append(failed)
    rule_text = "exact text" if rule == "exact" else f"agreement >= {threshold:.2f}"
    if failures:
        return Outcome("FAIL", f"{len(failures)} of {len(spec['questions'])} pocket answers wrong ({rule_text}): "
                       + failures[0], len(spec["questions"]), tokens, seconds, failures)
    return Outcome("PASS", f"{len(spec['questions'])} pocket answers right ({rule_text})", len(spec["questions"]),
                   tokens, seconds)


def run_real(session: Any) -> tuple[Outcome, list[list[int]]]:
    """A real Phi-3's robust prompts: PASS when each answer contains its expected text. Returns the greedy ids too,
    for agreement with the CPU route."""
    spec = data()["real"]
    failures, greedy = [], []
    tokens, seconds = 0, 0.0
    for row in spec["prompts"]:
        response = session.generate(row["prompt"], max_new_tokens=int(spec["max_new_tokens"]), do_sample=False)
        text = response.text
        greedy.append(list(response.token_ids))
        tokens, seconds = tokens + response.metrics.new_tokens, seconds + response.metrics.total_s
        if not any(e in text for e in row["expect"]):
            failures.append(f"{row['prompt']!r}: expected {' or '.join(row['expect'])!r} in the answer, "
                            f"produced {text!r}")
    n = len(spec["prompts"])
    if failures:
        return Outcome("FAIL", f"{len(failures)} of {n} answers wrong: {failures[0]}", n, tokens, seconds,
                       failures), greedy
    return Outcome("PASS", f"{n} answers right", n, tokens, seconds), greedy


def long_prompt(session: Any, tokens: int) -> str:
    """The long canary's prompt: the fact, filler text up to about `tokens` tokens, then the question."""
    from ..bench.prompts import eval_text

    spec = data()["real"]["long"]
    filler = eval_text()
    budget = max(0, tokens - len(session.encode([{"role": "user", "content": f"{spec['fact']}\n\n{spec['question']}"}]))
                 - 8)
    ids = list(session.tokenizer(filler, add_special_tokens=False)["input_ids"])
    while len(ids) < budget:
        ids += ids
    middle = session.tokenizer.decode(ids[:budget])
    return f"{spec['fact']}\n\n{middle}\n\n{spec['question']}"


def run_long(session: Any) -> Outcome:
    """The fact from the prompt's start, asked at its end, near the route's own prompt limit."""
    spec = data()["real"]["long"]
    size = min(int(spec["tokens"]), session.limits.max_prompt - 16)
    prompt = long_prompt(session, size)
    response = session.generate(prompt, max_new_tokens=16, do_sample=False)
    text = response.text
    n_prompt = response.metrics.prompt_tokens
    if any(e in text for e in spec["expect"]):
        return Outcome("PASS", f"the fact came back from a {n_prompt}-token prompt", 1, response.metrics.new_tokens,
                       response.metrics.total_s)
    return Outcome("FAIL", f"long prompt ({n_prompt} tokens): expected {' or '.join(spec['expect'])!r}, produced "
                   f"{text!r}: this route loses the start of long prompts", 1, response.metrics.new_tokens,
                   response.metrics.total_s)
