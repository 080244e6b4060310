"""Chat: history trimmed to the context window, the Conversation API, the panel (headless), `phi3kit chat`."""

from __future__ import annotations

import html
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import phi3kit as kit
from phi3kit import pocket
from phi3kit.context import TRIM_TO_SHARE, fit_history, split_turns, trim_notice
from phi3kit.conversation import Conversation
from phi3kit.widgets import HEADLESS_NOTE, ChatPanel, has_widget_frontend

QA = {q["question"]: q["answer"] for q in pocket.load_qa()}
Q1, Q2, Q3 = "What is an NPU?", "What is OpenVINO?", "What is papermill?"
ROOT = Path(__file__).resolve().parents[1]

_sessions: dict[str, kit.Session] = {}
# Joins and waits below end early when the state they wait for arrives; the bound only keeps a broken run from
# hanging forever, and the assertions after it are about state (busy, finish reason, token counts), never time.
HANG_GUARD_S = 600
# Stop tests generate with ignore_eos up to LONG tokens: the answer cannot end on its own before that, so only the
# stop can have ended it early (the random model's own greedy answer ends after ~135 tokens).
LONG = 4000  # the mini-4k window is 4096 tokens


def pocket_session() -> kit.Session:
    """PyTorch on the pocket model: no export, loads in about a second."""
    if "pocket" not in _sessions:
        _sessions["pocket"] = kit.load("pocket", "transformers", "fp32", log=lambda m: None)
    return _sessions["pocket"]


def noisy_session(random_phi3: Callable[[str], Path]) -> kit.Session:
    """A random model: with ignore_eos it rambles on up to max_new_tokens, an answer long enough to stop."""
    if "noisy" not in _sessions:
        _sessions["noisy"] = kit.load(str(random_phi3("mini-4k")), "transformers", "fp32", log=lambda m: None)
    return _sessions["noisy"]


def turns(n: int) -> list[dict[str, str]]:
    qs = list(QA)[:n]
    out: list[dict[str, str]] = []
    for q in qs:
        out += [{"role": "user", "content": q}, {"role": "assistant", "content": QA[q]}]
    return out


# --- trimming ------------------------------------------------------------------------------------


def test_split_turns_keeps_system_apart() -> None:
    msgs = [{"role": "system", "content": "s"}, *turns(2), {"role": "user", "content": "q"}]
    head, groups = split_turns(msgs)
    assert head == [{"role": "system", "content": "s"}]
    assert [len(g) for g in groups] == [2, 2, 1] and groups[-1][0]["content"] == "q"


def test_fit_history_trims_several_turns_down_to_the_share(pocket_tokenizer) -> None:  # type: ignore[no-untyped-def]
    """Once the history outgrows the window, the oldest turns go several at once down to TRIM_TO_SHARE of it (the
    rule that replaced "drop the fewest": that one changed the prompt's start at every later turn, so no KV cache
    could serve it), and an earlier trim's start is kept while it fits. Catches a return to one-turn trims, a trim
    that overshoots (drops a turn it did not need to), and a chat that forgets where it was trimmed."""
    def encode(m: list[dict[str, str]]) -> list[int]:
        return pocket_tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=True)["input_ids"]

    msgs = [{"role": "system", "content": "Be brief."}, *turns(5), {"role": "user", "content": Q1}]
    full = len(encode(msgs))
    assert fit_history(msgs, encode, full + 10, 10).dropped_turns == 0
    fitted = fit_history(msgs, encode, full + 9, 10)  # one token short: enough turns go for half the window
    assert fitted.dropped_turns >= 2 and fitted.trimmed_now == fitted.dropped_turns
    assert len(fitted.prompt_ids) + 10 <= (full + 9) * TRIM_TO_SHARE
    for window in range(60, full, 37):
        f = fit_history(msgs, encode, window, 16)
        assert len(f.prompt_ids) + 16 <= window and f.prompt_ids == encode(f.messages)
        assert f.messages[0] == msgs[0] and f.messages[-1] == msgs[-1]  # system prompt and question kept
        if f.dropped_turns:  # dropping one turn fewer would not have fitted the share (or, failing that, the window)
            share = int(window * TRIM_TO_SHARE)
            budget = share if len(encode([msgs[0], msgs[-1]])) + 16 <= share else window
            assert len(f.prompt_ids) + 16 <= budget
            bigger = [msgs[0], *msgs[1 + 2 * (f.dropped_turns - 1):]]
            assert len(encode(bigger)) + 16 > budget
        # the next answer of the same chat starts where this one did, while that fits
        again = fit_history(msgs, encode, window, 16, kept_from=f.dropped_turns)
        assert (again.dropped_turns, again.trimmed_now, again.prompt_ids) == (f.dropped_turns, 0, f.prompt_ids)
    with pytest.raises(kit.ContextWindowError, match="last message plus the system prompt.*Fix"):
        fit_history(msgs, encode, 20, 16)


