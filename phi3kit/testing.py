"""Random-weight Phi-3 family models, made offline, for tests and benchmarks.

Each variant copies the real checkpoint's config fields (LongRoPE, partial rotary, tied
embeddings, GQA) so export and runtime code paths see what they would see with the real
model, while "tiny" models build in well under a second. The tokenizer is the shipped pocket
tokenizer, so prompts, chat templates and stop tokens behave like Phi-3's; `tokenizer_dir` swaps
in another one (tests/data/phi3-tokenizer: Phi-3's real SentencePiece-style tokenizer).
"""

from __future__ import annotations

import shutil
from functools import lru_cache
from os import PathLike
from pathlib import Path

import torch
from transformers import AutoTokenizer, GenerationConfig, Phi3Config, Phi3ForCausalLM

from phi3kit import pocket

VARIANTS: tuple[str, ...] = ("mini-4k", "mini-128k", "3.5-mini", "4-mini")
SIZES: tuple[str, ...] = ("tiny", "full")

# Tokenizer files copied from the pocket model so every test model shares its vocab.
TOKENIZER_FILES: tuple[str, ...] = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
# What a `tokenizer_dir` may hold besides those (older transformers write it).
EXTRA_TOKENIZER_FILES: tuple[str, ...] = ("special_tokens_map.json",)
# A model's embedding rows: the tokenizer's length rounded up to a multiple of this (Phi-3: 32011 -> 32064).
VOCAB_MULTIPLE = 64

# Real dims (microsoft/Phi-3-mini-*, Phi-3.5-mini-instruct, Phi-4-mini-instruct).
_FULL = {
    "phi3": {"hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 32,
             "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32064},
    "phi4": {"hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 32,
             "num_attention_heads": 24, "num_key_value_heads": 8, "vocab_size": 200064},
}  # fmt: skip
# Tiny dims: head size 64 (ONNX Runtime GenAI needs a multiple of 16, and its rotary cache
# width, rotary_dim / 2, a multiple of 8: 0.75 * 64 / 2 = 24 for 4-mini); hidden and
# intermediate sizes divisible by 64 so int4 group sizes fit; 4-mini keeps GQA (2 q, 1 kv).
_TINY = {
    "phi3": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
             "num_attention_heads": 2, "num_key_value_heads": 2},
    "phi4": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
             "num_attention_heads": 2, "num_key_value_heads": 1},
}  # fmt: skip
# std 0.02 (the real initializer_range) leaves a 2-layer model's logits nearly flat, so
# greedy tokens hinge on rounding; a larger std gives margins that parity tests can trust.
_TINY_STD = 0.2
# (largest short factor, largest long factor) per LongRoPE variant, near the real ranges.
_FACTOR_RANGE = {"mini-128k": (1.1, 60.0), "3.5-mini": (1.5, 40.0), "4-mini": (1.3, 50.0)}


def _longrope(rotary_dim: int, short_max: float, long_max: float) -> dict:
    """LongRoPE factors shaped like Phi-3's: one per rotary frequency (rotary_dim / 2), rising
    from 1 (short) and steeply (long); values differ per variant like the real ones do."""
    n = rotary_dim // 2
    ramp = [i / (n - 1) for i in range(n)]
    return {
        "type": "longrope",
        "short_factor": [round(1.0 + (short_max - 1.0) * r, 4) for r in ramp],
        "long_factor": [round(1.0 + (long_max - 1.0) * r * r, 4) for r in ramp],
    }


