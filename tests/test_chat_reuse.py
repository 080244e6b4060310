"""Chats keep the KV cache between answers: the shared decision (ids, not text), the PyTorch route's parity with a
full prefill through a trim, a stop and a failure, and the trim that lets later turns extend the cache."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from chat_script import MAX_NEW, QUESTIONS, Injected, assert_parity, cache_matches, play

import phi3kit as kit
from phi3kit.backends.base import CachedIds
from phi3kit.context import Said
from phi3kit.conversation import Conversation
from phi3kit.testing import make_random_phi3

_sessions: dict[str, kit.Session] = {}
WINDOW = 96  # a sliding window a few turns of a tiny model's chat fill


def pocket_torch() -> kit.Session:
    if "torch" not in _sessions:
        _sessions["torch"] = kit.load("pocket", "transformers", "fp32", log=lambda m: None)
    return _sessions["torch"]


# --- the decision --------------------------------------------------------------------------------


def test_cached_ids_extend_rewind_or_start_afresh() -> None:
    c = CachedIds(ids=[1, 2, 3, 4])
    assert c.keep([1, 2, 3, 4, 5, 6]) == 4  # extends: only 5, 6 are read
    assert c.keep([1, 2, 9, 9]) == 2  # diverges: rewinds to the common prefix
    assert c.keep([1, 2, 9, 9], can_rewind=False) == 0  # a runtime that cannot rewind starts afresh
    assert c.keep([1, 2, 3, 4, 5], can_rewind=False) == 4  # ...but still extends
    assert c.keep([1, 2, 3, 4]) == 3  # the same prompt again: its last id is read again, for its logits
    assert c.keep([7]) == 0 and CachedIds().keep([1, 2]) == 0
    c.forget()
    assert c.ids == [] and c.keep([1, 2, 3]) == 0


PHI3_TOKENIZER = Path(__file__).parent / "data" / "phi3-tokenizer"


def phi3_encoder() -> kit.Session:
    """A Session that only encodes, with Phi-3's own tokenizer and chat template (no model)."""
    from transformers import AutoTokenizer

    s = object.__new__(kit.Session)
    s.tokenizer = AutoTokenizer.from_pretrained(PHI3_TOKENIZER)
    return s


def test_a_chat_prompt_keeps_the_answers_ids_and_tokenizes_only_what_follows() -> None:
    """Catches a prompt that re-tokenizes the answers (a random model's never split the same: every turn would rewind)
    and one whose ids after the answer differ from the whole text's (on Phi-3's tokenizer they must not: the text
    after an answer starts at a special token)."""
    s = phi3_encoder()
    tok = s.tokenizer
    for system in ([], [{"role": "system", "content": "Answer briefly."}]):
        asked = [*system, {"role": "user", "content": "What is an NPU?"}]
        first = s.encode(asked)
        for answer in ["An accelerator, mostly for neural networks.", "多语言 text", "ends with a newline\n"]:
            later = [*asked, {"role": "assistant", "content": answer}, {"role": "user", "content": "And a GPU?"}]
            own = tok(answer, add_special_tokens=False)["input_ids"]
            said = Said(s.render(asked) + answer, tuple(first + own))
            assert s.encode(later, said) == s.encode(later)  # the answer's own tokenization: the whole text's ids
            # Ids the model generated that split the answer otherwise are kept as they are, and still read as it.
            split = [i for w in answer.split(" ") for i in tok(w, add_special_tokens=False)["input_ids"]]
            said = Said(s.render(asked) + answer, tuple(first + split))
            ids = s.encode(later, said)
            assert ids[:len(said.ids)] == list(said.ids) and ids[len(said.ids):] == s.encode(later)[-(len(ids) -
                                                                                                   len(said.ids)):]
            # A prompt that does not go on from it (a trim, another system prompt) is the text's own tokenization.
            trimmed = [{"role": "user", "content": "And a GPU?"}]
            other = [{"role": "system", "content": "Be formal."}, *later[len(system):]]
            assert s.encode(trimmed, said) == s.encode(trimmed) and s.encode(other, said) == s.encode(other)


