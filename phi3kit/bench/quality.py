"""Quality beside speed: perplexity on a fixed text and greedy agreement with the PyTorch reference.

A precision that is 3x faster is only a good deal if we know what it costs; these two numbers
turn "int4 loses a bit" into a figure. Perplexity is computed from each route's own logits:
PyTorch for transformers, optimum-intel's OVModelForCausalLM on the same export (with the same
runtime properties) for OpenVINO, and the generator's `logits` output for ONNX Runtime GenAI: each
backend's `logits()`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .prompts import Prompts, eval_text

if TYPE_CHECKING:
    from .report import BenchReport, RouteResult

Segment = tuple[list[int], int]  # (ids, index of the first scored token): earlier ids are context only


def text_segments(tokenizer: Any, text: str, max_tokens: int = 1024, window: int = 512) -> list[Segment]:
    """Non-overlapping windows over the text's first `max_tokens` tokens; each restarts the context."""
    ids = list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])[:max_tokens]
    return [(ids[i : i + window], 1) for i in range(0, len(ids), window) if len(ids[i : i + window]) > 1]


def pocket_segments(tokenizer: Any) -> list[Segment]:
    """The pocket's own QA as chat turns, scoring only the answers: what it was trained to predict."""
    from .. import pocket

    out = []
    for qa in pocket.load_qa():
        question = [{"role": "user", "content": qa["question"]}]
        prompt = tokenizer.apply_chat_template(question, add_generation_prompt=True, tokenize=True,
                                               return_dict=False)
        full = tokenizer.apply_chat_template([*question, {"role": "assistant", "content": qa["answer"]}],
                                             tokenize=True, return_dict=False)
        out.append((list(full), len(prompt)))
    return out


def quality_segments(model: str, tokenizer: Any, max_tokens: int = 1024,
                     window: int = 512) -> tuple[list[Segment], str]:
    """What perplexity is measured on: the pocket's QA answers for model='pocket', else the fixed eval text."""
    if model == "pocket":
        return pocket_segments(tokenizer), "pocket QA answers given their questions"
    return text_segments(tokenizer, eval_text(), max_tokens, window), "phi3kit/data/eval.txt"


@dataclass
class Perplexity:
    """exp(mean negative log-likelihood) over `tokens` predicted tokens; None with `note` when unavailable."""

    value: float | None
    tokens: int
    note: str = ""


def nll_sum(logits: Any, targets: Sequence[int]) -> float:
    """Sum of -log p(target) under `logits` ([n, vocab], one row per target), in float64."""
    import numpy as np

    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    log_z = np.log(np.exp(x).sum(axis=-1))
    picked = x[np.arange(len(targets)), np.asarray(targets)]
    return float((log_z - picked).sum())


def perplexity(session: Any, segments: Sequence[Segment]) -> Perplexity:
    """exp of the mean negative log-likelihood of the scored tokens of `segments`, from this route's logits."""
    total, count = 0.0, 0
    for ids, first in segments:
        if len(ids) > session.context_length:
            raise ValueError(f"a segment of {len(ids)} tokens exceeds the context window ({session.context_length})")
        try:
            logits = session.backend.logits(list(ids))
        except NotImplementedError as exc:
            return Perplexity(None, 0, str(exc))
        total += nll_sum(logits[first - 1 : -1], ids[first:])
        count += len(ids) - first
    if not count:
        return Perplexity(None, 0, "nothing to score (the text is shorter than two tokens)")
    return Perplexity(math.exp(total / count), count, session.backend.logits_source)


@dataclass
class Agreement:
    """How closely greedy outputs follow the reference's, over several prompts.

    `identical` is the share of positions holding the same token (over the longer output of each pair);
    `prefix` is the mean number of leading tokens that match before the first difference.
    """

    identical: float
    prefix: float
    prompts: int


def agreement(reference: Sequence[Sequence[int]], candidate: Sequence[Sequence[int]]) -> Agreement:
    """Compare greedy token ids prompt by prompt; an output that stops early counts its missing tokens as different."""
    if len(reference) != len(candidate):
        raise ValueError(f"{len(reference)} reference outputs but {len(candidate)} candidate outputs")
    same = total = 0
    prefixes: list[int] = []
    for ref, cand in zip(reference, candidate, strict=True):
        n = max(len(ref), len(cand))
        same += sum(a == b for a, b in zip(ref, cand, strict=False))
        total += n
        prefix = 0
        for a, b in zip(ref, cand, strict=False):
            if a != b:
                break
            prefix += 1
        prefixes.append(prefix)
    return Agreement(same / total if total else 1.0, sum(prefixes) / len(prefixes) if prefixes else 0.0,
                     len(prefixes))


def agreement_prompts(model: str, session: Any, n: int) -> list[list[int]]:
    """Prompt ids for greedy agreement: the pocket's own questions, or fresh 64-token cuts of the eval text."""
    if n <= 0:
        return []
    if model == "pocket":
        from .. import pocket
        from ..context import to_messages

        return [session.encode(to_messages(qa["question"])) for qa in pocket.load_qa()[:n]]
    prompts = Prompts(session.tokenizer)
    prompts.made = 1000  # away from the speed prompts' starts
    return [prompts.make(min(64, session.context_length // 2)) for _ in range(n)]


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
