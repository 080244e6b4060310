"""Phi-3's real tokenizer (tests/data/phi3-tokenizer), and the kit with it.

The pocket tokenizer every other test uses is byte-level BPE; Phi-3 and Phi-3.5 use a
SentencePiece-style BPE with byte fallback (`▁` for spaces, `<0xNN>` byte pieces). The fixture is
rebuilt offline from llama.cpp's copy of the vocabulary by tools/make_phi3_tokenizer.py (see
PROVENANCE.md there) and checked against llama.cpp's 46 reference tokenizations, which were made
with the Hugging Face tokenizer of microsoft/Phi-3-mini-4k-instruct.

The first tests are fast (no model runs); the slow ones build tiny random Phi-3s on this tokenizer
and run them through every backend.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import random
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
from kit_checks import wire_parrot
from transformers import AutoTokenizer

import phi3kit as kit
from phi3kit.generate import IncrementalDecoder, stop_token_ids, to_messages
from phi3kit.testing import make_random_phi3

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).resolve().parent / "data" / "phi3-tokenizer"
TOOL = ROOT / "tools" / "make_phi3_tokenizer.py"
# sha256 of llama.cpp's files, as in PROVENANCE.md: the reference files are copied unchanged.
REFERENCE_SHA256 = {
    "reference.inp": "be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0",
    "reference.out": "ad6905c925c49c022974fe67e030382e8a4f56eb4489a0b9481dcedb1ec73b29",
}
SPECIAL_IDS = {"<unk>": 0, "<s>": 1, "</s>": 2, "<|endoftext|>": 32000, "<|assistant|>": 32001,
               "<|system|>": 32006, "<|end|>": 32007, "<|user|>": 32010}  # fmt: skip
TEXTS = [
    "Ça va ? L'élève à l'école déjà façonnée, naïve.",
    "你好，世界！小模型也能运行。",
    "سلام دنیا، این یک آزمایش است.",
    "emoji 🤖🚀👩🏽‍💻 ok",
    "  two  spaces\n\ttab\r\nand trailing ",
    " leading space, Привет, Cửa Việt",
]


def load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_phi3_tokenizer", TOOL)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


tool = load_tool()
CASES = tool.parse_reference(*((FIXTURE / f"reference.{ext}").read_text(encoding="utf-8") for ext in ("inp", "out")))


@pytest.fixture(scope="module")
def tok():  # type: ignore[no-untyped-def]
    return AutoTokenizer.from_pretrained(FIXTURE)


def committed(name: str) -> dict:
    return json.loads((FIXTURE / name).read_text(encoding="utf-8"))


# --- the fixture against the real tokenizer's output ------------------------------------------------
def test_reference_files_are_llamas_unchanged() -> None:
    for name, digest in REFERENCE_SHA256.items():
        assert hashlib.sha256((FIXTURE / name).read_bytes()).hexdigest() == digest, name
    assert len(CASES) == 46  # llama.cpp's convert_hf_to_gguf_update.py writes 46 test strings
    assert ("", []) in CASES and any("🦙" in text for text, _ in CASES)


@pytest.mark.parametrize(("text", "expected"), CASES, ids=[f"{i:02d}:{t[:20]!r}" for i, (t, _) in enumerate(CASES)])
def test_reproduces_the_reference_tokenization(tok, text: str, expected: list[int]) -> None:
    """llama.cpp made these with `tokenizer.encode(text, add_special_tokens=False)`: no BOS."""
    assert tok(text, add_special_tokens=False)["input_ids"] == expected


def test_adds_no_bos_or_eos_like_phi3(tok) -> None:
    assert tok("Hello world")["input_ids"] == [15043, 3186]  # add_bos_token false in Phi-3's config


@pytest.mark.parametrize("text", TEXTS)
def test_round_trips(tok, text: str) -> None:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert 0 not in ids, "no <unk>: byte fallback spells anything"
    assert tok.decode(ids) == text


def test_byte_fallback_spells_what_the_vocab_lacks(tok) -> None:
    ids = tok("🤖", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["▁", "<0xF0>", "<0x9F>", "<0xA4>", "<0x96>"]
    assert tok.decode(ids) == "🤖"
    assert tok.decode(ids[:3]) == "\ufffd\ufffd"  # half a character decodes to replacement characters


def test_special_ids(tok) -> None:
    assert {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_IDS} == SPECIAL_IDS
    assert (tok.unk_token, tok.bos_token, tok.eos_token, tok.pad_token) == ("<unk>", "<s>", "<|endoftext|>",
                                                                            "<|endoftext|>")
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 32000, 32000)
    ids = [32010, 15043, 32007, 32001, 15043, 2]
    assert tok.decode(ids, skip_special_tokens=True) == "Hello Hello</s>"  # </s> is user-defined, not special
    assert tok.model_max_length == 4096


def test_length_is_the_tokenizers_not_the_models(tok) -> None:
    """32000 SentencePiece pieces + 11 added tokens (32000-32010). Phi-3's embedding has 32064 rows
    (padded to a multiple of 64); ids 32011-32063 have no token, and decoding skips them."""
    assert len(tok) == 32011
    assert tok.convert_ids_to_tokens([32010, 32011, 32063]) == ["<|user|>", None, None]
    assert tok.decode([15043, 32011, 32063, 3186]) == "Hello world"


def test_chat_template_has_the_system_role(tok) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "你好?"}]  # fmt: skip
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == ("<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello<|end|>\n"
                    "<|user|>\n你好?<|end|>\n<|assistant|>\n")  # fmt: skip
    assert tok.apply_chat_template(messages[1:2], tokenize=False).endswith("<|end|>\n<|endoftext|>")
    # The role tags and <|end|> strip the whitespace after them (rstrip, as in Phi-3's tokenizer), so
    # each "\n" of the template is absorbed and the prompt ends with <|assistant|>.
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids[:6]) == ["<|system|>", "▁Be", "▁brief", ".", "<|end|>", "<|user|>"]
    assert ids[-1] == 32001 and 13 not in ids


def test_committed_tokenizer_json_is_sentencepiece_bpe() -> None:
    spec = committed("tokenizer.json")
    model = spec["model"]
    assert model["type"] == "BPE" and model["byte_fallback"] and model["fuse_unk"] and model["unk_token"] == "<unk>"
    assert len(model["vocab"]) == 32000 and model["vocab"]["<0x00>"] == 3 and model["vocab"]["▁"] == 29871
    assert spec["pre_tokenizer"] is None
    assert [n["type"] for n in spec["normalizer"]["normalizers"]] == ["Prepend", "Replace"]
    assert [d["type"] for d in spec["decoder"]["decoders"]] == ["Replace", "ByteFallback", "Fuse", "Strip"]
    added = {a["content"]: a for a in spec["added_tokens"]}
    assert {a["id"] for a in added.values()} == {0, 1, 2, *range(32000, 32011)}
    assert not added["</s>"]["special"] and all(a["special"] for t, a in added.items() if t != "</s>")
    assert {t for t, a in added.items() if a["rstrip"]} == tool.PHI3_RSTRIP
    config = committed("tokenizer_config.json")
    assert config["tokenizer_class"] == "TokenizersBackend" and "chat_template" not in config
    assert (FIXTURE / "chat_template.jinja").read_text() == tool.CHAT_TEMPLATE


# --- regeneration -------------------------------------------------------------------------------------
def synthetic_vocab() -> tuple[list[str], list[float], list[int]]:
    """A GGUF-shaped vocab: <unk>/<s>/</s>, 256 byte pieces, a few pieces, added tokens, llama.cpp padding."""
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256))]
    types = [tool.CONTROL, tool.CONTROL, tool.USER_DEFINED, *[tool.BYTE] * 256]
    pieces = {"▁▁": -1e9, "▁t": -1.0, "he": -2.0, "▁the": -3.0, "▁th": -4.0, "▁": -1e9, "e": -6.0, "t": -7.0,
              "h": -8.0, "é": -9.0}  # fmt: skip
    tokens += list(pieces)
    types += [tool.NORMAL] * len(pieces)
    scores = [-1000.0, -1000.0, -1000.0, *[0.0] * 256, *pieces.values()]
    for t in ("<|endoftext|>", "<|assistant|>", "<|end|>"):
        tokens.append(t), types.append(tool.CONTROL), scores.append(-1000.0)
    n = len(tokens)
    for i in range(n, n + 3):
        tokens.append(f"[PAD{i}]"), types.append(tool.UNKNOWN), scores.append(-10000.0)
    return tokens, scores, types


def test_core_builds_a_tokenizer_from_gguf_arrays() -> None:
    tokens, scores, types = synthetic_vocab()
    tok = tool.build_tokenizer(tokens, scores, types)
    assert len(tok) == len(tokens) - 3  # the [PAD<id>] placeholders are dropped
    assert tok.convert_tokens_to_ids("<|end|>") == tokens.index("<|end|>")
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    # By score, highest first; for one piece by the ids of its halves; "▁▁" (-1e9) last.
    assert merges == [["▁", "t"], ["h", "e"], ["▁t", "he"], ["▁th", "e"], ["▁t", "h"], ["▁", "▁"]]
    ids = tok("the thé", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["▁the", "▁th", "é"]
    ids = tok("thx", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["▁th", "<0x78>"]  # byte fallback, no <unk>
    assert tok.decode(ids) == "thx"
    ids = tok("<|assistant|> the", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == "the"  # rstrip: the space after the tag is absorbed


def test_core_refuses_what_would_shift_ids() -> None:
    tokens, scores, types = synthetic_vocab()
    types[tokens.index("<|assistant|>")] = tool.UNUSED
    with pytest.raises(ValueError, match="control or user-defined"):
        tool.build_tokenizer(tokens, scores, types)
    tokens, scores, types = synthetic_vocab()
    tokens[tokens.index("<|assistant|>")] = "he"  # an added token that is already a piece keeps the piece's id
    with pytest.raises(ValueError, match="the ids have a gap"):
        tool.build_tokenizer(tokens, scores, types)


def vocab_of_committed() -> tuple[list[str], list[float], list[int]]:
    """(tokens, scores, types) that the committed tokenizer.json was built from, up to the scores.

    The tool sorts merges by (-score, id of the left half, id of the right half), so a run of merges
    whose half ids keep rising can share one score; the scores here fall by one at each new run
    (the 16 all-space pieces share -1e9 in the GGUF, and their merges interleave)."""
    spec = committed("tokenizer.json")
    vocab = spec["model"]["vocab"]
    added = {a["id"]: a for a in spec["added_tokens"]}
    n = max(added) + 1
    tokens = [""] * n
    for piece, i in vocab.items():
        tokens[i] = piece
    for i, a in added.items():
        tokens[i] = a["content"]
    run, previous, score = 0, (-1, -1), {}
    for left, right in spec["model"]["merges"]:
        key = (vocab[left], vocab[right])
        run += key <= previous
        previous = key
        assert score.setdefault(left + right, -float(run)) == -run, "one piece's merges must share a score"
    scores = [score.get(t, 0.0) for t in tokens]
    types = [(tool.CONTROL if added[i]["special"] else tool.USER_DEFINED) if i in added
             else tool.BYTE if t.startswith("<0x") and len(t) == 6 else tool.NORMAL for i, t in enumerate(tokens)]
    return tokens, scores, types


def test_committed_files_are_what_the_tool_writes(tmp_path: Path) -> None:
    """Rebuilding from the committed vocab gives the committed files byte for byte."""
    tok = tool.build_tokenizer(*vocab_of_committed())
    tok.save_pretrained(tmp_path)
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted(p.name for p in FIXTURE.iterdir() if p.suffix in (".json", ".jinja"))
    for name in written:
        assert (tmp_path / name).read_bytes() == (FIXTURE / name).read_bytes(), name


@pytest.mark.skipif(not os.environ.get("PHI3_GGUF"), reason="set PHI3_GGUF to llama.cpp's ggml-vocab-phi-3.gguf "
                    "(or the extracted llama-cpp-python 0.3.36 sdist) to regenerate from the source")
def test_regenerates_from_the_gguf(tmp_path: Path) -> None:
    assert tool.main([os.environ["PHI3_GGUF"], "--out", str(tmp_path)]) == 0
    for p in FIXTURE.iterdir():
        if p.name != "PROVENANCE.md":
            assert (tmp_path / p.name).read_bytes() == p.read_bytes(), p.name
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in FIXTURE.iterdir() if
                                                                 p.name != "PROVENANCE.md")


# --- other tokenizer implementations ------------------------------------------------------------------
def test_openvino_tokenizer_agrees_with_hf(tok) -> None:
    ov = pytest.importorskip("openvino")
    ovt = pytest.importorskip("openvino_tokenizers")
    encoder, decoder = ovt.convert_tokenizer(tok, with_detokenizer=True)
    core = ov.Core()
    enc, dec = core.compile_model(encoder, "CPU"), core.compile_model(decoder, "CPU")
    prompt = tok.apply_chat_template([{"role": "system", "content": "Sé breve."},
                                      {"role": "user", "content": "Qu'est-ce qu'un NPU ? 你好"}],
                                     tokenize=False, add_generation_prompt=True)  # fmt: skip
    for text in [*TEXTS, *(t for t, _ in CASES[::3]), prompt]:
        ov_ids = enc([text])["input_ids"][0].tolist()
        assert ov_ids == tok(text, add_special_tokens=False)["input_ids"], text
        decoded = str(dec(enc([text])["input_ids"])["string_output"][0])
        assert decoded == tok.decode(ov_ids, skip_special_tokens=True), text


# --- the kit's stop ids and streaming with this tokenizer ---------------------------------------------
def test_stop_ids_put_end_first(tok, tmp_path: Path) -> None:
    assert stop_token_ids(tok, tmp_path) == [32007, 32000]  # no generation_config.json
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [32000, 32001, 32007]}))
    assert stop_token_ids(tok, tmp_path) == [32007, 32000, 32001]  # Phi-3-mini-4k-instruct's own list


def stream_text(tok, ids: list[int]) -> str:  # type: ignore[no-untyped-def]
    decoder = IncrementalDecoder(tok)
    return "".join(decoder.put(i) for i in ids) + decoder.flush()


def test_stream_keeps_every_space(tok) -> None:
    """Random runs of real tokenizations, bare `▁` pieces and special tokens: streaming one id at a
    time gives the text of decoding them all at once (no `▁` lost at a chunk boundary)."""
    words = ["Hello", " world", "你好", "，世界", " سلام", "🤖", "👩🏽‍💻", "\n", "\t", "  ", " ", "Ça", " va", "é",
             "ok."]  # fmt: skip
    pieces = [tok(w, add_special_tokens=False)["input_ids"] for w in words]
    loose = [[32001], [32007], [32000], [1], [2], [29871], [259], [32011]]
    rng = random.Random(0)
    for _ in range(2000):
        ids = [i for _ in range(rng.randrange(1, 8)) for i in rng.choice(pieces if rng.random() < 0.8 else loose)]
        assert stream_text(tok, ids) == tok.decode(ids, skip_special_tokens=True), ids


@pytest.mark.xfail(strict=True, reason=(
    "HF's ByteFallback decoder turns a whole run of byte pieces into U+FFFD when the run is not valid "
    "UTF-8, valid ASCII bytes included ('\\n' + a stray 0x96 -> two U+FFFD); the kit's stream has already "
    "emitted the '\\n' and drops the trailing U+FFFD in flush(), so its text keeps bytes decode() replaces"))
def test_stream_equals_decode_even_for_invalid_bytes(tok) -> None:
    ids = tok("ok\n", add_special_tokens=False)["input_ids"] + [153]  # <0x0A> then <0x96>: no character
    assert tok.convert_ids_to_tokens(ids)[-2:] == ["<0x0A>", "<0x96>"]
    assert stream_text(tok, ids) == tok.decode(ids, skip_special_tokens=True)


# --- tiny random models on this tokenizer, through every backend ---------------------------------------
PROMPTS = ["Tell me about OpenVINO on the NPU.", "Qu'est-ce qu'un NPU ? Ça va, l'élève ?",
           "你好，世界！小模型也能运行。", "سلام دنیا 🤖🚀"]  # fmt: skip
ROUTES = [("openvino", "genai"), ("openvino", "optimum"), ("ortgenai", None)]


@pytest.fixture(scope="session")
def random_phi3_real(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Build (once per run) a tiny random Phi-3 of a variant with Phi-3's real tokenizer."""
    made: dict[str, Path] = {}

    def get(variant: str) -> Path:
        if variant not in made:
            made[variant] = make_random_phi3(variant, tmp_path_factory.mktemp(f"real-{variant}"), tokenizer_dir=FIXTURE)
        return made[variant]

    return get


