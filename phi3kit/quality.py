"""Quality beside speed: perplexity on a fixed text and greedy agreement with the PyTorch reference.

A precision that is 3x faster is only a good deal if we know what it costs; these two numbers
turn "int4 loses a bit" into a figure. Perplexity is computed from each route's own logits:
PyTorch for transformers, optimum-intel's OVModelForCausalLM on the same export (with the same
runtime properties) for OpenVINO, and the generator's `logits` output for ONNX Runtime GenAI.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EVAL_TEXT: Path = Path(__file__).resolve().parent / "data" / "eval.txt"


def eval_text() -> str:
    """The kit's fixed evaluation text (written for the kit, so every machine measures the same words)."""
    return EVAL_TEXT.read_text(encoding="utf-8")


Segment = tuple[list[int], int]  # (ids, index of the first scored token): earlier ids are context only


def text_segments(tokenizer: Any, text: str, max_tokens: int = 1024, window: int = 512) -> list[Segment]:
    """Non-overlapping windows over the text's first `max_tokens` tokens; each restarts the context."""
    ids = list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])[:max_tokens]
    return [(ids[i : i + window], 1) for i in range(0, len(ids), window) if len(ids[i : i + window]) > 1]


def pocket_segments(tokenizer: Any) -> list[Segment]:
    """The pocket's own QA as chat turns, scoring only the answers: what it was trained to predict."""
    from . import pocket

    out = []
    for qa in pocket.load_qa():
        question = [{"role": "user", "content": qa["question"]}]
        prompt = tokenizer.apply_chat_template(question, add_generation_prompt=True, tokenize=True,
                                               return_dict=False)
        full = tokenizer.apply_chat_template([*question, {"role": "assistant", "content": qa["answer"]}],
                                             tokenize=True, return_dict=False)
        out.append((list(full), len(prompt)))
    return out


def quality_segments(model: str, tokenizer: Any, max_tokens: int = 1024,
                     window: int = 512) -> tuple[list[Segment], str]:
    """What perplexity is measured on: the pocket's QA answers for model='pocket', else the fixed eval text."""
    if model == "pocket":
        return pocket_segments(tokenizer), "pocket QA answers given their questions"
    return text_segments(tokenizer, eval_text(), max_tokens, window), "phi3kit/data/eval.txt"


@dataclass
class Perplexity:
    """exp(mean negative log-likelihood) over `tokens` predicted tokens; None with `note` when unavailable."""

    value: float | None
    tokens: int
    note: str = ""


def nll_sum(logits: Any, targets: Sequence[int]) -> float:
    """Sum of -log p(target) under `logits` ([n, vocab], one row per target), in float64."""
    import numpy as np

    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    log_z = np.log(np.exp(x).sum(axis=-1))
    picked = x[np.arange(len(targets)), np.asarray(targets)]
    return float((log_z - picked).sum())


def _torch_logits(model: Any) -> Any:
    import torch

    def run(ids: list[int]) -> Any:
        with torch.inference_mode():
            return model(torch.tensor([ids])).logits[0].float().numpy()

    return run


def _openvino_logits(model: Any) -> Any:
    import numpy as np
    import torch

    def run(ids: list[int]) -> Any:
        x = torch.tensor([ids], dtype=torch.int64)
        # No past_key_values: the stateful model resets its KV cache, so every window starts fresh.
        return np.asarray(model(input_ids=x, attention_mask=torch.ones_like(x)).logits)[0]

    return run


def _load_openvino(export_dir: Path, device: str, props: dict[str, Any]) -> Any:
    from optimum.intel import OVModelForCausalLM

    return OVModelForCausalLM.from_pretrained(str(export_dir), export=False, device=device, ov_config=dict(props))


def _ortgenai_logits(model: Any) -> Any:
    import numpy as np
    import onnxruntime_genai as og

    def run(ids: list[int]) -> Any:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + 1)
        generator = og.Generator(model, params)
        generator.append_tokens(np.asarray([ids], dtype=np.int32))
        return np.array(generator.get_output("logits"))[0]

    return run


def logits_fn(session: Any) -> tuple[Any, str]:
    """A function ids -> logits [len(ids), vocab] for this session's route, and how the logits are obtained."""
    backend = session.config.backend
    if backend == "transformers":
        return _torch_logits(session.backend.model), "PyTorch forward"
    if backend == "openvino":
        if getattr(session.backend, "runtime", "") == "optimum":
            return _openvino_logits(session.backend.model), "optimum-intel OVModelForCausalLM"
        model = _load_openvino(session.export.path, session.config.device, session.backend.props)
        return _openvino_logits(model), ("optimum-intel OVModelForCausalLM on the same export and runtime "
                                         "properties (LLMPipeline exposes no logits)")
    if backend == "ortgenai":
        return _ortgenai_logits(session.backend.model), "onnxruntime-genai generator.get_output('logits')"
    raise NotImplementedError(f"perplexity is not available for backend '{backend}' (no logits exposed)")


def perplexity(session: Any, segments: Sequence[Segment]) -> Perplexity:
    """exp of the mean negative log-likelihood of the scored tokens of `segments`, from this route's logits."""
    try:
        run, how = logits_fn(session)
    except NotImplementedError as exc:
        return Perplexity(None, 0, str(exc))
    total, count = 0.0, 0
    for ids, first in segments:
        if len(ids) > session.context_length:
            raise ValueError(f"a segment of {len(ids)} tokens exceeds the context window ({session.context_length})")
        logits = run(list(ids))
        total += nll_sum(logits[first - 1 : -1], ids[first:])
        count += len(ids) - first
    if not count:
        return Perplexity(None, 0, "nothing to score (the text is shorter than two tokens)")
    return Perplexity(math.exp(total / count), count, how)


@dataclass
class Agreement:
    """How closely greedy outputs follow the reference's, over several prompts.

    `identical` is the share of positions holding the same token (over the longer output of each pair);
    `prefix` is the mean number of leading tokens that match before the first difference.
    """

    identical: float
    prefix: float
    prompts: int


def agreement(reference: Sequence[Sequence[int]], candidate: Sequence[Sequence[int]]) -> Agreement:
    """Compare greedy token ids prompt by prompt; an output that stops early counts its missing tokens as different."""
    if len(reference) != len(candidate):
        raise ValueError(f"{len(reference)} reference outputs but {len(candidate)} candidate outputs")
    same = total = 0
    prefixes: list[int] = []
    for ref, cand in zip(reference, candidate, strict=True):
        n = max(len(ref), len(cand))
        same += sum(a == b for a, b in zip(ref, cand, strict=False))
        total += n
        prefix = 0
        for a, b in zip(ref, cand, strict=False):
            if a != b:
                break
            prefix += 1
        prefixes.append(prefix)
    return Agreement(same / total if total else 1.0, sum(prefixes) / len(prefixes) if prefixes else 0.0,
                     len(prefixes))
