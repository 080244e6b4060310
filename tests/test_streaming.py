"""Streaming never emits broken text, through every backend, for accents, Chinese, Farsi and emoji.

The pocket model only says its training answers and a random model says noise, so the test makes
a "parrot": a random Phi-3 whose weights are edited so greedy decoding emits a chosen token
sequence. Attention and MLP outputs are zeroed, so each step's logits depend on the current token
only (a bigram table): embedding[token] is a one-hot direction and lm_head maps it to the next
token. That needs every token in the sequence to be distinct, so the tokenizer is the kit's own
byte-level BPE trained on the multilingual text, and the sequence is a legal non-canonical
tokenization that prefers tokens ending inside a multi-byte character: the runtimes really do
hand the decoder half a character, in every script.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kit_checks import wire_parrot

import phi3kit as kit
from phi3kit import backends, pocket
from phi3kit.pocket.tokenizer import END, build_tokenizer
from phi3kit.testing import make_random_phi3

SCRIPTS = {
    "french": "Café crème, déjà Noël !",
    "chinese": " 本地运行模型",
    "farsi": " مدل زبانی",
    "emoji": " 🚀 🤖 👩🏽‍💻",
}
TEXT = "".join(SCRIPTS.values())


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-to-printable-character map, reversed: how byte-level BPE tokens spell bytes."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def distinct_tokenization(target: bytes, token_bytes: dict[int, bytes], banned: set[int]) -> list[int]:
    """Token ids spelling `target` with no id used twice, preferring tokens that end mid-character."""

    def splits(pos: int, b: bytes) -> bool:
        end = pos + len(b)
        return end < len(target) and (target[end] & 0xC0) == 0x80  # the next byte continues a character

    def search(pos: int, used: frozenset[int]) -> list[int] | None:
        if pos == len(target):
            return []
        options = [(i, b) for i, b in token_bytes.items() if i not in used and i not in banned
                   and target.startswith(b, pos)]
        for i, b in sorted(options, key=lambda o: (not splits(pos, o[1]), len(o[1]))):
            if (rest := search(pos + len(b), used | {i})) is not None:
                return [i, *rest]
        return None

    found = search(0, frozenset())
    assert found is not None, "no tokenization with distinct tokens: change TEXT or the tokenizer corpus"
    return found


@dataclass
class Parrot:
    path: Path
    ids: list[int]
    piece_bytes: list[bytes]  # what each token spells


def make_parrot(out: Path) -> Parrot:
    # The English pairs only: the parrot needs its own tokenizer, not the pocket's, and merges learnt from
    # the multilingual pairs leave no tokenization of TEXT without a repeated token.
    corpus = [q["question"] + " " + q["answer"] for q in pocket.load_qa() if "lang" not in q] + [TEXT] * 3
    tok = build_tokenizer(corpus, 900)
    dec = _byte_decoder()
    specials = set(tok.all_special_ids)
    token_bytes = {i: bytes(dec[c] for c in t) for t, i in tok.get_vocab().items() if i not in specials}
    newline = tok.convert_tokens_to_ids("Ċ")  # the chat template's last prompt token: the parrot's cue
    ids = distinct_tokenization(TEXT.encode(), token_bytes, banned={newline})
    assert tok.decode(ids) == TEXT

    make_random_phi3("mini-4k", out, vocab_size=len(tok))
    tok.save_pretrained(out)
    wire_parrot(out, [newline, *ids], [*ids, tok.convert_tokens_to_ids(END)])
    return Parrot(out, ids, [token_bytes[i] for i in ids])


@pytest.fixture(scope="module")
def parrot(tmp_path_factory: pytest.TempPathFactory) -> Parrot:
    return make_parrot(tmp_path_factory.mktemp("parrot"))


def routes() -> Iterator[object]:
    yield pytest.param("transformers", "fp32", None, id="transformers")
    yield pytest.param("openvino", "fp32", "genai", id="openvino-genai", marks=pytest.mark.slow)
    yield pytest.param("openvino", "fp32", "optimum", id="openvino-optimum", marks=pytest.mark.slow)
    try:
        backends.get("ortgenai")
        yield pytest.param("ortgenai", "fp32", None, id="ortgenai", marks=pytest.mark.slow)
    except Exception as exc:  # noqa: BLE001 - being finished in parallel: say why it is not covered
        yield pytest.param("ortgenai", "fp32", None, id="ortgenai",
                           marks=pytest.mark.skip(reason=f"ortgenai backend does not import: {exc}"))


def test_the_parrot_splits_characters_in_every_script(parrot: Parrot) -> None:
    """Guard the guard: the sequence must cut characters in two, or the streaming test proves nothing."""
    data = TEXT.encode()
    assert b"".join(parrot.piece_bytes) == data and len(set(parrot.ids)) == len(parrot.ids)
    spans, pos = {}, 0
    for name, text in SCRIPTS.items():
        spans[name] = (pos, pos + len(text.encode()))
        pos += len(text.encode())
    cuts = list(itertools.accumulate(len(b) for b in parrot.piece_bytes))[:-1]
    inside = [c for c in cuts if data[c] & 0xC0 == 0x80]  # a token boundary inside a multi-byte character
    split_in = {name for c in inside for name, (lo, hi) in spans.items() if lo < c < hi}
    assert split_in == set(SCRIPTS), f"characters are split only in {split_in}"


@pytest.mark.parametrize(("backend", "precision", "runtime"), list(routes()))
def test_stream_is_exact_and_never_broken(parrot: Parrot, backend: str, precision: str, runtime: str | None) -> None:
    session = kit.load(str(parrot.path), backend, precision, "CPU", runtime, log=lambda m: None)
    try:
        r = session.generate("Say it.", max_new_tokens=len(parrot.ids) + 8)
        chunks = list(r)
        assert r.token_ids == parrot.ids, "the runtime did not reproduce the sequence the parrot was built for"
        assert "".join(chunks) == r.text == TEXT
        assert not [c for c in chunks if "\ufffd" in c], chunks
        assert r.metrics.finish_reason == "stop" and len(chunks) < len(parrot.ids)  # split characters were held
        # the same through the chat path (Conversation -> Session.chat)
        from phi3kit.conversation import Conversation

        conv = Conversation(session, max_new_tokens=len(parrot.ids) + 8)
        assert "".join(conv.say("Again.")) == TEXT and conv.history[-1]["content"] == TEXT
    finally:
        session.close()


def test_ctrl_c_while_waiting_for_a_token_stops_the_runtime() -> None:
    """Ctrl-C while the runtime computes (no token yet) reaches the consumer, and the runtime is told to stop at
    its next callback. The consumer waits in slices (WAIT_SLICE_S): on Windows an unbounded wait ignores Ctrl-C
    before Python 3.14, which only Windows can show (unverified here). Catches: an interrupt that leaves the
    runtime generating, or that never reaches the consumer."""
    import _thread
    import threading
    import time

    from phi3kit.backends.base import threaded_stream

    told_to_stop = []

    def run(emit) -> None:  # type: ignore[no-untyped-def]
        assert emit(1)
        for _ in range(3000):  # a long prefill whose callbacks say nothing yet; bounded so a failure cannot hang
            time.sleep(0.01)
            if not emit([]):
                told_to_stop.append(True)
                return

    stream = threaded_stream(run)
    assert next(stream)[0] == 1
    threading.Timer(0.3, _thread.interrupt_main).start()
    with pytest.raises(KeyboardInterrupt):
        next(stream)
    assert told_to_stop == [True]  # the generator's cleanup ran: the runtime was told at its next callback
