"""A loaded GGUF: llama-cpp-python's Llama holds the model and its context, and generation drives llama.cpp's C API
itself (llama_decode, llama_sampler_*) with the kit's prompt ids; plus the context the kit allocates (the part of
the window llama.cpp runs as the model does, capped by memory) and the Llama() arguments."""

from __future__ import annotations

import inspect
import json
import threading
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ...config import GenerationConfig, LoadConfig
from ...context import Limits, kv_bytes_per_token, memory_window, model_limits, sliding_window_of
from ...errors import UnknownChoiceError
from ..base import CachedIds, Token, threaded_stream
from ..longrope import longrope_window
from .install import import_llama, physical_cores

MODEL_FILE = "model.gguf"
# Llama() arguments the kit sets itself; runtime_config may set any other one (n_threads, n_batch, n_ctx...).
RESERVED = ("model_path", "logits_all", "verbose", "vocab_only", "embedding", "draft_model", "chat_handler",
            "tokenizer", "lora_path", "lora_base")
KIT_OPTIONS = ("allow_amx",)  # runtime_config keys the kit reads and does not pass on
DEFAULT_BATCH = 512


def exact_window(model_config: dict[str, Any]) -> tuple[int, str, str] | None:
    """(tokens, why, what a larger context does) where llama.cpp runs this model as the model itself does, if fewer
    than its window; None where llama.cpp serves the whole window (measured: tests/test_llamacpp.py)."""
    found = []
    if (orig := longrope_window(model_config)) is not None:
        found.append((orig, "llama.cpp on a LongRoPE model: it picks the short or long factors by the context it "
                            f"allocates, not by the sequence, so the kit allocates the original window, {orig} "
                            "tokens, where prompts get the short factors as in the model",
                      f"the long factors on every prompt, short ones included (the model uses them only past {orig} "
                      "tokens)"))
    if (window := sliding_window_of(model_config)) is not None:
        found.append((window + 1, "llama.cpp on a model with a sliding window: it runs Phi-3 without it (upstream "
                                  "disables it: attention over the whole context), which matches the model up to "
                                  f"sliding_window + 1 = {window + 1} tokens",
                      f"full attention past {window + 1} tokens, where the model attends to the last {window} only"))
    return min(found) if found else None


def context_size(model_config: dict[str, Any], available_bytes: float) -> int:
    """The context the kit allocates: the part of the model's window llama.cpp runs as the model does, capped
    where its f16 KV cache (allocated up front) would outgrow the chat memory share; 0 (the GGUF's own) without
    a config."""
    window = int(model_config.get("max_position_embeddings") or 0)
    if not window:
        return 0
    exact = exact_window(model_config)
    limits = model_limits(min(window, exact[0]) if exact else window)
    return memory_window(limits, kv_bytes_per_token(model_config, 2.0), available_bytes)


def runtime_options(cfg: LoadConfig, model_config: dict[str, Any], available_bytes: float) -> dict[str, Any]:
    """Llama() arguments: physical cores, one-pass prefill up to 512 tokens, `context_size`, then runtime_config's
    (any Llama() argument but those the kit sets itself)."""
    from llama_cpp import Llama

    accepted = set(inspect.signature(Llama.__init__).parameters) - {"self", "kwargs", *RESERVED}
    given = {k: v for k, v in cfg.runtime_config.items() if k not in KIT_OPTIONS}
    if unknown := sorted(set(given) - accepted):
        raise UnknownChoiceError("runtime_config key for backend 'llamacpp'", ", ".join(unknown),
                                 [*sorted(accepted), *KIT_OPTIONS],
                                 hint=f"(llama_cpp.Llama's arguments; the kit sets {', '.join(RESERVED[:3])} itself.)")
    threads = int(given.get("n_threads", physical_cores()))
    batch = int(given.get("n_batch", DEFAULT_BATCH))
    return {"n_threads": threads, "n_threads_batch": threads, "n_batch": batch, "n_ubatch": batch,
            "n_ctx": context_size(model_config, available_bytes), **given, "logits_all": False, "verbose": False}


def _config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


