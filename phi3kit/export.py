"""Export a model for a backend into the cache (or reuse the cached export)."""

from __future__ import annotations

from .backends import get
from .backends.base import Log
from .cache import Export, ExportCache
from .config import LoadConfig
from .sources import ModelSource, resolve


def prepare(cfg: LoadConfig, log: Log = print) -> tuple[ModelSource, Export]:
    """Validate choices, resolve the model, export it: everything before loading."""
    backend = get(cfg.backend)
    backend.check(cfg)  # before any download: bad choices fail in milliseconds
    if cfg.trust_remote_code:
        log("trust_remote_code=True: this runs Python code from the model repository. Only do so for code you trust.")
    source = resolve(cfg.model, cfg.revision, cfg.trust_remote_code)
    return source, backend.export(source, cfg, ExportCache(cfg.cache_dir), log)


def export(model: str = "pocket", backend: str = "openvino", precision: str = "int4", log: Log = print,
           **options: object) -> Export:
    """Export `model` for `backend` at `precision`; returns the cache entry (built or reused)."""
    return prepare(LoadConfig(model=model, backend=backend, precision=precision, **options), log)[1]  # type: ignore[arg-type]
