"""A scripted multi-turn chat for the KV-cache reuse tests: the same turns with reuse on and off must give the
same ids, through a trim, a stopped answer and a failed one (imported by the route tests, not collected)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import phi3kit as kit
from phi3kit import pocket
from phi3kit.conversation import Conversation

QUESTIONS = [q["question"] for q in pocket.load_qa()][:9]

# (action, question): "say" reads the whole answer; "stop" cancels it after two chunks (the panel's Stop and
# Ctrl-C in `phi3kit chat` do the same: Response.cancel()); "fail" has the runtime raise mid-answer.
SCRIPT: list[tuple[str, str]] = [
    ("say", QUESTIONS[0]), ("say", QUESTIONS[1]), ("stop", QUESTIONS[2]), ("say", QUESTIONS[3]),
    ("fail", QUESTIONS[4]), ("say", QUESTIONS[4]), ("say", QUESTIONS[5]), ("say", QUESTIONS[6]),
    ("say", QUESTIONS[7]), ("say", QUESTIONS[8]),
]
# Small enough that the script's chat outgrows it (a trim), large enough for two turns after one.
WINDOW = 240
MAX_NEW = 40


@dataclass
class Turn:
    action: str
    prompt_ids: list[int]
    token_ids: list[int]
    finish: str
    reused: int
    prefilled: int
    trimmed: int
    cache_ok: bool | None = None  # what `check_cache` said after this answer (None: not checked)


@dataclass
class Played:
    turns: list[Turn] = field(default_factory=list)
    history: list[dict[str, str]] = field(default_factory=list)

    def ids(self) -> list[tuple[str, list[int], list[int]]]:
        return [(t.action, t.prompt_ids, t.token_ids) for t in self.turns]


class Injected(RuntimeError):
    """The failure a test injects into a runtime mid-answer."""


@contextmanager
def failing_stream(session: kit.Session, after: int = 3) -> Iterator[None]:
    """The backend's stream raises after `after` tokens (a runtime that fails mid-answer, seen from the kit)."""
    backend = session.backend
    real = backend.stream

    def stream(*args: Any, **kw: Any) -> Iterator[tuple[int, float]]:
        inner = real(*args, **kw)
        try:
            for n, item in enumerate(inner):
                if n == after:
                    raise Injected("injected runtime failure")
                yield item
        finally:
            inner.close()

    backend.stream = stream  # type: ignore[method-assign]
    try:
        yield
    finally:
        del backend.stream  # the class's method again


Fail = Callable[[kit.Session], AbstractContextManager[Any]]


def play(session: kit.Session, reuse: bool, *, fail: Fail = failing_stream,
         check_cache: Callable[[kit.Session, kit.Response], bool] | None = None, window: int = WINDOW,
         script: list[tuple[str, str]] = SCRIPT) -> Played:
    """Play `script` in a fresh Conversation with the session's reuse switched on or off."""
    session.reuse_cache = reuse
    conv = Conversation(session, "Answer from what you were taught.", context_length=window, max_new_tokens=MAX_NEW)
    out = Played()
    try:
        for action, q in script:
            r = conv.say(q)
            if action == "stop":
                it = iter(r)
                next(it), next(it)
                r.cancel()
            elif action == "fail":
                with fail(session):
                    try:
                        r.consume()
                    except Exception as exc:  # noqa: BLE001 - the injected failure, checked below
                        assert r.failed, exc
            else:
                r.consume()
            m = r.metrics
            turn = Turn(action, list(r.prompt_ids), list(r.token_ids), m.finish_reason, m.reused_tokens,
                        m.prefilled_tokens, r.trimmed_turns)
            if check_cache is not None:
                turn.cache_ok = check_cache(session, r)
            out.turns.append(turn)
        out.history = conv.history
    finally:
        session.reuse_cache = True
    return out


def assert_parity(on: Played, off: Played) -> None:
    """Reuse changes what is read, never what is answered; and it did reuse, through every kind of turn."""
    assert [t.finish for t in on.turns] == [t.finish for t in off.turns]
    assert "cancelled" in [t.finish for t in on.turns] and "error" in [t.finish for t in on.turns]
    assert any(t.trimmed for t in on.turns), "the script's chat never outgrew its window: no trim was tested"
    for a, b in zip(on.turns, off.turns, strict=True):
        assert a.prompt_ids == b.prompt_ids and a.trimmed == b.trimmed
        if a.finish != "error":  # a failed answer's ids depend on where the failure struck
            assert a.token_ids == b.token_ids, (a.action, a.prompt_ids)
    assert on.history == off.history
    assert all(t.reused == 0 and t.prefilled == len(t.prompt_ids) for t in off.turns)
    for a in on.turns:
        assert a.reused + a.prefilled == len(a.prompt_ids) and a.prefilled >= 1
    after = [b for a, b in zip(on.turns, on.turns[1:], strict=False) if a.action in ("stop", "fail")]
    assert all(t.reused for t in after), "the answer after a stop or a failure read the whole history again"
    assert sum(t.prefilled for t in on.turns) < sum(t.prefilled for t in off.turns) / 2


def cache_matches(session: kit.Session, r: kit.Response) -> bool:
    """What the backend says its cache holds is this answer's prompt and then the ids it generated (the consumer
    may have read fewer of them before a stop: those it read agree), or nothing (a runtime failure)."""
    ids = session.backend.cached.ids
    if not ids:
        return r.failed
    prompt = r.prompt_ids
    gen = ids[len(prompt):]
    n = min(len(gen), len(r.token_ids))
    return ids[:len(prompt)] == prompt and gen[:n] == r.token_ids[:n]
