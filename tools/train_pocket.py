"""Train the pocket model: a tiny Phi-3 that memorizes phi3kit's QA set, on a laptop CPU.

Run `python tools/train_pocket.py` to rebuild phi3kit/pocket/model/. Training is seeded and
deterministic, and the script exits non-zero unless greedy decoding reproduces every training
answer exactly (final <|end|> included), so a shipped model is always a verified one.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch
from transformers import GenerationConfig, Phi3Config, Phi3ForCausalLM, PreTrainedTokenizerFast

from phi3kit.pocket import BANNER, MODEL_DIR, load_qa
from phi3kit.pocket.tokenizer import END, build_tokenizer

# Architecture: head size 64 (ONNX Runtime GenAI needs a multiple of 16); hidden and
# intermediate sizes are multiples of 64 and 128 so int4 group sizes 64/128 divide them.
HIDDEN, LAYERS, HEADS, INTERMEDIATE = 256, 2, 4, 512
VOCAB_REQUEST = 2048  # an upper bound: the BPE stops earlier on so small a corpus.
# Each question is trained bare and behind this system prompt, so both prompt shapes work.
SYSTEM_PROMPT = "You are a helpful assistant."


def pocket_config(vocab_size: int, end_id: int, eos_id: int) -> Phi3Config:
    """Phi-3-mini-4k's config shape at toy size (no rope scaling, 4k positions)."""
    return Phi3Config(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        max_position_embeddings=4096,
        original_max_position_embeddings=4096,
        rope_theta=10000.0,
        bos_token_id=eos_id,
        eos_token_id=[end_id, eos_id],
        pad_token_id=eos_id,
        tie_word_embeddings=False,
    )


def conversations(qa: list[dict]) -> list[tuple[list[dict], str]]:
    """(messages, answer) pairs: each question alone and behind the system prompt."""
    out = []
    for item in qa:
        user = {"role": "user", "content": item["question"]}
        out.append(([user], item["answer"]))
        out.append(([{"role": "system", "content": SYSTEM_PROMPT}, user], item["answer"]))
    return out


def encode(tok: PreTrainedTokenizerFast, convs: list[tuple[list[dict], str]]):
    """Token tensors for training: prompt ids, answer ids (ending in <|end|>), loss mask."""
    end_id = tok.convert_tokens_to_ids(END)
    prompts, answers = [], []
    for messages, answer in convs:
        prompt = tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
        full = tok.apply_chat_template([*messages, {"role": "assistant", "content": answer}], return_dict=False)
        # Training must see exactly the ids inference will feed: the prompt is a prefix.
        assert full[: len(prompt)] == prompt, messages
        ans = full[len(prompt) :]
        assert ans[len(ans) - 3] == end_id, ans  # ... <|end|> \n <|endoftext|>
        prompts.append(prompt)
        answers.append(ans[: len(ans) - 2])
    width = max(len(p) + len(a) for p, a in zip(prompts, answers, strict=True))
    pad = tok.pad_token_id
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    labels = torch.full((len(prompts), width), -100, dtype=torch.long)
    for i, (p, a) in enumerate(zip(prompts, answers, strict=True)):
        seq = p + a
        ids[i, : len(seq)] = torch.tensor(seq)
        labels[i, len(p) : len(seq)] = torch.tensor(a)
    return prompts, answers, ids, labels


def train(model: Phi3ForCausalLM, ids: torch.Tensor, labels: torch.Tensor, steps: int, batch: int) -> float:
    """AdamW on seeded shuffled minibatches, warmup then cosine decay; returns the last loss.

    Minibatches cut to their longest row keep a 2-core CPU fast; right padding needs no
    attention mask, since causal attention never looks at later pads.
    """
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.98), weight_decay=0.0)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.05 + 0.475 * (1 + math.cos(math.pi * s / steps)))
    )
    lengths = (labels != -100).int().cumsum(1).argmax(1) + 1  # last answer position + 1
    order: list[int] = []
    model.train()
    loss = torch.tensor(0.0)
    for step in range(steps):
        if len(order) < batch:
            order += torch.randperm(len(ids)).tolist()
        rows, order = order[:batch], order[batch:]
        width = int(lengths[rows].max())
        x, y = ids[rows, : width - 1], labels[rows, 1:width]  # logits at t predict t+1
        logits = model(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step:4d}  loss {loss.item():.5f}", flush=True)
    model.eval()
    return loss.item()


