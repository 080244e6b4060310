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
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

from ..cache import ExportCache
from ..config import GenerationConfig, LoadConfig
from ..context import Limits, kv_bytes_per_token, memory_window, model_limits, sliding_window_of
from ..errors import ExportError, MissingDependencyError, Phi3kitError, UnknownChoiceError
from ..procs import run_logged
from ..sources import ModelSource
from .base import Backend, Log, Token, threaded_stream
from .longrope import longrope_window

PACKAGE = "llama-cpp-python"
REQUIREMENTS = "llamacpp.txt"
SOURCES_ENV = "PHI3KIT_LLAMA_CPP"  # a llama.cpp checkout, or an extracted llama-cpp-python sdist
# The build the kit needs (requirements/llamacpp.txt says why: ggml's AMX kernels crash in batched prefill).
CMAKE_ARGS = ("-DGGML_NATIVE=ON -DCMAKE_C_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16' "
              "-DCMAKE_CXX_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16' -DLLAVA_BUILD=OFF")
INSTALL = f'CMAKE_ARGS="{CMAKE_ARGS}" pip install --no-cache-dir -r requirements/{REQUIREMENTS}'
# Our precision -> llama.cpp's file type (LLAMA_FTYPE_MOSTLY_<name>).
FTYPES = {"q4_k_m": "Q4_K_M", "q4_0": "Q4_0", "q8_0": "Q8_0", "f16": "F16", "bf16": "BF16"}
QUANTIZED = ("q4_k_m", "q4_0", "q8_0")
INTERMEDIATE = "f16"  # what the converter writes before llama_model_quantize (llama.cpp's own recipe)
RECIPE = 1  # bump to rebuild exports when the recipe below changes
MODEL_FILE = "model.gguf"
# Copied from the checkpoint: the kit's tokenizer, chat template and stop ids, and the model's config
# (context length, KV cache size) are read from the export folder.
COPIED = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
          "special_tokens_map.json")
# Llama() arguments the kit sets itself; runtime_config may set any other one (n_threads, n_batch, n_ctx...).
RESERVED = ("model_path", "logits_all", "verbose", "vocab_only", "embedding", "draft_model", "chat_handler",
            "tokenizer", "lora_path", "lora_base")
KIT_OPTIONS = ("allow_amx",)  # runtime_config keys the kit reads and does not pass on
DEFAULT_BATCH = 512
# Converter and quantizer output that is one line per tensor, a progress bar, the chat template or the banner
# about an unknown pre-tokenizer (the kit's own step follows it): kept for error reports, not logged.
_NOISE = re.compile(r"^INFO:hf-to-gguf:(blk\.|output|token_embd|rope_factors)|^WARNING:hf-to-gguf:(\*\*|$)|"
                    r"^INFO:gguf\.vocab:Setting chat_template|^\[\s*\d+/\s*\d+\]|^llama_model_loader: ")
_LOGGER_LINE = re.compile(r"^(INFO|WARNING|ERROR|CRITICAL):")  # the converter's logging (not template text, bars)
_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


class LlamaCppMissingError(MissingDependencyError):
    """llama-cpp-python cannot be imported here; the message says how to build it."""

    def __init__(self, cause: BaseException | None = None) -> None:
        self.package = PACKAGE
        ImportError.__init__(self, missing_message(cause))


class LlamaCppBuildError(Phi3kitError, RuntimeError):
    """The installed llama-cpp-python was built in a way that would crash this route."""


def missing_message(cause: BaseException | None = None) -> str:
    if cause is None or (isinstance(cause, ModuleNotFoundError) and cause.name == "llama_cpp"):
        what = f"{PACKAGE} is not installed"
    else:
        what = f"{PACKAGE} is installed but does not import here ({type(cause).__name__}: {cause})"
    return (f"{what}: the 'llamacpp' backend runs llama.cpp through it. Fix: build it from source as "
            f"requirements/{REQUIREMENTS} says (about 6 minutes on 2 cores): {INSTALL}")


def import_llama() -> Any:
    """The llama_cpp module, or LlamaCppMissingError saying how to build it."""
    try:
        import llama_cpp
    except (ImportError, OSError) as exc:  # OSError: the shared library does not load
        raise LlamaCppMissingError(exc) from exc
    return llama_cpp


def installed_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        return None


@cache
def system_info() -> str:
    """llama.cpp's build and CPU features, as `llama_print_system_info()` prints them."""
    return import_llama().llama_print_system_info().decode("utf-8", "replace")


def amx_compiled(info: str) -> bool:
    """Whether ggml's AMX kernels are compiled in (`AMX_INT8 = 1`: built with -march=native on an AMX Xeon)."""
    return re.search(r"\bAMX_INT8\s*=\s*1\b", info) is not None


