"""OpenVINO: optimum-intel exports the model; OpenVINO GenAI (default) or optimum-intel runs it."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from importlib.metadata import version
from pathlib import Path
from typing import Any, ClassVar

from ..cache import Export, ExportCache
from ..config import GenerationConfig, LoadConfig
from ..devices import missing_device_message, openvino_devices
from ..errors import (
    ContextWindowError,
    DeviceNotFoundError,
    ExportError,
    MissingDependencyError,
    UnknownChoiceError,
    last_line,
)
from ..procs import run_logged
from ..sources import ModelSource
from .base import Backend, Log, Token, hf_stream, threaded_stream

# The seed tutorial's int4 recipe; the group size must divide every weight's input dim (docs/compatibility.md).
INT4_DEFAULTS = {"group_size": 128, "ratio": 0.6}
FALLBACKS = ("adjust", "ignore", "error")
_LIBS = ("openvino", "openvino-tokenizers", "optimum-intel", "nncf", "transformers")

# --- The NPU preset ------------------------------------------------------------------------------
# OpenVINO's "GenAI on NPU" guide: LLMs for the NPU must be exported with symmetric 4-bit weights and
# ratio 1.0, channel-wise (group size -1: fastest) or group-wise 128 (the guide's advice for models
# up to ~4-5B parameters, Phi-3-mini included, when accuracy matters more); fp16 also runs.
NPU_PRECISIONS = ("int4", "fp16")
NPU_GROUP_SIZES = (-1, 128)
NPU_INT4 = {"group_size": -1, "ratio": 1.0, "sym": True}
# The NPU compiles static shapes: the prompt may hold MAX_PROMPT_LEN tokens and the context
# MAX_PROMPT_LEN + MIN_RESPONSE_LEN (OpenVINO's defaults, made visible here).
NPU_MAX_PROMPT_LEN = 1024
NPU_MIN_RESPONSE_LEN = 128
NPU_GENERATE_HINTS = ("FAST_COMPILE", "BEST_PERF")
# The NPU driver OpenVINO's guide asks for when LLMs fail on the NPU (Windows 32.0.100.3104).
# On Windows NPU_DRIVER_VERSION is that last number (intel-npu-acceleration-library compares it to
# 2408 the same way); Linux drivers report a different encoding, so only Windows is checked.
MIN_NPU_DRIVER_WINDOWS = 3104
NPU_DRIVER_URL = {
    "win32": "https://www.intel.com/content/www/us/en/download/794734/intel-npu-driver-windows.html",
    "linux": "https://github.com/intel/linux-npu-driver/releases",
}


def is_npu(device: str) -> bool:
    return device.split(".")[0].split(":")[0].upper() == "NPU"


def npu_blob_dir(cache_dir: str | None) -> Path:
    """Where the NPU's compiled blobs go (CACHE_DIR): beside the exports, so one folder holds both."""
    return ExportCache(cache_dir).root / "npu-blobs"


def npu_preset(cfg: LoadConfig, max_prompt_len: int = NPU_MAX_PROMPT_LEN,
               min_response_len: int = NPU_MIN_RESPONSE_LEN, generate_hint: str | None = None,
               blob_cache: bool = True) -> LoadConfig:
    """`cfg` with the export and pipeline settings OpenVINO documents for LLMs on the NPU.

    The export settings (int4 symmetric, ratio 1.0, channel-wise unless group_size=128 was chosen)
    apply on every device, so the same export can be tried on CPU. The pipeline options
    (MAX_PROMPT_LEN, MIN_RESPONSE_LEN, GENERATE_HINT, CACHE_DIR) are NPU-only: the CPU plugin
    rejects them, so they are added only when `cfg.device` is an NPU. Explicit runtime_config
    entries win.
    """
    if cfg.backend != "openvino":
        raise UnknownChoiceError("backend for the NPU preset", cfg.backend, ["openvino"],
                                 hint="The NPU preset configures OpenVINO GenAI.")
    if cfg.precision is None:
        cfg = replace(cfg, precision="int4")
    if cfg.precision not in NPU_PRECISIONS:
        raise UnknownChoiceError("precision for the NPU preset", cfg.precision, NPU_PRECISIONS,
                                 hint="The NPU runs LLMs with symmetric 4-bit weights (int4) or fp16.")
    changes: dict[str, Any] = {}
    if cfg.precision == "int4":
        group = NPU_INT4["group_size"] if cfg.group_size is None else cfg.group_size
        if group not in NPU_GROUP_SIZES:
            raise UnknownChoiceError("group_size for the NPU", group, [str(g) for g in NPU_GROUP_SIZES],
                                     hint="-1 = channel-wise (fastest), 128 = group-wise (more accurate).")
        if cfg.ratio not in (None, 1.0):
            raise UnknownChoiceError("ratio for the NPU", cfg.ratio, ["1.0"], hint="Every layer must be int4.")
        if not cfg.sym:
            raise UnknownChoiceError("sym for the NPU", cfg.sym, ["True"], hint="The NPU needs symmetric int4.")
        changes.update(group_size=group, ratio=NPU_INT4["ratio"], sym=True)
    props = dict(cfg.runtime_config)
    if is_npu(cfg.device):
        if (cfg.runtime or "genai") != "genai":
            raise UnknownChoiceError("runtime for the NPU", cfg.runtime, ["genai"],
                                     hint="LLMs run on the NPU through OpenVINO GenAI's LLMPipeline.")
        if generate_hint is not None and generate_hint not in NPU_GENERATE_HINTS:
            raise UnknownChoiceError("GENERATE_HINT", generate_hint, NPU_GENERATE_HINTS)
        for key, value in (("MAX_PROMPT_LEN", max_prompt_len), ("MIN_RESPONSE_LEN", min_response_len),
                           ("GENERATE_HINT", generate_hint)):
            if value is not None:
                props.setdefault(key, value)
        if blob_cache:
            props.setdefault("CACHE_DIR", str(npu_blob_dir(cfg.cache_dir)))
    return replace(cfg, runtime_config=props, **changes)


