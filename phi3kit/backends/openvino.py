"""OpenVINO: optimum-intel exports the model; OpenVINO GenAI (default) or optimum-intel runs it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any, ClassVar

from ..cache import Export, ExportCache
from ..config import GenerationConfig, LoadConfig
from ..devices import missing_device_message, openvino_devices
from ..errors import ExportError, MissingDependencyError, UnknownChoiceError
from ..sources import ModelSource
from .base import Backend, Log, Token, threaded_stream

# The seed tutorial's int4 recipe; FACTS.md: group size must divide every weight's input dim.
INT4_DEFAULTS = {"group_size": 128, "ratio": 0.6}
FALLBACKS = ("adjust", "ignore", "error")
_LIBS = ("openvino", "openvino-tokenizers", "optimum-intel", "nncf", "transformers")


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

    @classmethod
    def devices(cls, runtime: str) -> list[str]:
        try:
            return openvino_devices()
        except ImportError as exc:
            raise MissingDependencyError("openvino", "The OpenVINO backend", cls.requirements) from exc

    @classmethod
    def device_help(cls, device: str, available: list[str]) -> str:
        return missing_device_message(device, available, cls.name)

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
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    bufsize=1)
            lines: list[str] = []
            assert proc.stdout is not None
            try:
                for line in proc.stdout:
                    lines.append(line.rstrip())
                    log(line.rstrip())
                rc = proc.wait()
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            if rc != 0:
                tail = "\n".join(lines[-15:])
                raise ExportError(f"optimum-cli export failed (exit {rc}):\n{tail}")
            for needed in ("openvino_model.xml", "openvino_tokenizer.xml", "openvino_detokenizer.xml"):
                if not (out / needed).is_file():
                    raise ExportError(f"the export did not write {needed}; see the log above.")

        label = f"{Path(source.name).name}-{cfg.precision}"
        return cache.get_or_build(cls.name, label, key, build, log)

    def __init__(self, model_dir: Path, cfg: LoadConfig) -> None:
        self.runtime = cfg.runtime or self.default_runtime()
        props = dict(cfg.runtime_config)
        if cfg.precision == "fp32" and cfg.device in ("CPU", "AUTO"):
            # CPU defaults to bf16 compute and a u8 KV cache; fp32 means full precision end to end.
            props.setdefault("INFERENCE_PRECISION_HINT", "f32")
            props.setdefault("KV_CACHE_PRECISION", "f32")
        self.props = props
        if self.runtime == "genai":
            import openvino_genai

            self.pipe = openvino_genai.LLMPipeline(str(model_dir), cfg.device, **props)
        else:
            from optimum.intel import OVModelForCausalLM

            self.model = OVModelForCausalLM.from_pretrained(
                str(model_dir), export=False, device=cfg.device, ov_config=props
            )

    def stream(self, prompt_ids: list[int], gen: GenerationConfig, stop_ids: list[int]) -> Iterator[Token]:
        if self.runtime == "optimum":
            from .transformers import hf_stream

            return hf_stream(self.model, "cpu", prompt_ids, gen, stop_ids)
        return self._genai_stream(prompt_ids, gen, stop_ids)

    def _genai_stream(self, prompt_ids: list[int], gen: GenerationConfig, stop_ids: list[int]) -> Iterator[Token]:
        import numpy as np
        import openvino as ov
        import openvino_genai

        config = self.pipe.get_generation_config()
        config.max_new_tokens = gen.max_new_tokens
        config.stop_token_ids = set(stop_ids)
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

        return threaded_stream(lambda emit: self.pipe.generate(ids, config, Emit(emit)))

    def close(self) -> None:
        self.__dict__.pop("pipe", None)
        self.__dict__.pop("model", None)

