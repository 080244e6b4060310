"""The shared generation layer: messages, context window, detokenizing, stop tokens."""

from __future__ import annotations

import pytest

from phi3kit import GenerationConfig, Phi3kitError
from phi3kit.generate import IncrementalDecoder, to_messages

MULTILINGUAL = [
    "Café, crème brûlée et naïveté à Noël.",
    "本地运行大型语言模型",
    "مدل زبانی روی رایانه شخصی",
    "Phi-3 🚀🤖 on an AI PC 👩🏽‍💻",
]


def test_plain_prompt_becomes_a_user_turn() -> None:
    assert to_messages("hi") == [{"role": "user", "content": "hi"}]
    assert to_messages("hi", system="be brief")[0] == {"role": "system", "content": "be brief"}


@pytest.mark.parametrize(
    "bad",
    [[], [{"role": "bot", "content": "x"}], [{"role": "user"}], [{"role": "user", "content": "q"},
                                                                 {"role": "assistant", "content": "a"}]],
)
def test_bad_messages_are_refused(bad: list[dict[str, str]]) -> None:
    with pytest.raises(Phi3kitError):
        to_messages(bad)


@pytest.mark.parametrize("n", [0, -1, 1.5, True, "8"])
def test_max_new_tokens_must_be_positive(n: object) -> None:
    with pytest.raises(Phi3kitError, match="max_new_tokens"):
        GenerationConfig(max_new_tokens=n)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", MULTILINGUAL)
def test_incremental_decoding_never_splits_a_character(pocket_tokenizer, text: str) -> None:  # type: ignore[no-untyped-def]
    ids = pocket_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > 1
    dec = IncrementalDecoder(pocket_tokenizer)
    pieces = [dec.put(i) for i in ids] + [dec.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)
