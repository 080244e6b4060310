"""Backend registry. Entries are import strings so `import phi3kit` stays light."""

from __future__ import annotations

import importlib

from ..errors import UnknownChoiceError
from .base import Backend

REGISTRY: dict[str, str] = {
    "transformers": "phi3kit.backends.transformers:TransformersBackend",
    "openvino": "phi3kit.backends.openvino:OpenVINOBackend",
    "ortgenai": "phi3kit.backends.ortgenai:OrtGenAIBackend",
    "llamacpp": "phi3kit.backends.llamacpp:LlamaCppBackend",
    "npu-library": "phi3kit.backends.npu_library:NPULibraryBackend",
}


def names() -> list[str]:
    return list(REGISTRY)


def get(name: str) -> type[Backend]:
    """The backend class for `name`, imported on first use."""
    if name not in REGISTRY:
        raise UnknownChoiceError("backend", name, REGISTRY)
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


__all__ = ["Backend", "REGISTRY", "get", "names"]