def test_said_is_the_answer_only_where_its_ids_are_its_text(pocket_tokenizer: Any) -> None:
    """The next prompt goes on from an answer's ids only where they decode to the text the history keeps: not from a
    failed answer or a single prompt; the few ids of a character cut in two are left out (the text has none of it);
    special tokens the model wrote stay (the stream left them out of the text). Catches ids that stand for other
    text than the history's, and an answer ending in a cut character that loses all of its ids."""
    s = pocket_torch()
    conv = Conversation(s, max_new_tokens=8)
    r = conv.say("What is an NPU?").consume()
    whole = Said(r.prompt_text + r.text, tuple(r.prompt_ids + r.token_ids))
    assert r.said == whole
    assert s.generate("What is an NPU?", max_new_tokens=8).consume().said is None  # no chat to go on from
    ids = list(r.token_ids)
    cut = [pocket_tokenizer.convert_tokens_to_ids("Ã")]  # the pocket's byte token 0xC3: the first half of "é"
    r.token_ids[:] = ids + cut
    assert r.said == whole
    special = pocket_tokenizer.convert_tokens_to_ids(pocket_tokenizer.all_special_tokens[0])
    r.token_ids[:] = ids[:2] + [special] + ids[2:]
    assert r.said == Said(whole.text, tuple(r.prompt_ids + r.token_ids))
    r.token_ids[:] = ids[:2] + cut + ids[2:]  # not at the end: the text never had it
    assert r.said is None
    r.token_ids[:] = ids
    r.metrics.finish_reason = "error"
    assert r.said is None


# --- PyTorch: parity with a full prefill -----------------------------------------------------------


def _torch_cache(session: kit.Session, r: kit.Response) -> bool:
    cached = session.backend.cached
    held = cached.state.get_seq_length() if cached.state is not None else 0
    return held == len(cached.ids) and cache_matches(session, r)


def test_pytorch_chat_with_reuse_answers_as_a_full_prefill() -> None:
    """Greedy fp32 ids with the DynamicCache kept equal a full prefill's at every turn, through a trim, a stopped
    answer and a failed one; the cache then holds exactly the ids the backend says (prompt + the answer's ids).
    Catches: a cache that is not cropped on divergence (wrong answers after a stop or a trim), a cache that claims
    ids it does not hold, reuse that silently never happens, and a trim that re-reads the history every turn."""
    s = pocket_torch()
    on = play(s, True, check_cache=_torch_cache)
    off = play(s, False)
    assert_parity(on, off)
    assert all(t.cache_ok for t in on.turns), [(t.action, t.cache_ok) for t in on.turns]


@contextmanager
def failing_forward(session: kit.Session, after: int = 5) -> Iterator[None]:
    """PyTorch itself raises on its `after`-th forward pass: the DynamicCache is left half-written."""
    model = session.backend.model
    real, calls = model.forward, [0]

    def forward(*a, **kw):  # type: ignore[no-untyped-def]
        calls[0] += 1
        if calls[0] == after:
            raise Injected("injected failure inside the model")
        return real(*a, **kw)

    model.forward = forward
    try:
        yield
    finally:
        del model.forward


def test_a_failure_inside_pytorch_forgets_the_cache_and_the_next_answer_is_right() -> None:
    """A forward pass that raises mid-answer leaves a cache nobody can vouch for: the backend forgets it, the
    next answer reads everything again and equals a full prefill. Catches a half-written cache reused."""
    s = pocket_torch()
    on = play(s, True, fail=failing_forward, check_cache=_torch_cache)
    off = play(s, False, fail=failing_forward)
    failed = [i for i, t in enumerate(on.turns) if t.finish == "error"]
    assert failed and on.turns[failed[0] + 1].reused == 0
    for a, b in zip(on.turns, off.turns, strict=True):
        assert a.prompt_ids == b.prompt_ids and (a.finish == "error" or a.token_ids == b.token_ids)
    assert all(t.cache_ok for t in on.turns)


def test_single_prompts_and_a_reuse_off_session_read_the_whole_prompt() -> None:
    """Benchmarks, tune and check time `generate()` (or a bare Response) on fresh prompts: a full prefill even
    right after a chat filled the cache with the same prefix. Catches a fake TTFT from a cached prefix."""
    s = pocket_torch()
    conv = Conversation(s, max_new_tokens=MAX_NEW)
    conv.say(QUESTIONS[0]).consume()
    again = conv.say(QUESTIONS[1]).consume()
    assert again.metrics.reused_tokens > 0  # a chat reuses...
    r = s.generate(conv.messages[:-1] + [{"role": "user", "content": QUESTIONS[1]}], max_new_tokens=8).consume()
    assert r.metrics.reused_tokens == 0 and r.metrics.prefilled_tokens == r.metrics.prompt_tokens  # ...one prompt not
    s.reuse_cache = False
    try:
        off = s.chat(conv.messages + [{"role": "user", "content": QUESTIONS[2]}], max_new_tokens=8).consume()
    finally:
        s.reuse_cache = True
    assert off.metrics.reused_tokens == 0 and off.metrics.prefilled_tokens == off.metrics.prompt_tokens
    assert "reused" in again.metrics.summary() and "reused" not in r.metrics.summary()


