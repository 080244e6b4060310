"""ONNX Runtime GenAI: the model builder exports the model; the GenAI loop runs it on CPU, DirectML or CUDA.

The build target (`-e cpu|dml|cuda` of the builder) and the device that runs the model are two
choices: a model built for DirectML stores `dml` in its genai_config.json, but clearing the
providers runs it on the CPU, which is how Linux CI exercises the DirectML build end to end.

The package, one job a module: `builder` (dialects, command, traps), `window` (sliding-window staging and
checks), `providers` (which providers run here), `weights` (what a ready-made folder holds), `runtime` (the model
and its generator loop).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

from ...cache import Export, ExportCache
from ...config import GenerationConfig, LoadConfig
from ...context import Limits, model_limits, sliding_window_of
from ...errors import DeviceNotFoundError, ExportError, MissingDependencyError, ModelSourceError, UnknownChoiceError
from ...sources import ModelSource, check_phi3
from ..base import Backend, CachedIds, Candidate, Log, Token
from . import runtime
from .builder import (
    accuracy_level,
    block_size,
    build_target,
    builder_command,
    builder_dialect,
    builder_traps,
    parse_builder,
    run_builder,
)
from .providers import PROVIDERS, genai_distribution, normalize_device, probe, unavailable_message
from .runtime import open_model
from .weights import name_tokenizer_for_runtime, onnx_weights
from .window import (
    ATTENTION_FIX,
    built_window,
    known_window,
    missing_window_note,
    needs_layer_types,
    stage_with_layer_types,
    window_limits,
)


class OrtGenAIBackend(Backend):
    name = "ortgenai"
    runtimes: ClassVar[tuple[str, ...]] = ("genai",)
    precisions: ClassVar[tuple[str, ...]] = ("int4", "int8", "fp16", "fp32")
    requirements = "directml.txt"
    ready_made_format: ClassVar[str | None] = "ortgenai"
    ready_made_marker: ClassVar[str | None] = "genai_config.json"
    export_only: ClassVar[tuple[str, ...]] = ("group_size", "accuracy_level", "build_target")
    exporter: ClassVar[tuple[str, ...]] = ("onnxruntime-genai", "onnx-ir", "transformers")
    exporter_modules: ClassVar[dict[str, str]] = {"torch": "torch", "transformers": "transformers",
                                                  "onnx_ir": "onnx-ir"}
    # Measured: the full-size Phi-3-mini int4 build peaked at 24.0 GB RSS (mapped files included), 6.3 B/param.
    export_ram_bytes_per_param: ClassVar[float | None] = 6.3

    @classmethod
    def devices(cls, runtime: str) -> list[str]:
        """CPU, plus DML / CUDA when a session really opens on them (probed once per process)."""
        if importlib.util.find_spec("onnxruntime_genai") is None:
            raise MissingDependencyError("onnxruntime-genai", "The ONNX Runtime GenAI backend", cls.requirements)
        return [d for d, p in PROVIDERS.items() if p == "cpu" or probe(p) is None]

    @classmethod
    def provider_for(cls, cfg: LoadConfig) -> str:
        """The provider the model will run on: the device's, or cpu under an explicit fallback_to_cpu."""
        device = normalize_device(cfg.device)
        provider = PROVIDERS[device]
        if provider == "cpu" or device in cls.devices(cls.default_runtime()):
            return provider
        if cfg.fallback_to_cpu:
            return "cpu"
        raise DeviceNotFoundError(unavailable_message(device, probe(provider) or ""))

    @classmethod
    def check(cls, cfg: LoadConfig, *, device: bool = True) -> None:
        runtime = cfg.runtime or cls.default_runtime()
        if runtime not in cls.runtimes:
            raise UnknownChoiceError(f"runtime for backend '{cls.name}'", runtime, cls.runtimes)
        if cfg.precision not in cls.precisions:
            hint = ("(bf16: onnxruntime-genai 0.18 builds it for the CPU but cannot run it; use fp16 or fp32.)"
                    if cfg.precision == "bf16" else "")
            raise UnknownChoiceError(f"precision for backend '{cls.name}'", cfg.precision, cls.precisions, hint)
        normalize_device(cfg.device)
        if device:
            cls.provider_for(cfg)

    @classmethod
    def tune_candidates(cls, cfg: LoadConfig) -> list[Any]:
        """Session threads (a genai_config overlay). The accuracy level is a build option: changing it means a
        new build (prefer='export', accuracy_level=1..4), so the tuner does not try it; docs/benchmarks.md has it."""
        import psutil

        physical, logical = psutil.cpu_count(logical=False) or 1, psutil.cpu_count() or 1
        options = {n for n in (physical, logical, max(physical - 1, 1)) if n}
        return [Candidate(f"threads={n}", {"model": {"decoder": {"session_options": {"intra_op_num_threads": n}}}},
                          f"{n} intra-op threads") for n in sorted(options)]

    @classmethod
    def notes(cls, cfg: LoadConfig) -> list[str]:
        device = normalize_device(cfg.device)
        if cls.provider_for(cfg) != PROVIDERS[device]:
            return [f"fallback_to_cpu=True: {device} is not available here ({probe(PROVIDERS[device])}); the "
                    f"{PROVIDERS[device]} model will run on the CPU."]
        return []

    @classmethod
    def export_settings(cls, cfg: LoadConfig) -> dict[str, Any]:
        """The builder's options for this export, checked against the builder's known traps."""
        target = build_target(cfg)
        if cfg.precision not in (builder := builder_dialect()).precisions:
            dist = genai_distribution() or ("onnxruntime-genai", "?")
            raise UnknownChoiceError(
                f"precision for the installed model builder ({dist[0]} {dist[1]})", cfg.precision,
                [p for p in cls.precisions if p in builder.precisions],
                hint="(int8 builds need onnxruntime-genai 0.18; PyPI's newest DirectML build, 0.13.1, has no int8.)")
        if cfg.precision == "fp32" and target != "cpu":
            raise UnknownChoiceError(
                f"precision for build target {target!r}", "fp32", ("int4", "int8", "fp16"),
                hint=f"(onnxruntime-genai 0.18 writes an invalid fp32 graph for -e {target}: 'Graph output "
                     "(present.0.key) does not exist'. Use fp16, or build_target='cpu' for fp32 on the CPU.)")
        return {"precision": cfg.precision, "target": target, "block_size": block_size(cfg),
                "accuracy_level": accuracy_level(cfg), "attention_window": ATTENTION_FIX,
                "tokenizer_class": 1}  # name_tokenizer_for_runtime: builds from before it are rebuilt

    @classmethod
    def runtime_versions(cls) -> dict[str, str]:
        # The flavour is part of it: DirectML's Windows wheel (0.13) is another runtime than the CPU one (0.18).
        dist = genai_distribution()
        return {dist[0]: ".".join(dist[1].split(".")[:2])} if dist else {}

    @classmethod
    def label(cls, name: str, cfg: LoadConfig) -> str:
        return f"{name}-{cfg.precision}-{build_target(cfg)}"

    @classmethod
    def recipe(cls, cfg: LoadConfig) -> str:
        size, level = block_size(cfg), accuracy_level(cfg)
        blocks = f", block {size}" if size else ""
        acc = f", accuracy level {level}" if level else (", the builder's accuracy level" if size else "")
        return f"the kit's build: {cfg.precision}{blocks}{acc}, for {build_target(cfg)}"

    @classmethod
    def build(cls, source: ModelSource, cfg: LoadConfig, out: Path, log: Log = print) -> None:
        target = build_target(cfg)
        if problems := builder_traps(source.config, str(cfg.precision), target):
            raise ExportError(
                f"ONNX Runtime GenAI cannot build {source.name!r} correctly: " + "; ".join(problems)
                + ". The openvino and transformers backends run this model.")
        if cfg.precision == "int8" and target == "dml":
            log("Note: the builder lists INT4 and FP16 for DirectML, not INT8; this int8 build runs on the CPU, "
                "but a DirectML GPU may reject it. Prefer precision='int4' or 'fp16' for DML.")
        if importlib.util.find_spec("onnx_ir") is None:  # the builder imports it without declaring it
            raise MissingDependencyError("onnx-ir", "The ONNX Runtime GenAI model builder", cls.requirements)
        with tempfile.TemporaryDirectory(prefix="phi3kit-ortgenai-") as tmp:
            src = source.path
            if needs_layer_types(source.config):
                src = stage_with_layer_types(source.path, Path(tmp) / "checkpoint")
                log(f"sliding_window={sliding_window_of(source.config)}: building from a copy of the checkpoint whose "
                    "config.json lists every layer as sliding_attention (the builder ignores the window otherwise).")
            cmd = builder_command(src, out, Path(tmp) / "cache", cfg)
            log("Building with: python " + " ".join(cmd[1:]))
            run_builder(cmd, log)
        for needed in ("genai_config.json", "tokenizer.json"):
            if not (out / needed).is_file():
                raise ExportError(f"the model builder did not write {needed}; see the log above.")
        name_tokenizer_for_runtime(out)
        if (window := sliding_window_of(source.config)) is not None:
            got = built_window(out)
            # GPU builds (fp16 for cuda/dml) may fuse attention into other operators: checked where it is GQA.
            if got["local_window_size"] and got["local_window_size"] != [window]:
                raise ExportError(
                    f"the model builder built attention window {got['local_window_size']} for a checkpoint with "
                    f"sliding_window={window} (genai_config sliding_window: {got['section']}); its outputs would "
                    "differ from the model's past that window.")
        gen_config = source.path / "generation_config.json"
        if gen_config.is_file() and not (out / gen_config.name).exists():
            shutil.copy2(gen_config, out / gen_config.name)  # stop ids; the builder does not copy it

    @classmethod
    def ready_made(cls, folder: Path, cfg: LoadConfig, cache: ExportCache, log: Log = print) -> Export:
        """A folder the ONNX Runtime GenAI builder wrote (here or by its publisher): complete, Phi-3, the precision
        asked for."""
        check_phi3(folder, str(folder))  # reads genai_config.json's model.type: the builder writes no config.json
        genai = json.loads((folder / "genai_config.json").read_text(encoding="utf-8"))
        decoder = genai.get("model", {}).get("decoder", {}).get("filename")
        needed = [decoder] if decoder else []
        missing = [f for f in [*needed, "tokenizer.json"] if not (folder / f).is_file()]
        if not decoder or missing:
            raise ModelSourceError(
                f"{folder} is not a complete ONNX Runtime GenAI folder: "
                + (f"{', '.join(missing)} missing" if missing else "genai_config.json names no decoder file")
                + ". An interrupted download? Fetch it again (the hub cache resumes it).")
        precision, recipe, data_files = onnx_weights(folder / decoder)
        if gone := [f for f in data_files if not (folder / f).is_file()]:
            raise ModelSourceError(f"{folder}: {decoder} keeps its weights in {', '.join(gone)}, which is missing. "
                                   "An interrupted download? Fetch it again.")
        if cfg.precision is not None and precision != cfg.precision:
            raise ModelSourceError(
                f"The ready-made ONNX model in {folder} holds {precision} weights ({recipe}), not {cfg.precision}. "
                f"Fix: precision={precision!r}, or a folder with {cfg.precision} weights, or prefer='export' to "
                f"build {cfg.precision} from the checkpoint.")
        if note := missing_window_note(folder, cfg.model):
            log(f"Note: {note}")
        return Export(folder, True, 0.0, route="ready-made", recipe=recipe, precision=precision)

    ran_on_source: ClassVar[str] = "og.Model.device_type"

    def ran_on(self) -> list[str] | None:
        return [str(self.model.device_type)]

    def __init__(self, model_dir: Path, cfg: LoadConfig) -> None:
        """Public attributes: `model` (the og.Model), `provider` (what it runs on), `fell_back`."""
        self.provider = self.provider_for(cfg)
        self.device = normalize_device(cfg.device)
        self.fell_back = self.provider != PROVIDERS[self.device]
        self.window_floor, self.window_cap = window_limits(model_dir)
        self.model = open_model(model_dir, self.provider, cfg.runtime_config, slack=self.window_cap is None)
        self.window_note = missing_window_note(model_dir, cfg.model)
        genai = json.loads((model_dir / "genai_config.json").read_text(encoding="utf-8"))
        self.context = int(genai["model"].get("context_length") or 0)
        # The CPU keeps the KV cache in fp32 for int4, int8 and fp32 builds (fp16 builds: fp16).
        self.kv_element_bytes = 2.0 if cfg.precision == "fp16" else 4.0
        self.cached = CachedIds()

    def search_max_length(self, total: int) -> int:
        """The search option `max_length` for `total` tokens: a windowed KV cache needs at least the window even
        for a short request (GQA: "KV cache capacity (40) must be at least local_window_size (64)"); the kit's
        loop stops at max_new_tokens by itself. Code that drives `self.model` with og directly needs it too."""
        return max(total, min(self.window_floor, self.context or self.window_floor))

    def limits(self, context_length: int) -> Limits:
        if self.window_cap is None:
            return replace(model_limits(context_length), note=self.window_note)
        window = min(context_length, self.window_cap)
        return Limits(window, window - 1,
                      f"this ONNX Runtime GenAI build, which ignores the model's sliding window: it answers correctly "
                      f"up to sliding_window + 1 = {self.window_cap} tokens, and fails past {self.window_cap + 16}",
                      "Or export it again with this phi3kit (prefer='export'), which builds the window in and serves "
                      "the whole context.")

    reuses_cache: bool = True  # keeps the og.Generator between answers of a chat

    def stream(self, prompt_ids: list[int], gen: GenerationConfig, stop_ids: list[int], *,
               reuse: bool = False) -> Iterator[Token]:
        max_length = self.search_max_length(len(prompt_ids) + gen.max_new_tokens)
        return runtime.stream(self.model, max_length, prompt_ids, gen, stop_ids, self.cached, reuse,
                              chat_max_length=self.context)

    logits_source = "onnxruntime-genai generator.get_output('logits')"

    def logits(self, ids: list[int]) -> Any:
        return runtime.logits(self.model, self.search_max_length(len(ids) + 1), ids)

    def close(self) -> None:
        self.cached.forget()  # the kept og.Generator first: it holds the model
        self.__dict__.pop("model", None)


__all__ = ["OrtGenAIBackend", "builder_command", "builder_dialect", "built_window", "known_window",
           "missing_window_note", "name_tokenizer_for_runtime", "onnx_weights", "parse_builder", "probe"]
