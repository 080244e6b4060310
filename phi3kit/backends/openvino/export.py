"""OpenVINO exports: the optimum-cli command (int4 settings, group-size fallbacks), what a ready-made IR's weights
are, and OpenVINO tokenizer models converted for an IR that shipped without them."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path
from typing import Any

from ...cache import ExportCache
from ...config import LoadConfig
from ...errors import ExportError, ModelSourceError, UnknownChoiceError
from ...machine import major_minor as major_minor  # the openvino package imports it from here
from ...procs import run_logged
from ..base import Log

DEFAULT_PRECISION = "int4"  # what precision=None means for OpenVINO
# The seed tutorial's int4 recipe; the group size must divide every weight's input dim (docs/compatibility.md).
INT4_DEFAULTS = {"group_size": 128, "ratio": 0.6}
# "int4-cw": every layer int4, symmetric, one scale per output channel (the NPU's format, and a fast one on CPUs).
INT4_CW = {"group_size": -1, "ratio": 1.0, "sym": True}
FALLBACKS = ("adjust", "ignore", "error")
IR_FILES = ("openvino_model.xml", "openvino_model.bin")
TOKENIZER_FILES = ("openvino_tokenizer.xml", "openvino_tokenizer.bin", "openvino_detokenizer.xml",
                   "openvino_detokenizer.bin")
EXPORTER = ("optimum-intel", "nncf", "transformers")  # recorded in each export's manifest, not in its key


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
    precision = cfg.precision or DEFAULT_PRECISION
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
