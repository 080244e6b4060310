"""What an ONNX Runtime GenAI folder holds: its weights' precision and recipe, read from the graph, and a tokenizer
class every supported runtime reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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