class LlamaCppRuntime:
    """The loaded-model half of LlamaCppBackend (the class-level half, choices and export, is in __init__)."""

    logits_source = "llama.cpp llama_decode with every position's logits"
    kv_element_bytes: float = 2.0  # llama.cpp keeps the KV cache in f16 by default

    ran_on_source = "the layers llama.cpp offloads (n_gpu_layers) and whether its build can offload"

    def ran_on(self) -> list[str] | None:
        """The CPU, plus the GPU where layers were offloaded to one (runtime_config n_gpu_layers) and this build can."""
        offloaded = int(self.options.get("n_gpu_layers", 0) or 0)
        return ["CPU", "GPU"] if offloaded and bool(self._lib.llama_supports_gpu_offload()) else ["CPU"]

    def __init__(self, model_dir: Path, cfg: LoadConfig) -> None:
        """Public attributes: `llm` (the llama_cpp.Llama holding the model and its context), `options` (its
        arguments), `n_ctx` (the context it allocated)."""
        import psutil

        llama_cpp = import_llama()
        from llama_cpp import Llama

        self._lib = llama_cpp
        config = _config(model_dir)
        self.exact = exact_window(config)
        self.options = runtime_options(cfg, config, psutil.virtual_memory().available)
        self.llm = Llama(str(model_dir / MODEL_FILE), **self.options)
        self.n_ctx = int(llama_cpp.llama_n_ctx(self.llm.ctx))
        self.n_batch = int(self.llm.n_batch)  # Llama caps it at the context
        self.n_vocab = int(self.llm.n_vocab())
        self._kv_bytes = kv_bytes_per_token(config, self.kv_element_bytes) if config else 0.0
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._free_batch = weakref.finalize(self, llama_cpp.llama_batch_free, self._batch)
        self._lock = threading.Lock()  # one generation (or logits call) at a time drives the context
        self.cached = CachedIds()  # the ids the context's KV cache holds, for a chat's next answer

    def limits(self, context_length: int) -> Limits:
        window = min(self.n_ctx, context_length)
        fix = "runtime_config={'n_ctx': N} allocates a context of N tokens"
        if self.exact is not None:
            exact, why, beyond = self.exact
            if window <= exact:
                return Limits(window, window - 1, why,
                              f"Or {fix}, with {beyond}; the transformers backend serves the whole window.")
            return Limits(window, window - 1, f"the llama.cpp context of {window} tokens asked for in runtime_config, "
                          f"with {beyond}")
        if window >= context_length:
            return model_limits(context_length)
        need = self._kv_bytes * context_length / 2**30
        return Limits(window, window - 1,
                      f"the llama.cpp context of {window} tokens the kit allocated (llama.cpp allocates the KV cache "
                      f"up front: the model's {context_length} tokens would take {need:.1f} GB)", f"Or {fix}.")

    def _clear(self) -> None:
        """Empty the KV cache: nothing from an earlier call is reused (no cached prefix fakes the first token)."""
        lib = self._lib
        lib.llama_memory_clear(lib.llama_get_memory(self.llm.ctx), True)

    def _decode(self, ids: Sequence[int], n_past: int, all_logits: bool = False) -> None:
        """Feed `ids` at positions n_past..., in chunks of n_batch; logits for the last id (or for every id)."""
        lib, batch = self._lib, self._batch
        for start in range(0, len(ids), self.n_batch):
            chunk = ids[start : start + self.n_batch]
            batch.n_tokens = len(chunk)
            for i, token in enumerate(chunk):
                batch.token[i] = int(token)
                batch.pos[i] = n_past + start + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = all_logits or start + i == len(ids) - 1
            rc = lib.llama_decode(self.llm.ctx, batch)
            if rc != 0:
                raise RuntimeError(f"llama_decode failed (returned {rc}) at position {n_past + start} of a "
                                   f"{self.n_ctx}-token context")

    def _sampler(self, gen: GenerationConfig) -> Any:
        """llama.cpp's sampler chain: greedy, or temperature, top-k, top-p and a seeded draw (transformers' order)."""
        lib = self._lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        if not gen.do_sample:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
            return chain
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(float(gen.temperature)))
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_k(int(gen.top_k)))  # 0: off
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(float(gen.top_p), 1))
        seed = lib.LLAMA_DEFAULT_SEED if gen.seed is None else int(gen.seed) & 0xFFFFFFFF
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(seed))
        return chain

    def _keep(self, ids: list[int], reuse: bool) -> int:
        """Make the KV cache hold the first `keep` prompt ids and nothing after them; return `keep`.

        reuse=False (single prompts, benchmarks, tune, check) empties it, as before chats reused it: no cached
        prefix fakes a time to first token. reuse=True removes the suffix that differs (llama_memory_seq_rm, as
        llama-server's prompt cache does); where llama.cpp cannot remove part of a sequence it starts afresh.
        """
        lib, cached = self._lib, self.cached
        keep = cached.keep(ids) if reuse else 0
        cached.ids, cached.reused = [], 0  # nothing is vouched for until this answer ends
        if keep and not lib.llama_memory_seq_rm(lib.llama_get_memory(self.llm.ctx), 0, keep, -1):
            keep = 0
        if not keep:
            self._clear()
        cached.reused = keep
        return keep

    def stream(self, prompt_ids: list[int], gen: GenerationConfig, stop_ids: list[int], *,
               reuse: bool = False) -> Iterator[Token]:
        lib, stops = self._lib, set(stop_ids)
        ids = list(prompt_ids)

        def run(emit: Any) -> None:
            with self._lock:
                keep = self._keep(ids, reuse)
                sampler = self._sampler(gen)
                read = list(ids)  # what the KV cache holds once the prefill is done, then each token decoded
                ok = False
                try:
                    self._decode(ids[keep:], keep)  # prefill: what the cache lacks, in batches of n_batch
                    for step in range(gen.max_new_tokens):
                        token = int(lib.llama_sampler_sample(sampler, self.llm.ctx, -1))
                        if not emit(token) or (token in stops and not gen.ignore_eos) \
                                or step == gen.max_new_tokens - 1:
                            break
                        self._decode([token], len(ids) + step)
                        read.append(token)
                    ok = True
                finally:
                    lib.llama_sampler_free(sampler)
                    self.cached.ids = read if ok else []  # a failed decode: the next answer clears the cache

        return threaded_stream(run)

    def logits(self, ids: list[int]) -> Any:
        import numpy as np

        out = np.empty((len(ids), self.n_vocab), dtype=np.float32)
        with self._lock:
            self._clear()
            self.cached.forget()
            for start in range(0, len(ids), self.n_batch):
                chunk = ids[start : start + self.n_batch]
                self._decode(chunk, start, all_logits=True)
                rows = np.ctypeslib.as_array(self._lib.llama_get_logits(self.llm.ctx), shape=(len(chunk), self.n_vocab))
                out[start : start + len(chunk)] = rows
        return out

    def close(self) -> None:
        with self._lock:  # after a generation still running in its thread (its consumer has not closed it)
            llm = self.__dict__.pop("llm", None)
            if llm is not None:
                self._free_batch()
                llm.close()