def physical_cores() -> int:
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


# --- where the converter comes from --------------------------------------------------------------------
def llama_cpp_tree(folder: Path) -> Path | None:
    """The llama.cpp folder holding convert_hf_to_gguf.py and gguf-py: `folder` itself (a llama.cpp checkout) or
    its vendor/llama.cpp (an extracted llama-cpp-python source archive); None if neither."""
    for tree in (folder, folder / "vendor" / "llama.cpp"):
        if (tree / "convert_hf_to_gguf.py").is_file() and (tree / "gguf-py" / "gguf").is_dir():
            return tree
    return None


def sdist_command(version: str, dest: Path) -> list[str]:
    """pip's download of llama-cpp-python's source archive (nothing is built)."""
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", f"{PACKAGE}=={version}",
            "-d", str(dest)]


# The parts of the source archive the conversion needs (under vendor/llama.cpp/).
CONVERTER_PARTS = ("convert_hf_to_gguf.py", "conversion", "gguf-py", "LICENSE")


def extract_converter(archive: Path, out: Path) -> None:
    """Copy vendor/llama.cpp's converter, its model classes and gguf-py out of a llama-cpp-python sdist into `out`."""
    with tarfile.open(archive) as tar:
        found = False
        for member in tar.getmembers():
            parts = Path(member.name).parts
            if len(parts) < 4 or parts[1:3] != ("vendor", "llama.cpp") or parts[3] not in CONVERTER_PARTS:
                continue
            if not member.isfile() or any(p in ("..", "") for p in parts) or Path(member.name).is_absolute():
                continue
            target = out.joinpath(*parts[3:])
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            assert source is not None
            with source, open(target, "wb") as f:
                shutil.copyfileobj(source, f)
            found |= parts[3] == "convert_hf_to_gguf.py"
    if not found:
        raise ExportError(f"{archive.name} holds no vendor/llama.cpp/convert_hf_to_gguf.py: not a llama-cpp-python "
                          f"source archive? Fix: set {SOURCES_ENV} to a llama.cpp checkout.")


def converter_tree(cache: ExportCache, log: Log = print) -> Path:
    """llama.cpp's converter sources: PHI3KIT_LLAMA_CPP's, else the installed version's sdist, fetched once."""
    fix = (f"Fix: set {SOURCES_ENV} to a llama.cpp checkout (git clone https://github.com/ggml-org/llama.cpp, "
           "ideally at the commit your llama-cpp-python vendors) or to an extracted llama-cpp-python source archive")
    if env := os.environ.get(SOURCES_ENV):
        tree = llama_cpp_tree(Path(env).expanduser())
        if tree is None:
            raise ExportError(f"{SOURCES_ENV}={env} holds no convert_hf_to_gguf.py with gguf-py beside it (looked in "
                              f"it and in its vendor/llama.cpp). {fix}.")
        return tree
    version = installed_version()
    if version is None:
        raise LlamaCppMissingError()
    key = {"backend": "llamacpp", "kind": "converter", "model": f"llama.cpp converter ({PACKAGE} {version} sdist)",
           PACKAGE: version}

    def fetch(out: Path) -> None:
        log(f"llama.cpp's converter is not installed with {PACKAGE}; fetching its {version} source archive once "
            f"(about 80 MB) into the kit's cache. ({SOURCES_ENV} names a llama.cpp checkout to use instead.)")
        with tempfile.TemporaryDirectory(prefix="phi3kit-llama-sdist-") as tmp:
            rc, lines = run_logged(sdist_command(version, Path(tmp)), log,
                                   show=lambda line: bool(line) and "━" not in line)
            archives = sorted(Path(tmp).glob("*.tar.gz"))
            if rc != 0 or not archives:
                raise ExportError(f"pip could not download the {PACKAGE} {version} source archive (exit {rc}):\n"
                                  + "\n".join(lines[-10:]) + f"\n{fix}.")
            extract_converter(archives[0], out / "llama.cpp")

    entry = cache.get_or_build("llamacpp", f"llama.cpp-converter-{version}", key, fetch, log)
    return entry.path / "llama.cpp"


# --- the child processes: conversion and quantization ----------------------------------------------
def tool_command(*args: str | Path) -> list[str]:
    return [sys.executable, "-c", "from phi3kit.backends.llamacpp import tool_main; tool_main()", *map(str, args)]


def tool_main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the export's child processes: `convert TREE MODEL_DIR OUT TYPE` or `quantize IN OUT TYPE N`."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["convert"]:
        convert(Path(args[1]), Path(args[2]), Path(args[3]), args[4])
    elif args[:1] == ["quantize"]:
        sys.exit(quantize(Path(args[1]), Path(args[2]), args[3], int(args[4])))
    else:
        sys.exit(f"usage: convert TREE MODEL_DIR OUT f16|bf16 | quantize IN OUT TYPE THREADS (got {args})")


