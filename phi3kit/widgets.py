"""A chat panel for JupyterLab: `kit.chat(session)`.

The answer is generated in a thread and streamed into the panel by setting widget values, so
the cell returns at once and the kernel stays free to receive the stop button's click (a click
handler that generated in the kernel's own thread would hold the kernel until the answer ended).
The panel shows wherever a kernel has a frontend that renders widgets (JupyterLab, Notebook, VS Code,
PyCharm, Colab-style frontends). Where no one can click it (the kernels `phi3kit run` and the tests
start headless, or plain Python without a kernel) it prints a note instead, and nothing blocks.
"""

from __future__ import annotations

import html
import threading
from typing import TYPE_CHECKING, Any

from . import env
from .config import CHAT_MAX_NEW_TOKENS
from .conversation import Conversation
from .errors import Phi3kitError

if TYPE_CHECKING:
    from .generate import Response, Session

HEADLESS_NOTE = (
    "kit.chat: this is a headless run (phi3kit run, papermill or a test) or no notebook kernel, so the chat panel "
    "is not shown. Open the notebook in JupyterLab (or any notebook frontend) to chat, or chat from code: "
    "`conv = kit.Conversation(session); conv.say('...').text`."
)
_BUBBLE = "margin:4px 0;padding:6px 10px;border-radius:8px;white-space:pre-wrap;unicode-bidi:plaintext;"
_STYLE = {
    "user": _BUBBLE + "background:#e8f0fe;",
    "assistant": _BUBBLE + "background:#f1f3f4;",
    "system": _BUBBLE + "font-style:italic;color:#555;",
}
_LABEL = {"user": "You", "assistant": "Model", "system": "System prompt"}


def has_widget_frontend() -> bool:
    """True in a notebook kernel a person may be looking at; False headless or outside a kernel.

    The kernels `phi3kit run` starts (and the tests') carry PHI3KIT_HEADLESS; a kernel has an IPython
    shell with a `kernel` (a terminal IPython has none).
    """
    if env.switch(env.HEADLESS):
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def bubble(role: str, text: str, cls: str = "", footer: str = "") -> str:
    """One message as HTML; `dir="auto"` lays Farsi and Arabic out right to left; `footer`: its metrics."""
    foot = (f'<div class="phi3kit-msg-metrics" style="font-size:smaller;color:#666;white-space:normal">'
            f"{html.escape(footer)}</div>") if footer else ""
    return (f'<div class="phi3kit-msg phi3kit-{role} {cls}" style="{_STYLE[role]}">'
            f"<b>{_LABEL[role]}:</b> <span dir=\"auto\">{html.escape(text)}</span>{foot}</div>")