@pytest.fixture(scope="module")
def sessions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., kit.Session]]:
    """One loaded session per (model, backend, runtime) for the module, closed at its end."""
    cache = tmp_path_factory.mktemp("real-cache")
    opened: dict[tuple[str, str, str | None], kit.Session] = {}

    def get(model: Path, backend: str, runtime: str | None = None) -> kit.Session:
        key = (str(model), backend, runtime)
        if key not in opened:
            opened[key] = kit.load(str(model), backend, "fp32", device="CPU", runtime=runtime, cache_dir=str(cache),
                                   log=lambda _: None)
        return opened[key]

    yield get
    for s in opened.values():
        s.close()


def test_random_model_matches_the_tokenizer(random_phi3_real: Callable[[str], Path], tok) -> None:
    d = random_phi3_real("mini-4k")
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["vocab_size"] == 32064 and cfg["bos_token_id"] == 1 and cfg["eos_token_id"] == [32007, 32000]
    assert json.loads((d / "generation_config.json").read_text())["eos_token_id"] == [32007, 32000]
    assert len(AutoTokenizer.from_pretrained(d)) == len(tok)
    assert stop_token_ids(tok, d) == [32007, 32000]


@pytest.mark.slow
def test_fp32_ids_and_streamed_text_agree_across_backends(random_phi3_real, sessions) -> None:
    """On Phi-3's tokenizer; each architecture variant's parity is in test_openvino.py and test_ortgenai.py."""
    variant = "mini-4k"
    model = random_phi3_real(variant)
    ref = sessions(model, "transformers")
    assert ref.stop_ids[:2] == [32007, 32000]
    for prompt in PROMPTS:
        r = ref.generate(prompt, max_new_tokens=24)
        chunks = list(r)
        assert len(set(r.token_ids)) > 3, "the random model should not be degenerate"
        assert "".join(chunks) == r.text == ref.tokenizer.decode(r.token_ids, skip_special_tokens=True)
        for backend, runtime in ROUTES:
            got = sessions(model, backend, runtime).generate(prompt, max_new_tokens=24)
            text = "".join(got)
            assert got.token_ids == r.token_ids, f"{variant} {backend}/{runtime}: {prompt}"
            assert text == got.text == r.text, f"{variant} {backend}/{runtime}: {prompt}"


