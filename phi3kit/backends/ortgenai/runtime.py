"""Running an ONNX Runtime GenAI build: the og.Model on the chosen provider, and the generator loop that streams
token ids (and reads logits)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ...config import GenerationConfig
from ..base import CachedIds, Token, threaded_stream


def open_model(model_dir: Path, provider: str, runtime_config: dict[str, Any], slack: bool = False) -> Any:
    """The og.Model of a build, on `provider` whatever the build targeted, with `runtime_config` overlaid
    (`slack`: give a sliding-window cache CACHE_SLACK, for builds whose graph has the window built in)."""
    import onnxruntime_genai as og

    config = og.Config(str(model_dir))
    config.clear_providers()  # the build target's provider is in genai_config.json; the device decides
    if provider != "cpu":
        config.append_provider(provider)
    overlay = {**(chat_slack(model_dir, runtime_config) if slack else {}), **runtime_config}
    if overlay:
        config.overlay(json.dumps(overlay))  # merged into genai_config.json
    return og.Model(config)


# Positions a sliding-window KV cache keeps beyond its window, so that a chat can rewind to the common prefix of
# its next prompt (a stopped answer, a re-tokenized answer that ends differently): with the builder's 0 it refuses
# any rewind past the last token once the window is full, and every such turn would read the whole chat again.
# Measured on a 64-token-window model: identical ids with 0 and 256. Costs 256 tokens of KV cache. Not for a build
# whose graph ignores the window (the kit caps those at window + 1): there the small cache is what makes the
# runtime fail rather than answer with full attention past the cap.
CACHE_SLACK = 256


def chat_slack(model_dir: Path, runtime_config: dict[str, Any]) -> dict[str, Any]:
    """The genai_config overlay that gives a sliding-window build CACHE_SLACK (none when runtime_config sets the
    decoder, or the build has no window section). The whole section: an overlay replaces it."""
    genai = json.loads((model_dir / "genai_config.json").read_text(encoding="utf-8"))
    section = genai.get("model", {}).get("decoder", {}).get("sliding_window")
    if not isinstance(section, dict) or "decoder" in runtime_config.get("model", {}):
        return {}
    slack = max(int(section.get("cache_slack") or 0), CACHE_SLACK)
    return {"model": {"decoder": {"sliding_window": {**section, "cache_slack": slack}}}}


CHAT_LENGTH = 4096


def stream(model: Any, max_length: int, prompt_ids: list[int], gen: GenerationConfig,
           stop_ids: list[int], cached: CachedIds | None = None, reuse: bool = False,
           chat_max_length: int = 0) -> Iterator[Token]:
    """The generator loop: the prompt in one pass, then one token at a time until a stop id or max_new_tokens.

    With `cached`, the og.Generator is kept after the answer (`cached.state`) with the ids its KV cache holds;
    `reuse=True` then rewinds it to the common prefix with `prompt_ids` (`rewind_to`) and appends only the rest
    (`append_tokens`), the way onnxruntime-genai's own model-chat example keeps a chat. A kept generator is made
    with `chat_max_length` (the model's context), since its length is fixed when it is made.
    """
    import numpy as np
    import onnxruntime_genai as og

    key = (gen.do_sample, gen.temperature, gen.top_p, gen.top_k, gen.seed, gen.ignore_eos)
    total = len(prompt_ids) + gen.max_new_tokens
    # A chat's generator is kept (a seeded sample gets a fresh one: the seed promises a fresh RNG). Its length is
    # fixed when it is made and sizes its KV cache: the model's context up to CHAT_LENGTH tokens, else twice this
    # request (a long-context model's 128k tokens of cache would not fit a laptop), made again when outgrown.
    keep_generator = cached is not None and reuse and not (gen.do_sample and gen.seed is not None)
    length = max(max_length, min(chat_max_length or max_length, max(2 * total, CHAT_LENGTH))) if keep_generator \
        else max_length

    def params() -> Any:
        p = og.GeneratorParams(model)
        options: dict[str, Any] = {"max_length": length, "do_sample": gen.do_sample}
        if gen.ignore_eos:  # the generator finishes at its eos by itself; min_length keeps it going (masks eos)
            options["min_length"] = length if keep_generator else total
        if gen.do_sample:
            options.update(temperature=gen.temperature, top_p=gen.top_p, top_k=gen.top_k)
            if gen.seed is not None:
                options["random_seed"] = gen.seed
        p.set_search_options(**options)
        return p

    stops = set(stop_ids)

    def start() -> tuple[Any, int]:
        """The generator for this answer and how many prompt ids its KV cache already holds."""
        if cached is None:
            return og.Generator(model, params()), 0
        kept = cached.state
        keep = cached.keep(prompt_ids) if reuse and kept is not None and kept[1] == key and kept[2] >= total else 0
        cached.ids, cached.state, cached.reused = [], None, 0  # nothing is vouched for until this answer ends
        if keep:
            generator, _, _, sequence = kept
            try:
                if keep < sequence:  # also drops the token sampled last, which no forward pass has read
                    generator.rewind_to(keep)
                cached.reused = keep
                return generator, keep
            except Exception:  # noqa: BLE001 - e.g. a sliding-window cache that evicted that point: start afresh
                del generator
        del kept
        return og.Generator(model, params()), 0

    def run(emit: Any) -> None:
        generator, keep = start()
        read = list(prompt_ids)  # the ids whose keys and values the cache holds once the prompt is appended
        new: list[int] = []
        ok = False
        try:
            generator.append_tokens(np.asarray([prompt_ids[keep:]], dtype=np.int32))  # prefill: only what is new
            for _ in range(gen.max_new_tokens):
                if generator.is_done():
                    break
                generator.generate_next_token()  # reads the previous token (if any), then picks the next one
                if new:
                    read.append(new[-1])
                token = int(generator.get_next_tokens()[0])
                new.append(token)
                if not emit(token) or (token in stops and not gen.ignore_eos):
                    break
            ok = True
        finally:
            if cached is not None and keep_generator and ok:
                # Its sequence: `read` plus the token sampled last, which no forward pass has read (none when that
                # was an eos: the generator does not append it). Appending after it would skip it.
                cached.ids, cached.state = read, (generator, key, length, len(generator.get_sequence(0)))

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