class ChatPanel:
    """Text box, send / stop / reset buttons, the streamed transcript, a trim notice, metrics."""

    def __init__(self, session: Session, system: str | None = None, *, max_new_tokens: int = CHAT_MAX_NEW_TOKENS,
                 context_length: int | None = None, interactive: bool | None = None, **options: Any) -> None:
        import ipywidgets as w

        self._w = w
        self.conversation = Conversation(session, system, context_length=context_length,
                                         max_new_tokens=max_new_tokens, **options)
        self.interactive = has_widget_frontend() if interactive is None else interactive
        self.response: Response | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

        self.header = w.HTML(f"<b>Chat with {html.escape(repr(session))}</b> "
                             f"(context window {self.conversation.window} tokens)")
        self.transcript = w.VBox([])
        self.answer: Any = None  # the answer being streamed: the only widget that changes per chunk
        self.notice = w.HTML("")
        self.metrics = w.HTML("")
        self.input = w.Text(placeholder="Ask something, then press Enter or Send", layout=w.Layout(flex="1"),
                            continuous_update=False)  # the value arrives on Enter (or leaving the box)
        self.send_button = w.Button(description="Send", button_style="primary", icon="paper-plane")
        self.stop_button = w.Button(description="Stop", button_style="warning", icon="stop", disabled=True)
        self.reset_button = w.Button(description="Reset", icon="trash")
        for widget, name in ((self.transcript, "transcript"), (self.notice, "notice"), (self.metrics, "metrics"),
                             (self.input, "input"), (self.send_button, "send"), (self.stop_button, "stop"),
                             (self.reset_button, "reset")):
            widget.add_class(f"phi3kit-chat-{name}")  # stable hooks for styling and browser tests
        self.send_button.on_click(lambda _: self.send())
        self.stop_button.on_click(lambda _: self.stop())
        self.reset_button.on_click(lambda _: self.reset())
        self.input.observe(self._on_enter, names="value")
        self.box = w.VBox([self.header, self.transcript, self.notice,
                           w.HBox([self.input, self.send_button, self.stop_button, self.reset_button]),
                           self.metrics])
        self.box.add_class("phi3kit-chat")
        self._render_history()

    # --- actions --------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def send(self, text: str | None = None) -> Response | None:
        """Ask `text` (default: the text box); the answer streams in a thread. None if nothing was sent."""
        text = self.input.value if text is None else text
        if self.busy or not text.strip():
            return None
        self.input.value = ""
        try:
            response = self.conversation.say(text)
        except Phi3kitError as exc:
            self.notice.value = f'<span style="color:#b00020">{html.escape(str(exc))}</span>'
            return None
        self.response = response
        notice = f"{response.trim_notice} Reset starts afresh." if response.trim_notice else ""
        self.notice.value = f'<span style="color:#8a6d00">{html.escape(notice)}</span>' if notice else ""
        self.answer = answer = self._w.HTML(bubble("assistant", "", "phi3kit-streaming"))
        answer.add_class("phi3kit-chat-answer")
        self.transcript.children = (*self.transcript.children, self._w.HTML(bubble("user", text)), answer)
        self.metrics.value = "generating..."
        self._stop.clear()
        self.send_button.disabled, self.stop_button.disabled = True, False
        self._thread = threading.Thread(target=self._stream, args=(response, answer), name="phi3kit-chat",
                                        daemon=True)
        self._thread.start()
        return response

    def _stream(self, response: Response, answer: Any) -> None:
        """Runs in a thread: the Response is iterated here only, and stopped here (a generator has one owner)."""
        text = ""
        try:
            for chunk in response:
                text += chunk
                answer.value = bubble("assistant", text, "phi3kit-streaming")
                if self._stop.is_set():
                    break
            response.cancel()  # a no-op when the answer is complete
            stopped = response.metrics.finish_reason == "cancelled"
            summary = response.metrics.summary()
            answer.value = bubble("assistant", text + (" [stopped]" if stopped else ""), footer=summary)
            self.metrics.value = html.escape(summary)
        except Exception as exc:  # noqa: BLE001 - shown in the panel: a thread's exception is otherwise lost
            # The answer failed: say so where it stood, and leave the question out of the history (the
            # conversation drops it), so the next send, or the same question again, starts from a clean turn.
            answer.value = bubble("assistant", text + " [failed]", "phi3kit-failed")
            self.notice.value = (f'<span style="color:#b00020">The answer failed: {html.escape(type(exc).__name__)}: '
                                 f"{html.escape(str(exc))} The question was not kept; send it again to retry.</span>")
            self.metrics.value = ""
            self.conversation.history  # noqa: B018 - records the failure now: the failed question leaves the history
        finally:
            self.send_button.disabled, self.stop_button.disabled = False, True

    def stop(self) -> None:
        """Stop the answer being streamed; its text so far stays in the history."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> None:
        """Block until the current answer is done (for code and tests; the panel never calls it)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def reset(self) -> None:
        """Stop any answer and clear the history; the system prompt stays."""
        self.stop()
        self.wait()
        self.conversation.reset()
        self.notice.value = self.metrics.value = ""
        self._render_history()

    # --- display --------------------------------------------------------------------------------
    def _on_enter(self, change: dict[str, Any]) -> None:
        if change["new"]:
            self.send()

    def _render_history(self) -> None:
        """Show the system prompt only: messages are appended one widget each as they come."""
        for child in self.transcript.children:
            child.close()
        system = self.conversation.system
        self.transcript.children = (self._w.HTML(bubble("system", system)),) if system else ()

    def _ipython_display_(self) -> None:
        if self.interactive:
            from IPython.display import display

            display(self.box)
        else:
            print(HEADLESS_NOTE)

    def __repr__(self) -> str:
        return f"<ChatPanel {'interactive' if self.interactive else 'headless'}: {self.conversation!r}>"


def chat(session: Session, system: str | None = None, *, max_new_tokens: int = CHAT_MAX_NEW_TOKENS,
         context_length: int | None = None, interactive: bool | None = None, **options: Any) -> ChatPanel:
    """A chat panel for `session`; shown when it is a cell's last expression (in any notebook frontend).

    `system` is the system prompt; `context_length` caps the window history is trimmed to;
    `interactive` overrides the frontend detection; other options are GenerationConfig's.
    """
    return ChatPanel(session, system, max_new_tokens=max_new_tokens, context_length=context_length,
                     interactive=interactive, **options)