def variant_config(variant: str, size: str = "tiny", vocab_size: int | None = None,
                   tokenizer_dir: str | PathLike[str] | None = None) -> Phi3Config:
    """The Phi3Config of one variant; `vocab_size` defaults to the pocket tokenizer's (tiny)
    or the real checkpoint's (full).

    With `tokenizer_dir`, the special ids come from that tokenizer (bos, eos, `<|end|>`) and a
    tiny model's vocab_size is its length rounded up to a multiple of 64, as Phi-3 pads it."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose from {SIZES}")
    family = "phi4" if variant == "4-mini" else "phi3"
    dims = dict((_FULL if size == "full" else _TINY)[family])
    if vocab_size is not None:
        dims["vocab_size"] = vocab_size
    elif size == "tiny":
        dims["vocab_size"] = _pocket_vocab()[0] if tokenizer_dir is None else _tokenizer_vocab(str(tokenizer_dir))[0]
    if tokenizer_dir is None:
        eos, end = _pocket_vocab()[1:]
        bos = eos
    else:
        bos, eos, end = _tokenizer_vocab(str(tokenizer_dir))[1:]
    head_dim = dims["hidden_size"] // dims["num_attention_heads"]
    extra: dict = {"tie_word_embeddings": False}
    if variant == "mini-4k":
        extra.update(max_position_embeddings=4096, sliding_window=2047)
    else:
        extra.update(max_position_embeddings=131072, sliding_window=262144)
        rotary = head_dim
        if variant == "4-mini":
            extra.update(partial_rotary_factor=0.75, tie_word_embeddings=True)
            rotary = int(head_dim * 0.75)
        short_max, long_max = _FACTOR_RANGE[variant]
        extra["rope_scaling"] = _longrope(rotary, short_max, long_max)
    return Phi3Config(
        **dims,
        **extra,
        original_max_position_embeddings=4096,
        rope_theta=10000.0,
        bos_token_id=bos,
        eos_token_id=[end, eos],
        pad_token_id=eos,
        initializer_range=0.02 if size == "full" else _TINY_STD,
    )


@lru_cache(maxsize=1)
def _pocket_vocab() -> tuple[int, int, int]:
    """(vocab size, <|endoftext|> id, <|end|> id) of the shipped pocket tokenizer."""
    tok = AutoTokenizer.from_pretrained(pocket.path())
    return len(tok), tok.eos_token_id, tok.convert_tokens_to_ids("<|end|>")


@lru_cache(maxsize=4)
def _tokenizer_vocab(tokenizer_dir: str) -> tuple[int, int, int, int]:
    """(padded vocab size, bos id, eos id, <|end|> id) of the tokenizer in `tokenizer_dir`."""
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    end = tok.convert_tokens_to_ids("<|end|>")
    if tok.eos_token_id is None or not isinstance(end, int) or end == tok.unk_token_id:
        raise ValueError(f"{tokenizer_dir}: a Phi-3 tokenizer needs an eos token and <|end|>")
    bos = tok.eos_token_id if tok.bos_token_id is None else tok.bos_token_id
    padded = -(-len(tok) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    return padded, bos, tok.eos_token_id, end


def make_random_phi3(
    variant: str,
    out_dir: str | Path,
    size: str = "tiny",
    seed: int = 0,
    dtype: torch.dtype | None = None,
    vocab_size: int | None = None,
    tokenizer_dir: str | PathLike[str] | None = None,
) -> Path:
    """Write a random-weight HF folder for `variant` (config, safetensors, pocket tokenizer,
    generation config); deterministic by `seed`.

    `tokenizer_dir` (default: the pocket tokenizer) copies that folder's tokenizer files instead and
    sizes the vocab and special ids to match (see `variant_config`).

    `dtype` defaults to float32 for tiny and bfloat16 for full: a full model is built
    directly in that dtype (about 7.6 GB in bf16) so two fp32 copies never exist.
    """
    cfg = variant_config(variant, size, vocab_size, tokenizer_dir)
    if dtype is None:
        dtype = torch.bfloat16 if size == "full" else torch.float32
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    previous = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_default_dtype(dtype)
        try:
            model = Phi3ForCausalLM(cfg)
        finally:
            torch.set_default_dtype(previous)
    model.generation_config = GenerationConfig(
        bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id,
        pad_token_id=cfg.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(out)
    del model
    src = pocket.path() if tokenizer_dir is None else Path(tokenizer_dir)
    names = TOKENIZER_FILES if tokenizer_dir is None else TOKENIZER_FILES + EXTRA_TOKENIZER_FILES
    for name in names:
        if (src / name).exists():
            shutil.copyfile(src / name, out / name)
    which = "pocket tokenizer" if tokenizer_dir is None else f"tokenizer from {src.name}"
    (out / "README.md").write_text(
        f"# Random-weight Phi-3 test model ({variant}, {size}, seed {seed})\n\n"
        "Made by `phi3kit.testing.make_random_phi3`: config shaped like the real checkpoint,"
        f" random weights, {which}. Its text is meaningless; use it to test code paths"
        " and speed only.\n"
    )
    return out
