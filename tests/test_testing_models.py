"""Random Phi-3 family test models: real config shapes, deterministic, loadable, not flat."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from phi3kit import pocket, testing


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("phi3")
    return {v: testing.make_random_phi3(v, root / v) for v in testing.VARIANTS}


def greedy(model, tok, n: int = 20) -> list[int]:
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is an NPU?"}], add_generation_prompt=True,
        return_tensors="pt",
    )["input_ids"]  # fmt: skip
    with torch.no_grad():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
            do_sample=False,
        )  # fmt: skip
    return out[0, ids.shape[1] :].tolist()


@pytest.mark.parametrize("variant", testing.VARIANTS)
def test_variant_loads_and_generates(built, variant):
    d = built[variant]
    model = AutoModelForCausalLM.from_pretrained(d).eval()
    tok = AutoTokenizer.from_pretrained(d)
    cfg = model.config
    assert type(model).__name__ == "Phi3ForCausalLM"
    assert cfg.vocab_size == len(tok) == len(AutoTokenizer.from_pretrained(pocket.path()))
    assert (cfg.hidden_size // cfg.num_attention_heads) % 16 == 0
    assert cfg.hidden_size % 64 == 0 and cfg.intermediate_size % 64 == 0
    assert cfg.original_max_position_embeddings == 4096
    gen = json.loads((d / "generation_config.json").read_text())
    assert set(gen["eos_token_id"]) == {tok.eos_token_id, tok.convert_tokens_to_ids("<|end|>")}
    tokens = greedy(model, tok)
    assert len(tokens) == 20 and len(set(tokens)) >= 5  # random, yet not degenerate


def test_mini_4k_has_no_rope_scaling(built):
    cfg = AutoModelForCausalLM.from_pretrained(built["mini-4k"]).config
    assert cfg.rope_parameters.get("rope_type", "default") == "default"
    assert cfg.max_position_embeddings == 4096 and not cfg.tie_word_embeddings


@pytest.mark.parametrize("variant", ["mini-128k", "3.5-mini", "4-mini"])
def test_longrope_variants(built, variant):
    cfg = AutoModelForCausalLM.from_pretrained(built[variant]).config
    rope = cfg.rope_parameters
    head = cfg.hidden_size // cfg.num_attention_heads
    rotary = int(head * rope.get("partial_rotary_factor", 1.0))
    assert rope["rope_type"] == "longrope" and cfg.max_position_embeddings == 131072
    assert len(rope["short_factor"]) == len(rope["long_factor"]) == rotary // 2
    # ONNX Runtime GenAI's GroupQueryAttention wants the rotary cache width a multiple of 8.
    assert (rotary // 2) % 8 == 0


def test_4_mini_is_partial_rotary_tied_gqa(built):
    model = AutoModelForCausalLM.from_pretrained(built["4-mini"])
    cfg = model.config
    assert cfg.rope_parameters["partial_rotary_factor"] == 0.75
    assert cfg.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert cfg.num_key_value_heads < cfg.num_attention_heads


def test_deterministic_by_seed(tmp_path, built):
    a = testing.make_random_phi3("mini-4k", tmp_path / "a", seed=0)
    b = testing.make_random_phi3("mini-4k", tmp_path / "b", seed=1)
    same = (a / "model.safetensors").read_bytes() == (built["mini-4k"] / "model.safetensors").read_bytes()
    assert same
    assert (a / "model.safetensors").read_bytes() != (b / "model.safetensors").read_bytes()


def test_dtype_and_global_state_restored(tmp_path):
    before_dtype, before_rng = torch.get_default_dtype(), torch.random.get_rng_state()
    d = testing.make_random_phi3("4-mini", tmp_path / "bf16", dtype=torch.bfloat16)
    assert torch.get_default_dtype() == before_dtype
    assert torch.equal(torch.random.get_rng_state(), before_rng)
    assert json.loads((d / "config.json").read_text())["dtype"] == "bfloat16"


def test_full_size_configs_match_the_real_checkpoints():
    """Checked on config only: a full model is 7.6 GB even in bf16."""
    phi3 = testing.variant_config("mini-4k", "full")
    assert (phi3.hidden_size, phi3.num_hidden_layers, phi3.num_attention_heads) == (3072, 32, 32)
    assert (phi3.intermediate_size, phi3.vocab_size) == (8192, 32064)
    phi4 = testing.variant_config("4-mini", "full")
    assert (phi4.num_attention_heads, phi4.num_key_value_heads, phi4.vocab_size) == (24, 8, 200064)
    assert len(phi4.rope_parameters["long_factor"]) == 48
    assert testing.variant_config("3.5-mini", "full", vocab_size=1028).vocab_size == 1028


def test_unknown_variant_or_size():
    with pytest.raises(ValueError, match="variant"):
        testing.variant_config("phi-2")
    with pytest.raises(ValueError, match="size"):
        testing.variant_config("mini-4k", "huge")
