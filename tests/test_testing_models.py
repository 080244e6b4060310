"""Random Phi-3 family test models: real config shapes, deterministic, loadable, not flat."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from phi3kit import pocket, testing


@pytest.fixture(scope="module")
def built(random_phi3):
    """Every variant, from the run's model maker (tests/conftest.py: made once, shared with the parity tests)."""
    return {v: random_phi3(v) for v in testing.VARIANTS}


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


# The real checkpoints, from their config.json on the Hugging Face Hub (microsoft/Phi-3-mini-4k-instruct,
# microsoft/Phi-3-mini-128k-instruct, microsoft/Phi-3.5-mini-instruct, microsoft/Phi-4-mini-instruct), and the
# Phi-3 / Phi-4-mini technical reports. Written here, not read from phi3kit.testing: the factory must match them.
REAL = {
    "mini-4k": {"hidden_size": 3072, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
                "intermediate_size": 8192, "vocab_size": 32064, "sliding_window": 2047,
                "max_position_embeddings": 4096, "original_max_position_embeddings": 4096},
    "mini-128k": {"hidden_size": 3072, "num_hidden_layers": 32, "num_attention_heads": 32, "vocab_size": 32064,
                  "max_position_embeddings": 131072, "original_max_position_embeddings": 4096, "factors": 48},
    "3.5-mini": {"hidden_size": 3072, "num_hidden_layers": 32, "num_attention_heads": 32, "vocab_size": 32064,
                 "max_position_embeddings": 131072, "original_max_position_embeddings": 4096, "factors": 48},
    "4-mini": {"hidden_size": 3072, "num_attention_heads": 24, "num_key_value_heads": 8, "vocab_size": 200064,
               "partial_rotary_factor": 0.75, "tie_word_embeddings": True, "max_position_embeddings": 131072,
               "original_max_position_embeddings": 4096, "factors": 48},
}
# What a tiny model keeps of the real one (its dims are small on purpose; these are not dims).
SHAPE_FREE = ("sliding_window", "max_position_embeddings", "original_max_position_embeddings",
              "partial_rotary_factor", "tie_word_embeddings")


def value(cfg, key: str):  # type: ignore[no-untyped-def]
    """A config field, wherever transformers keeps it (rope fields moved into rope_parameters in v5)."""
    if key in cfg.rope_parameters:
        return cfg.rope_parameters[key]
    return getattr(cfg, key, 1.0 if key == "partial_rotary_factor" else None)


def rotary_dim(cfg) -> int:  # type: ignore[no-untyped-def]
    head = cfg.hidden_size // cfg.num_attention_heads
    return int(head * cfg.rope_parameters.get("partial_rotary_factor", 1.0))


@pytest.mark.parametrize("variant", testing.VARIANTS)
def test_full_size_configs_match_the_real_checkpoints(variant):
    """Checked on config only (a full model is 7.6 GB even in bf16), against the checkpoints' own numbers.

    Catches: a wrong dim, head count, vocab, window or RoPE field in the factory's full-size table, and LongRoPE
    factor lists of the wrong length (real: one per rotary frequency, 96 / 2 = 48 for all three).
    """
    cfg = testing.variant_config(variant, "full")
    real = REAL[variant]
    for key, expected in real.items():
        if key != "factors":
            assert value(cfg, key) == expected, key
    if "factors" in real:
        rope = cfg.rope_parameters
        assert rope["rope_type"] == "longrope"
        assert len(rope["short_factor"]) == len(rope["long_factor"]) == real["factors"] == rotary_dim(cfg) // 2
    else:
        assert cfg.rope_parameters.get("rope_type", "default") == "default"
    assert testing.variant_config(variant, "full", vocab_size=1028).vocab_size == 1028


