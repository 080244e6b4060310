"""OpenVINO: optimum-intel exports the model, or a ready-made IR is used as it is; OpenVINO GenAI (default) or
optimum-intel runs it."""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path
from typing import Any, ClassVar

from ..cache import Export, ExportCache
from ..config import GenerationConfig, LoadConfig
from ..context import Limits, model_limits
from ..devices import missing_device_message, openvino_devices
from ..errors import ExportError, MissingDependencyError, ModelSourceError, UnknownChoiceError
from ..procs import run_logged
from ..sources import ModelSource, check_phi3
from .base import Backend, Candidate, Log, Token, hf_stream, threaded_stream
from .longrope import longrope_window, patch_optimum_cache_position
from .openvino_npu import (
    NPUDriverError,
    is_npu,
    npu_compile_failure,
    npu_driver_problem,
    npu_info,
    npu_limits,
    npu_preset,
)

# The seed tutorial's int4 recipe; the group size must divide every weight's input dim (docs/compatibility.md).
INT4_DEFAULTS = {"group_size": 128, "ratio": 0.6}
# "int4-cw": every layer int4, symmetric, one scale per output channel (the NPU's format, and a fast one on CPUs).
INT4_CW = {"group_size": -1, "ratio": 1.0, "sym": True}
FALLBACKS = ("adjust", "ignore", "error")
IR_FILES = ("openvino_model.xml", "openvino_model.bin")
TOKENIZER_FILES = ("openvino_tokenizer.xml", "openvino_tokenizer.bin", "openvino_detokenizer.xml",
                   "openvino_detokenizer.bin")
EXPORTER = ("optimum-intel", "nncf", "transformers")  # recorded in each export's manifest, not in its key


def major_minor(lib: str) -> str:
    return ".".join(version(lib).split(".")[:2])


def int4_settings(cfg: LoadConfig) -> dict[str, Any]:
    """group_size, ratio, sym of an int4 export: the seed's by default, fixed for int4-cw."""
    if cfg.precision == "int4-cw":
        if (cfg.group_size not in (None, -1)) or (cfg.ratio not in (None, 1.0)) or not cfg.sym:
            raise UnknownChoiceError(
                "setting for precision 'int4-cw'", f"group_size={cfg.group_size}, ratio={cfg.ratio}, sym={cfg.sym}",
                ["group_size=-1, ratio=1.0, sym=True"],
                hint="int4-cw is channel-wise, every layer int4, symmetric. For other groups or ratios use "
                     "precision='int4' with group_size= and ratio=.")
        return dict(INT4_CW)
    return {"group_size": cfg.group_size or INT4_DEFAULTS["group_size"],
            "ratio": INT4_DEFAULTS["ratio"] if cfg.ratio is None else cfg.ratio, "sym": cfg.sym}


def int4_dims(config: dict[str, Any]) -> dict[str, int]:
    """Input dimensions of the matmuls int4 groups must divide."""
    return {k: int(config[k]) for k in ("hidden_size", "intermediate_size") if k in config}


def export_command(src: Path, out: Path, cfg: LoadConfig, model_config: dict[str, Any], log: Log) -> list[str]:
    """The optimum-cli command for this export: the same one the seed runs, so users can read it."""
    precision = cfg.precision or OpenVINOBackend.default_precision
    weight_format = "int4" if precision == "int4-cw" else precision
    cmd = [sys.executable, "-m", "optimum.commands.optimum_cli", "export", "openvino",
           "--model", str(src), "--task", "text-generation-with-past", "--weight-format", weight_format]
    if weight_format == "int4":
        settings = int4_settings(replace(cfg, precision=precision))
        group, ratio = settings["group_size"], settings["ratio"]
        if cfg.group_size_fallback not in FALLBACKS:
            raise UnknownChoiceError("group_size_fallback", cfg.group_size_fallback, FALLBACKS)
        bad = {k: v for k, v in int4_dims(model_config).items() if group > 0 and v % group}
        if bad:
            what = ", ".join(f"{k}={v}" for k, v in bad.items())
            msg = f"int4 group size {group} does not divide {what}."
            if cfg.group_size_fallback == "error":
                raise ExportError(f"{msg} Fix: pass a group_size that divides it (e.g. 64 or 32), or -1 "
                                  "for channel-wise, or group_size_fallback='adjust'.")
            log(f"{msg} group_size_fallback={cfg.group_size_fallback!r}: "
                + ("those weights get the largest power-of-two group that divides them."
                   if cfg.group_size_fallback == "adjust" else "those weights stay in higher precision."))
        cmd += ["--group-size", str(group), "--ratio", str(ratio)]
        if settings["sym"]:
            cmd.append("--sym")  # the seed's command up to here; the fallback is the kit's addition
        cmd += ["--group-size-fallback", cfg.group_size_fallback]
    if cfg.trust_remote_code:
        cmd.append("--trust-remote-code")
    return [*cmd, str(out)]


