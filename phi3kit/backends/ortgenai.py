"""ONNX Runtime GenAI: the model builder exports the model; the GenAI loop runs it on CPU, DirectML or CUDA.

The build target (`-e cpu|dml|cuda` of the builder) and the device that runs the model are two
choices: a model built for DirectML stores `dml` in its genai_config.json, but clearing the
providers runs it on the CPU, which is how Linux CI exercises the DirectML build end to end.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, ClassVar

from ..cache import Export, ExportCache
from ..config import GenerationConfig, LoadConfig
from ..context import Limits, model_limits, sliding_window_of
from ..errors import DeviceNotFoundError, ExportError, MissingDependencyError, ModelSourceError, UnknownChoiceError
from ..procs import run_logged, shell_commands
from ..sources import ModelSource, check_phi3
from .base import Backend, Candidate, Log, Token, threaded_stream

# Device (as users spell it, like the other backends) -> ONNX Runtime GenAI provider name.
PROVIDERS = {"CPU": "cpu", "DML": "dml", "CUDA": "cuda"}
TARGETS = tuple(PROVIDERS.values())  # what the builder's -e accepts among those the kit supports
BLOCK_SIZES = (16, 32, 64, 128, 256)  # the builder's MatMulNBits block sizes (int4 and int8)
DEFAULT_BLOCK_SIZE = 32
# MatMulNBits compute type. On a 104M-parameter model here, int8 weights decode at 1.5 tokens/s with
# level 1 and 43.5 with level 4 (int8 activations), which is why the builder defaults to 4 on CPU.
ACCURACY_LEVELS = {1: "fp32", 2: "fp16", 3: "bf16", 4: "int8 activations"}
# The three pip distributions that all ship the `onnxruntime_genai` module (never install two).
DISTRIBUTIONS = ("onnxruntime-genai", "onnxruntime-genai-directml", "onnxruntime-genai-cuda")
INSTALL = {
    "dml": ("onnxruntime-genai-directml", "directml.txt",
            "DirectML needs Windows 10/11 and a DirectX 12 GPU; the wheel exists for win_amd64 only"),
    "cuda": ("onnxruntime-genai-cuda", "cuda.txt", "CUDA needs an NVIDIA GPU, its driver and the CUDA 12 runtime"),
}
# Builder output that is one line per weight or per progress tick: kept for error reports, not logged.
_NOISE = re.compile(r"matmul_nbits_quantizer \[INFO\] - (skip to|start to|complete)|^Saving .*it/s\]|^\s*\d+it \[|"
                    r"^Loading weights:")


def genai_distribution() -> tuple[str, str] | None:
    """(distribution, version) of the installed onnxruntime-genai flavour, or None."""
    for dist in DISTRIBUTIONS:
        try:
            return dist, version(dist)
        except PackageNotFoundError:
            continue
    return None


def normalize_device(device: str) -> str:
    """'dml', 'Dml' and 'DML' all mean DirectML; raise with the valid spellings otherwise."""
    if isinstance(device, str) and device.upper() in PROVIDERS:
        return device.upper()
    raise UnknownChoiceError("device for backend 'ortgenai'", device, PROVIDERS,
                             hint="(lower case works too: 'cpu', 'dml', 'cuda'.)")


def build_target(cfg: LoadConfig) -> str:
    """The builder's -e: `cfg.build_target`, or the provider of `cfg.device` when unset."""
    target = cfg.build_target if cfg.build_target is not None else PROVIDERS[normalize_device(cfg.device)]
    if not isinstance(target, str) or target.lower() not in TARGETS:
        raise UnknownChoiceError("build_target", target, TARGETS)
    return target.lower()


@dataclass(frozen=True)
class BuilderDialect:
    """How the installed model builder spells its options: they were renamed between releases."""

    precisions: tuple[str, ...]
    block_size: str  # 0.13: int4_block_size; 0.18: block_size (0.18 silently ignores the old name)
    accuracy_level: str  # 0.13: int4_accuracy_level; 0.18: accuracy_level


