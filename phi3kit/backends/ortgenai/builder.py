"""ONNX Runtime GenAI's model builder: its option names per release (dialects), the command the kit runs, the
traps that would make it build a broken model, and running it without its per-weight chatter."""

from __future__ import annotations

import importlib.util
import re
import sys
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from ...config import LoadConfig
from ...errors import ExportError, UnknownChoiceError
from ...procs import run_logged
from ..base import Log
from .providers import PROVIDERS, normalize_device

TARGETS = tuple(PROVIDERS.values())  # what the builder's -e accepts among those the kit supports
BLOCK_SIZES = (16, 32, 64, 128, 256)  # the builder's MatMulNBits block sizes (int4 and int8)
DEFAULT_BLOCK_SIZE = 32
# MatMulNBits compute type. On a 104M-parameter model here, int8 weights decode at 1.5 tokens/s with
# level 1 and 43.5 with level 4 (int8 activations), which is why the builder defaults to 4 on CPU.
ACCURACY_LEVELS = {1: "fp32", 2: "fp16", 3: "bf16", 4: "int8 activations"}
# Builder output that is one line per weight or per progress tick: kept for error reports, not logged.
_NOISE = re.compile(r"matmul_nbits_quantizer \[INFO\] - (skip to|start to|complete)|^Saving .*it/s\]|^\s*\d+it \[|"
                    r"^Loading weights:")

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


def run_builder(cmd: list[str], log: Log) -> None:
    """Run the model builder, logging its output without the per-weight chatter; raise with its tail."""
    start = time.perf_counter()
    rc, lines = run_logged(cmd, log, show=lambda line: bool(line) and not _NOISE.search(line))
    if rc != 0:
        tail = "\n".join(line for line in lines[-30:] if not _NOISE.search(line))
        raise ExportError(f"the ONNX Runtime GenAI model builder failed (exit {rc}):\n{tail}")
    log(f"Model builder finished in {time.perf_counter() - start:.1f} s.")