def ir_weights(xml: Path) -> tuple[str, str]:
    """(precision, recipe) of an IR from NNCF's record in its rt_info, else from its weight constants' types.

    optimum-intel writes NNCF's settings under rt_info/nncf/weight_compression (mode int4_sym, group_size,
    ratio, awq, scale_estimation...); an IR without them holds float weights (f16 or f32 constants).
    """
    try:
        root = ET.parse(xml).getroot()
    except ET.ParseError as exc:
        raise ModelSourceError(f"{xml} is not a readable OpenVINO IR ({exc}): an interrupted download? "
                               "Delete the folder (or its hub cache entry) and fetch it again.") from exc
    wc = root.find("rt_info/nncf/weight_compression")
    if wc is not None:
        v = {c.tag: c.get("value", "") for c in wc}
        mode, group, ratio = v.get("mode", ""), int(float(v.get("group_size", "-1"))), float(v.get("ratio", "1"))
        extras = [name for key, name in (("awq", "AWQ"), ("scale_estimation", "scale estimation"), ("gptq", "GPTQ"))
                  if v.get(key) == "True"]
        if mode.startswith("int8"):
            return "int8", f"NNCF {mode}"
        precision = "int4-cw" if (mode == "int4_sym" and group == -1 and ratio == 1.0) else "int4"
        recipe = f"NNCF {mode}, group size {group}, ratio {ratio:g}" + "".join(f", {e}" for e in extras)
        if ratio < 1:
            recipe += f" (the other layers {v.get('backup_mode', 'int8_asym')})"
        return precision, recipe
    types = {d.get("element_type") for layer in root.iter("layer") if layer.get("type") == "Const"
             for d in layer.iter("data")}
    if types & {"u4", "i4", "u8", "i8"}:
        return ("int4" if types & {"u4", "i4"} else "int8"), "compressed weights without NNCF's record"
    return ("fp16", "fp16 weights") if "f16" in types else ("fp32", "fp32 weights")


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
    requirements = "openvino.txt"
    ready_made_format: ClassVar[str | None] = "openvino"
    ready_made_marker: ClassVar[str | None] = "openvino_model.xml"
    export_only: ClassVar[tuple[str, ...]] = ("group_size", "ratio", "sym", "group_size_fallback")
    exporter: ClassVar[tuple[str, ...]] = EXPORTER
    exporter_modules: ClassVar[dict[str, str]] = {"torch": "torch", "optimum.intel": "optimum-intel", "nncf": "nncf"}
    npu_preset = staticmethod(npu_preset)  # kit.backends.get("openvino").npu_preset(cfg) in notebooks

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
        from ..devices import core, device_family, openvino_device_info

        rows = openvino_device_info()
        info = npu_info(core())
        if info is not None:
            row = next(d for d in rows if device_family(d["device"]) == "NPU")
            row.update(driver=str(info.driver_version), compiler=str(info.compiler_version))
            if problem := npu_driver_problem(info):
                row["problem"] = problem
        return rows

    @classmethod
    def device_name(cls, cfg: LoadConfig) -> str | None:
        from ..devices import core, device_available

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
        from ..devices import core

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
            import openvino_genai

            try:
                if tokenizer_dir is not None:
                    tokenizer = openvino_genai.Tokenizer(str(tokenizer_dir))
                    self.pipeline = openvino_genai.LLMPipeline(str(model_dir), tokenizer, cfg.device, **props)
                else:
                    self.pipeline = openvino_genai.LLMPipeline(str(model_dir), cfg.device, **props)
            except RuntimeError as exc:
                if not self.npu:
                    raise
                raise NPUDriverError(npu_compile_failure(exc, npu_info())) from exc
        else:
            self.model = self._optimum_model()

    def _optimum_model(self) -> Any:
        from optimum.intel import OVModelForCausalLM

        model = OVModelForCausalLM.from_pretrained(str(self.model_dir), export=False, device=self.device,
                                                   ov_config=dict(self.properties))
        return patch_optimum_cache_position(model)  # optimum-intel 2.0-2.2 with transformers >= 5.4

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
        import numpy as np
        import torch

        if self.runtime == "optimum":
            model = self.model
        else:  # LLMPipeline exposes no logits: a second compiled copy of the same export, made on first use
            if self._scorer is None:
                self._scorer = self._optimum_model()
            model = self._scorer
        x = torch.tensor([ids], dtype=torch.int64)
        # No past_key_values: the stateful model resets its KV cache, so every call starts fresh.
        return np.asarray(model(input_ids=x, attention_mask=torch.ones_like(x)).logits)[0]

    def stream(self, prompt_ids: list[int], gen: GenerationConfig, stop_ids: list[int]) -> Iterator[Token]:
        if self.runtime == "optimum":
            return hf_stream(self.model, "cpu", prompt_ids, gen, stop_ids)
        return self._genai_stream(prompt_ids, gen, stop_ids)

    def _genai_stream(self, prompt_ids: list[int], gen: GenerationConfig, stop_ids: list[int]) -> Iterator[Token]:
        import numpy as np
        import openvino as ov
        import openvino_genai

        config = self.pipeline.get_generation_config()
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

        return threaded_stream(lambda emit: self.pipeline.generate(ids, config, Emit(emit)))

    def free_for_logits(self) -> None:
        if self.runtime != "optimum":  # logits come from a second, optimum-intel copy: free the pipeline's
            self.close()

    def close(self) -> None:
        self.__dict__.pop("pipeline", None)
        self.__dict__.pop("model", None)
        self._scorer = None


