"""Running an OpenVINO export: OpenVINO GenAI's LLMPipeline (the default) or optimum-intel's OVModelForCausalLM,
and streaming token ids out of the pipeline."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ...config import GenerationConfig
from ...devices import device_family
from ..base import Token, threaded_stream
from ..longrope import patch_optimum_cache_position

UNLIMITED = 2**64 - 1  # SIZE_MAX: LLMPipeline's own scheduler does not cap the tokens of one step


def genai_properties(props: dict[str, Any], device: str, reuse_cache: bool) -> dict[str, Any]:
    """LLMPipeline's properties. On CPU and GPU it runs continuous batching (paged attention) with the latency-
    oriented scheduler: prefix caching on, steps uncapped. Reuse off (`reuse_cache=False`) passes that scheduler
    with prefix caching off, so every prompt is prefilled in full; a plain SchedulerConfig() would also cap a
    step at 256 tokens and chunk the prefill, changing what a single prompt measures. Left alone where the
    caller chose the attention backend or scheduler, and on other devices (the NPU's pipeline is stateful)."""
    if reuse_cache or "scheduler_config" in props or "ATTENTION_BACKEND" in props:
        return props
    if device_family(device) not in ("CPU", "GPU"):
        return props
    import openvino_genai

    scheduler = openvino_genai.SchedulerConfig()
    scheduler.max_num_batched_tokens = UNLIMITED
    scheduler.enable_prefix_caching = False
    return {**props, "scheduler_config": scheduler}


def genai_pipeline(model_dir: Path, device: str, props: dict[str, Any], tokenizer_dir: Path | None = None,
                   reuse_cache: bool = True) -> Any:
    """An LLMPipeline for the export (with tokenizer models from `tokenizer_dir` when the IR lacks them)."""
    import openvino_genai

    props = genai_properties(props, device, reuse_cache)
    if tokenizer_dir is not None:
        tokenizer = openvino_genai.Tokenizer(str(tokenizer_dir))
        return openvino_genai.LLMPipeline(str(model_dir), tokenizer, device, **props)
    return openvino_genai.LLMPipeline(str(model_dir), device, **props)


def optimum_model(model_dir: Path, device: str, props: dict[str, Any]) -> Any:
    from optimum.intel import OVModelForCausalLM

    model = OVModelForCausalLM.from_pretrained(str(model_dir), export=False, device=device, ov_config=dict(props))
    return patch_optimum_cache_position(model)  # optimum-intel 2.0-2.2 with transformers >= 5.4


def optimum_logits(model: Any, ids: list[int]) -> Any:
    """Next-token logits at every position of `ids` from an OVModelForCausalLM."""
    import numpy as np
    import torch

    x = torch.tensor([ids], dtype=torch.int64)
    # No past_key_values: the stateful model resets its KV cache, so every call starts fresh.
    return np.asarray(model(input_ids=x, attention_mask=torch.ones_like(x)).logits)[0]


def genai_stream(pipeline: Any, prompt_ids: list[int], gen: GenerationConfig, stop_ids: list[int]) -> Iterator[Token]:
    import numpy as np
    import openvino as ov
    import openvino_genai

    config = pipeline.get_generation_config()
    config.max_new_tokens = gen.max_new_tokens
    config.stop_token_ids = set() if gen.ignore_eos else set(stop_ids)
    config.ignore_eos = gen.ignore_eos
    config.apply_chat_template = False  # the prompt is already templated ids
    config.do_sample = gen.do_sample
    if gen.do_sample:
        config.temperature, config.top_p, config.top_k = gen.temperature, gen.top_p, gen.top_k
        if gen.seed is not None:
            config.rng_seed = gen.seed
    ids = ov.Tensor(np.asarray([prompt_ids], dtype=np.int64))
    Status = openvino_genai.StreamingStatus

    class Emit(openvino_genai.StreamerBase):
        def __init__(self, emit: Any) -> None:
            super().__init__()
            self.emit = emit

        def write(self, token: Any) -> Any:
            return Status.RUNNING if self.emit(token) else Status.STOP

        def end(self) -> None:
            pass

    return threaded_stream(lambda emit: pipeline.generate(ids, config, Emit(emit)))


def cut_state(model: Any, keep: int) -> bool:
    """Cut optimum-intel's stateful model's KV cache to its first `keep` positions, as OpenVINO GenAI trims its own
    stateful models: each state is a [batch, heads, sequence, head] tensor; a region of it is copied into a new
    tensor that replaces it. False, with nothing changed, for a state of another layout (the chat starts afresh)."""
    import openvino as ov

    held = int(model._past_length)
    states = list(model.request.query_state())
    tensors = [state.state for state in states]
    if not states or any(len(t.shape) != 4 or t.shape[2] != held for t in tensors):
        return False
    for state, old in zip(states, tensors, strict=True):
        end = list(old.shape)
        end[2] = keep
        new = ov.Tensor(old.element_type, end)
        ov.Tensor(old, [0, 0, 0, 0], end).copy_to(new)
        state.state = new
    return True