def test_a_trimmed_chat_extends_the_cache_on_the_following_turns() -> None:
    """Once the window is full the oldest turns go several at once: the next turns' prompts start as the trimmed
    one did, so they read only their new turn. Catches the old rule (one turn per answer: every later turn
    starts differently and is read in full)."""
    s = pocket_torch()
    conv = Conversation(s, "Be brief.", context_length=200, max_new_tokens=MAX_NEW)
    rs = [conv.say(q).consume() for q in QUESTIONS]
    first = next(i for i, r in enumerate(rs) if r.trimmed_turns)
    assert first + 2 < len(rs), "the chat trimmed too late to see the turns after a trim"
    assert rs[first].trimmed_turns >= 2  # several at once
    assert len(rs[first].prompt_ids) + MAX_NEW <= 200 // 2  # down to the stated share
    nxt = rs[first + 1]
    assert nxt.trimmed_turns == rs[first].trimmed_turns  # the same start...
    assert nxt.prompt_ids[:len(rs[first].prompt_ids) - 1] == rs[first].prompt_ids[:-1]
    assert nxt.metrics.reused_tokens >= len(rs[first].prompt_ids) - 1  # ...so the cache serves it
    assert "down to 50% of the window" in rs[first].trim_notice


def test_pytorch_cuts_a_sliding_window_cache_until_it_has_dropped_tokens(tmp_path: Path) -> None:
    """Phi-3-mini-4k's layers all slide (2,047 tokens). A Conversation's prompts keep the answers' own ids, so the
    cache is extended at every turn, past the window too. A prompt built from text (a random model's answer never
    re-tokenizes to its own ids) needs a cut: transformers can crop such a cache until a layer has seen a window's
    worth of tokens, after that the answer starts afresh. The answers equal a full prefill's throughout. Catches a
    Conversation that re-tokenizes its answers (no reuse past the window), a sliding cache never cut (text prompts
    read in full) and one cut after it dropped tokens."""
    folder = make_random_phi3("mini-4k", tmp_path / "m")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    context = 4 * WINDOW
    config.update(sliding_window=WINDOW, max_position_embeddings=context, original_max_position_embeddings=context)
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    s = kit.load(str(folder), "transformers", "fp32", log=lambda m: None)

    def by_text() -> list[kit.Response]:  # each prompt made from the history's text, as Session.chat alone does
        history: list[dict[str, str]] = []
        out = []
        for q in QUESTIONS[:6]:
            history.append({"role": "user", "content": q})
            out.append(s.chat(history, max_new_tokens=16).consume())
            history.append({"role": "assistant", "content": out[-1].text})
            held.append(len(s.backend.cached.ids))
        return out

    chats: dict[tuple[str, bool], list[kit.Response]] = {}
    held: list[int] = []  # what the cache had seen after each answer (text prompts, reuse on)
    try:
        for reuse in (False, True):
            s.reuse_cache = reuse
            conv = Conversation(s, max_new_tokens=16)
            chats["ids", reuse] = [conv.say(q).consume() for q in QUESTIONS[:6]]
            chats["text", reuse] = by_text()
    finally:
        s.close()
    for how in ("ids", "text"):
        assert [r.token_ids for r in chats[how, True]] == [r.token_ids for r in chats[how, False]], how
    on = chats["ids", True]
    assert len(on[-1].prompt_ids) > WINDOW  # the chat crossed the window...
    assert all(r.metrics.reused_tokens > 0 for r in on[1:]), [r.metrics.reused_tokens for r in on]  # ...extending
    text = chats["text", True]
    held = held[len(text):]
    fits = [i + 1 for i in range(len(text) - 1) if held[i] < WINDOW]
    past = [i + 1 for i in range(len(text) - 1) if held[i] >= WINDOW]
    assert fits and past, held
    assert all(0 < text[i].metrics.reused_tokens for i in fits), [r.metrics.reused_tokens for r in text]
    assert all(text[i].metrics.reused_tokens == 0 for i in past), [r.metrics.reused_tokens for r in text]


@pytest.mark.parametrize("reuse", [True, False])
def test_reuse_switch_from_load(reuse: bool) -> None:
    """`kit.load(..., reuse_cache=False)` reaches the session (the chat benchmark's 'off' column)."""
    cfg = kit.LoadConfig(model="pocket", backend="transformers", precision="fp32", reuse_cache=reuse)
    assert cfg.reuse_cache is reuse and pocket_torch().reuse_cache is True
