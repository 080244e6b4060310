"""The pocket model: a tiny, really trained Phi-3 that ships inside phi3kit.

`model="pocket"` needs no download, so workshops and tests run offline in seconds. It knows
only the questions in qa.jsonl; it shows that a pipeline works, not what Phi-3 can do.
"""

from __future__ import annotations

import json
from pathlib import Path

BANNER = "The pocket model is a tiny teaching model with Phi-3's architecture, not Phi-3's quality."

MODEL_DIR: Path = Path(__file__).resolve().parent / "model"
# The pocket ready-made for OpenVINO and ONNX Runtime GenAI, so it runs where there is no PyTorch to export with:
# `python tools/make_pocket_ready.py` rebuilds them (after a retrain) with the kit's own export.
READY_DIR: Path = Path(__file__).resolve().parent / "ready"
QA_FILE: Path = Path(__file__).resolve().parent / "qa.jsonl"
TRAIN_COMMAND = "python tools/train_pocket.py"

__all__ = ["BANNER", "MODEL_DIR", "QA_FILE", "READY_DIR", "TRAIN_COMMAND", "load_qa", "path", "ready_dir"]


def path() -> Path:
    """The shipped model folder; raises FileNotFoundError with the rebuild command if absent."""
    if not (MODEL_DIR / "model.safetensors").is_file() or not (MODEL_DIR / "config.json").is_file():
        raise FileNotFoundError(f"pocket model weights are missing in {MODEL_DIR}; rebuild them with `{TRAIN_COMMAND}`")
    return MODEL_DIR


def load_qa() -> list[dict]:
    """The training questions and answers: dicts with keys question and answer, and lang where not English."""
    with QA_FILE.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def ready_dir(name: str) -> Path:
    """One of the shipped ready-made folders (e.g. 'openvino-int4'); raises with the rebuild command if absent."""
    folder = READY_DIR / name
    if not folder.is_dir():
        raise FileNotFoundError(f"the pocket's ready-made folder {name!r} is missing in {READY_DIR}; rebuild them "
                                "with `python tools/make_pocket_ready.py`")
    return folder
