"""Conversations: a history of turns and a system prompt, trimmed to the model's context window.

The chat panel (`kit.chat`), `phi3kit chat` and code share this one piece of logic, so the
notebook, the terminal and a script trim the same way and say so the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .config import GenerationConfig
from .errors import ContextWindowError, Phi3kitError

if TYPE_CHECKING:
    from .generate import Response, Session

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


def context_window(session: Session, context_length: int | None) -> int:
    """The window a chat trims to: the model's, or a smaller one the user asked for."""
    if context_length is None:
        return session.context_length
    if not isinstance(context_length, int) or isinstance(context_length, bool) or context_length <= 0:
        raise Phi3kitError(f"context_length must be a positive integer, got {context_length!r}. "
                           f"Fix: leave it unset to use the model's {session.context_length} tokens.")
    return min(context_length, session.context_length)


def trim_notice(dropped_turns: int, window: int) -> str:
    """What the panel and the terminal say when older turns no longer fit."""
    dropped = "the oldest turn was" if dropped_turns == 1 else f"the {dropped_turns} oldest turns were"
    return (f"The conversation is longer than the {window}-token context window: {dropped} left out of this "
            "answer (the system prompt is kept).")


class Conversation:
    """A multi-turn chat with one session: `say()` adds your turn, the answer is added once consumed.

    The full history is kept (you can read it); each answer sees as much of it as fits the context
    window, and its Response reports how many turns were left out (`trimmed_turns`).
    """

    def __init__(self, session: Session, system: str | None = None, *, context_length: int | None = None,
                 config: GenerationConfig | None = None, **options: Any) -> None:
        if system is not None and not isinstance(system, str):
            raise Phi3kitError(f"system must be a string, got {type(system).__name__}.")
        self.session = session
        self.system = system or None
        self.gen = config or GenerationConfig(**options)  # bad settings fail here, not at the first question
        self.window = context_window(session, context_length)
        if self.gen.max_new_tokens >= self.window:
            raise ContextWindowError(
                f"max_new_tokens={self.gen.max_new_tokens} leaves no room for a question in the {self.window}-token "
                f"context window. Fix: set max_new_tokens well below {self.window} (e.g. {self.window // 4}).")
        self._turns: list[Message] = []
        self._pending: Response | None = None

    @property
    def history(self) -> list[Message]:
        """User and assistant messages so far (without the system prompt)."""
        self._sync()
        return [dict(m) for m in self._turns]

    @property
    def messages(self) -> list[Message]:
        """What the model is given: the system prompt, then the history."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.history

    def say(self, text: str) -> Response:
        """Ask the next question; iterate the Response to stream the answer."""
        if not isinstance(text, str) or not text.strip():
            raise Phi3kitError("A chat message must be a non-empty string.")
        self._settle()
        asked = self.messages + [{"role": "user", "content": text}]
        response = self.session.chat(asked, config=self.gen, context_length=self.window)
        self._turns.append({"role": "user", "content": text})  # only once chat() accepted it
        self._pending = response
        return response

    def reset(self) -> None:
        """Forget the history (the system prompt stays); a running answer is stopped."""
        if self._pending is not None:
            self._pending.cancel()
        self._turns, self._pending = [], None

    def _settle(self) -> None:
        """A previous answer nobody read is generated now, so the history stays question/answer."""
        if self._pending is not None and not self._pending._done:
            self._pending.consume()
        self._sync()

    def _sync(self) -> None:
        r = self._pending
        if r is not None and r._done:
            self._turns.append({"role": "assistant", "content": "".join(r.chunks)})
            self._pending = None

    def __repr__(self) -> str:
        return f"<Conversation {len(self.history)} messages, window {self.window} tokens>"
