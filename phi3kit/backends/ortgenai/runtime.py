"""Running an ONNX Runtime GenAI build: the og.Model on the chosen provider, and the generator loop that streams
token ids (and reads logits)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ...config import GenerationConfig
from ..base import Token, threaded_stream


def open_model(model_dir: Path, provider: str, runtime_config: dict[str, Any]) -> Any:
    """The og.Model of a build, on `provider` whatever the build targeted, with `runtime_config` overlaid."""
    import onnxruntime_genai as og

    config = og.Config(str(model_dir))
    config.clear_providers()  # the build target's provider is in genai_config.json; the device decides
    if provider != "cpu":
        config.append_provider(provider)
    if runtime_config:
        config.overlay(json.dumps(runtime_config))  # merged into genai_config.json
    return og.Model(config)


def stream(model: Any, max_length: int, prompt_ids: list[int], gen: GenerationConfig,
           stop_ids: list[int]) -> Iterator[Token]:
    """The generator loop: the prompt in one pass, then one token at a time until a stop id or max_new_tokens."""
    import numpy as np
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    total = len(prompt_ids) + gen.max_new_tokens
    options: dict[str, Any] = {"max_length": max_length, "do_sample": gen.do_sample}
    if gen.ignore_eos:  # the generator finishes at its eos by itself; min_length keeps it going (masks eos)
        options["min_length"] = total
    if gen.do_sample:
        options.update(temperature=gen.temperature, top_p=gen.top_p, top_k=gen.top_k)
        if gen.seed is not None:
            options["random_seed"] = gen.seed
    params.set_search_options(**options)
    stops = set(stop_ids)

    def run(emit: Any) -> None:
        generator = og.Generator(model, params)
        generator.append_tokens(np.asarray([prompt_ids], dtype=np.int32))  # prefill: the prompt in one pass
        for _ in range(gen.max_new_tokens):
            if generator.is_done():
                return
            generator.generate_next_token()
            token = int(generator.get_next_tokens()[0])
            if not emit(token) or (token in stops and not gen.ignore_eos):
                return

    return threaded_stream(run)


def logits(model: Any, max_length: int, ids: list[int]) -> Any:
    """Next-token logits at every position of `ids`."""
    import numpy as np
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    params.set_search_options(max_length=max_length)
    generator = og.Generator(model, params)
    generator.append_tokens(np.asarray([ids], dtype=np.int32))
    return np.array(generator.get_output("logits"))[0]