def test_session_chat_trims_and_says_how_much() -> None:
    s = pocket_session()
    history = [*turns(6), {"role": "user", "content": Q2}]
    r = s.chat(history, context_length=120, max_new_tokens=60)
    assert r.trimmed_turns == 6  # the window holds only the question: every earlier turn is left out
    assert r.prompt_ids == s.encode([{"role": "user", "content": Q2}])
    assert r.text == QA[Q2]
    untrimmed = s.chat(history, max_new_tokens=60)
    assert untrimmed.trimmed_turns == 0 and len(untrimmed.prompt_ids) > 300
    assert s.generate(Q1).trimmed_turns == 0


def test_chat_with_system_prompt_and_bad_input() -> None:
    s = pocket_session()
    r = s.chat([{"role": "user", "content": Q1}], system="You are terse.", max_new_tokens=8)
    assert r.prompt_ids == s.encode([{"role": "system", "content": "You are terse."}, {"role": "user", "content": Q1}])
    with pytest.raises(kit.Phi3kitError, match="last message must be the user's turn"):
        s.chat(turns(1))
    with pytest.raises(kit.Phi3kitError, match="max_new_tokens must be a positive integer"):
        s.chat([{"role": "user", "content": Q1}], max_new_tokens=0)
    with pytest.raises(kit.Phi3kitError, match="context_length must be a positive integer"):
        s.chat([{"role": "user", "content": Q1}], context_length=0)
    with pytest.raises(kit.ContextWindowError, match="does not fit the context window of 4096.*Fix: shorten"):
        s.chat([{"role": "user", "content": "word " * 5000}])


# --- Conversation --------------------------------------------------------------------------------


def test_conversation_keeps_history_across_turns() -> None:
    conv = Conversation(pocket_session(), "Answer from what you were taught.", max_new_tokens=96)
    r = conv.say(Q1)
    assert conv.history == [{"role": "user", "content": Q1}]  # the answer is added once it is consumed
    assert "".join(r) == QA[Q1]
    assert conv.history[-1] == {"role": "assistant", "content": QA[Q1]}
    r2 = conv.say(Q2)
    assert r2.prompt_ids == pocket_session().encode([*conv.messages])  # system, Q1, A1, Q2
    conv.say(Q3)  # r2 was never read: it is answered first, so the history stays question/answer
    assert [m["role"] for m in conv.history] == ["user", "assistant", "user", "assistant", "user"]
    assert conv.messages[0]["role"] == "system"
    conv.reset()
    assert conv.history == [] and conv.messages[0]["content"] == "Answer from what you were taught."
    assert conv.say(Q1).text == QA[Q1]


def test_conversation_trims_to_a_small_window_and_refuses_what_never_fits() -> None:
    conv = Conversation(pocket_session(), context_length=100, max_new_tokens=64)
    for q in (Q1, Q2, Q3):
        r = conv.say(q)
        assert r.text == QA[q]  # only the question fits: the pocket model answers as trained
    assert r.trimmed_turns == 2 and len(conv.history) == 6  # the full history is kept, trimmed per answer
    assert r.trimmed_now == 1 and "the next oldest turn was left out of this answer (2 turns in all" in r.trim_notice
    assert "the 2 oldest turns were left out" in trim_notice(r.trimmed_turns, conv.window)
    with pytest.raises(kit.ContextWindowError, match="context window of 100"):
        conv.say("word " * 200)
    assert len(conv.history) == 6  # a refused message is not added
    with pytest.raises(kit.ContextWindowError, match="leaves no room"):
        Conversation(pocket_session(), context_length=64, max_new_tokens=64)
    with pytest.raises(kit.Phi3kitError, match="non-empty string"):
        conv.say("   ")


