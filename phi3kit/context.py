"""Context arithmetic: how many tokens a route can serve, which turns of a conversation fit, and what to say.

Pure functions over messages and token counts, shared by `Session.generate`/`Session.chat`
(generate.py), `Conversation` and the chat panel, so every front end checks, trims and explains the
same way. `Limits` is one route's answer to "how long may a prompt and its answer be": the model's
window, narrowed by what the runtime really serves (a compiled NPU shape, a build that ignores the
sliding window).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ContextWindowError, Phi3kitError

Message = dict[str, str]
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Limits:
    """The tokens a loaded route can serve: `window` for prompt + answer, `max_prompt` for the prompt alone.

    `why` names what sets them (the model's context, an NPU's compiled shapes, a runtime's cap) and `fix`
    what would raise them; both go into every error and trim notice. `note` is what the route serves
    differently from the model inside those limits ('' when nothing): e.g. a build without the model's
    sliding window, whose answers past the window differ from the model's.
    """

    window: int
    max_prompt: int
    why: str
    fix: str = ""
    note: str = ""

    def check(self, n_prompt: int, max_new_tokens: int) -> None:
        """Raise ContextWindowError, naming the limit and the fix, when the request does not fit."""
        fix = f" {self.fix}" if self.fix else ""
        if n_prompt > self.max_prompt or n_prompt >= self.window:
            limit = min(self.max_prompt, self.window - 1)
            raise ContextWindowError(
                f"The prompt is {n_prompt} tokens; {self.why} allows prompts of up to {limit}. Fix: shorten the "
                f"prompt (or the chat history) to {limit} tokens or fewer.{fix}")
        if n_prompt + max_new_tokens > self.window:
            raise ContextWindowError(
                f"The prompt ({n_prompt} tokens) plus max_new_tokens={max_new_tokens} exceed {self.why}: "
                f"{self.window} tokens. Fix: set max_new_tokens <= {self.window - n_prompt}, or shorten the "
                f"prompt.{fix}")


def model_limits(context_length: int) -> Limits:
    return Limits(context_length, context_length - 1, f"the model's context window of {context_length} tokens")


def kv_bytes_per_token(config: dict[str, object], element_bytes: float) -> float:
    """Bytes of KV cache one token of context holds (keys and values of every layer)."""
    heads = int(config.get("num_attention_heads") or 1)  # type: ignore[arg-type]
    kv_heads = int(config.get("num_key_value_heads") or heads)  # type: ignore[arg-type]
    head_dim = int(config.get("head_dim") or int(config.get("hidden_size") or 0) // heads)  # type: ignore[arg-type]
    layers = int(config.get("num_hidden_layers") or 0)  # type: ignore[arg-type]
    return 2 * layers * kv_heads * head_dim * element_bytes


# A chat on a long-context model gets a window whose KV cache fits this share of the RAM available when the
# session loaded: a 128k-token window of Phi-3-mini would need 25-100 GB, more than a laptop has.
CHAT_MEMORY_SHARE = 0.25
CHAT_WINDOW_STEP = 1024


def memory_window(limits: Limits, kv_bytes: float, available_bytes: float, floor: int = 4096) -> int:
    """The chat window for a session: its route's window, capped where the KV cache would outgrow the memory.

    Never below `floor` (or the route's window, when smaller): a 4k-context model keeps its whole window.
    """
    if kv_bytes <= 0:
        return limits.window
    fits = int(CHAT_MEMORY_SHARE * available_bytes / kv_bytes) // CHAT_WINDOW_STEP * CHAT_WINDOW_STEP
    return max(min(limits.window, floor), min(limits.window, fits))


@dataclass(frozen=True)
class Said:
    """A chat so far as the model read and wrote it: the prompt text plus the answer, and the ids that stand for it.

    The answer's ids are the ones the model generated, not its text tokenized again: a re-tokenized answer often
    splits differently (always, on a random model), so a prompt built from text would leave a KV cache inside the
    previous answer at every turn and make the backend rewind; one built on these ids extends the cache exactly.
    """

    text: str
    ids: tuple[int, ...]


@dataclass
class Fitted:
    """The messages that fit, how many whole turns were left out (`trimmed_now` of them by this answer), and
    the prompt ids they make."""

    messages: list[Message]
    dropped_turns: int
    prompt_ids: list[int]
    trimmed_now: int = 0


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


# Once a chat outgrows its window, the oldest turns go several at once, until prompt and answer take at most this
# share of the window, not one turn per answer: the prompts of the following answers then start as this one does,
# so a backend that keeps its KV cache reads only each new turn, until the window fills again. Dropping one turn
# per answer changed the prompt's start every time and forced the whole history to be read again at every turn.
TRIM_TO_SHARE = 0.5


def fit_history(messages: Sequence[Message], encode: Callable[[list[Message]], list[int]], window: int,
                max_new_tokens: int, max_prompt: int | None = None, *, kept_from: int = 0,
                share: float = TRIM_TO_SHARE) -> Fitted:
    """The history that fits `window` tokens with `max_new_tokens` to answer (and `max_prompt` for the prompt
    alone, where the route limits it: an NPU's compiled prompt length).

    `kept_from` is how many oldest turns an earlier answer of this chat already left out: while the rest fits,
    the prompt starts there, as that answer's did. When it does not fit, more of the oldest turns are left out
    at once, down to `share` of the window (or, when only the question fits, down to the question). The system
    prompt and the last turn (the question being asked) are always kept; when even they do not fit, the error
    says by how much and what to shorten.
    """
    head, turns = split_turns(messages)
    prompt_cap = window - 1 if max_prompt is None else min(max_prompt, window - 1)

    def fits(ids: list[int], budget: int = window) -> bool:
        return len(ids) + max_new_tokens <= budget and len(ids) <= prompt_cap

    built: dict[int, tuple[list[Message], list[int]]] = {}

    def build(dropped: int) -> tuple[list[Message], list[int]]:
        if dropped not in built:
            kept = head + [m for turn in turns[dropped:] for m in turn]
            built[dropped] = kept, encode(kept)
        return built[dropped]

    last = max(len(turns) - 1, 0)
    start = min(max(kept_from, 0), last)
    kept, ids = build(start)
    if fits(ids):
        return Fitted(kept, start, ids)
    kept, ids = build(last)
    if not fits(ids):
        n = len(ids)
        what = "The last message plus the system prompt" if head else "The last message"
        limit = min(prompt_cap, window - max_new_tokens)
        if n > prompt_cap:
            fix = f"shorten it (or the system prompt) to {limit} tokens or fewer"
        else:
            fix = f"set max_new_tokens <= {window - n}, or shorten the message"
        dropped = f", even after leaving out all {last} earlier turn(s)" if last else ""
        prompt = f" (and prompts of up to {prompt_cap} tokens)" if prompt_cap < window - 1 else ""
        raise ContextWindowError(
            f"{what} is {n} tokens; with max_new_tokens={max_new_tokens} it does not fit the context window of "
            f"{window} tokens{prompt}{dropped}. Fix: {fix}."
        )
    target = int(share * window)
    budget = target if fits(ids, target) else window  # only the question fits the share: keep what fits the window
    lo, hi = start + 1, last  # dropping `hi` turns fits the budget: find the fewest that do
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(build(mid)[1], budget):
            hi = mid
        else:
            lo = mid + 1
    kept, ids = build(lo)
    return Fitted(kept, lo, ids, trimmed_now=lo - start)


def context_window(model_window: int, context_length: int | None) -> int:
    """The window a chat trims to: the model's, or a smaller one the user asked for."""
    if context_length is None:
        return model_window
    if not isinstance(context_length, int) or isinstance(context_length, bool) or context_length <= 0:
        raise Phi3kitError(f"context_length must be a positive integer, got {context_length!r}. "
                           f"Fix: leave it unset to use the model's {model_window} tokens.")
    return min(context_length, model_window)


def trim_notice(dropped_now: int, window: int, why: str = "", share: float = TRIM_TO_SHARE,
                out: int | None = None) -> str:
    """What the panel and the terminal say when an answer leaves more older turns out (`why`: what set the window;
    `out`: how many turns are out of the window in all, when earlier answers already left some out). Said once per
    trim, not on the answers after it that start where it did."""
    out = dropped_now if out is None else out
    if out == dropped_now:
        dropped = "the oldest turn was" if dropped_now == 1 else f"the {dropped_now} oldest turns were"
        where = "of this answer (the system prompt is kept)"
    else:
        dropped = "the next oldest turn was" if dropped_now == 1 else f"the next {dropped_now} oldest turns were"
        where = f"of this answer ({out} turns in all are now out of the window; the system prompt is kept)"
    because = f" ({why})" if why else ""
    return (f"The conversation is longer than the {window}-token context window{because}: {dropped} left out "
            f"{where}. Older turns go several at once, down to {share:.0%} of the window, so the next answers "
            "continue from what the model has already read instead of reading the whole history again.")


def to_messages(prompt: str | Sequence[Message], system: str | None = None) -> list[Message]:
    """A plain string becomes one user turn; a message list is checked, not rewritten."""
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    else:
        messages = [dict(m) for m in prompt]
        for m in messages:
            if m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise Phi3kitError(f"Each message needs a role in {ROLES} and a string content; got {m!r}.")
    if not messages or messages[-1]["role"] != "user":
        raise Phi3kitError("The last message must be the user's turn.")
    if system and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
    return messages


def sliding_window_of(model_config: dict[str, Any]) -> int | None:
    """The checkpoint's attention window when it binds inside the context, else None (LongRoPE variants)."""
    window, context = model_config.get("sliding_window"), int(model_config.get("max_position_embeddings") or 0)
    if window is None or int(window) <= 0 or (context and int(window) >= context):
        return None
    return int(window)
