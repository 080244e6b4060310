"""Everything before loading: where the model comes from, and the folder the backend will load.

`model=` is a catalog alias, a hub id (`org/name`, or `org/name/sub/folder` for one build of a
multi-build ONNX repo) or a local folder. Each names one of three routes:

* ready-made: an OpenVINO IR or ONNX Runtime GenAI folder someone already converted (the catalog's
  rows, a hub repo, a local folder), loaded as it is: no export, no PyTorch;
* export: the kit converts the PyTorch checkpoint (its own recipe: the seed's int4 by default), once,
  into its cache;
* checkpoint: backends that read the checkpoint themselves (PyTorch).

`prefer="ready-made" | "export"` picks between the first two; by default a catalog model is ready-made
where its catalog has a row for the backend, precision and device, and export-only settings
(group_size=, ratio=...) mean export. Cache entries are keyed by what was asked for (the model's name,
the settings, the runtime's version), so an entry, one from a workshop pack included, is found
before anything is downloaded.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from . import catalog
from .backends import folder_format, get
from .backends.base import Backend, Log
from .cache import Export, ExportCache, copy_files
from .config import DEFAULT_MODEL, LoadConfig
from .errors import MissingDependencyError, ModelSourceError, UnknownChoiceError
from .preflight import SKIP_ENV, FreeSpace, Job, count_parameters, preflight, shortfalls, skip_requested
from .sources import ModelSource, is_hub_id, local_folder, resolve

_DEFAULTS = {f.name: f.default for f in fields(LoadConfig)}


def complete(cfg: LoadConfig) -> LoadConfig:
    """`cfg` with the backend's defaults filled in (precision=None: the backend's default precision)."""
    if cfg.precision is None:
        return replace(cfg, precision=get(cfg.backend).default_precision)
    return cfg


@dataclass
class Plan:
    """Which route a request takes, decided before anything is downloaded."""

    route: str  # "ready-made" | "export" | "checkpoint"
    checkpoint: str = ""  # what an export (or PyTorch) reads: a hub id, a folder, or "pocket"
    folder: Path | None = None  # a ready-made folder already on this machine
    model: catalog.CatalogModel | None = None
    row: catalog.ReadyMade | None = None
    repo: str | None = None  # a ready-made hub repo...
    subfolder: str | None = None  # ...and its build folder


@dataclass
class Prepared:
    """What `prepare` settled, carried to the load instead of worked out again: the config with its precision
    decided (the backend's default, or a ready-made folder's own), the backend, the route, where the weights came
    from and the folder to load. Unpacks as (source, export), as prepare's tuple did."""

    config: LoadConfig
    backend: type[Backend]
    plan: Plan
    source: ModelSource
    export: Export

    def __iter__(self) -> Iterator[Any]:
        return iter((self.source, self.export))

    def __getitem__(self, index: int) -> Any:
        return (self.source, self.export)[index]


def export_only_settings(cfg: LoadConfig, backend: type[Backend]) -> list[str]:
    """The settings given that only an export uses (a ready-made folder carries its publisher's recipe)."""
    return [f"{name}={getattr(cfg, name)!r}" for name in backend.export_only if getattr(cfg, name) != _DEFAULTS[name]]


def plan(cfg: LoadConfig) -> Plan:
    """The route for `cfg` (its precision already complete), or the error that says why there is none."""
    backend = get(cfg.backend)
    model, prefer = cfg.model, cfg.prefer
    if prefer not in (None, *catalog.PREFER):
        raise UnknownChoiceError("prefer", prefer, catalog.PREFER)
    export_only = export_only_settings(cfg, backend)
    if prefer == "ready-made" and export_only:
        raise UnknownChoiceError(
            "setting for prefer='ready-made'", ", ".join(export_only), ["none"],
            hint="These settings shape the kit's own export; a ready-made folder carries its publisher's recipe. "
                 "Drop them, or use prefer='export'.")
    if not isinstance(model, str) or not model.strip():
        raise ModelSourceError("model must be a catalog alias, a hub id, a local folder or 'pocket'.")
    if model != "pocket" and (folder := local_folder(model)) is not None:
        return _plan_folder(folder, cfg, backend, export_only)
    if is_hub_id(model):
        return _plan_hub(model, cfg, backend, export_only)
    if "/" in model or "\\" in model:
        raise ModelSourceError(
            f"{model!r} is neither an existing folder nor a hub id like 'microsoft/Phi-3-mini-4k-instruct'. "
            "Fix: check the path, use a catalog alias (`phi3kit models`), or model='pocket' offline.")
    entry = catalog.lookup(model)  # a mistyped alias lists the aliases: never a hub download
    if backend.reads_checkpoint:
        return Plan("checkpoint", checkpoint=entry.checkpoint, model=entry)
    row = entry.ready_made_for(backend.name, cfg.precision or "", cfg.device)
    if prefer == "ready-made" and row is None:
        raise UnknownChoiceError(
            f"precision and device for ready-made {entry.alias} on {backend.name}", f"{cfg.precision} on {cfg.device}",
            entry.ready_made_choices(backend.name) or ["none in the catalog"],
            hint=f"Use prefer='export' to export it from {entry.checkpoint}.")
    if row is not None and prefer != "export" and not export_only:
        return Plan("ready-made", model=entry, row=row, repo=row.repo, subfolder=row.subfolder)
    return Plan("export", checkpoint=entry.checkpoint, model=entry)