@dataclass
class NPUInfo:
    """What OpenVINO says about the NPU: its name, driver, and the compiler inside the driver."""

    name: str
    driver_version: int | None
    compiler_version: str | None  # major.minor
    errors: list[str]


def decode_compiler_version(value: int) -> str:
    """NPU_COMPILER_VERSION packs major (16 high bits) and minor (16 low bits)."""
    return f"{value >> 16}.{value & 0xFFFF}"


def npu_info(core: Any = None) -> NPUInfo | None:
    """The NPU's properties, or None when OpenVINO lists no NPU."""
    if core is None:
        import openvino as ov

        core = ov.Core()
    if "NPU" not in core.available_devices:
        return None
    values: dict[str, Any] = {}
    errors: list[str] = []
    for prop in ("FULL_DEVICE_NAME", "NPU_DRIVER_VERSION", "NPU_COMPILER_VERSION"):
        try:
            values[prop] = core.get_property("NPU", prop)
        except RuntimeError as exc:
            errors.append(f"{prop}: {last_line(exc)}")
    compiler = values.get("NPU_COMPILER_VERSION")
    driver = values.get("NPU_DRIVER_VERSION")
    return NPUInfo(str(values.get("FULL_DEVICE_NAME", "NPU")), None if driver is None else int(driver),
                   None if compiler is None else decode_compiler_version(int(compiler)), errors)


def npu_driver_problem(info: NPUInfo, platform: str = sys.platform) -> str | None:
    """Why this NPU's driver cannot run LLMs, with the fix; None when nothing is known to be wrong."""
    url = NPU_DRIVER_URL.get("win32" if platform == "win32" else "linux", NPU_DRIVER_URL["linux"])
    if info.compiler_version is None and any("COMPILER" in e for e in info.errors):
        return (f"OpenVINO sees the NPU ({info.name}) but cannot load its compiler, which ships with the NPU "
                f"driver ({'; '.join(info.errors)}). Fix: install or update the Intel NPU driver: {url}")
    if platform == "win32":
        if info.driver_version is None:
            return (f"OpenVINO sees the NPU ({info.name}) but cannot read its driver version. "
                    f"Fix: install or update the Intel NPU driver: {url}")
        if info.driver_version < MIN_NPU_DRIVER_WINDOWS:
            return (f"The NPU driver is too old for LLMs: build {info.driver_version}, OpenVINO's NPU guide asks "
                    f"for 32.0.100.{MIN_NPU_DRIVER_WINDOWS} or newer. Fix: update the Intel NPU driver: {url}")
    return None


def npu_compile_failure(exc: BaseException, info: NPUInfo | None, platform: str = sys.platform) -> str:
    """What to tell a user whose NPU failed to compile the model (the runtime's message is one line of C++)."""
    seen = f"{info.name}, driver {info.driver_version}, compiler {info.compiler_version}" if info else "none"
    url = NPU_DRIVER_URL["win32" if platform == "win32" else "linux"]
    return (f"The NPU could not compile this model ({last_line(exc)}). NPU seen: {seen}. The usual causes: an NPU "
            f"driver older than this OpenVINO needs (update it: {url}), or an export without the NPU preset "
            "(int4 needs sym=True, ratio=1.0, group_size -1 or 128: use npu_preset()).")


class NPUDriverError(DeviceNotFoundError):
    """The NPU is there, but its driver (or the compiler inside it) cannot run this model."""


def check_npu_context(n_prompt: int, max_new_tokens: int, props: dict[str, Any]) -> None:
    """The NPU compiles fixed shapes: refuse what would not fit, naming the option to raise."""
    max_prompt = int(props.get("MAX_PROMPT_LEN", NPU_MAX_PROMPT_LEN))
    total = max_prompt + int(props.get("MIN_RESPONSE_LEN", NPU_MIN_RESPONSE_LEN))
    if n_prompt > max_prompt:
        raise ContextWindowError(
            f"The prompt is {n_prompt} tokens; the NPU pipeline was compiled for prompts up to "
            f"MAX_PROMPT_LEN={max_prompt}. Fix: shorten the prompt, or load with a larger max_prompt_len "
            f"(npu_preset(..., max_prompt_len={_round_up(n_prompt)}); compiling takes longer)."
        )
    if n_prompt + max_new_tokens > total:
        raise ContextWindowError(
            f"The prompt ({n_prompt} tokens) plus max_new_tokens={max_new_tokens} exceed the NPU pipeline's "
            f"context of MAX_PROMPT_LEN + MIN_RESPONSE_LEN = {total} tokens. Fix: set max_new_tokens <= "
            f"{total - n_prompt}, or load with a larger min_response_len."
        )