def test_trim_notice_comes_with_each_new_trim_only() -> None:
    """After a trim, the next answers start where it did and leave nothing new out: no notice for them (it read as
    a new loss at every answer); the next trim says how many more turns went and how many are out in all. Catches
    a notice keyed to the turns out in all (trimmed_turns) rather than to this answer's trim, and a later trim's
    notice that forgets the turns left out before it."""
    conv = Conversation(pocket_session(), context_length=200, max_new_tokens=48)
    got = []
    for q in list(QA)[:12]:
        r = conv.say(q).consume()
        got.append((r.trimmed_now, r.trimmed_turns, r.trim_notice))
    assert all(bool(notice) == (now > 0) for now, _, notice in got)
    trims = [i for i, (now, _, _) in enumerate(got) if now]
    assert len(trims) >= 2 and trims[0] + 1 not in trims  # a trim, quiet answers after it, then a new trim
    assert got[trims[0] + 1][1] == got[trims[0]][1] > 0  # the quiet answer still leaves those turns out
    first, second = got[trims[0]], got[trims[1]]
    assert f"the {first[0]} oldest turns were left out of this answer (the system prompt" in first[2]
    assert f"the next {second[0]} oldest turns were left out of this answer ({second[1]} turns in all" in second[2]
    assert second[1] == first[1] + second[0]


def test_stopped_answer_keeps_its_text(random_phi3: Callable[[str], Path]) -> None:
    conv = Conversation(noisy_session(random_phi3), max_new_tokens=LONG, ignore_eos=True)
    r = conv.say("Tell me everything.")
    it = iter(r)
    first = [next(it) for _ in range(3)]
    r.cancel()
    assert r.metrics.finish_reason == "cancelled" and r.metrics.new_tokens < LONG
    assert r.metrics.new_tokens == len(r.token_ids) < 100  # the tokens read before the cancel, no more
    assert conv.history[-1] == {"role": "assistant", "content": "".join(first)}


# --- the panel, headless -------------------------------------------------------------------------


def test_panel_streams_an_answer_and_reports_metrics() -> None:
    panel = kit.chat(pocket_session(), system="Be helpful.", interactive=False)
    assert isinstance(panel, ChatPanel) and "System prompt" in panel.transcript.children[0].value
    panel.input.value = Q1  # what pressing Enter in the text box does
    panel.wait(HANG_GUARD_S)
    assert panel.input.value == "" and not panel.busy
    assert f'<span dir="auto">{html.escape(QA[Q1])}</span>' in panel.answer.value
    assert html.escape(panel.response.metrics.summary()) in panel.answer.value  # a metrics line per answer
    assert "(stop)" in panel.metrics.value and "tokens/s" in panel.metrics.value and panel.notice.value == ""
    assert panel.send_button.disabled is False and panel.stop_button.disabled is True
    assert panel.send("") is None and panel.send("   ") is None  # nothing to send
    panel.reset()
    assert len(panel.transcript.children) == 1 and panel.conversation.history == []


def test_panel_says_when_it_trims() -> None:
    """The notice shows on the answer that trims and goes on the next, which leaves nothing new out."""
    panel = kit.chat(pocket_session(), context_length=130, max_new_tokens=64, interactive=False)
    for q in (Q1, Q2):
        panel.send(q)
        panel.wait(HANG_GUARD_S)
    assert "the oldest turn was left out" in panel.notice.value and "130-token" in panel.notice.value
    assert f">{html.escape(QA[Q2])}<" in panel.answer.value
    panel = kit.chat(pocket_session(), context_length=200, max_new_tokens=48, interactive=False)
    notices = []
    for q in list(QA)[:6]:
        panel.send(q)
        panel.wait(HANG_GUARD_S)
        notices.append((panel.response.trimmed_now, panel.notice.value))
    assert [bool(n) for _, n in notices] == [now > 0 for now, _ in notices] and any(n for _, n in notices)
    assert notices[-1] == (0, "") and panel.response.trimmed_turns > 0  # after the trim: turns still out, no notice
    panel.send("word " * 300)
    assert "context window" in panel.notice.value and not panel.busy  # shown in the panel, not raised