@pytest.mark.slow
def test_og_tokenizer_agrees_with_the_kit(random_phi3_real, sessions, tok) -> None:
    """ORT GenAI's own tokenizer (built from the same tokenizer.json) templates and encodes like the kit,
    and decodes like HF once anything precedes the first `▁` piece (here: the <|assistant|> cue)."""
    import onnxruntime_genai as og

    s = sessions(random_phi3_real("mini-4k"), "ortgenai")
    tokenizer = og.Tokenizer(s.backend.model)
    for prompt in PROMPTS:
        for system in (None, "You are a helpful assistant."):
            messages = to_messages(prompt, system)
            text = tokenizer.apply_chat_template(json.dumps(messages), add_generation_prompt=True)
            assert text == tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            assert list(tokenizer.encode(text)) == s.encode(messages), prompt
        for text in (prompt, *TEXTS):
            assert list(tokenizer.encode(text)) == tok(text, add_special_tokens=False)["input_ids"], text
        r = s.generate(prompt, max_new_tokens=24).consume()
        stream = tokenizer.create_stream()
        assert "".join(stream.decode(t) for t in [32001, *r.token_ids]) == r.text


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "ORT GenAI 0.18's decode keeps the space of the first `▁` piece (' Hello'); HF's Strip decoder drops it "
    "('Hello'), as SentencePiece does. The kit detokenizes with HF, so its text is unaffected"))
