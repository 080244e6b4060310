"""Context arithmetic: which turns of a conversation fit a window of tokens, and what to say when some do not.

Pure functions over messages and token counts, shared by `Session.chat` (generate.py), `Conversation`
and the chat panel, so every front end trims the same way and says so the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .errors import ContextWindowError, Phi3kitError

Message = dict[str, str]


@dataclass
class Fitted:
    """The messages that fit, how many whole turns were dropped, and the prompt ids they make."""

    messages: list[Message]
    dropped_turns: int
    prompt_ids: list[int]


def split_turns(messages: Sequence[Message]) -> tuple[list[Message], list[list[Message]]]:
    """Leading system messages, then turns: each starts at a user message (plus the answers after it)."""
    head: list[Message] = []
    i = 0
    while i < len(messages) and messages[i]["role"] == "system":
        head.append(dict(messages[i]))
        i += 1
    turns: list[list[Message]] = []
    for m in messages[i:]:
        if m["role"] == "user" or not turns:
            turns.append([])
        turns[-1].append(dict(m))
    return head, turns


def fit_history(messages: Sequence[Message], encode: Callable[[list[Message]], list[int]], window: int,
                max_new_tokens: int) -> Fitted:
    """Drop the oldest turns until the prompt plus `max_new_tokens` fits `window` tokens.

    The system prompt and the last turn (the question being asked) are always kept; when even
    they do not fit, the error says by how much and what to shorten.
    """
    head, turns = split_turns(messages)

    def build(dropped: int) -> tuple[list[Message], list[int]]:
        kept = head + [m for turn in turns[dropped:] for m in turn]
        return kept, encode(kept)

    kept, ids = build(0)
    if len(ids) + max_new_tokens <= window:
        return Fitted(kept, 0, ids)
    last = max(len(turns) - 1, 0)
    kept, ids = build(last)
    if len(ids) + max_new_tokens > window:
        n = len(ids)
        what = "The last message plus the system prompt" if head else "The last message"
        if n >= window:
            fix = f"shorten it (or the system prompt) below {window - max_new_tokens} tokens"
        else:
            fix = f"set max_new_tokens <= {window - n}, or shorten the message"
        dropped = f", even after leaving out all {last} earlier turn(s)" if last else ""
        raise ContextWindowError(
            f"{what} is {n} tokens; with max_new_tokens={max_new_tokens} it does not fit the context window of "
            f"{window} tokens{dropped}. Fix: {fix}."
        )
    fitting = {last: (kept, ids)}
    lo, hi = 1, last  # dropping `hi` turns fits, dropping none does not: find the fewest to drop
    while lo < hi:
        mid = (lo + hi) // 2
        k, i = build(mid)
        if len(i) + max_new_tokens <= window:
            fitting[mid], hi = (k, i), mid
        else:
            lo = mid + 1
    kept, ids = fitting[lo]
    return Fitted(kept, lo, ids)


def context_window(model_window: int, context_length: int | None) -> int:
    """The window a chat trims to: the model's, or a smaller one the user asked for."""
    if context_length is None:
        return model_window
    if not isinstance(context_length, int) or isinstance(context_length, bool) or context_length <= 0:
        raise Phi3kitError(f"context_length must be a positive integer, got {context_length!r}. "
                           f"Fix: leave it unset to use the model's {model_window} tokens.")
    return min(context_length, model_window)


def trim_notice(dropped_turns: int, window: int) -> str:
    """What the panel and the terminal say when older turns no longer fit."""
    dropped = "the oldest turn was" if dropped_turns == 1 else f"the {dropped_turns} oldest turns were"
    return (f"The conversation is longer than the {window}-token context window: {dropped} left out of this "
            "answer (the system prompt is kept).")