def test_panel_stop_button_stops_a_long_answer(random_phi3: Callable[[str], Path]) -> None:
    """The Stop button ends a streaming answer early: cancelled, the text so far kept, '[stopped]' shown.

    The click lands while the answer streams, pinned to its first chunk (an observer on the answer widget,
    attached when the panel adds it), so no timing decides the outcome: without a working Stop the answer
    runs to all LONG tokens (ignore_eos), and the token count says so.
    """
    panel = kit.chat(noisy_session(random_phi3), max_new_tokens=LONG, ignore_eos=True, interactive=False)
    seen: dict[str, object] = {}

    def click_on_first_chunk(change: dict) -> None:  # runs in the panel's streaming thread
        if "clicked" not in seen and "</span>" in change["new"] and '<span dir="auto"></span>' not in change["new"]:
            seen.update(clicked=True, busy=panel.busy, stop_enabled=not panel.stop_button.disabled)
            panel.stop_button.click()

    def watch(change: dict) -> None:  # the panel appends the answer's widget before its thread starts
        if change["new"]:
            change["new"][-1].observe(click_on_first_chunk, names="value")

    panel.transcript.observe(watch, names="children")
    panel.send("Tell me everything.")
    panel.wait(HANG_GUARD_S)
    assert seen == {"clicked": True, "busy": True, "stop_enabled": True}, "Stop was clickable while it streamed"
    assert not panel.busy and panel.response is not None
    m = panel.response.metrics
    assert m.finish_reason == "cancelled" and m.new_tokens < LONG
    assert "(cancelled)" in panel.metrics.value and " [stopped]</span>" in panel.answer.value
    assert panel.conversation.history[-1]["content"] == "".join(panel.response.chunks)  # the text so far, kept
    assert panel.stop_button.disabled and not panel.send_button.disabled