def convert_tokenizer(folder: Path, cache: ExportCache, log: Log = print) -> Path:
    """OpenVINO tokenizer models for a ready-made IR that shipped without them, converted once into the cache.

    openvino_tokenizers' own converter runs in a process of its own (it reads the folder's Hugging Face
    tokenizer files); the IR itself is never touched or re-exported.
    """
    files = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
    # Keyed by the tokenizer files' content, not their path: a pack made elsewhere finds it.
    key = {"backend": "openvino", "kind": "tokenizer", "tokenizer": _files_hash(folder, files),
           "openvino_tokenizers": major_minor("openvino-tokenizers")}

    def build(out: Path) -> None:
        log(f"{folder.name} has no OpenVINO tokenizer models; converting the tokenizer alone with openvino_tokenizers.")
        cmd = [sys.executable, "-c", "from openvino_tokenizers.cli_tools.convert_tokenizer import "
               "convert_hf_tokenizer; convert_hf_tokenizer()", str(folder), "--with-detokenizer", "-o", str(out)]
        rc, lines = run_logged(cmd, log)
        if rc != 0 or not all((out / f).is_file() for f in TOKENIZER_FILES):
            raise ExportError(f"openvino_tokenizers could not convert the tokenizer of {folder} (exit {rc}):\n"
                              + "\n".join(lines[-10:]))

    return cache.get_or_build("openvino", f"{folder.name}-tokenizer", key, build, log).path


def _files_hash(folder: Path, names: tuple[str, ...]) -> str:
    import hashlib

    h = hashlib.sha256()
    for name in names:
        if (folder / name).is_file():
            h.update(name.encode() + b"\0" + (folder / name).read_bytes())
    return h.hexdigest()[:16]
