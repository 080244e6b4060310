"""phi3kit: learn and run Phi-3 locally, one notebook per route.

Notebooks import one thing: `import phi3kit as kit`.
"""

from __future__ import annotations

from . import backends
from .cache import ExportCache
from .config import DEFAULT_MODEL, GenerationConfig, LoadConfig
from .doctor import doctor
from .errors import (
    ContextWindowError,
    DeviceNotFoundError,
    ExportError,
    MissingDependencyError,
    ModelSourceError,
    Phi3kitError,
    UnknownChoiceError,
)
from .export import export
from .generate import Response, Session, load
from .metrics import Metrics

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "ContextWindowError",
    "DeviceNotFoundError",
    "ExportCache",
    "ExportError",
    "GenerationConfig",
    "LoadConfig",
    "Metrics",
    "MissingDependencyError",
    "ModelSourceError",
    "Phi3kitError",
    "Response",
    "Session",
    "UnknownChoiceError",
    "backends",
    "doctor",
    "export",
    "load",
]