def _round_up(n: int, step: int = 256) -> int:
    return -(-n // step) * step


def int4_dims(config: dict[str, Any]) -> dict[str, int]:
    """Input dimensions of the matmuls int4 groups must divide."""
    return {k: int(config[k]) for k in ("hidden_size", "intermediate_size") if k in config}


def export_command(src: Path, out: Path, cfg: LoadConfig, model_config: dict[str, Any], log: Log) -> list[str]:
    """The optimum-cli command for this export: the same one the seed runs, so users can read it."""
    cmd = [sys.executable, "-m", "optimum.commands.optimum_cli", "export", "openvino",
           "--model", str(src), "--task", "text-generation-with-past", "--weight-format", cfg.precision]
    if cfg.precision == "int4":
        group = cfg.group_size or INT4_DEFAULTS["group_size"]
        ratio = INT4_DEFAULTS["ratio"] if cfg.ratio is None else cfg.ratio
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
        cmd += ["--group-size", str(group), "--ratio", str(ratio), "--group-size-fallback", cfg.group_size_fallback]
        if cfg.sym:
            cmd.append("--sym")
    if cfg.trust_remote_code:
        cmd.append("--trust-remote-code")
    return [*cmd, str(out)]


class OpenVINOBackend(Backend):
    name = "openvino"
    runtimes: ClassVar[tuple[str, ...]] = ("genai", "optimum")
    precisions: ClassVar[tuple[str, ...]] = ("int4", "int8", "fp16", "fp32")
    requirements = "openvino.txt"
    npu_preset = staticmethod(npu_preset)  # kit.backends.get("openvino").npu_preset(cfg) in notebooks

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
    def check(cls, cfg: LoadConfig) -> None:
        super().check(cfg)
        if is_npu(cfg.device):  # before the export: an old driver fails only when the model compiles
            info = npu_info()
            problem = npu_driver_problem(info) if info else None
            if problem:
                raise NPUDriverError(problem)

    @classmethod
    def export(cls, source: ModelSource, cfg: LoadConfig, cache: ExportCache, log: Log = print) -> Export:
        settings: dict[str, Any] = {"precision": cfg.precision}
        if cfg.precision == "int4":
            settings.update(group_size=cfg.group_size or INT4_DEFAULTS["group_size"],
                            ratio=INT4_DEFAULTS["ratio"] if cfg.ratio is None else cfg.ratio,
                            sym=cfg.sym, fallback=cfg.group_size_fallback)
        key = {"backend": cls.name, **source.cache_key(), **settings,
               "versions": {lib: version(lib) for lib in _LIBS}}

        def build(out: Path) -> None:
            cmd = export_command(source.path, out, cfg, source.config, log)
            log("Exporting with: optimum-cli " + " ".join(cmd[3:]))
            rc, lines = run_logged(cmd, log)
            if rc != 0:
                tail = "\n".join(lines[-15:])
                raise ExportError(f"optimum-cli export failed (exit {rc}):\n{tail}")
            for needed in ("openvino_model.xml", "openvino_tokenizer.xml", "openvino_detokenizer.xml"):
                if not (out / needed).is_file():
                    raise ExportError(f"the export did not write {needed}; see the log above.")

        label = f"{Path(source.name).name}-{cfg.precision}"
        return cache.get_or_build(cls.name, label, key, build, log)

    def __init__(self, model_dir: Path, cfg: LoadConfig) -> None:
        """Public attributes: `pipeline` (the openvino_genai.LLMPipeline, runtime genai) or `model`
        (optimum-intel's OVModelForCausalLM, runtime optimum), and `properties` (what the device was
        compiled with)."""
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
        if self.runtime == "genai":
            import openvino_genai

            try:
                self.pipeline = openvino_genai.LLMPipeline(str(model_dir), cfg.device, **props)
            except RuntimeError as exc:
                if not self.npu:
                    raise
                raise NPUDriverError(npu_compile_failure(exc, npu_info())) from exc
        else:
            self.model = self._optimum_model()

    def _optimum_model(self) -> Any:
        from optimum.intel import OVModelForCausalLM

        return OVModelForCausalLM.from_pretrained(str(self.model_dir), export=False, device=self.device,
                                                  ov_config=dict(self.properties))

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
        if self.npu:
            check_npu_context(len(prompt_ids), gen.max_new_tokens, self.properties)
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

    def close(self) -> None:
        self.__dict__.pop("pipeline", None)
        self.__dict__.pop("model", None)
        self._scorer = None

