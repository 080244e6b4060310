"""Prompts of an exact token count, each one fresh, so a prefix cache cannot fake the time to first token."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .routes import BenchError

EVAL_TEXT: Path = Path(__file__).resolve().parents[1] / "data" / "eval.txt"


def eval_text() -> str:
    """The kit's fixed evaluation text (written for the kit, so every machine measures the same words)."""
    return EVAL_TEXT.read_text(encoding="utf-8")


class Prompts:
    """Chat prompts of an exact token count cut from the eval text, each one starting somewhere new.

    The ids are the chat template's head, a slice of the text's ids, and the template's tail, so the
    count is exact (re-tokenizing a cut text could merge tokens at the edges). Successive prompts start
    STRIDE tokens apart, so no two share a prefix beyond the template's first tokens.
    """

    STRIDE = 101  # prime: starts cycle through every position of the text before repeating

    def __init__(self, tokenizer: Any, text: str | None = None) -> None:
        sentinel = "\x00PHI3KIT\x00"
        templated = tokenizer.apply_chat_template([{"role": "user", "content": sentinel}],
                                                  add_generation_prompt=True, tokenize=False)
        before, after = templated.split(sentinel)
        self.head = self._ids(tokenizer, before)
        self.tail = self._ids(tokenizer, after)
        self.body = self._ids(tokenizer, text if text is not None else eval_text())
        self.made = 0

    @staticmethod
    def _ids(tokenizer: Any, text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]) if text else []

    @property
    def overhead(self) -> int:
        return len(self.head) + len(self.tail)

    def make(self, n_tokens: int) -> list[int]:
        """A fresh prompt of exactly `n_tokens` ids."""
        k = n_tokens - self.overhead
        if k < 1:
            raise BenchError(f"A prompt of {n_tokens} tokens cannot hold the chat template ({self.overhead} tokens) "
                             f"and any text. Fix: use prompt lengths of at least {self.overhead + 1}.")
        start = (self.made * self.STRIDE) % len(self.body)
        self.made += 1
        body = [self.body[(start + i) % len(self.body)] for i in range(k)]
        return self.head + body + self.tail
