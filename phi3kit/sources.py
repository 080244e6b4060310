"""Where a model comes from: a hub id, a local folder, or the shipped pocket model."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from .errors import ModelSourceError

PHI3_MODEL_TYPES = ("phi3",)
# What a Phi-3 checkpoint needs; remote code (*.py) is fetched only when trusted explicitly.
_HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.txt", "*.md"]
_HASH_LIMIT = 64 * 2**20  # hash small files; large weights are fingerprinted by size and mtime


@dataclass(frozen=True)
class ModelSource:
    """A resolved model folder plus what the export cache needs to key it."""

    name: str
    path: Path
    kind: str  # "pocket" | "local" | "hub"
    revision: str | None = None

    @cached_property
    def config(self) -> dict[str, Any]:
        return json.loads((self.path / "config.json").read_text())

    @property
    def context_length(self) -> int:
        return int(self.config.get("max_position_embeddings", 4096))

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

    def cache_key(self) -> dict[str, Any]:
        name = self.name if self.kind != "local" else str(self.path)
        return {"model": name, "kind": self.kind, "revision": self.revision, "fingerprint": self.fingerprint}


def check_phi3(path: Path, name: str) -> None:
    """Refuse folders that are not Phi-3 family checkpoints, before any export starts."""
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ModelSourceError(f"{name!r}: no config.json in {path}. Point model= at a Hugging Face model folder.")
    try:
        cfg = json.loads(cfg_file.read_text())
    except ValueError as exc:
        raise ModelSourceError(f"{name!r}: config.json is not valid JSON ({exc}).") from exc
    mtype = cfg.get("model_type")
    if mtype not in PHI3_MODEL_TYPES:
        raise ModelSourceError(
            f"{name!r} is model_type {mtype!r}, not a Phi-3 family model. phi3kit runs Phi-3, "
            "Phi-3.5 and Phi-4-mini checkpoints (model_type 'phi3'), e.g. microsoft/Phi-3-mini-4k-instruct "
            "or model='pocket'."
        )


def is_hub_id(model: str) -> bool:
    """`org/name` by huggingface_hub's own rules (validate_repo_id), with no whitespace anywhere.

    A name without an organisation is never taken for a hub id: the kit reads such names as aliases.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if "/" not in model or any(c.isspace() or not c.isprintable() for c in model):
        return False
    try:
        validate_repo_id(model)
    except HFValidationError:
        return False
    return True


def resolve(model: str, revision: str | None = None, trust_remote_code: bool = False) -> ModelSource:
    """Turn `model=` into a local folder, downloading from the hub when it is a hub id."""
    if not isinstance(model, str) or not model.strip():
        raise ModelSourceError("model must be a hub id, a local folder or 'pocket'.")
    if model == "pocket":
        from . import pocket

        src = ModelSource("pocket", pocket.path(), "pocket")
    elif Path(model).expanduser().exists():
        src = ModelSource(model, Path(model).expanduser().resolve(), "local")
    elif is_hub_id(model):
        src = ModelSource(model, _download(model, revision, trust_remote_code), "hub", revision)
    else:
        raise ModelSourceError(
            f"{model!r} is neither an existing folder nor a hub id like 'microsoft/Phi-3-mini-4k-instruct'. "
            "Fix: check the path, or use model='pocket' for the offline teaching model."
        )
    check_phi3(src.path, model)
    return src


def _download(repo_id: str, revision: str | None, trust_remote_code: bool) -> Path:
    """Fetch a snapshot with huggingface_hub (progress bars, resumable; HF_TOKEN read from the env)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    patterns = _HUB_PATTERNS + (["*.py"] if trust_remote_code else [])
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except LocalEntryNotFoundError as exc:
        raise ModelSourceError(
            f"Cannot download {repo_id!r}: the hub is unreachable and it is not in the local hub cache. "
            "Fix: connect to the internet once, or use model='pocket' offline."
        ) from exc
    except HFValidationError as exc:
        raise ModelSourceError(f"{repo_id!r} is not a valid hub id ({exc}).") from exc
    except HfHubHTTPError as exc:
        raise ModelSourceError(
            f"Cannot download {repo_id!r} ({type(exc).__name__}). Check the id and revision; gated models need "
            "`huggingface-cli login` or the HF_TOKEN environment variable."
        ) from exc