def test_headless_chat_shows_nothing_interactive_and_returns_at_once(capsys: pytest.CaptureFixture[str],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside a notebook kernel (here: pytest) nobody can click: a note, and nothing starts generating."""
    monkeypatch.delenv("PHI3KIT_HEADLESS", raising=False)
    assert not has_widget_frontend()
    panel = kit.chat(pocket_session())
    panel._ipython_display_()
    # Returns at once: nothing was asked, so nothing generates (no thread, no response) and nothing waits.
    assert not panel.interactive and not panel.busy and panel._thread is None and panel.response is None
    assert capsys.readouterr().out.strip() == HEADLESS_NOTE


def test_panel_shows_in_any_notebook_frontend_not_only_jupyterlab(monkeypatch: pytest.MonkeyPatch) -> None:
    """VS Code, PyCharm and Colab-style kernels have no JPY_SESSION_NAME: the panel shows there too, and hides
    only where the kit runs headless (PHI3KIT_HEADLESS, set in the kernels `phi3kit run` and the tests start)."""

    class Shell:
        kernel = object()  # an IPython shell inside a kernel

    import IPython

    monkeypatch.setattr(IPython, "get_ipython", lambda: Shell())
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    monkeypatch.delenv("PHI3KIT_HEADLESS", raising=False)
    assert has_widget_frontend() and kit.chat(pocket_session()).interactive
    monkeypatch.setenv("PHI3KIT_HEADLESS", "1")
    assert not has_widget_frontend() and not kit.chat(pocket_session()).interactive


# --- phi3kit chat in a terminal ------------------------------------------------------------------


def cli(*args: str) -> list[str]:
    return [sys.executable, "-u", "-m", "phi3kit.cli", "chat", *args]


@pytest.mark.slow
def test_cli_chat_multi_turn_trim_reset_errors_exit() -> None:
    script = f"{'word ' * 5000}\n{Q1}\n{Q2}\n/reset\n{Q3}\n/exit\n{Q1}\n"
    out = subprocess.run(cli("--backend", "openvino", "--precision", "int4", "--context-length", "130",
                             "--max-new-tokens", "64"),
                         input=script, capture_output=True, text=True, timeout=HANG_GUARD_S, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    answers = [line.split("model> ", 1)[1] for line in out.stdout.splitlines() if "model> " in line]
    assert answers == [QA[Q1], QA[Q2], QA[Q3]]  # /exit stops before the last question
    assert "(history cleared)" in out.stdout
    assert out.stderr.count("tokens/s") == 3  # a metrics line per answer
    assert out.stderr.count("the oldest turn was left out") == 1  # Q2 (after Q1); Q3 came after /reset
    assert "phi3kit: error: The last message is" in out.stderr and "Fix:" in out.stderr  # and the chat went on


def test_cli_chat_bad_options_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    from phi3kit.cli import main

    assert main(["chat", "--backend", "tensorrt"]) == 2 and "Unknown backend" in capsys.readouterr().err
    assert main(["chat", "--backend", "transformers", "--precision", "fp32", "--max-new-tokens", "0"]) == 2
    assert "max_new_tokens must be a positive integer" in capsys.readouterr().err
    assert main(["chat", "--backend", "transformers", "--precision", "fp32", "--context-length", "100"]) == 2
    assert "leaves no room" in capsys.readouterr().err


@pytest.mark.skipif(sys.platform == "win32",
                    reason="Ctrl-C here is SIGINT sent with send_signal; Windows has no SIGINT to send")
@pytest.mark.slow
def test_cli_ctrl_c_stops_the_answer_not_the_chat(random_phi3: Callable[[str], Path]) -> None:
    # --ignore-eos: the random model's greedy answer ends with a stop token after 135 tokens (0.25 s),
    # which could finish before the signal arrives; this way only Ctrl-C can end it early.
    proc = subprocess.Popen(cli("--model", str(random_phi3("mini-4k")), "--backend", "transformers", "--precision",
                                "fp32", "--max-new-tokens", str(LONG), "--ignore-eos"),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    assert proc.stdin and proc.stdout and proc.stderr
    got: dict[str, bytearray] = {"out": bytearray(), "err": bytearray()}

    def pump(name: str, stream) -> None:  # type: ignore[no-untyped-def]
        while chunk := stream.read1(4096):
            got[name] += chunk

    readers = [threading.Thread(target=pump, args=(n, s), daemon=True)
               for n, s in (("out", proc.stdout), ("err", proc.stderr))]
    for t in readers:
        t.start()

    def wait_for(what: str, pred: Callable[[], bool], timeout: float = HANG_GUARD_S) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail(f"waited for {what}; stdout={bytes(got['out'])[-500:]!r} "
                            f"stderr={bytes(got['err'])[-1500:]!r}")
            time.sleep(0.02)

    try:
        proc.stdin.write(b"Tell me everything.\n")
        proc.stdin.flush()
        wait_for("the answer to stream", lambda: len(got["out"].partition(b"model> ")[2]) > 50)
        proc.send_signal(signal.SIGINT)
        wait_for("the stop", lambda: b"[stopped]" in got["out"] and b"(cancelled)" in got["err"])
        proc.stdin.write(b"/reset\n")
        proc.stdin.flush()
        wait_for("the chat to go on", lambda: b"(history cleared)" in got["out"])
        proc.stdin.close()  # EOF quits
        assert proc.wait(HANG_GUARD_S) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    for t in readers:
        t.join(5)
    summary = next(line for line in got["err"].decode().splitlines() if "(cancelled)" in line)
    assert int(summary.split()[0]) < LONG


def test_cli_chat_no_reuse_loads_without_the_kept_cache() -> None:
    """`phi3kit chat --no-reuse` loads with reuse_cache=False (each answer reads the whole history), the default
    keeps the cache. Catches the flag missing from chat or inverted (a switch sets the opposite of the default)."""
    from phi3kit.cli import build_parser
    from phi3kit.cli.common import load_config

    parser = build_parser()
    assert load_config(parser.parse_args(["chat", "--no-reuse"])).reuse_cache is False
    assert load_config(parser.parse_args(["chat"])).reuse_cache is True
    assert "--no-reuse" in parser._subparsers._group_actions[0].choices["chat"].format_help()  # noqa: SLF001
