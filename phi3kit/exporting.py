"""Everything before loading: validate the choices, resolve the model, check resources, export it (or reuse it)."""

from __future__ import annotations

from dataclasses import replace

from .backends import get
from .backends.base import Log
from .cache import Export, ExportCache
from .config import DEFAULT_MODEL, LoadConfig
from .preflight import SKIP_ENV, FreeSpace, PreflightCache, preflight, shortfalls, skip_requested
from .sources import ModelSource, resolve


def complete(cfg: LoadConfig) -> LoadConfig:
    """`cfg` with the backend's defaults filled in (precision=None: the backend's default precision)."""
    if cfg.precision is None:
        return replace(cfg, precision=get(cfg.backend).default_precision)
    return cfg


def prepare(cfg: LoadConfig, log: Log = print, *, skip_preflight: bool | None = None,
            free: FreeSpace | None = None) -> tuple[ModelSource, Export]:
    """Validate choices, resolve the model, check resources, export it: everything before loading.

    `free` replaces the measured free disk and RAM (for tests); `skip_preflight` (or the
    PHI3KIT_SKIP_PREFLIGHT=1 environment variable) turns a resource shortfall into a warning.
    """
    cfg = complete(cfg)
    backend = get(cfg.backend)
    backend.check(cfg)  # before any download: bad choices fail in milliseconds
    if cfg.trust_remote_code:
        log("trust_remote_code=True: this runs Python code from the model repository. Only do so for code you trust.")
    source = resolve(cfg.model, cfg.revision, cfg.trust_remote_code)
    root = ExportCache(cfg.cache_dir).root
    skip = skip_requested(skip_preflight)

    def check() -> None:
        if not skip:
            preflight(source, cfg, root, free)
        else:
            for problem in shortfalls(source, cfg, root, free):
                log(f"Preflight skipped on request ({SKIP_ENV} / skip_preflight), going ahead although: {problem}")

    return source, backend.export(source, cfg, PreflightCache(root, check), log)


def export(model: str = DEFAULT_MODEL, backend: str = "openvino", precision: str | None = None, log: Log = print,
           *, skip_preflight: bool | None = None, **options: object) -> Export:
    """Export `model` for `backend` at `precision`; returns the cache entry (built or reused)."""
    cfg = LoadConfig(model=model, backend=backend, precision=precision, **options)  # type: ignore[arg-type]
    return prepare(cfg, log, skip_preflight=skip_preflight)[1]