def parse_builder(source: str) -> BuilderDialect:
    """Read the option names and precisions from the builder's own source (importing it takes seconds)."""
    legacy = "int4_block_size =" in source  # documented in 0.13's --extra_options help
    found = re.search(r'"--precision".*?choices=\[([^\]]*)\]', source, re.S)
    precisions = tuple(re.findall(r'"(\w+)"', found.group(1))) if found else ("int4", "int8", "fp16", "fp32")
    return BuilderDialect(precisions, *(("int4_block_size", "int4_accuracy_level") if legacy
                                        else ("block_size", "accuracy_level")))


@cache
def builder_dialect() -> BuilderDialect:
    spec = importlib.util.find_spec("onnxruntime_genai")
    locations = list(spec.submodule_search_locations or []) if spec else []
    builder = Path(locations[0]) / "models" / "builder.py" if locations else None
    if builder is None or not builder.is_file():
        return parse_builder("")
    return parse_builder(builder.read_text(encoding="utf-8"))


def block_size(cfg: LoadConfig) -> int | None:
    """Weight-only quantization block size (int4 and int8 both use MatMulNBits), None for float."""
    if cfg.precision not in ("int4", "int8"):
        return None
    size = DEFAULT_BLOCK_SIZE if cfg.group_size is None else cfg.group_size
    if size not in BLOCK_SIZES:
        raise UnknownChoiceError("group_size (int4/int8 block size) for backend 'ortgenai'", size,
                                 [str(b) for b in BLOCK_SIZES])
    return size


def accuracy_level(cfg: LoadConfig) -> int | None:
    """The builder's accuracy_level for int4/int8 (None: its default, 4 on CPU), None for float."""
    if cfg.precision not in ("int4", "int8") or cfg.accuracy_level is None:
        return None
    if cfg.accuracy_level not in ACCURACY_LEVELS:
        raise UnknownChoiceError("accuracy_level for backend 'ortgenai'", cfg.accuracy_level,
                                 [f"{k} ({v})" for k, v in ACCURACY_LEVELS.items()])
    return cfg.accuracy_level