def _plan_folder(folder: Path, cfg: LoadConfig, backend: type[Backend], export_only: list[str]) -> Plan:
    found = folder_format(folder)
    if found is None:
        if cfg.prefer == "ready-made":
            raise ModelSourceError(f"{folder} holds no ready-made model (no openvino_model.xml, no "
                                   "genai_config.json). Drop prefer='ready-made' to export it.")
        return Plan("checkpoint" if backend.reads_checkpoint else "export", checkpoint=str(folder))
    kind, loader = found
    if backend.ready_made_format != kind:
        raise ModelSourceError(
            f"{folder} holds a ready-made {kind} model, which backend {backend.name!r} cannot load. Fix: "
            f"backend={loader!r}, or point model= at the PyTorch checkpoint (or a catalog alias) to run it here.")
    if cfg.prefer == "export" or export_only:
        why = ", ".join(export_only) or "prefer='export'"
        raise ModelSourceError(
            f"{folder} is already an exported {kind} model; {why} asks for an export, which starts from the "
            "PyTorch checkpoint. Fix: point model= at the checkpoint (or a catalog alias), or drop those settings.")
    return Plan("ready-made", folder=folder)


def _plan_hub(model: str, cfg: LoadConfig, backend: type[Backend], export_only: list[str]) -> Plan:
    from .hub import split_hub_id

    repo, sub = split_hub_id(model)
    known = catalog.for_repo(repo, sub)
    if known is not None:
        entry, row = known
        if backend.reads_checkpoint or row.backend != backend.name:
            raise ModelSourceError(
                f"{model} is a ready-made {row.backend} folder ({row.describe(entry.alias)}); backend "
                f"{backend.name!r} cannot load it. Fix: backend={row.backend!r}, or model={entry.alias!r} to let "
                "the kit pick this backend's route.")
        if cfg.prefer == "export" or export_only:
            raise ModelSourceError(
                f"{model} is a ready-made folder; an export starts from the checkpoint. Fix: "
                f"model={entry.checkpoint!r} (or {entry.alias!r}) with prefer='export'.")
        return Plan("ready-made", model=entry, row=row, repo=repo, subfolder=sub)
    entry = catalog.for_checkpoint(model)
    if backend.reads_checkpoint:
        return Plan("checkpoint", checkpoint=model, model=entry)
    if sub is not None or cfg.prefer == "ready-made":
        return Plan("ready-made", model=entry, repo=repo, subfolder=sub)
    return Plan("export", checkpoint=model, model=entry)


def checkpoint(model: str) -> str:
    """The PyTorch checkpoint an export of `model` starts from, as optimum-cli or the ONNX builder take it:
    a hub id (a catalog alias's checkpoint), or a folder (the pocket's, or yours)."""
    if model == "pocket":
        from . import pocket

        return str(pocket.path())
    if (folder := local_folder(model)) is not None:
        return str(folder)
    if is_hub_id(model):
        from .hub import split_hub_id

        known = catalog.for_repo(*split_hub_id(model))  # a ready-made repo: the checkpoint it was made from
        return known[0].checkpoint if known else model
    return catalog.lookup(model).checkpoint


# --- the routes -----------------------------------------------------------------------------------
def ready_made_alternative(p: Plan, cfg: LoadConfig) -> str:
    """The catalog's ready-made folder for this request, in words, for a preflight that would refuse."""
    if p.model is None:
        return ""
    row = p.model.ready_made_for(cfg.backend, cfg.precision or "", cfg.device)
    return (f"the ready-made {row.where} needs no conversion: model={p.model.alias!r} with prefer='ready-made' "
            "(the default) and no export settings") if row else ""


