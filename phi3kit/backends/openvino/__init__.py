"""OpenVINO: optimum-intel exports the model, or a ready-made IR is used as it is; OpenVINO GenAI (default) or
optimum-intel runs it.

The package, one job a module: `export` (optimum-cli, ready-made IRs' weights, tokenizer conversion), `runtime`
(the pipeline and streaming), `npu` (the NPU's settings, driver checks and limits), `devices` (what OpenVINO
sees), `npu_library` (the seed's intel-npu-acceleration-library route, its own backend).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from ...cache import Export, ExportCache
from ...config import GenerationConfig, LoadConfig
from ...context import Limits, model_limits
from ...errors import ExportError, MissingDependencyError, ModelSourceError, UnknownChoiceError
from ...procs import run_logged
from ...sources import ModelSource, check_phi3
from ..base import Backend, CachedIds, Candidate, Log, Token
from ..hf import hf_stream
from ..longrope import longrope_window
from .devices import execution_devices, missing_device_message, openvino_devices
from .export import (
    DEFAULT_PRECISION,
    EXPORTER,
    FALLBACKS,
    IR_FILES,
    TOKENIZER_FILES,
    convert_tokenizer,
    export_command,
    int4_settings,
    ir_weights,
    major_minor,
)
from .npu import (
    NPUDriverError,
    is_npu,
    npu_blob_dir,
    npu_compile_failure,
    npu_driver_problem,
    npu_info,
    npu_limits,
    npu_preset,
)
from .runtime import cut_state, genai_pipeline, genai_stream, optimum_logits, optimum_model


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package is absent (or marked unimportable)
        return False


class OpenVINOBackend(Backend):
    name = "openvino"
    runtimes: ClassVar[tuple[str, ...]] = ("genai", "optimum")
    precisions: ClassVar[tuple[str, ...]] = ("int4", "int4-cw", "int8", "fp16", "fp32")
    default_precision: ClassVar[str] = DEFAULT_PRECISION
    requirements = "openvino.txt"
    ready_made_format: ClassVar[str | None] = "openvino"
    ready_made_marker: ClassVar[str | None] = "openvino_model.xml"
    export_only: ClassVar[tuple[str, ...]] = ("group_size", "ratio", "sym", "group_size_fallback")
    exporter: ClassVar[tuple[str, ...]] = EXPORTER
    exporter_modules: ClassVar[dict[str, str]] = {"torch": "torch", "optimum.intel": "optimum-intel", "nncf": "nncf"}
    npu_preset = staticmethod(npu_preset)  # kit.backends.get("openvino").npu_preset(cfg) in notebooks
    npu_blob_dir = staticmethod(npu_blob_dir)  # the NPU notebook's CACHE_DIR: the one the preset sets

    @classmethod
    def preset_for(cls, device: str) -> str | None:
        return "npu_preset" if device == "NPU" else None
    export_command = staticmethod(export_command)  # the optimum-cli command an export runs (shown in notebooks)

    @classmethod
    def devices(cls, runtime: str) -> list[str]:
        try:
            return openvino_devices()
        except ImportError as exc:
            raise MissingDependencyError("openvino", "The OpenVINO backend", cls.requirements) from exc

    @classmethod
    def device_help(cls, device: str, available: list[str]) -> str:
        return missing_device_message(device, available, cls.name) + " `phi3kit doctor` shows what this machine has."

    @classmethod
    def check(cls, cfg: LoadConfig, *, device: bool = True) -> None:
        super().check(cfg, device=device)
        if cfg.runtime == "optimum" and not _importable("optimum.intel"):  # the lean environment has no optimum
            raise MissingDependencyError("optimum-intel", "runtime='optimum' (optimum-intel's OVModelForCausalLM)",
                                         cls.requirements)
        if device and is_npu(cfg.device):  # before the export: an old driver fails only when the model compiles
            info = npu_info()
            problem = npu_driver_problem(info) if info else None
            if problem:
                raise NPUDriverError(problem)

    @classmethod
    def device_rows(cls) -> list[dict[str, str]]:
        """OpenVINO's devices with their names, drivers and types; the NPU's compiler, and its driver's problem."""
        from ...devices import device_family
        from .devices import core, openvino_device_info

        rows = openvino_device_info()
        info = npu_info(core())
        if info is not None:
            row = next(d for d in rows if device_family(d["device"]) == "NPU")
            row.update(driver=str(info.driver_version), compiler=str(info.compiler_version))
            if problem := npu_driver_problem(info):
                row["problem"] = problem
        return rows

    @classmethod
    def cpu_probe(cls) -> Any:
        """OpenVINO's Core: its CPU capabilities say whether the CPU computes bf16 where py-cpuinfo cannot tell."""
        from .devices import core

        return core()

    @classmethod
    def device_name(cls, cfg: LoadConfig) -> str | None:
        from .devices import core, device_available

        ov = core()
        return str(ov.get_property(cfg.device, "FULL_DEVICE_NAME")) \
            if device_available(cfg.device, ov.available_devices) else None

    @classmethod
    def tune_candidates(cls, cfg: LoadConfig) -> list[Any]:
        """OpenVINO's documented performance properties for the device (docs/compatibility.md)."""
        family = cfg.device.split(".")[0].upper()
        if family == "NPU":
            return [Candidate("best-perf", {"GENERATE_HINT": "BEST_PERF"}, "the NPU's faster-decode compile"),
                    Candidate("fast-compile", {"GENERATE_HINT": "FAST_COMPILE"}, "the NPU's quicker compile")]
        if family == "GPU":
            return [Candidate("dq64", {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 64}, "int8 activations in groups of 64"),
                    Candidate("kv-u8", {"KV_CACHE_PRECISION": "u8"}, "an 8-bit KV cache")]
        if family not in ("CPU", "AUTO") or cfg.precision == "fp32":  # fp32 fixes precision hints on purpose
            return []
        from .devices import core

        ov = core()
        out = []
        if "BF16" in list(ov.get_property("CPU", "OPTIMIZATION_CAPABILITIES")):
            # Native bf16 (AVX-512 BF16, AMX): the CPU plugin's default, and its slow path for one-token decode.
            out += [Candidate("f32", {"INFERENCE_PRECISION_HINT": "f32"}, "f32 compute instead of bf16"),
                    Candidate("f32+dq64", {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": 64},
                              "f32 compute, int8 activations in groups of 64")]
        out += [Candidate("dq64", {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 64}, "int8 activations in groups of 64"),
                Candidate("dq128", {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 128}, "int8 activations in groups of 128")]
        import psutil

        physical, logical = psutil.cpu_count(logical=False) or 1, psutil.cpu_count() or 1
        if logical > physical:
            out.append(Candidate("no-hyper-threading", {"ENABLE_HYPER_THREADING": False},
                                 f"{physical} threads on {physical} cores instead of {logical}"))
        return out

    @classmethod
    def export_settings(cls, cfg: LoadConfig) -> dict[str, Any]:
        settings: dict[str, Any] = {"precision": cfg.precision}
        if cfg.precision in ("int4", "int4-cw"):
            if cfg.group_size_fallback not in FALLBACKS:
                raise UnknownChoiceError("group_size_fallback", cfg.group_size_fallback, FALLBACKS)
            settings.update(int4_settings(cfg), fallback=cfg.group_size_fallback)
        return settings

    @classmethod
    def runtime_versions(cls) -> dict[str, str]:
        return {"openvino": major_minor("openvino")}

    @classmethod
    def recipe(cls, cfg: LoadConfig) -> str:
        if cfg.precision == "int4":
            s = int4_settings(cfg)
            seed = " (the seed's recipe)" if (s["group_size"], s["ratio"], s["sym"]) == (128, 0.6, True) else ""
            return (f"the kit's export: int4 {'symmetric' if s['sym'] else 'asymmetric'}, group size "
                    f"{s['group_size']}, ratio {s['ratio']:g}{seed}")
        if cfg.precision == "int4-cw":
            return "the kit's export: int4 symmetric, channel-wise, ratio 1"
        return f"the kit's export: {cfg.precision} weights"

    @classmethod
    def build(cls, source: ModelSource, cfg: LoadConfig, out: Path, log: Log = print) -> None:
        cmd = export_command(source.path, out, cfg, source.config, log)
        log("Exporting with: optimum-cli " + " ".join(cmd[3:]))
        rc, lines = run_logged(cmd, log)
        if rc != 0:
            tail = "\n".join(lines[-15:])
            raise ExportError(f"optimum-cli export failed (exit {rc}):\n{tail}")
        for needed in (*IR_FILES, "openvino_tokenizer.xml", "openvino_detokenizer.xml"):
            if not (out / needed).is_file():
                raise ExportError(f"the export did not write {needed}; see the log above.")

    @classmethod
    def ready_made(cls, folder: Path, cfg: LoadConfig, cache: ExportCache, log: Log = print) -> Export:
        """An IR someone else exported: complete, Phi-3, the precision asked for; tokenizer models converted
        (alone, never the model) when an older folder lacks them."""
        missing = [f for f in (*IR_FILES, "tokenizer.json") if not (folder / f).is_file()]
        if missing:
            raise ModelSourceError(f"{folder} is not a complete OpenVINO IR folder: {', '.join(missing)} missing. "
                                   "An interrupted download? Fetch it again (the hub cache resumes it).")
        check_phi3(folder, str(folder))
        precision, recipe = ir_weights(folder / "openvino_model.xml")
        if cfg.precision is not None and precision != cfg.precision:
            raise ModelSourceError(
                f"The ready-made IR in {folder} holds {precision} weights ({recipe}), not {cfg.precision}. Fix: "
                f"precision={precision!r}, or a folder with {cfg.precision} weights, or prefer='export' to export "
                f"{cfg.precision} from the checkpoint.")
        tokenizer_dir = None
        if not all((folder / f).is_file() for f in TOKENIZER_FILES):
            tokenizer_dir = convert_tokenizer(folder, cache, log)
        return Export(folder, True, 0.0, route="ready-made", recipe=recipe, precision=precision,
                      tokenizer_dir=tokenizer_dir)

    @classmethod
    def open(cls, export: Export, cfg: LoadConfig) -> Backend:
        return cls(export.path, cfg, tokenizer_dir=export.tokenizer_dir)

    def __init__(self, model_dir: Path, cfg: LoadConfig, tokenizer_dir: Path | None = None) -> None:
        """Public attributes: `pipeline` (the openvino_genai.LLMPipeline, runtime genai) or `model`
        (optimum-intel's OVModelForCausalLM, runtime optimum), and `properties` (what the device was
        compiled with). `tokenizer_dir` holds tokenizer models converted for an IR that lacks them."""
        self.runtime = cfg.runtime or self.default_runtime()
        props = dict(cfg.runtime_config)
        if cfg.precision == "fp32" and cfg.device in ("CPU", "AUTO"):
            # CPU defaults to bf16 compute and a u8 KV cache; fp32 means full precision end to end.
            props.setdefault("INFERENCE_PRECISION_HINT", "f32")
            props.setdefault("KV_CACHE_PRECISION", "f32")
        self.properties = props
        self.model_dir, self.device = model_dir, cfg.device
        self.npu = is_npu(cfg.device)
        self._scorer: Any = None
        self.kv_element_bytes = 4.0 if props.get("KV_CACHE_PRECISION") == "f32" else 2.0
        config = model_dir / "config.json"
        self.longrope = longrope_window(json.loads(config.read_text(encoding="utf-8"))) if config.is_file() else None
        if self.runtime == "genai":
            try:
                self.pipeline = genai_pipeline(model_dir, cfg.device, props, tokenizer_dir, cfg.reuse_cache)
            except RuntimeError as exc:
                if not self.npu:
                    raise
                raise NPUDriverError(npu_compile_failure(exc, npu_info())) from exc
        else:
            self.model = self._optimum_model()
        # A chat keeps optimum-intel's stateful model's state (the kit's reuse); LLMPipeline keeps its own cache.
        self.reuses_cache = self.runtime == "optimum" and bool(getattr(self.model, "stateful", False))
        self.cached = CachedIds()

    def _optimum_model(self) -> Any:
        return optimum_model(self.model_dir, self.device, self.properties)

    def limits(self, context_length: int) -> Limits:
        if self.npu:
            return npu_limits(self.properties, context_length)
        if self.runtime == "genai" and self.longrope is not None and context_length > self.longrope:
            # Measured (docs/compatibility.md): past original_max_position_embeddings, LLMPipeline's ids part from the
            # model's, as soon as an answer crosses it or a prompt reuses a shorter one's cached prefix.
            return Limits(self.longrope, self.longrope - 1,
                          f"OpenVINO GenAI on a LongRoPE model: it serves the first {self.longrope} tokens correctly "
                          "(original_max_position_embeddings), not the long factors beyond",
                          "For longer prompts and chats use runtime='optimum', backend='ortgenai' or 'transformers', "
                          "which switch to the long factors as the model does.")
        return model_limits(context_length)

    @property
    def logits_source(self) -> str:  # type: ignore[override]
        if self.runtime == "optimum":
            return "optimum-intel OVModelForCausalLM"
        return ("optimum-intel OVModelForCausalLM on the same export and runtime properties "
                "(LLMPipeline exposes no logits)")

    def logits(self, ids: list[int]) -> Any:
        if self.runtime == "optimum":
            model = self.model
            self.cached.forget()  # a call without past_key_values resets the model's state
        else:  # LLMPipeline exposes no logits: a second compiled copy of the same export, made on first use
            if self._scorer is None:
                self._scorer = self._optimum_model()
            model = self._scorer
        return optimum_logits(model, ids)

    ran_on_source: ClassVar[str] = "EXECUTION_DEVICES of a probe model compiled on the same device"

    def ran_on(self) -> list[str] | None:
        if getattr(self, "_ran_on", None) is None:
            self._ran_on = execution_devices(self.device)
        return self._ran_on

    def stream(self, prompt_ids: list[int], gen: GenerationConfig, stop_ids: list[int], *,
               reuse: bool = False) -> Iterator[Token]:
        if self.runtime == "optimum":  # the stateful model goes on from its state, cut where the prompt diverges
            return hf_stream(self.model, "cpu", prompt_ids, gen, stop_ids,
                             self.cached if self.reuses_cache else None, reuse, cut_state)
        # LLMPipeline reuses cached prefixes by itself (its prefix cache, off when loaded with reuse_cache=False);
        # it does not say how much, so the kit reports none (benchmarks/chat.py measures it).
        return genai_stream(self.pipeline, prompt_ids, gen, stop_ids)

    def free_for_logits(self) -> None:
        if self.runtime != "optimum":  # logits come from a second, optimum-intel copy: free the pipeline's
            self.close()

    def close(self) -> None:
        self.cached.forget()
        self.__dict__.pop("pipeline", None)
        self.__dict__.pop("model", None)
        self._scorer = None


__all__ = ["NPUDriverError", "OpenVINOBackend", "convert_tokenizer", "export_command", "int4_settings", "ir_weights",
           "npu_preset"]