@pytest.mark.parametrize("variant", testing.VARIANTS)
def test_tiny_models_keep_the_real_windows_rope_and_tying(built, variant):
    """A tiny model is small in its dims only: windows, RoPE type, partial rotary and tying are the real ones."""
    cfg = AutoModelForCausalLM.from_pretrained(built[variant]).config
    for key in SHAPE_FREE:
        if key in REAL[variant]:
            assert value(cfg, key) == REAL[variant][key], key
    assert bool(cfg.tie_word_embeddings) == REAL[variant].get("tie_word_embeddings", False)
    rope = cfg.rope_parameters
    assert rope.get("rope_type", "default") == ("longrope" if "factors" in REAL[variant] else "default")
    if "factors" in REAL[variant]:
        assert len(rope["short_factor"]) == len(rope["long_factor"]) == rotary_dim(cfg) // 2
        # ONNX Runtime GenAI's GroupQueryAttention wants the rotary cache width a multiple of 8.
        assert (rotary_dim(cfg) // 2) % 8 == 0
        # LongRoPE only ever slows frequencies down (factors >= 1), and the long ones more (the real lists too).
        assert min(rope["short_factor"]) >= 1.0 and min(rope["long_factor"]) >= 1.0
        assert rope["long_factor"][-1] > rope["short_factor"][-1]


def with_short_factors_only(model):  # type: ignore[no-untyped-def]
    """The same weights with long_factor := short_factor: what the model computes if it never switches."""
    cfg = copy.deepcopy(model.config)
    cfg.rope_parameters["long_factor"] = list(cfg.rope_parameters["short_factor"])
    twin = type(model)(cfg).eval()
    twin.load_state_dict(model.state_dict())
    return twin


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["mini-128k", "3.5-mini", "4-mini"])
def test_long_factors_take_over_past_the_original_window(built, variant):
    """transformers switches to the long factors for sequences past original_max_position_embeddings (4096):
    the logits of a 4100-token prompt differ from the short-factors-only twin's, a 64-token prompt's do not.

    Catches: rope scaling the runtime ignores (a key transformers does not read: the model stays plain RoPE),
    original_max_position_embeddings missing (no switch at 4096), or long factors equal to the short ones.
    """
    model = AutoModelForCausalLM.from_pretrained(built[variant]).eval()
    twin = with_short_factors_only(model)
    ids = torch.randint(0, model.config.vocab_size, (1, 4100), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        short_a, short_b = model(ids[:, :64]).logits, twin(ids[:, :64]).logits
        long_a, long_b = model(ids).logits, twin(ids).logits
        again = model(ids[:, :64]).logits  # back under the window: short factors again
    assert torch.equal(short_a, short_b) and torch.equal(again, short_a)
    assert (long_a - long_b).abs().max() > 1e-2 * long_b.abs().max()


def test_4_mini_is_partial_rotary_tied_gqa(built):
    """Phi-4-mini's shape in the tiny model's weights, not just its config.

    Catches: partial_rotary_factor not reaching the rotary embedding (all 64 head dims rotated), GQA lost
    (as many K/V heads as query heads in the fused qkv weight), tying lost (a separate lm_head saved).
    """
    from safetensors import safe_open

    model = AutoModelForCausalLM.from_pretrained(built["4-mini"])
    cfg = model.config
    head = cfg.hidden_size // cfg.num_attention_heads
    x = torch.zeros(1, 3, cfg.hidden_size)
    cos, _ = model.model.rotary_emb(x, torch.arange(3)[None])
    assert cos.shape[-1] == int(head * 0.75) < head  # 48 of 64 dims rotated, the rest passed through
    with safe_open(built["4-mini"] / "model.safetensors", "pt") as f:
        keys = set(f.keys())
        qkv = f.get_slice("model.layers.0.self_attn.qkv_proj.weight").get_shape()
    assert 0 < cfg.num_key_value_heads < cfg.num_attention_heads
    assert qkv[0] == (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * head
    assert "lm_head.weight" not in keys and "model.embed_tokens.weight" in keys  # one matrix on disk
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_mini_4k_is_untied_full_attention(built):
    """Phi-3-mini-4k: its own lm_head on disk, as many K/V heads as query heads, every head dim rotated."""
    from safetensors import safe_open

    model = AutoModelForCausalLM.from_pretrained(built["mini-4k"])
    cfg = model.config
    with safe_open(built["mini-4k"] / "model.safetensors", "pt") as f:
        assert not torch.equal(f.get_tensor("lm_head.weight"), f.get_tensor("model.embed_tokens.weight"))
    assert cfg.num_key_value_heads == cfg.num_attention_heads
    cos, _ = model.model.rotary_emb(torch.zeros(1, 3, cfg.hidden_size), torch.arange(3)[None])
    assert cos.shape[-1] == cfg.hidden_size // cfg.num_attention_heads


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


def test_unknown_variant_or_size():
    with pytest.raises(ValueError, match="variant"):
        testing.variant_config("phi-2")
    with pytest.raises(ValueError, match="size"):
        testing.variant_config("mini-4k", "huge")
