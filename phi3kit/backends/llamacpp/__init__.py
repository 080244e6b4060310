"""llama.cpp through llama-cpp-python: a GGUF made by llama.cpp's own converter, run on the CPU.

The export converts the PyTorch checkpoint with llama.cpp's `convert_hf_to_gguf.py` (f16 or bf16) and,
for the quantized precisions, quantizes that file with `llama_model_quantize` (the code of the
`llama-quantize` tool). Both run in child processes (`phi3kit.procs`), so an interrupted export leaves
nothing running. The wheel does not ship the converter: it comes from the llama.cpp sources named by
PHI3KIT_LLAMA_CPP (a llama.cpp checkout, or an extracted llama-cpp-python source archive), else from
the installed version's source archive, fetched once with pip into the kit's cache.

Generation drives llama.cpp's C API itself (llama_decode, llama_sampler_*), fed the kit's prompt ids:
`Llama.generate` reuses a cached prefix (a fake time to first token) and never stops by itself, and
`Llama.scores` is empty unless every position's logits are computed (docs/compatibility.md).

The package, one job a module: `install` (is llama-cpp-python here, and built how), `fetch` (the converter's
sources), `vocab` (the converter with the kit's vocabulary step), `tools` (the export's child processes:
converting, quantizing), `runtime` (the loaded model on llama.cpp's C API).
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any, ClassVar

from ...cache import ExportCache
from ...config import LoadConfig
from ...errors import ExportError
from ...machine import major_minor
from ...sources import ModelSource
from ..base import Backend, Log
from .fetch import SOURCES_ENV, converter_tree, extract_converter, llama_cpp_tree, sdist_command
from .install import (
    INSTALL,
    PACKAGE,
    REQUIREMENTS,
    LlamaCppBuildError,
    LlamaCppMissingError,
    amx_compiled,
    import_llama,
    installed_version,
    missing,
    physical_cores,
    system_info,
)
from .runtime import MODEL_FILE, LlamaCppRuntime, context_size, exact_window, runtime_options
from .tools import FTYPES, INTERMEDIATE, QUANTIZED, quantize, run_tool, tool_command, tool_main
from .vocab import convert

RECIPE = 1  # bump to rebuild exports when the recipe below changes
# Copied from the checkpoint: the kit's tokenizer, chat template and stop ids, and the model's config
# (context length, KV cache size) are read from the export folder.
COPIED = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
          "special_tokens_map.json")


class LlamaCppBackend(LlamaCppRuntime, Backend):
    """llama.cpp (llama-cpp-python) on the CPU: GGUF exports at Q4_K_M (default), Q4_0, Q8_0, F16 or BF16."""

    name = "llamacpp"
    runtimes: ClassVar[tuple[str, ...]] = ("llama-cpp",)
    precisions: ClassVar[tuple[str, ...]] = tuple(FTYPES)
    default_precision: ClassVar[str] = "q4_k_m"
    reuses_cache: bool = True  # a chat keeps the context's KV cache (llama_memory_seq_rm of the suffix)
    requirements = REQUIREMENTS
    exporter: ClassVar[tuple[str, ...]] = (PACKAGE, "transformers", "torch")
    # The converter imports torch, transformers, numpy and gguf-py (which needs pyyaml); quantizing needs llama_cpp.
    exporter_modules: ClassVar[dict[str, str]] = {"torch": "torch", "transformers": "transformers",
                                                  "yaml": "pyyaml", "llama_cpp": PACKAGE}
    # The converter reads tensors lazily: 1.42 GB peak RSS (mapped files included) converting a 0.65B-param bf16
    # Phi-3 to F16, 1.41 B/param over RAM_BASE; quantizing it peaked at 0.71 GB.
    export_ram_bytes_per_param: ClassVar[float | None] = 1.5

    @classmethod
    def devices(cls, runtime: str) -> list[str]:
        if importlib.util.find_spec("llama_cpp") is None:
            raise missing()
        return ["CPU"]

    @classmethod
    def device_help(cls, device: str, available: list[str]) -> str:
        return (f"Device {device!r} is not available to backend 'llamacpp': the kit runs llama.cpp on the CPU only "
                "(device='CPU'; it offloads no layers to a GPU). For GPUs and NPUs use backend='openvino' or "
                "'ortgenai'.")

    @classmethod
    def check(cls, cfg: LoadConfig, *, device: bool = True) -> None:
        super().check(cfg, device=device)
        if device and cfg.precision in QUANTIZED and amx_compiled(system_info()) \
                and not cfg.runtime_config.get("allow_amx"):
            raise LlamaCppBuildError(
                f"This {PACKAGE} was built with ggml's AMX kernels (llama_print_system_info says AMX_INT8 = 1), "
                f"which crash the process in the batched prefill of {cfg.precision} models on AMX CPUs "
                "(docs/compatibility.md). Fix: rebuild it without them: pip uninstall -y llama-cpp-python, then "
                f"{INSTALL}. Or precision='f16'/'bf16' (not placed in AMX buffers), or runtime_config="
                "{'allow_amx': True} to try anyway.")

    @classmethod
    def export_settings(cls, cfg: LoadConfig) -> dict[str, Any]:
        return {"precision": cfg.precision, "recipe": RECIPE}

    @classmethod
    def runtime_versions(cls) -> dict[str, str]:
        return {PACKAGE: major_minor(PACKAGE)}

    @classmethod
    def recipe(cls, cfg: LoadConfig) -> str:
        ftype = FTYPES[str(cfg.precision)]
        if cfg.precision in QUANTIZED:
            return (f"the kit's export: llama.cpp's convert_hf_to_gguf.py to {INTERMEDIATE.upper()}, then "
                    f"llama_model_quantize {ftype}")
        return f"the kit's export: llama.cpp's convert_hf_to_gguf.py, {ftype} weights"

    @classmethod
    def build(cls, source: ModelSource, cfg: LoadConfig, out: Path, log: Log = print) -> None:
        precision = str(cfg.precision)
        if not (source.path / "tokenizer.json").is_file():
            raise ExportError(f"{source.path} has no tokenizer.json, which the kit reads the model's tokenizer from "
                              "(and the GGUF's vocabulary is written from). Point model= at the complete checkpoint.")
        tree = converter_tree(ExportCache(cfg.cache_dir), log)
        quantized = precision in QUANTIZED
        outtype = INTERMEDIATE if quantized else precision
        converted = out / (f"model-{outtype}.gguf.part" if quantized else MODEL_FILE)
        log(f"Converting with llama.cpp's convert_hf_to_gguf.py ({tree}) to {outtype.upper()}")
        run_tool(tool_command("convert", tree, source.path, converted, outtype), "convert_hf_to_gguf.py", log,
                 logging_only=True)
        if quantized:
            log(f"Quantizing to {FTYPES[precision]} with llama_model_quantize")
            cmd = tool_command("quantize", converted, out / MODEL_FILE, FTYPES[precision], physical_cores())
            run_tool(cmd, "llama_model_quantize", log)
            converted.unlink()
        if not (out / MODEL_FILE).is_file():
            raise ExportError(f"the conversion wrote no {MODEL_FILE}; see the log above.")
        for name in COPIED:
            if (source.path / name).is_file():
                shutil.copy2(source.path / name, out / name)


__all__ = ["FTYPES", "SOURCES_ENV", "LlamaCppBackend", "LlamaCppBuildError", "LlamaCppMissingError", "amx_compiled",
           "context_size", "convert", "converter_tree", "exact_window", "extract_converter", "import_llama",
           "installed_version", "llama_cpp_tree", "physical_cores", "quantize", "runtime_options", "sdist_command",
           "system_info", "tool_main"]
