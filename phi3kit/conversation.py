"""Conversations: a history of turns and a system prompt, each answer trimmed to the model's context window.

The chat panel (`kit.chat`), `phi3kit chat` and code share this one class, so the notebook, the
terminal and a script keep history the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import GenerationConfig
from .context import Message, Said, context_window
from .errors import ContextWindowError, Phi3kitError

if TYPE_CHECKING:
    from .generate import Response, Session


class Conversation:
    """A multi-turn chat with one session: `say()` adds your turn, the answer is added once consumed.

    The full history is kept (you can read it); each answer sees as much of it as fits the context
    window, and its Response reports how many turns were left out (`trimmed_turns`; `trimmed_now` of them by that
    answer, which alone brings a `trim_notice`). Once the window is
    full, several oldest turns go at once, so the following answers start the same way and the backend's
    KV cache serves them: each answer then reads only the newest turn. Each prompt keeps the ids the model generated
    for the earlier answers (`Response.said`), so it extends that cache exactly rather than rewinding into it.
    """

    def __init__(self, session: Session, system: str | None = None, *, context_length: int | None = None,
                 config: GenerationConfig | None = None, **options: Any) -> None:
        if system is not None and not isinstance(system, str):
            raise Phi3kitError(f"system must be a string, got {type(system).__name__}.")
        self.session = session
        self.system = system or None
        self.gen = config or GenerationConfig(**options)  # bad settings fail here, not at the first question
        self.context_length = context_length
        # None: the session's chat window (the route's, capped on long-context models to fit this machine's memory)
        self.window = session.chat_window if context_length is None else context_window(session.context_length,
                                                                                          context_length)
        if self.gen.max_new_tokens >= self.window:
            raise ContextWindowError(
                f"max_new_tokens={self.gen.max_new_tokens} leaves no room for a question in the {self.window}-token "
                f"context window. Fix: set max_new_tokens well below {self.window} (e.g. {self.window // 4}).")
        self._turns: list[Message] = []
        self._pending: Response | None = None
        self._dropped = 0  # oldest turns the last answer left out (several at once: see context.TRIM_TO_SHARE)
        self._said: Said | None = None  # the chat as the model read and wrote it: the next prompt keeps its ids

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
        response = self.session.chat(asked, config=self.gen, context_length=self.context_length,
                                     kept_from=self._dropped, after=self._said)
        self._turns.append({"role": "user", "content": text})  # only once chat() accepted it
        self._dropped = response.trimmed_turns  # the next answers start where this one does, while it fits
        self._pending = response
        return response

    def reset(self) -> None:
        """Forget the history (the system prompt stays); a running answer is stopped."""
        if self._pending is not None:
            self._pending.cancel()
        self._turns, self._pending, self._dropped, self._said = [], None, 0, None

    def _settle(self) -> None:
        """A previous answer nobody read is generated now, so the history stays question/answer."""
        if self._pending is not None and not self._pending._done:
            try:
                self._pending.consume()
            except Exception:  # noqa: BLE001 - kept on that Response (.error); its question is dropped in _sync
                pass
        self._sync()

    def _sync(self) -> None:
        """Record a finished answer; a failed one takes its question back out, so `say()` can ask it again."""
        r = self._pending
        if r is not None and r._done:
            if r.failed:
                self._turns.pop()  # the user turn say() added: no orphan question before the next one
            else:
                self._turns.append({"role": "assistant", "content": "".join(r.chunks)})
                self._said = r.said  # None (text from here on) where its ids do not stand for its text
            self._pending = None

    def __repr__(self) -> str:
        return f"<Conversation {len(self.history)} messages, window {self.window} tokens>"