def head_size(model_config: dict[str, Any]) -> int:
    return int(model_config.get("head_dim") or model_config["hidden_size"] // model_config["num_attention_heads"])


def builder_traps(model_config: dict[str, Any], precision: str, target: str) -> list[str]:
    """Why onnxruntime-genai 0.18 would build a broken model from this checkpoint, measured on this kit's models.

    Each trap otherwise surfaces late: at the first token, or as silently wrong logits.
    """
    c = model_config
    heads, hidden = int(c["num_attention_heads"]), int(c["hidden_size"])
    kv_heads, hs = int(c.get("num_key_value_heads") or heads), head_size(c)
    problems = []
    if hs % 16:
        problems.append(f"head size {hs} (hidden_size / num_attention_heads) is not a multiple of 16: the "
                        "attention kernel (GroupQueryAttention) fails at the first token")
    rope = c.get("rope_parameters") or c.get("rope_scaling") or {}
    factor = float(rope.get("partial_rotary_factor", c.get("partial_rotary_factor", 1.0)) or 1.0)
    rotary = int(hs * factor)
    if factor < 1.0 and (rotary // 2) % 8:
        problems.append(f"partial rotary: {rotary} rotary dimensions (head size {hs} x {factor}) give a cos/sin "
                        f"cache width of {rotary // 2}, which GroupQueryAttention needs to be a multiple of 8 "
                        "(it fails at the first token)")
    vocab = int(c["vocab_size"])
    linear_outputs = {"qkv_proj": (heads + 2 * kv_heads) * hs, "o_proj / down_proj": hidden,
                      "gate_up_proj": 2 * int(c["intermediate_size"])}
    clash = [name for name, n in linear_outputs.items() if n == vocab]
    if clash:
        problems.append(f"{', '.join(clash)} has vocab_size={vocab} outputs, and the builder takes every linear "
                        "layer with vocab_size outputs for the LM head: the logits would silently come from the "
                        "wrong layer")
    if precision == "fp16" and target == "cpu" and kv_heads < heads:
        problems.append(f"fp16 built for the CPU fails with grouped-query attention ({kv_heads} key/value heads < "
                        f"{heads} heads: 'Shape mismatch attempting to re-use buffer'); the builder does not list "
                        "FP16 CPU as supported. Use int8/fp32 on the CPU, or build_target='dml' or 'cuda' (an fp16 "
                        "GPU build, which also runs on the CPU)")
    return problems


# --- Sliding-window attention (Phi-3-mini: sliding_window 2047 in a 4096-token context) ---------------
# onnxruntime-genai 0.18's builder treats a layer as sliding-window only when config.json lists it as
# "sliding_attention" in `layer_types` (builders/base.py is_local, line 1525), which Phi-3 checkpoints never
# do: every GroupQueryAttention gets local_window_size=-1 (full attention), yet genai_config.json still
# gets decoder.sliding_window {window_size: W, layers: []}, which the runtime reads as "every layer keeps
# only W + 16 positions" on the CPU. The build then fails past W + 16 tokens and differs from PyTorch past
# W. Building from a copy whose config.json lists every layer as sliding_attention gives each GQA
# local_window_size=W with sliding_window_cache=1 and `layers` [0..L-1]: the kernel evicts, the cache stays
# W + 16 positions, and the ids equal PyTorch's over the whole context.
ATTENTION_FIX = 1  # bump to rebuild exports when this recipe changes


def needs_layer_types(model_config: dict[str, Any]) -> bool:
    return sliding_window_of(model_config) is not None and not model_config.get("layer_types")


def stage_with_layer_types(src: Path, staged: Path) -> Path:
    """`staged`: links to every file of `src`, and a config.json that lists every layer as sliding_attention."""
    import os

    config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    staged.mkdir(parents=True)
    for item in src.iterdir():
        if item.name == "config.json":
            continue
        target = staged / item.name
        try:
            os.symlink(item.resolve(), target, target_is_directory=item.is_dir())
        except OSError:  # no symlinks (Windows without developer mode): a hard link, else a copy
            if item.is_dir():
                shutil.copytree(item, target)
            else:
                try:
                    os.link(item.resolve(), target)
                except OSError:
                    shutil.copy2(item, target)
    config["layer_types"] = ["sliding_attention"] * int(config["num_hidden_layers"])
    (staged / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return staged


def built_window(model_dir: Path) -> dict[str, Any]:
    """The attention window a build really has: GQA attributes, and genai_config's decoder.sliding_window."""
    import onnx

    decoder = json.loads((model_dir / "genai_config.json").read_text(encoding="utf-8"))["model"]["decoder"]
    model = onnx.load(str(model_dir / decoder.get("filename", "model.onnx")), load_external_data=False)
    gqa = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
           for n in model.graph.node if n.op_type == "GroupQueryAttention"]
    return {"local_window_size": sorted({g.get("local_window_size", -1) for g in gqa}),
            "sliding_window_cache": sorted({g.get("sliding_window_cache", 0) for g in gqa}),
            "section": decoder.get("sliding_window") or {}}


def window_limits(model_dir: Path) -> tuple[int, int | None]:
    """(smallest max_length the build accepts, largest prompt + max_new_tokens it answers correctly or None).

    A windowed cache holds min(max_length, W + 16) positions and GQA refuses fewer than W, so max_length
    must reach W even for a short request. A build whose graph ignores the window (local_window_size -1,
    as onnxruntime-genai 0.18 builds Phi-3 unless told the layer types) is exact while every token is
    predicted from at most W tokens, prompt + max_new_tokens <= W + 1, and fails beyond W + 17.
    """
    got = built_window(model_dir)
    section, window = got["section"], int(got["section"].get("window_size") or 0)
    if not window:
        return 0, None
    if got["sliding_window_cache"] == [1]:
        return window, None
    if got["local_window_size"] == [-1] and not section.get("layers"):
        return 0, window + 1
    return 0, None


def known_window(model_dir: Path, model: str) -> tuple[int, str] | None:
    """(the model's sliding window, where that is known from) for a build: its folder's config.json when it has
    one (Microsoft's ONNX folders do), else the catalog's row for `model` (an alias or a hub id); None: no window."""
    config_file = model_dir / "config.json"
    if config_file.is_file():
        window = sliding_window_of(json.loads(config_file.read_text(encoding="utf-8")))
        return (window, f"its config.json says sliding_window={window}") if window else None
    from .. import catalog
    from ..hub import split_hub_id

    entry = catalog.catalog().get(model) or (found[0] if (found := catalog.for_repo(*split_hub_id(model))) else None)
    if entry is None or not entry.sliding_window:
        return None
    return entry.sliding_window, f"the catalog's {entry.alias} row ({entry.sliding_window_source})"


def missing_window_note(model_dir: Path, model: str) -> str:
    """What to tell a user whose build lacks the model's sliding window ('' when it has it, or the model has none).

    ONNX Runtime GenAI's builders of 2024 (0.3-0.5) wrote no sliding_window into genai_config.json and no window
    into the attention nodes, so Microsoft's 2024 Phi-3-mini-4k folders attend to the whole context where the
    model attends to its last 2047 tokens: identical up to the window, different past it (no failure, no warning).
    """
    known = known_window(model_dir, model)
    if known is None:
        return ""
    got = built_window(model_dir)
    if got["section"] or any(int(w) > 0 for w in got["local_window_size"]):
        return ""  # the window is built in (or the runtime keeps only it): window_limits covers the rest
    window, where = known
    return (f"this build has no sliding window, while the model attends to only its last {window} tokens ({where}): "
            f"genai_config.json has no sliding_window and the graph's attention has no window, so answers whose prompt "
            f"plus answer pass {window + 1} tokens differ from the model's. For the model's answers keep prompt + "
            "max_new_tokens within that, or export it with this phi3kit (prefer='export'), which builds the window in.")


# transformers 5 names every tokenizer.json-backed tokenizer "TokenizersBackend" in tokenizer_config.json.
# ONNX Runtime GenAI picks its own tokenizer by that class, and 0.13.1 (what the DirectML build resolves to on
# Windows) does not know the name: og.Tokenizer fails with "Unsupported tokenizer class: TokenizersBackend".
# Measured with 0.13.1 against the tokenizer.json itself: "LlamaTokenizer" reproduces Phi-3's SentencePiece-style
# BPE exactly (its 47 reference texts), "PreTrainedTokenizerFast" a byte-level BPE (the pocket's), and
# "PreTrainedTokenizerFast" on Phi-3's tokenizer differs on 11 of them. 0.18 gives the same ids with either.
UNKNOWN_TO_OLDER_RUNTIMES = ("TokenizersBackend",)


def runtime_tokenizer_class(tokenizer_json: dict[str, Any]) -> str:
    """The tokenizer_config class ONNX Runtime GenAI 0.13-0.18 reads as this tokenizer.json's kind."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    kinds = {p.get("type") for p in (pre.get("pretokenizers") or [pre]) if isinstance(p, dict)}
    return "PreTrainedTokenizerFast" if "ByteLevel" in kinds else "LlamaTokenizer"


def name_tokenizer_for_runtime(folder: Path) -> str | None:
    """Give a build's tokenizer_config.json a class every supported runtime knows; the class written, or None."""
    config_file = folder / "tokenizer_config.json"
    if not config_file.is_file() or not (folder / "tokenizer.json").is_file():
        return None
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if config.get("tokenizer_class") not in (None, *UNKNOWN_TO_OLDER_RUNTIMES):
        return None
    config["tokenizer_class"] = runtime_tokenizer_class(
        json.loads((folder / "tokenizer.json").read_text(encoding="utf-8")))
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return str(config["tokenizer_class"])


def builder_command(src: Path, out: Path, tmp_cache: Path, cfg: LoadConfig) -> list[str]:
    """The model builder command for this export, as a user would type it."""
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(src), "-o", str(out),
           "-p", cfg.precision, "-e", build_target(cfg), "-c", str(tmp_cache)]
    extra = []
    names = builder_dialect()
    if (size := block_size(cfg)) is not None:
        extra.append(f"{names.block_size}={size}")
    if (level := accuracy_level(cfg)) is not None:
        extra.append(f"{names.accuracy_level}={level}")
    if cfg.trust_remote_code:
        extra.append("hf_remote=true")
    return [*cmd, "--extra_options", *extra] if extra else cmd


def _probe_dir(root: Path) -> Path:
    """A model of three ONNX nodes with no layers: enough for og.Model to open a session on a provider."""
    import onnx
    from onnx import TensorProto, helper

    vocab = 4
    graph = helper.make_graph(
        [helper.make_node("Cast", ["input_ids"], ["ids_f"], to=TensorProto.FLOAT),
         helper.make_node("Unsqueeze", ["ids_f", "axis"], ["ids_u"]),
         helper.make_node("Expand", ["ids_u", "shape"], ["logits"])],
        "phi3kit-probe",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", vocab])],
        [helper.make_tensor("axis", TensorProto.INT64, [1], [2]),
         helper.make_tensor("shape", TensorProto.INT64, [3], [1, 1, vocab])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(root / "model.onnx"))
    decoder = {"filename": "model.onnx", "head_size": 16, "hidden_size": 16, "num_attention_heads": 1,
               "num_key_value_heads": 1, "num_hidden_layers": 0, "session_options": {"provider_options": []},
               "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                          "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
               "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                           "present_value_names": "present.%d.value"}}
    config = {"model": {"type": "phi3", "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 0,
                        "context_length": 8, "vocab_size": vocab, "decoder": decoder},
              "search": {"max_length": 8}}
    (root / "genai_config.json").write_text(json.dumps(config))
    return root


@cache
def probe(provider: str) -> str | None:
    """None if `provider` can open a session here, else the runtime's own error message.

    `og.is_dml_available()` and friends report how the package was compiled (here they say
    True for providers this build then refuses), so the honest test is to open a session.
    """
    import onnxruntime_genai as og

    with tempfile.TemporaryDirectory(prefix="phi3kit-probe-") as tmp:
        config = og.Config(str(_probe_dir(Path(tmp))))
        config.clear_providers()
        if provider != "cpu":
            config.append_provider(provider)
        try:
            og.Model(config)
        except Exception as exc:  # noqa: BLE001 - any failure means "cannot run here"; the message says why
            return str(exc).strip()
    return None


def unavailable_message(device: str, reason: str) -> str:
    """What is missing for `device`, the package that provides it, and the explicit way out."""
    package, requirements, needs = INSTALL[PROVIDERS[device]]
    dist = genai_distribution()
    installed = dist[0] if dist else "none"
    if installed == package:
        fix = f"{package} is installed, so the device or its driver is missing: {needs}."
    elif device == "DML" and sys.platform != "win32":
        fix = (f"DirectML is Windows-only: on Windows, pip install -r requirements/{requirements} installs "
               f"{package}. Here, use device='CUDA' on an NVIDIA GPU, or the CPU.")
    else:  # every flavour and its onnxruntime out first: they ship the same modules
        others = [*DISTRIBUTIONS, "onnxruntime", "onnxruntime-directml", "onnxruntime-gpu"]
        req = f"requirements\\{requirements}" if sys.platform == "win32" else f"requirements/{requirements}"
        fix = (f"Install {package} ({needs}): "
               + shell_commands([["-m", "pip", "uninstall", "-y", *others], ["-m", "pip", "install", "-r", req]])
               + " (one onnxruntime-genai flavour at a time: they ship the same module).")
    reason = reason.rstrip(".") + "." if reason else "no session could be opened."
    return (f"Device {device!r} is not available to the ortgenai backend here (installed: {installed}). "
            f"ONNX Runtime GenAI said: {reason} {fix} To run on the CPU instead, pass device='CPU', "
            f"or fallback_to_cpu=True to keep the {PROVIDERS[device]} build and run it on the CPU.")


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

    def __init__(self, model_dir: Path, cfg: LoadConfig) -> None:
        """Public attributes: `model` (the og.Model), `provider` (what it runs on), `fell_back`."""
        import onnxruntime_genai as og

        self.provider = self.provider_for(cfg)
        self.device = normalize_device(cfg.device)
        self.fell_back = self.provider != PROVIDERS[self.device]
        config = og.Config(str(model_dir))
        config.clear_providers()  # the build target's provider is in genai_config.json; the device decides
        if self.provider != "cpu":
            config.append_provider(self.provider)
        if cfg.runtime_config:
            config.overlay(json.dumps(cfg.runtime_config))  # merged into genai_config.json
        self.model = og.Model(config)
        self.window_floor, self.window_cap = window_limits(model_dir)
        self.window_note = missing_window_note(model_dir, cfg.model)
        genai = json.loads((model_dir / "genai_config.json").read_text(encoding="utf-8"))
        self.context = int(genai["model"].get("context_length") or 0)
        # The CPU keeps the KV cache in fp32 for int4, int8 and fp32 builds (fp16 builds: fp16).
        self.kv_element_bytes = 2.0 if cfg.precision == "fp16" else 4.0

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

    def stream(self, prompt_ids: list[int], gen: GenerationConfig, stop_ids: list[int]) -> Iterator[Token]:
        import numpy as np
        import onnxruntime_genai as og

        params = og.GeneratorParams(self.model)
        total = len(prompt_ids) + gen.max_new_tokens
        options: dict[str, Any] = {"max_length": self.search_max_length(total), "do_sample": gen.do_sample}
        if gen.ignore_eos:  # the generator finishes at its eos by itself; min_length keeps it going (masks eos)
            options["min_length"] = total
        if gen.do_sample:
            options.update(temperature=gen.temperature, top_p=gen.top_p, top_k=gen.top_k)
            if gen.seed is not None:
                options["random_seed"] = gen.seed
        params.set_search_options(**options)
        stops = set(stop_ids)
        model = self.model

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

    logits_source = "onnxruntime-genai generator.get_output('logits')"

    def logits(self, ids: list[int]) -> Any:
        import numpy as np
        import onnxruntime_genai as og

        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=self.search_max_length(len(ids) + 1))
        generator = og.Generator(self.model, params)
        generator.append_tokens(np.asarray([ids], dtype=np.int32))
        return np.array(generator.get_output("logits"))[0]

    def close(self) -> None:
        self.__dict__.pop("model", None)


def onnx_weights(model_file: Path) -> tuple[str, str, list[str]]:
    """(precision, recipe, external data files) of an ONNX decoder, read from its graph (not its weights).

    Quantized builds use MatMulNBits nodes, whose attributes say the bits, the block size and the
    accuracy level; float builds are told apart by their initializers' type.
    """
    try:
        import onnx
    except ImportError:  # the runtime does not need onnx: say what the folder is called instead
        name = model_file.parent.name
        guess = next((p for p in ("int4", "int8", "fp16", "fp32") if p in name), "unknown")
        return guess, f"{guess} (from the folder's name; install onnx to read it from the graph)", []
    model = onnx.load(str(model_file), load_external_data=False)
    data = sorted({e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"})
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    if nbits:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nbits[0].attribute}
        bits = int(attrs.get("bits", 4))
        recipe = f"MatMulNBits int{bits}, block {attrs.get('block_size', '?')}"
        if "accuracy_level" in attrs:
            recipe += f", accuracy level {attrs['accuracy_level']}"
        return f"int{bits}", recipe, data
    types = {t.data_type for t in model.graph.initializer}
    if onnx.TensorProto.FLOAT16 in types:
        return "fp16", "fp16 weights", data
    return "fp32", "fp32 weights", data


def run_builder(cmd: list[str], log: Log) -> None:
    """Run the model builder, logging its output without the per-weight chatter; raise with its tail."""
    start = time.perf_counter()
    rc, lines = run_logged(cmd, log, show=lambda line: bool(line) and not _NOISE.search(line))
    if rc != 0:
        tail = "\n".join(line for line in lines[-30:] if not _NOISE.search(line))
        raise ExportError(f"the ONNX Runtime GenAI model builder failed (exit {rc}):\n{tail}")
    log(f"Model builder finished in {time.perf_counter() - start:.1f} s.")