def convert(tree: Path, model_dir: Path, out: Path, outtype: str) -> None:
    """Run llama.cpp's convert_hf_to_gguf.py on `model_dir`, with a vocabulary step for tokenizer.json-only folders.

    Phi-3's converter class reads a SentencePiece `tokenizer.model` (or, for Phi-4's GPT2Tokenizer, the
    byte-level BPE in tokenizer.json). Folders with only a tokenizer.json get the matching step instead:
    SentencePiece-style BPE with byte fallback (Phi-3's own vocabulary) is written as llama.cpp's "llama"
    vocabulary from the file itself; byte-level BPE (the pocket tokenizer) goes through the converter's own
    GPT-2 path.
    """
    import logging

    sys.path[:0] = [str(tree), str(tree / "gguf-py")]
    import convert_hf_to_gguf as converter

    phi3 = getattr(converter, "Phi3MiniModel", None)
    if phi3 is None:  # newer llama.cpp keeps the model classes in the conversion package
        from conversion import phi as phi_module

        phi3 = phi_module.Phi3MiniModel
    stock = phi3.set_vocab
    log = logging.getLogger("phi3kit")

    def set_vocab(self: Any) -> None:
        folder = Path(self.dir_model)
        spec = _json(folder / "tokenizer.json")
        model = spec.get("model") or {}
        tokenizer_class = _json(folder / "tokenizer_config.json").get("tokenizer_class")
        if tokenizer_class == "GPT2Tokenizer" or ((folder / "tokenizer.model").is_file()
                                                  and importlib.util.find_spec("sentencepiece") is not None):
            log.info("phi3kit: vocabulary through the converter's own Phi-3 step")
            return stock(self)
        if model.get("type") == "BPE" and model.get("byte_fallback"):
            log.info("phi3kit: SentencePiece-style vocabulary from tokenizer.json")
            return _spm_vocab(self, spec)
        pre = spec.get("pre_tokenizer") or {}
        if model.get("type") == "BPE" and pre.get("type") == "ByteLevel":
            log.info("phi3kit: byte-level BPE vocabulary from tokenizer.json")
            return _gpt2_vocab(self, gpt2_regex=bool(pre.get("use_regex", True)))
        return stock(self)  # raises the converter's own error (no tokenizer.model)

    phi3.set_vocab = set_vocab
    sys.argv = ["convert_hf_to_gguf.py", str(model_dir), "--outfile", str(out), "--outtype", outtype]
    converter.main()


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _spm_vocab(self: Any, spec: dict[str, Any]) -> None:
    """llama.cpp's SentencePiece vocabulary ("llama") from a tokenizer.json BPE with byte fallback.

    llama.cpp merges the adjacent pair whose joined piece scores highest; tokenizers applies the merge
    ranked first. A piece's score is therefore minus the rank of the first merge that makes it, which
    orders the merges the same way (tests/test_llamacpp.py checks llama.cpp's tokenization of Phi-3's
    reference strings).
    """
    import gguf

    n_vocab = int(self.hparams["vocab_size"])
    model = spec["model"]
    merges = model.get("merges") or []
    first_merge: dict[str, int] = {}
    for rank, merge in enumerate(merges):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        first_merge.setdefault(left + right, rank)
    types = gguf.TokenType
    tokens = [f"[PAD{i}]".encode() for i in range(n_vocab)]
    scores = [-10000.0] * n_vocab
    toktypes = [types.UNUSED] * n_vocab
    for piece, i in model["vocab"].items():
        if i >= n_vocab:
            raise ValueError(f"tokenizer.json has id {i} for {piece!r}, beyond the model's vocab_size {n_vocab}")
        tokens[i] = piece.encode("utf-8")
        if _BYTE_PIECE.fullmatch(piece):
            scores[i], toktypes[i] = 0.0, types.BYTE
        else:
            scores[i], toktypes[i] = -float(first_merge.get(piece, len(merges))), types.NORMAL
    if (unk := model.get("unk_token")) in model["vocab"]:
        toktypes[model["vocab"][unk]] = types.UNKNOWN
    for added in spec.get("added_tokens", []):
        i = int(added["id"])
        tokens[i], scores[i] = added["content"].encode("utf-8"), -1000.0
        toktypes[i] = types.CONTROL if added.get("special") else types.USER_DEFINED
    writer = self.gguf_writer
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(toktypes)
    gguf.SpecialVocab(self.dir_model, n_vocab=n_vocab).add_to_gguf(writer)