def test_og_decode_strips_the_leading_space_like_hf(random_phi3_real, sessions, tok) -> None:
    import onnxruntime_genai as og

    tokenizer = og.Tokenizer(sessions(random_phi3_real("mini-4k"), "ortgenai").backend.model)
    ids = tok("Hello world", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == tok.decode(ids) == "Hello world"


# --- a parrot on this tokenizer: an answer that stops at <|end|> ----------------------------------------
# Every token distinct (the parrot is a bigram table): `▁` words, accents, CJK, Persian and a byte-fallback emoji.
PARROT_TEXT = "Sure: café crème, déjà vu.\n世界 🤖 ok السلام"


def make_parrot(out: Path, tok) -> list[int]:  # type: ignore[no-untyped-def]
    """A random Phi-3 on the real tokenizer, edited so greedy decoding says PARROT_TEXT then <|end|>
    after the prompt's last token (<|assistant|>); see tests/test_streaming.py for the construction."""
    ids = tok(PARROT_TEXT, add_special_tokens=False)["input_ids"]
    assert len(set(ids)) == len(ids) and 32001 not in ids
    make_random_phi3("mini-4k", out, tokenizer_dir=FIXTURE)
    wire_parrot(out, [32001, *ids], [*ids, 32007])
    return ids


@pytest.fixture(scope="module")
def parrot(tmp_path_factory: pytest.TempPathFactory, tok) -> tuple[Path, list[int]]:
    out = tmp_path_factory.mktemp("real-parrot")
    return out, make_parrot(out, tok)


@pytest.mark.parametrize(("backend", "runtime"), [
    pytest.param("transformers", None, id="transformers"),
    *(pytest.param(b, r, id=f"{b}-{r}" if r else b, marks=pytest.mark.slow) for b, r in ROUTES),
])  # fmt: skip
def test_answer_stops_at_end_and_streams_exactly(parrot, sessions, tok, backend: str, runtime: str | None) -> None:
    path, ids = parrot
    s = sessions(path, backend, runtime)
    assert s.encode(to_messages("Say it."))[-1] == 32001  # the template's "\n" is absorbed by <|assistant|>
    r = s.generate("Say it.", max_new_tokens=len(ids) + 8)
    chunks = list(r)
    assert r.token_ids == ids, "the runtime did not reproduce the sequence the parrot was built for"
    assert r.metrics.finish_reason == "stop" and r.metrics.new_tokens == len(ids) + 1  # + the <|end|> token
    assert "".join(chunks) == r.text == PARROT_TEXT == tok.decode(ids, skip_special_tokens=True)
    assert not [c for c in chunks if "\ufffd" in c], chunks
    assert len(chunks) < len(ids)  # the emoji's four byte pieces came out as one chunk