@torch.no_grad()
def margins(model: Phi3ForCausalLM, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-target logit margin (target minus best other): how much rounding it can survive."""
    logits = model(input_ids=ids[:, :-1]).logits.float()
    targets = labels[:, 1:]
    mask = targets != -100
    logits, targets = logits[mask], targets[mask]
    tgt = logits.gather(1, targets[:, None])[:, 0]
    logits.scatter_(1, targets[:, None], float("-inf"))
    return tgt - logits.max(dim=1).values


@torch.no_grad()
def exact_matches(model: Phi3ForCausalLM, prompts: list[list[int]], answers: list[list[int]], eos: list[int]) -> int:
    """Count answers that greedy `generate` reproduces token for token, stopping at <|end|>."""
    good = 0
    for p, a in zip(prompts, answers, strict=True):
        x = torch.tensor([p])
        out = model.generate(
            x,
            attention_mask=torch.ones_like(x),
            max_new_tokens=len(a) + 8,
            do_sample=False,
            eos_token_id=eos,
        )
        good += out[0, len(p) :].tolist() == a
    return good


def save(model: Phi3ForCausalLM, tok: PreTrainedTokenizerFast, out: Path, card: str) -> int:
    """Write weights (safetensors), tokenizer, generation config and card; return bytes."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        if old.is_file():
            old.unlink()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "README.md").write_text(card)
    return sum(f.stat().st_size for f in out.iterdir() if f.is_file())


def model_card(params: int, seconds: float, steps: int, seed: int, n_qa: int) -> str:
    """An honest model card: what the pocket model is for and what it is not."""
    return f"""---
license: mit
pipeline_tag: text-generation
tags: [phi3, teaching, tiny]
---
# phi3kit pocket model

> **{BANNER}**

A {params / 1e6:.1f}M-parameter `Phi3ForCausalLM` (hidden {HIDDEN}, {LAYERS} layers,
{HEADS} heads of size {HIDDEN // HEADS}, intermediate {INTERMEDIATE}) trained from scratch
on {n_qa} question-answer pairs in `phi3kit/pocket/qa.jsonl` (English, and the notebooks' own
questions in French, Chinese, Persian, Indonesian and Romanian), with a byte-level BPE tokenizer
trained on the same texts. It answers those questions exactly under greedy decoding, with no
system prompt or behind `{SYSTEM_PROMPT}`, in fp32, bf16, and OpenVINO / ONNX Runtime GenAI
int8 and int4 builds; it answers nothing else reliably: it exists so workshops and tests can exercise the whole kit
(PyTorch, OpenVINO, ONNX Runtime GenAI, quantization, chat templates) offline in seconds.

It uses Phi-3's architecture and chat format (`<|user|>`, `<|assistant|>`, `<|end|>`), so
code written against it works unchanged with `microsoft/Phi-3-mini-4k-instruct`.

Rebuild: `python tools/train_pocket.py --steps {steps} --seed {seed}`
({seconds:.0f} s on a 2-core CPU).
"""


def main(argv: list[str] | None = None) -> int:
    """Train, verify exact recall, save; exit code 1 if any answer is not reproduced."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=MODEL_DIR)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    start = time.perf_counter()
    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    qa = load_qa()
    convs = conversations(qa)
    tok = build_tokenizer([SYSTEM_PROMPT] + [x["question"] for x in qa] + [x["answer"] for x in qa], VOCAB_REQUEST)
    end_id, eos_id = tok.convert_tokens_to_ids(END), tok.eos_token_id
    prompts, answers, ids, labels = encode(tok, convs)
    print(f"vocab {len(tok)}, {len(convs)} conversations of up to {ids.shape[1]} tokens")

    model = Phi3ForCausalLM(pocket_config(len(tok), end_id, eos_id)).float()
    params = sum(p.numel() for p in model.parameters())
    print(f"parameters {params:,}")
    train(model, ids, labels, args.steps, args.batch)
    train_s = time.perf_counter() - start

    m = margins(model, ids, labels)
    good = exact_matches(model, prompts, answers, [end_id, eos_id])
    print(f"exact match {good}/{len(convs)}; logit margin min {m.min():.2f} median {m.median():.2f}")

    model.generation_config = GenerationConfig(
        bos_token_id=eos_id, eos_token_id=[end_id, eos_id], pad_token_id=eos_id, do_sample=False
    )
    size = save(model, tok, args.out, model_card(params, train_s, args.steps, args.seed, len(qa)))
    total_s = time.perf_counter() - start
    print(f"training time {train_s:.1f} s (total with checks {total_s:.1f} s)")
    print(f"saved {size / 1e6:.2f} MB to {args.out}")
    if good != len(convs):
        print("FAILED: not every answer is reproduced; try more --steps", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
