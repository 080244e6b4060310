"""Backend registry: one line per backend package (phi3kit/backends/<name>/). Entries are import strings so
`import phi3kit` stays light."""

from __future__ import annotations

import importlib
from pathlib import Path

from ..errors import UnknownChoiceError
from .base import Backend

REGISTRY: dict[str, str] = {
    "transformers": "phi3kit.backends.transformers:TransformersBackend",
    "openvino": "phi3kit.backends.openvino:OpenVINOBackend",
    "ortgenai": "phi3kit.backends.ortgenai:OrtGenAIBackend",
    "llamacpp": "phi3kit.backends.llamacpp:LlamaCppBackend",
    "npu-library": "phi3kit.backends.openvino.npu_library:NPULibraryBackend",
}


def names() -> list[str]:
    return list(REGISTRY)


def get(name: str) -> type[Backend]:
    """The backend class for `name`, imported on first use."""
    if name not in REGISTRY:
        raise UnknownChoiceError("backend", name, REGISTRY)
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def folder_format(folder: Path) -> tuple[str, str] | None:
    """(format, the backend that loads it) for a ready-made folder (an OpenVINO IR, an ONNX Runtime GenAI
    folder...), None for anything else: each backend names the file that marks its format."""
    for name in REGISTRY:
        backend = get(name)
        if backend.ready_made_marker and backend.ready_made_format and (folder / backend.ready_made_marker).is_file():
            return backend.ready_made_format, name
    return None


__all__ = ["Backend", "REGISTRY", "folder_format", "get", "names"]
