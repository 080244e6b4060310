"""The export's child processes: converting (vocab.convert) and quantizing with llama_model_quantize, run as
`python -c` children and logged without their per-tensor chatter."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ...errors import ExportError
from ...procs import python_command, run_logged
from ..base import Log
from .install import import_llama
from .vocab import convert

FTYPES = {"q4_k_m": "Q4_K_M", "q4_0": "Q4_0", "q8_0": "Q8_0", "f16": "F16", "bf16": "BF16"}
QUANTIZED = ("q4_k_m", "q4_0", "q8_0")
INTERMEDIATE = "f16"  # what the converter writes before llama_model_quantize (llama.cpp's own recipe)
# Converter and quantizer output that is one line per tensor, a progress bar, the chat template or the banner
# about an unknown pre-tokenizer (the kit's own step follows it): kept for error reports, not logged.
_NOISE = re.compile(r"^INFO:hf-to-gguf:(blk\.|output|token_embd|rope_factors)|^WARNING:hf-to-gguf:(\*\*|$)|"
                    r"^INFO:gguf\.vocab:Setting chat_template|^\[\s*\d+/\s*\d+\]|^llama_model_loader: ")
_LOGGER_LINE = re.compile(r"^(INFO|WARNING|ERROR|CRITICAL):")  # the converter's logging (not template text, bars)


def tool_command(*args: str | Path) -> list[str]:
    return python_command("phi3kit.backends.llamacpp.tools:tool_main", *args)


def tool_main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the export's child processes: `convert TREE MODEL_DIR OUT TYPE` or `quantize IN OUT TYPE N`."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["convert"]:
        convert(Path(args[1]), Path(args[2]), Path(args[3]), args[4])
    elif args[:1] == ["quantize"]:
        sys.exit(quantize(Path(args[1]), Path(args[2]), args[3], int(args[4])))
    else:
        sys.exit(f"usage: convert TREE MODEL_DIR OUT f16|bf16 | quantize IN OUT TYPE THREADS (got {args})")



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

