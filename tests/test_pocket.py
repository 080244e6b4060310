"""The shipped pocket model: small, Phi-3-shaped, and really answering its training set."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from phi3kit import pocket
from phi3kit.pocket.tokenizer import CHAT_TEMPLATE, END, SPECIAL_TOKENS, build_tokenizer

# The training script lives in tools/ (it is not part of the installed package); its constants are read from there.
_TRAIN = Path(__file__).resolve().parents[1] / "tools" / "train_pocket.py"
_spec = importlib.util.spec_from_file_location("train_pocket", _TRAIN)
train = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train)

TEXTS = [
    "Ça va ? L'élève à l'école déjà façonnée, naïve.",
    "你好，世界！小模型也能运行。",
    "سلام دنیا، این یک آزمایش است.",
    "emoji 🤖🚀👩🏽‍💻 ok",
    "  two  spaces\n\ttab\r\nand <|user|> inside",
]
QUESTIONS = [
    "Can you introduce yourself?",
    "What is an NPU?",
    "What is OpenVINO GenAI?",
    "What is int4 weight compression?",
    "What is papermill?",
    "Peux-tu te présenter ?",
    "你能介绍一下你自己吗？",
    "می‌توانی خودت را معرفی کنی؟",
    "Bisakah kamu memperkenalkan dirimu?",
    "Ce este un NPU?",
]


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(pocket.path())


@pytest.fixture(scope="module")
def model():
    return AutoModelForCausalLM.from_pretrained(pocket.path(), dtype=torch.float32).eval()


def answer(model, tok, messages: list[dict]) -> tuple[str, list[int]]:
    """Greedy answer text (special tokens dropped) and its raw generated ids."""
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    x = ids["input_ids"]
    with torch.no_grad():
        out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=120, do_sample=False)
    new = out[0, x.shape[1] :].tolist()
    return tok.decode(new, skip_special_tokens=True), new


def test_files_shipped_and_small():
    d = pocket.path()
    for name in ("config.json", "model.safetensors", "generation_config.json",
                 "tokenizer.json", "tokenizer_config.json", "README.md"):  # fmt: skip
        assert (d / name).is_file(), name
    total = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
    assert total < 30 * 1024 * 1024
    assert pocket.BANNER in (d / "README.md").read_text()


def test_missing_weights_name_the_training_command(tmp_path, monkeypatch):
    monkeypatch.setattr(pocket, "MODEL_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="tools/train_pocket.py"):
        pocket.path()


def test_qa_set():
    qa = pocket.load_qa()
    assert 40 <= len(qa) <= 120
    assert all({"question", "answer"} <= set(x) <= {"question", "answer", "lang"} and x["answer"] for x in qa)
    assert len({x["question"] for x in qa}) == len(qa)
    intro = next(x["answer"] for x in qa if x["question"] == "Can you introduce yourself?")
    assert "pocket model" in intro and "Phi-3" in intro
    # Each translated notebook asks at least these two in its own language, and gets its answer in it.
    for lang in ("fr", "zh", "fa", "id", "ro"):
        own = [x for x in qa if x.get("lang") == lang]
        assert len(own) >= 2 and any("NPU" in x["question"] for x in own), lang
        assert any("Phi-3" in x["answer"] for x in own), lang


def test_config_is_a_runtime_friendly_phi3(tok):
    cfg = AutoConfig.from_pretrained(pocket.path())
    assert cfg.model_type == "phi3" and cfg.architectures == ["Phi3ForCausalLM"]
    assert cfg.vocab_size == len(tok)
    head = cfg.hidden_size // cfg.num_attention_heads
    assert head % 16 == 0 and cfg.hidden_size % 64 == 0 and cfg.intermediate_size % 64 == 0
    assert cfg.max_position_embeddings == 4096
    assert cfg.rope_parameters.get("rope_type", "default") == "default"
    gen = json.loads((pocket.path() / "generation_config.json").read_text())
    assert set(gen["eos_token_id"]) == {tok.convert_tokens_to_ids(END), tok.eos_token_id}


def test_tokenizer_matches_a_fresh_build(tok):
    """Deterministic training: the QA texts rebuild the shipped vocab (else retrain)."""
    qa = pocket.load_qa()
    texts = [train.SYSTEM_PROMPT] + [x["question"] for x in qa] + [x["answer"] for x in qa]
    fresh = build_tokenizer(texts, train.VOCAB_REQUEST)
    assert fresh.get_vocab() == tok.get_vocab()
    assert [tok.convert_ids_to_tokens(i) for i in range(len(SPECIAL_TOKENS))] == list(SPECIAL_TOKENS)


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_round_trips_any_text(tok, text):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert all(0 <= i < len(tok) for i in ids)
    assert tok.decode(ids) == text


def test_chat_template_is_phi3s(tok):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "What is an NPU?"},
    ]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello<|end|>\n"
        "<|user|>\nWhat is an NPU?<|end|>\n<|assistant|>\n"
    )
    assert tok.chat_template == CHAT_TEMPLATE
    ids = tok.apply_chat_template(messages[:2], add_generation_prompt=True, return_dict=False)
    assert ids[0] == tok.convert_tokens_to_ids("<|system|>")


@pytest.mark.parametrize("question", QUESTIONS)
def test_model_answers_exactly_and_stops_at_end(model, tok, question):
    expected = next(x["answer"] for x in pocket.load_qa() if x["question"] == question)
    text, new = answer(model, tok, [{"role": "user", "content": question}])
    assert text == expected
    assert new[-1] == tok.convert_tokens_to_ids(END)
    assert new[:-1] == tok(expected, add_special_tokens=False)["input_ids"]


@pytest.mark.slow
def test_model_answers_behind_a_system_prompt_and_in_bf16(model, tok):
    """Margins survive bf16, the precision OpenVINO picks on recent CPUs."""
    qa = pocket.load_qa()[:2]
    bf16 = AutoModelForCausalLM.from_pretrained(pocket.path(), dtype=torch.bfloat16).eval()
    for x in qa:
        sys_msg = {"role": "system", "content": train.SYSTEM_PROMPT}
        user = {"role": "user", "content": x["question"]}
        assert answer(model, tok, [sys_msg, user])[0] == x["answer"]
        assert answer(bf16, tok, [user])[0] == x["answer"]


def test_openvino_tokenizer_agrees_with_hf(tok):
    ov = pytest.importorskip("openvino")
    ovt = pytest.importorskip("openvino_tokenizers")
    encoder, decoder = ovt.convert_tokenizer(tok, with_detokenizer=True)
    core = ov.Core()
    enc, dec = core.compile_model(encoder, "CPU"), core.compile_model(decoder, "CPU")
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Qu'est-ce qu'un NPU ? 你好"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    for text in [*TEXTS[:4], QUESTIONS[0], prompt]:
        ov_ids = enc([text])["input_ids"][0].tolist()
        assert ov_ids == tok(text, add_special_tokens=False)["input_ids"], text
        decoded = str(dec(enc([text])["input_ids"])["string_output"][0])
        assert decoded == tok.decode(ov_ids, skip_special_tokens=True)


def test_training_encoding_matches_inference_prompts(tok):
    """Training rows are chat-template prompts followed by answer + <|end|>."""
    convs = train.conversations(pocket.load_qa()[:4])
    prompts, answers, ids, labels = train.encode(tok, convs)
    assert len(convs) == 8 and ids.shape == labels.shape
    end = tok.convert_tokens_to_ids(END)
    assert all(a[-1] == end for a in answers)
    first = prompts[0] + answers[0]
    assert ids[0, : len(first)].tolist() == first
    assert (labels[0, : len(prompts[0])] == -100).all()