def _ready_made(p: Plan, cfg: LoadConfig, backend: type[Backend], cache: ExportCache, log: Log,
                adopt: bool) -> tuple[ModelSource, Export]:
    from .hub import download

    row, entry = p.row, p.model
    alias = entry.alias if entry else cfg.model
    if p.folder is not None:  # a folder of the user's: read in place, never copied or changed
        folder, origin, kind = p.folder, str(p.folder), "local"
    elif row is not None and row.shipped:
        from . import pocket

        folder, origin, kind = pocket.ready_dir(row.shipped), f"phi3kit/pocket/ready/{row.shipped} (shipped)", "pocket"
    else:
        origin = f"{p.repo}/{p.subfolder}" if p.subfolder else str(p.repo)
        key = {"backend": backend.name, "ready_made": origin, "revision": cfg.revision}
        label = f"{Path(str(p.repo)).name}-{cfg.precision}"
        folder = cache.lookup(backend.name, label, key, log)  # a workshop pack's copy, or one adopted before
        kind = "hub"
        if folder is None:
            if adopt:  # the copy goes into the cache: a read-only one says so before the download
                cache.require_writable(cache.entry_dir(backend.name, label, key).parent)
            folder = download(str(p.repo), route=str(backend.ready_made_format), revision=cfg.revision,
                              subfolder=p.subfolder, catalog_row=row.describe(alias) if row else None,
                              fallback="prefer='export'" if entry else "")
            if adopt:  # a pack: the hub's files materialized as a cache entry (no links: USB sticks are FAT)
                src = folder
                folder = cache.get_or_build(backend.name, label, key, lambda out: copy_files(src, out, desc=origin),
                                            log).path
    export = backend.ready_made(folder, cfg, cache, log)
    export.origin = origin
    if kind == "pocket" and row is not None:
        export.recipe = row.recipe
    else:  # the files' own record, beside what the publisher says
        stated = f"; its publisher: {row.recipe}" if row is not None and row.recipe else ""
        export.recipe = f"{export.recipe} (ready-made{stated}; not the kit's recipe)"
    return ModelSource(cfg.model, folder, kind, cfg.revision), export


def export_key(source_ref: dict[str, Any], cfg: LoadConfig, backend: type[Backend]) -> dict[str, Any]:
    """What an export is keyed by: the model as named, the settings, the runtime that reads it (never the
    exporter's versions, which the manifest records), so it is found before any download."""
    return {"backend": backend.name, **source_ref, **backend.export_settings(cfg),
            "runtime": backend.runtime_versions(), "trust_remote_code": cfg.trust_remote_code}


def _source_ref(p: Plan, cfg: LoadConfig) -> tuple[dict[str, Any], ModelSource | None]:
    """How the checkpoint is named in the key, and its ModelSource when it is already on this machine."""
    if p.checkpoint == "pocket" or local_folder(p.checkpoint) is not None:
        source = resolve(p.checkpoint)  # local: cheap; keyed by content, so a changed folder is exported again
        name = source.name if source.kind == "pocket" else str(source.path)
        return {"model": name, "fingerprint": source.fingerprint}, source
    return {"model": p.checkpoint, "revision": cfg.revision}, None


def _export(p: Plan, cfg: LoadConfig, backend: type[Backend], cache: ExportCache, log: Log,
            skip: bool, free: FreeSpace | None) -> tuple[ModelSource, Export]:
    ref, source = _source_ref(p, cfg)
    key = export_key(ref, cfg, backend)
    label = backend.label(Path(p.checkpoint).name, cfg)
    if (hit := cache.lookup(backend.name, label, key, log)) is not None:
        return ModelSource(cfg.model, hit, "export"), _described(Export(hit, True, 0.0), p, cfg, backend)
    if (package := backend.missing_exporter()) is not None:  # the lean environment: ready-made folders only
        choices = p.model.ready_made_choices(backend.name) if p.model else []
        ready = f"; its ready-made folders run here: {', '.join(choices)}" if choices else ""
        raise MissingDependencyError(package, f"Exporting {p.checkpoint!r} for {backend.name} at {cfg.precision} "
                                     f"(no ready-made folder for it{ready})", backend.requirements)
    # The export goes into the cache: a read-only one (a pack used in place, a locked-down drive) says so before
    # the pre-flight, the download and the conversion, with where to put the cache instead.
    cache.require_writable(cache.entry_dir(backend.name, label, key).parent)
    if source is not None:
        job = Job(source.name, backend.name, str(cfg.precision), count_parameters(source.path))
    else:
        params = int(p.model.parameters) if p.model else 0
        job = Job(p.checkpoint, backend.name, str(cfg.precision), params,
                  download_bytes=int((p.model.download_gb if p.model else 0) * 1e9))
    job.ram_bytes_per_param = backend.export_ram_bytes_per_param
    job.alternative = ready_made_alternative(p, cfg)
    check = lambda: _preflight(job, cache.root, skip, free, log)  # noqa: E731
    if job.params:
        check()  # before the checkpoint is downloaded, when the catalog says how big it is
    if source is None:
        source = resolve(p.checkpoint, cfg.revision, cfg.trust_remote_code,
                         catalog_row=f"{p.model.alias} (checkpoint)" if p.model else None)
        if not job.params:
            job.params = count_parameters(source.path)
            check()
    made_with = backend.exporter_versions()
    export = cache.get_or_build(backend.name, label, key, lambda out: backend.build(source, cfg, out, log), log,
                                made_with=made_with)
    return source, _described(export, p, cfg, backend)


