"""phi3kit: learn and run Phi-3 locally, one notebook per route.

Notebooks import one thing: `import phi3kit as kit`. Each name below is a function or a class;
modules keep names of their own (`phi3kit.conversation`, `phi3kit.exporting`, `phi3kit.diagnostics`),
so `import phi3kit.<module> as m` always gives the module.
"""

from __future__ import annotations

from . import backends, bench
from .cache import ExportCache
from .catalog import models
from .checking import check_machine
from .config import DEFAULT_MODEL, GenerationConfig, LoadConfig
from .conversation import Conversation
from .diagnostics import doctor
from .errors import (
    CacheCorruptError,
    CachedEntryError,
    CheckReportError,
    ContextWindowError,
    DeviceNotFoundError,
    ExportError,
    ExportSettingError,
    MissingDependencyError,
    ModelSourceError,
    NotebookRunError,
    ParameterError,
    Phi3kitError,
    ResourceError,
    StorageError,
    TuningFileError,
    UnknownChoiceError,
    UnsafePathError,
)
from .exporting import checkpoint, export
from .generate import Response, Session, load
from .metrics import Metrics, record
from .tuning import tune
from .widgets import chat
from .workshop import pack, unpack

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "CacheCorruptError",
    "CachedEntryError",
    "CheckReportError",
    "ExportSettingError",
    "NotebookRunError",
    "ParameterError",
    "StorageError",
    "TuningFileError",
    "UnsafePathError",

    "ContextWindowError",
    "Conversation",
    "DeviceNotFoundError",
    "ExportCache",
    "ExportError",
    "GenerationConfig",
    "LoadConfig",
    "Metrics",
    "MissingDependencyError",
    "ModelSourceError",
    "Phi3kitError",
    "ResourceError",
    "Response",
    "Session",
    "UnknownChoiceError",
    "backends",
    "bench",
    "chat",
    "check_machine",
    "checkpoint",
    "doctor",
    "export",
    "load",
    "models",
    "pack",
    "record",
    "tune",
    "unpack",
]