def _gpt2_vocab(self: Any, gpt2_regex: bool) -> None:
    """The converter's byte-level BPE step; a pre-tokenizer it does not know by hash counts as GPT-2's when
    tokenizer.json's pre-tokenizer is exactly ByteLevel(use_regex=true), GPT-2's own regex."""
    import logging

    known = type(self).get_vocab_base_pre

    def get_vocab_base_pre(tokenizer: Any) -> str:
        try:
            return known(self, tokenizer)
        except NotImplementedError:
            if not gpt2_regex:
                raise
            logging.getLogger("phi3kit").info("phi3kit: pre-tokenizer ByteLevel(use_regex=true): 'gpt-2'")
            return "gpt-2"

    self.get_vocab_base_pre = get_vocab_base_pre
    self._set_vocab_gpt2()


def quantize(src: Path, dst: Path, ftype: str, threads: int) -> int:
    """llama_model_quantize (what the llama-quantize tool runs) from `src` to `dst`; its return code."""
    import ctypes

    llama_cpp = import_llama()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    params.nthread = threads
    return int(llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)))


def run_tool(cmd: list[str], what: str, log: Log, logging_only: bool = False) -> None:
    """Run a child tool, logging its output without the per-tensor chatter; raise with its tail."""

    def show(line: str) -> bool:
        return bool(line) and not _NOISE.search(line) and (not logging_only or bool(_LOGGER_LINE.match(line)))

    start = time.perf_counter()
    rc, lines = run_logged(cmd, log, show=show)
    if rc != 0:
        tail = "\n".join(line for line in lines[-30:] if line)
        raise ExportError(f"{what} failed (exit {rc}):\n{tail}")
    log(f"{what} finished in {time.perf_counter() - start:.1f} s.")


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


class LlamaCppBackend(Backend):
    """llama.cpp (llama-cpp-python) on the CPU: GGUF exports at Q4_K_M (default), Q4_0, Q8_0, F16 or BF16."""

    name = "llamacpp"
    runtimes: ClassVar[tuple[str, ...]] = ("llama-cpp",)
    precisions: ClassVar[tuple[str, ...]] = tuple(FTYPES)
    default_precision: ClassVar[str] = "q4_k_m"
    requirements = REQUIREMENTS
    exporter: ClassVar[tuple[str, ...]] = (PACKAGE, "transformers", "torch")
    # The converter imports torch, transformers, numpy and gguf-py (which needs pyyaml); quantizing needs llama_cpp.
    exporter_modules: ClassVar[dict[str, str]] = {"torch": "torch", "transformers": "transformers",
                                                  "yaml": "pyyaml", "llama_cpp": PACKAGE}
    # The converter reads tensors lazily: 1.42 GB peak RSS (mapped files included) converting a 0.65B-param bf16
    # Phi-3 to F16, 1.41 B/param over RAM_BASE; quantizing it peaked at 0.71 GB.
    export_ram_bytes_per_param: ClassVar[float | None] = 1.5
    logits_source = "llama.cpp llama_decode with every position's logits"
    kv_element_bytes: float = 2.0  # llama.cpp keeps the KV cache in f16 by default

    @classmethod
    def devices(cls, runtime: str) -> list[str]:
        if importlib.util.find_spec("llama_cpp") is None:
            raise LlamaCppMissingError()
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
        version = installed_version()
        return {PACKAGE: ".".join(version.split(".")[:2]) if version else "not installed"}

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

    # --- a loaded model --------------------------------------------------------------------------------------
    def __init__(self, model_dir: Path, cfg: LoadConfig) -> None:
        """Public attributes: `llm` (the llama_cpp.Llama holding the model and its context), `options` (its
        arguments), `n_ctx` (the context it allocated)."""
        import psutil

        llama_cpp = import_llama()
        from llama_cpp import Llama

        self._lib = llama_cpp
        config = _json(model_dir / "config.json")
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

    def stream(self, prompt_ids: list[int], gen: GenerationConfig, stop_ids: list[int]) -> Iterator[Token]:
        lib, stops = self._lib, set(stop_ids)
        ids = list(prompt_ids)

        def run(emit: Any) -> None:
            with self._lock:
                self._clear()
                sampler = self._sampler(gen)
                try:
                    self._decode(ids, 0)  # prefill: the prompt in batches of n_batch
                    for step in range(gen.max_new_tokens):
                        token = int(lib.llama_sampler_sample(sampler, self.llm.ctx, -1))
                        if not emit(token) or (token in stops and not gen.ignore_eos) \
                                or step == gen.max_new_tokens - 1:
                            return
                        self._decode([token], len(ids) + step)
                finally:
                    lib.llama_sampler_free(sampler)

        return threaded_stream(run)

    def logits(self, ids: list[int]) -> Any:
        import numpy as np

        out = np.empty((len(ids), self.n_vocab), dtype=np.float32)
        with self._lock:
            self._clear()
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
