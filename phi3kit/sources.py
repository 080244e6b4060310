"""Where a model comes from: a catalog alias, a hub id, a local folder, or the shipped pocket model.

A folder is one of three things: a PyTorch checkpoint (config.json and weights, what the kit exports
from), an OpenVINO IR (openvino_model.xml), or an ONNX Runtime GenAI model (genai_config.json; the
builder writes no config.json). `backends.folder_format()` tells them apart; the ready-made ones are loaded as they are.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from .errors import ModelSourceError

PHI3_MODEL_TYPES = ("phi3",)
_HASH_LIMIT = 64 * 2**20  # hash small files; large weights are fingerprinted by size and mtime


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ModelSourceError(f"{path} is not valid JSON ({exc}).") from exc
    return data if isinstance(data, dict) else {}


@dataclass(frozen=True)
class ModelSource:
    """A model folder plus what the export cache needs to key it."""

    name: str
    path: Path
    kind: str  # "pocket" | "local" | "hub"
    revision: str | None = None

    @cached_property
    def config(self) -> dict[str, Any]:
        """config.json, or {} for a folder made by ONNX Runtime GenAI's builder (which writes none)."""
        cfg = self.path / "config.json"
        return _json(cfg) if cfg.is_file() else {}

    @cached_property
    def genai_config(self) -> dict[str, Any]:
        cfg = self.path / "genai_config.json"
        return _json(cfg) if cfg.is_file() else {}

    @property
    def context_length(self) -> int:
        if "max_position_embeddings" in self.config:
            return int(self.config["max_position_embeddings"])
        return int(self.genai_config.get("model", {}).get("context_length", 4096))

    @cached_property
    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for f in sorted(p for p in self.path.rglob("*") if p.is_file()):
            st = f.stat()
            h.update(f"{f.relative_to(self.path).as_posix()}:{st.st_size}".encode())
            if st.st_size <= _HASH_LIMIT:
                h.update(f.read_bytes())
            else:
                h.update(str(st.st_mtime_ns).encode())
        return h.hexdigest()[:16]


def check_phi3(path: Path, name: str) -> None:
    """Refuse folders that are not Phi-3 family models, before any export or load starts.

    A checkpoint or an IR says so in config.json's model_type; a folder built by ONNX Runtime GenAI's
    builder has no config.json, and says so in genai_config.json's model.type.
    """
    if (path / "config.json").is_file():
        mtype, where = _json(path / "config.json").get("model_type"), "model_type"
    elif (path / "genai_config.json").is_file():
        mtype, where = _json(path / "genai_config.json").get("model", {}).get("type"), "genai_config.json model.type"
    else:
        raise ModelSourceError(f"{name!r}: no config.json (nor genai_config.json) in {path}. Point model= at a "
                               "Hugging Face model folder, an OpenVINO IR or an ONNX Runtime GenAI model folder.")
    if mtype not in PHI3_MODEL_TYPES:
        raise ModelSourceError(
            f"{name!r} is {where} {mtype!r}, not a Phi-3 family model. phi3kit runs Phi-3, Phi-3.5 and Phi-4-mini "
            "models (type 'phi3'), e.g. model='phi-3-mini-4k' (`phi3kit models` lists them) or model='pocket'."
        )


def is_hub_id(model: str) -> bool:
    """`org/name` (or `org/name/sub/folder` for one build of a multi-build repo) by huggingface_hub's own rules
    (validate_repo_id), with no whitespace anywhere.

    A name without an organisation is never taken for a hub id: the kit reads such names as aliases.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from .hub import split_hub_id

    if "/" not in model or any(c.isspace() or not c.isprintable() for c in model):
        return False
    if model.startswith(("/", ".", "~")) or "\\" in model or ":" in model:  # paths, never hub ids
        return False
    repo, sub = split_hub_id(model)
    if sub and any(part in ("", ".", "..") for part in sub.split("/")):
        return False
    try:
        validate_repo_id(repo)
    except HFValidationError:
        return False
    return True


def local_folder(model: str) -> Path | None:
    """`model` as an existing folder, or None."""
    path = Path(model).expanduser()
    return path.resolve() if path.exists() else None


def resolve(model: str, revision: str | None = None, trust_remote_code: bool = False, *,
            route: str = "checkpoint", catalog_row: str | None = None, fallback: str = "") -> ModelSource:
    """Turn a hub id, a folder or 'pocket' into a local folder, downloading the route's files for a hub id."""
    from .hub import download, split_hub_id

    if not isinstance(model, str) or not model.strip():
        raise ModelSourceError("model must be a catalog alias, a hub id, a local folder or 'pocket'.")
    if model == "pocket":
        from . import pocket

        src = ModelSource("pocket", pocket.path(), "pocket")
    elif (path := local_folder(model)) is not None:
        src = ModelSource(model, path, "local")
    elif is_hub_id(model):
        repo, sub = split_hub_id(model)
        folder = download(repo, route=route, revision=revision, subfolder=sub, trust_remote_code=trust_remote_code,
                          catalog_row=catalog_row, fallback=fallback)
        src = ModelSource(model, folder, "hub", revision)
    else:
        raise ModelSourceError(
            f"{model!r} is neither an existing folder nor a hub id like 'microsoft/Phi-3-mini-4k-instruct'. "
            "Fix: check the path, or use a catalog alias (`phi3kit models`), or model='pocket' offline."
        )
    check_phi3(src.path, model)
    return src
