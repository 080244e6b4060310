"""Phi-3 LongRoPE past original_max_position_embeddings: what each runtime needs to agree with the model.

The model's rule (transformers' Phi3ForCausalLM.prepare_inputs_for_generation): positions use the short
factors while the sequence fits original_max_position_embeddings; on the first step past it the KV cache
is dropped and the whole sequence is recomputed with the long factors. Three runtimes miss it:

* transformers 5.4/5.5 itself: generate() now passes next_sequence_length=1 and the base
  prepare_inputs_for_generation slices input_ids to that one token before the Phi-3 override's reset
  takes effect, so the step runs one token with no past, and every later step again (the new cache holds
  one token). `patch_hf_longrope` keeps the whole sequence on the reset step.
* optimum-intel 2.0-2.2 (OVPhi3ForCausalLM, modeling_decoder.py:956-995) reads `cache_position[0]`, which
  transformers >= 5.4 no longer passes: TypeError 'NoneType' object is not subscriptable.
  `patch_optimum_cache_position` supplies it from the model's own past length.
* OpenVINO GenAI 2026.4 has no such switch that can be relied on: its LLMPipeline reuses cached KV
  prefixes across calls, and its ids part from the model's once a sequence passes the original window
  (its continuous-batching pipeline, with a scheduler_config, even on a fresh long prompt). The OpenVINO
  backend therefore limits that route to the original window and says so (docs/compatibility.md).
"""

from __future__ import annotations

import inspect
import types
from typing import Any


def longrope_window(config: Any) -> int | None:
    """original_max_position_embeddings of a LongRoPE Phi-3 config (object or dict), else None."""
    get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
    rope = get("rope_parameters") or get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type")) if isinstance(rope, dict) else None
    orig, ctx = get("original_max_position_embeddings"), get("max_position_embeddings")
    if get("model_type") != "phi3" or kind not in ("longrope", "su") or not orig or (ctx and int(ctx) <= int(orig)):
        return None
    return int(orig)


def patch_hf_longrope(model: Any) -> Any:
    """transformers >= 5.4: on the step that drops the cache, feed the whole sequence, not the last token."""
    from transformers.generation.utils import GenerationMixin

    orig = longrope_window(model.config)
    takes = inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
    if orig is None or getattr(model, "_phi3kit_longrope", False) or "next_sequence_length" not in takes:
        return model
    original = type(model).prepare_inputs_for_generation

    def prepare_inputs_for_generation(self: Any, input_ids: Any, *args: Any, past_key_values: Any = None,
                                      next_sequence_length: Any = None, **kwargs: Any) -> Any:
        if past_key_values is not None and input_ids.shape[1] > orig and past_key_values.get_seq_length() <= orig:
            next_sequence_length = None  # the override drops the cache: recompute everything with the long factors
        return original(self, input_ids, *args, past_key_values=past_key_values,
                        next_sequence_length=next_sequence_length, **kwargs)

    model.prepare_inputs_for_generation = types.MethodType(prepare_inputs_for_generation, model)
    model._phi3kit_longrope = True
    return model


def patch_optimum_cache_position(model: Any) -> Any:
    """optimum-intel OVPhi3ForCausalLM: pass the cache_position it reads and transformers >= 5.4 no longer sends."""
    import torch

    fn = getattr(type(model), "prepare_inputs_for_generation", None)
    try:
        reads_it = fn is not None and "cache_position[0]" in inspect.getsource(fn)
    except (OSError, TypeError):
        reads_it = False
    if not reads_it or getattr(model, "_phi3kit_cache_position", False):
        return model

    def prepare_inputs_for_generation(self: Any, input_ids: Any, past_key_values: Any = None, **kwargs: Any) -> Any:
        # Always from the model's own count: transformers >= 5.4 sends none, 5.3 sends every position so far
        # (cache_position[0] == 0 would drop the cache on every step past the window).
        if past_key_values:
            past = int(self._get_past_length(past_key_values))  # tokens already in the (stateful) KV cache
            kwargs["cache_position"] = torch.arange(past, input_ids.shape[1], device=input_ids.device)
        return fn(self, input_ids, past_key_values=past_key_values, **kwargs)

    model.prepare_inputs_for_generation = types.MethodType(prepare_inputs_for_generation, model)
    model._phi3kit_cache_position = True
    return model
