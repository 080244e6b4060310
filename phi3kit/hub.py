"""Hugging Face hub downloads: only the files a route needs, with huggingface_hub's progress bars and resume.

A PyTorch checkpoint, an OpenVINO IR and an ONNX Runtime GenAI folder need different files, and
Microsoft's ONNX repos hold several builds side by side: each route asks for its own patterns, under
its subfolder. HF_TOKEN is read from the environment by huggingface_hub and never printed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from . import env
from .errors import ModelSourceError

COMMON = ["*.json", "*.jinja", "tokenizer.model", "*.txt", "*.md"]
PATTERNS: dict[str, list[str]] = {
    # What the kit exports from (and PyTorch runs); remote code (*.py) only when trusted explicitly.
    "checkpoint": ["*.safetensors", *COMMON],
    "openvino": ["openvino_model.xml", "openvino_model.bin", "openvino_tokenizer.xml", "openvino_tokenizer.bin",
                 "openvino_detokenizer.xml", "openvino_detokenizer.bin", *COMMON],
    "ortgenai": ["*.onnx", "*.onnx.data", "*.onnx_data", "*.data", *COMMON],
}


def split_hub_id(model: str) -> tuple[str, str | None]:
    """'org/name' -> ('org/name', None); 'org/name/sub/folder' -> ('org/name', 'sub/folder')."""
    parts = model.strip("/").split("/")
    return "/".join(parts[:2]), ("/".join(parts[2:]) or None)


def patterns(route: str, subfolder: str | None = None, trust_remote_code: bool = False) -> list[str]:
    """The allow patterns of one route, under `subfolder` (ONNX repos keep one build per folder)."""
    base = PATTERNS[route] + (["*.py"] if trust_remote_code and route == "checkpoint" else [])
    return [f"{subfolder.strip('/')}/{p}" for p in base] if subfolder else base


def download(repo_id: str, *, route: str, revision: str | None = None, subfolder: str | None = None,
             trust_remote_code: bool = False, catalog_row: str | None = None, fallback: str = "") -> Path:
    """The local folder of `repo_id` (its `subfolder`), fetching the route's files if the hub cache lacks them.

    `catalog_row` names the catalog entry the id came from, so a wrong name says which row to fix;
    `fallback` is the way out to suggest (e.g. prefer='export').
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    what = f"{repo_id}/{subfolder}" if subfolder else repo_id
    row = f" The catalog row is {catalog_row}." if catalog_row else ""
    way_out = f" Fall back with {fallback}." if fallback else ""
    allow = patterns(route, subfolder, trust_remote_code)
    try:
        try:
            snapshot = Path(snapshot_download(repo_id, revision=revision, allow_patterns=allow))
        except Exception as exc:  # noqa: BLE001 - only offline errors are retried, the rest re-raised as they are
            if not _offline(exc):
                raise
            # huggingface_hub 1.22+ asks the hub's tree API for a pinned revision even when HF_HUB_OFFLINE is set
            # (OfflineModeIsEnabled), and a laptop without network gets a connection error: the cache answers.
            snapshot = Path(snapshot_download(repo_id, revision=revision, allow_patterns=allow,
                                              local_files_only=True))
    except LocalEntryNotFoundError as exc:
        raise ModelSourceError(
            f"Cannot download {what!r}: the hub is unreachable (or HF_HUB_OFFLINE is set) and it is not in the "
            "local hub cache. Fix: connect to the internet once, use a workshop pack (point PHI3KIT_CACHE at the "
            f"pack folder, or `phi3kit unpack` it), or model='pocket' offline.{way_out}") from exc
    except (RepositoryNotFoundError, GatedRepoError) as exc:
        gated = isinstance(exc, GatedRepoError)
        raise ModelSourceError(
            f"{repo_id!r} was not found on the hub" + (" (it is gated: log in with `hf auth login` or set HF_TOKEN)"
                                                      if gated else "") + f".{row}{way_out}") from exc
    except RevisionNotFoundError as exc:
        raise ModelSourceError(f"{repo_id!r} has no revision {revision!r} on the hub.{row}") from exc
    except HFValidationError as exc:
        raise ModelSourceError(f"{repo_id!r} is not a valid hub id ({exc}).") from exc
    except (EntryNotFoundError, HfHubHTTPError) as exc:
        raise ModelSourceError(
            f"Cannot download {what!r} ({type(exc).__name__}). Check the id and revision; gated models need "
            f"`hf auth login` or the HF_TOKEN environment variable.{row}{way_out}") from exc
    folder = snapshot / subfolder if subfolder else snapshot
    if not folder.is_dir() or not any(folder.iterdir()):
        raise ModelSourceError(f"{what!r}: the repo has no files for this route"
                               + (f" (no folder {subfolder!r} in it)" if subfolder else "") + f".{row}{way_out}")
    return folder


def _offline(exc: BaseException) -> bool:
    """The hub could not be asked (offline mode, no network), as opposed to answering no."""
    import httpx  # huggingface_hub 1.x speaks HTTP through it
    from huggingface_hub.errors import OfflineModeIsEnabled

    return isinstance(exc, (OfflineModeIsEnabled, httpx.TransportError))


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Inside the block, loads read the hub cache (and packs) only: nothing is downloaded.

    huggingface_hub reads HF_HUB_OFFLINE when it is imported, so an imported hub is switched too.
    """
    import sys

    constants = sys.modules.get("huggingface_hub.constants")
    previous = getattr(constants, "HF_HUB_OFFLINE", False)
    with env.set_within(env.HF_HUB_OFFLINE, "1"):
        if constants is not None:
            constants.HF_HUB_OFFLINE = True
        try:
            yield
        finally:
            if constants is not None:
                constants.HF_HUB_OFFLINE = previous