def _described(export: Export, p: Plan, cfg: LoadConfig, backend: type[Backend]) -> Export:
    export.route, export.origin = "export", p.checkpoint
    export.recipe, export.precision = backend.recipe(cfg), str(cfg.precision)
    return export


def _preflight(job: Job, root: Path, skip: bool, free: FreeSpace | None, log: Log) -> None:
    if not skip:
        preflight(job, root, free)
    else:
        for problem in shortfalls(job, root, free):
            log(f"Preflight skipped on request ({SKIP_ENV} / skip_preflight), going ahead although: {problem}")


def _is_ready_made_folder(model: str) -> bool:
    return model != "pocket" and (folder := local_folder(model)) is not None and folder_format(folder) is not None


def prepare(cfg: LoadConfig, log: Log = print, *, skip_preflight: bool | None = None,
            free: FreeSpace | None = None, check_device: bool = True,
            adopt: bool = False) -> Prepared:
    """Validate choices, decide the route, check resources, fetch or export: everything before loading, settled
    once (`Prepared`; it unpacks as (source, export)).

    `free` replaces the measured free disk and RAM (for tests); `skip_preflight` (or the
    PHI3KIT_SKIP_PREFLIGHT=1 environment variable) turns a resource shortfall into a warning.
    `check_device=False` prepares for a device this machine lacks (a workshop pack for NPU laptops);
    `adopt` copies ready-made hub folders into the cache (what a pack carries).
    """
    backend = get(cfg.backend)
    if not (cfg.precision is None and _is_ready_made_folder(cfg.model)):
        cfg = complete(cfg)  # (a ready-made folder of the user's says which precision it is: its files do)
    route = plan(cfg)
    if cfg.precision is not None:
        backend.check(cfg, device=check_device)  # before any download: bad choices fail in milliseconds
    if cfg.trust_remote_code:
        log("trust_remote_code=True: this runs Python code from the model repository. Only do so for code you trust.")
    if check_device and cfg.precision is not None:
        for note in backend.notes(cfg):
            log(note)
    cache = ExportCache(cfg.cache_dir)
    if route.route == "ready-made":
        source, export = _ready_made(route, cfg, backend, cache, log, adopt)
        if cfg.precision is None:
            backend.check(replace(cfg, precision=export.precision), device=check_device)
    elif route.route == "checkpoint":
        source = resolve(route.checkpoint, cfg.revision, cfg.trust_remote_code,
                         catalog_row=f"{route.model.alias} (checkpoint)" if route.model else None)
        export = Export(source.path, True, 0.0, route="checkpoint", origin=route.checkpoint,
                        recipe=f"{cfg.precision}: the checkpoint as {backend.name} loads it",
                        precision=str(cfg.precision))
    else:
        source, export = _export(route, cfg, backend, cache, log, skip_requested(skip_preflight), free)
    # The folder's own precision where it says one (a ready-made folder), else the completed choice.
    settled = replace(cfg, precision=export.precision or cfg.precision or backend.default_precision)
    return Prepared(settled, backend, route, source, export)


def export(model: str = DEFAULT_MODEL, backend: str = "openvino", precision: str | None = None, log: Log = print,
           *, skip_preflight: bool | None = None, **options: object) -> Export:
    """Export `model` for `backend` at `precision` (or fetch its ready-made folder); returns the folder."""
    cfg = LoadConfig(model=model, backend=backend, precision=precision, **options)  # type: ignore[arg-type]
    return prepare(cfg, log, skip_preflight=skip_preflight).export
