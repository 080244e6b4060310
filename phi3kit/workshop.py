"""Workshop packs: an instructor prepares every model file once; thirty laptops run from one copied folder.

`pack()` fetches or exports each route into a folder that is an export cache in its own right (plain
files, no links: USB sticks are often FAT), and records every file's size and SHA-256 in
phi3kit-pack.json. On a learner's laptop, either point the kit at it (`PHI3KIT_CACHE=<pack>`) or copy
it into the local cache with `unpack()`, which checks every byte on arrival and names any file a
truncated copy damaged. Entries are keyed by the model's name, the settings and the runtime's version,
so nothing is downloaded or rebuilt, and neither PyTorch nor the exporter is needed there.

What serves other platforms: OpenVINO IR folders are the same on Linux and Windows, so a pack made on
Linux serves Windows laptops for the OpenVINO routes. ONNX Runtime GenAI entries are keyed by the
runtime's flavour (onnxruntime-genai on Linux, onnxruntime-genai-directml on Windows, other versions),
so a Linux pack's ORT GenAI entries are not found on a Windows laptop: make those on Windows.
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .backends.base import Log
from .cache import MANIFEST, ExportCache, copy_files, sha256
from .config import LoadConfig
from .errors import CacheCorruptError, PackDamagedError, PackError, UnsafePathError
from .procs import env_command
from .safefs import (
    atomic_write,
    check_relative,
    is_link,
    links_between,
    place_folder,
    remove_tree,
    require_free_space,
    temp_dir,
)

PACK_FILE = "phi3kit-pack.json"
PACK_FORMAT = 1  # the index's layout; packs written before it was recorded are format 1
# An entry folder is `<backend>/<entry>`, both slugs (cache.slug): what the export cache itself names.
_FOLDER = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*/[A-Za-z0-9_-][A-Za-z0-9._-]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class FileRecord:
    size: int
    sha256: str


@dataclass
class PackEntry:
    """One route's folders in a pack, and every file in them with its size and SHA-256."""

    model: str
    route: str
    folders: list[str]
    files: dict[str, FileRecord]
    precision: str = ""
    device: str = ""
    origin: str = ""
    recipe: str = ""

    def files_in(self, folder: str) -> dict[str, FileRecord]:
        """The records of `folder`'s files, by their path inside that folder."""
        prefix = folder + "/"
        return {rel[len(prefix):]: rec for rel, rec in self.files.items() if rel.startswith(prefix)}

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "route": self.route, "precision": self.precision, "device": self.device,
                "origin": self.origin, "recipe": self.recipe, "folders": self.folders,
                "files": {rel: {"size": f.size, "sha256": f.sha256} for rel, f in self.files.items()}}


@dataclass
class PackIndex:
    """phi3kit-pack.json, validated: every path in it is relative, plain and inside one of its entry's folders."""

    entries: list[PackEntry]
    format: int = PACK_FORMAT
    extra: dict[str, Any] = field(default_factory=dict)  # kit, created, made_on: shown, never trusted

    def to_dict(self) -> dict[str, Any]:
        return {**self.extra, "format": self.format, "entries": [e.to_dict() for e in self.entries]}


@dataclass
class Unpacked:
    """What `unpack()` did: entries copied, entries already there, where they went."""

    copied: list[str]
    present: list[str]
    cache: Path


_PACK_FIX = "Fix: use a pack made by `phi3kit pack`, copied again from the instructor's copy."


def _bad(index_file: Path, problem: str) -> PackError:
    return PackError(f"{index_file} is not a valid pack index: {problem}. Nothing was copied. {_PACK_FIX}")


def _refused(index_file: Path, exc: UnsafePathError) -> PackError:
    """A path that could reach outside the pack or the cache: refused before a byte moves."""
    return PackError(f"{index_file} is refused: {exc} Nothing was copied. {_PACK_FIX}")


def _str(value: object, index_file: Path, where: str) -> str:
    if not isinstance(value, str):
        raise _bad(index_file, f"{where} should be text, not {type(value).__name__}")
    return value


def parse_index(data: object, index_file: Path) -> PackIndex:
    """Validate an index read from disk: its shape, its format, and every path in it, as written."""
    if not isinstance(data, dict):
        raise _bad(index_file, f"it holds a {type(data).__name__}, not an object with 'entries'")
    fmt = data.get("format", 1)
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < 1:
        raise _bad(index_file, f"'format' is {fmt!r}")
    if fmt > PACK_FORMAT:
        raise PackError(f"{index_file} was written by a newer phi3kit (pack format {fmt}; this one reads up to "
                        f"{PACK_FORMAT}). Fix: pip install -U phi3kit, or ask for a pack made with this version.")
    raw_entries = data.get("entries")
    if not isinstance(raw_entries, list):
        raise _bad(index_file, f"'entries' should be a list, not {type(raw_entries).__name__}")
    entries, seen = [], set()
    for n, raw in enumerate(raw_entries):
        where = f"entry {n}"
        if not isinstance(raw, dict):
            raise _bad(index_file, f"{where} is a {type(raw).__name__}, not an object")
        text = {k: _str(raw.get(k, ""), index_file, f"{where}'s {k!r}")
                for k in ("model", "route", "precision", "device", "origin", "recipe")}
        where = f"entry {n} ({text['route'] or 'no route'})"
        folders = raw.get("folders")
        if not isinstance(folders, list) or not folders:
            raise _bad(index_file, f"{where}: 'folders' should be a non-empty list")
        for folder in folders:
            try:
                check_relative(folder, f"{where}: folder")
            except UnsafePathError as exc:
                raise _refused(index_file, exc) from exc
            if not _FOLDER.match(folder):
                raise _bad(index_file, f"{where}: folder {folder!r} is not <backend>/<entry>, as the cache names them")
            if folder in seen:
                raise _bad(index_file, f"{where}: folder {folder!r} is listed twice")
            seen.add(folder)
        files = raw.get("files")
        if not isinstance(files, dict):
            raise _bad(index_file, f"{where}: 'files' should be an object of path: {{size, sha256}}")
        records = {}
        for rel, rec in files.items():
            try:
                check_relative(rel, f"{where}: file")
            except UnsafePathError as exc:
                raise _refused(index_file, exc) from exc
            if not any(rel.startswith(folder + "/") for folder in folders):
                raise _bad(index_file, f"{where}: file {rel!r} lies outside the entry's folders")
            size = rec.get("size") if isinstance(rec, dict) else None
            digest = rec.get("sha256") if isinstance(rec, dict) else None
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise _bad(index_file, f"{where}: file {rel!r} has no valid size")
            if not isinstance(digest, str) or not _SHA256.match(digest):
                raise _bad(index_file, f"{where}: file {rel!r} has no valid sha256")
            records[rel] = FileRecord(size, digest)
        entries.append(PackEntry(text["model"], text["route"], list(folders), records, text["precision"],
                                 text["device"], text["origin"], text["recipe"]))
    extra = {k: data[k] for k in ("kit", "created", "made_on") if k in data}
    return PackIndex(entries, fmt, extra)


def _entry_files(root: Path, entry: Path) -> dict[str, FileRecord]:
    return {p.relative_to(root).as_posix(): FileRecord(p.stat().st_size, sha256(p))
            for p in sorted(entry.rglob("*")) if p.is_file()}


def pack(model: str, routes: str | Sequence[str], out: str | Path, *, revision: str | None = None,
         log: Log = print) -> Path:
    """Prepare `model` for every route (e.g. "openvino:int4,openvino:int4-cw@NPU,ortgenai:int4") into `out`.

    Routes are `backend[/runtime]:precision[@device]`; a device this machine lacks (an NPU) is fine:
    only files are prepared. Ready-made folders are copied from the hub; the others are exported.
    """
    from .bench.routes import parse_routes
    from .exporting import prepare

    out = Path(out).expanduser()
    index_file = out / PACK_FILE
    if out.exists() and any(out.iterdir()) and not index_file.is_file():
        raise PackError(f"{out} already holds files and is not a pack: nothing of yours is overwritten. Fix: choose "
                        "an empty or new folder for the pack.")
    out.mkdir(parents=True, exist_ok=True)
    index = read_index(out) if index_file.is_file() else PackIndex([])
    entries = [e for e in index.entries if e.model != model]
    for route in parse_routes(routes):
        cfg = LoadConfig(model=model, backend=route.backend, precision=route.precision, device=route.device,
                         runtime=route.runtime, revision=revision, cache_dir=str(out))
        log(f"--- {route.label}")
        export = prepare(cfg, log, check_device=False, adopt=True).export
        folders = [p for p in (export.path, export.tokenizer_dir) if p is not None]
        inside = [f for f in folders if out.resolve() in f.resolve().parents]
        if export.route == "checkpoint":
            raise PackError(f"{route.label} reads the PyTorch checkpoint from the hub cache; a pack carries exports "
                            "and ready-made folders. Fix: pack an openvino or ortgenai route.")
        if not inside:  # shipped with the kit (the pocket): every laptop already has it
            log(f"{route.label}: {export.origin} ships with the kit; nothing to pack.")
            continue
        files: dict[str, FileRecord] = {}
        for folder in inside:
            files.update(_entry_files(out, folder))
        rels = [f.resolve().relative_to(out.resolve()).as_posix() for f in inside]
        entries.append(PackEntry(model, route.label, rels, files, export.precision, route.device or "",
                                 export.origin, export.recipe))
        size_mb = sum(f.size for f in files.values()) / 1e6
        log(f"{route.label}: {export.route} from {export.origin}, {size_mb:.1f} MB")
    index = PackIndex(entries, extra={"kit": _kit_version(), "made_on": f"{platform.system()} {platform.machine()}",
                                      "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    atomic_write(index_file, json.dumps(index.to_dict(), indent=1))
    return out


def _kit_version() -> str:
    from .machine import library_version  # the installed package's own record: no import of phi3kit itself

    return library_version("phi3kit")


def read_index(pack_dir: Path) -> PackIndex:
    """The pack's index, validated as untrusted input (PackError naming the problem otherwise)."""
    index_file = Path(pack_dir) / PACK_FILE
    if not index_file.is_file():
        raise PackError(f"{pack_dir} is not a workshop pack (no {PACK_FILE}). Fix: point at the folder `phi3kit pack` "
                        "wrote, or copy it again.")
    try:
        data = json.loads(index_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise PackError(f"{index_file} is damaged ({exc}): copy the pack again.") from exc
    return parse_index(data, index_file)


def _problems(pack_dir: Path, index: PackIndex, hashes: bool) -> list[str]:
    problems = []
    for entry in index.entries:
        listed = set(entry.files)
        for folder in entry.folders:
            top = pack_dir / folder
            if links := links_between(pack_dir, top):
                problems.append(f"{links[0].relative_to(pack_dir).as_posix()} is a link (route {entry.route}): a pack "
                                "holds plain files only")
                continue
            if not top.is_dir():
                problems.append(f"{folder} is missing (route {entry.route})")
                continue
            for dirpath, dirnames, filenames in os.walk(top):  # links are never followed
                for name in sorted(dirnames + filenames):
                    path = Path(dirpath) / name
                    rel = path.relative_to(pack_dir).as_posix()
                    if is_link(path):
                        problems.append(f"{rel} is a link (route {entry.route}): a pack holds plain files only")
                    elif name in filenames and rel not in listed:
                        problems.append(f"{rel} is not in the pack's index (route {entry.route}): an added file")
                dirnames[:] = [d for d in dirnames if not is_link(Path(dirpath) / d)]
        for rel, want in entry.files.items():
            path = pack_dir / rel
            if is_link(path) or any(is_link(p) for p in links_between(pack_dir, path.parent)):
                continue  # reported above
            if not path.is_file():
                problems.append(f"{rel} is missing (route {entry.route})")
            elif (size := path.stat().st_size) != want.size:
                problems.append(f"{rel} is {size} bytes, the pack says {want.size}: a truncated copy")
            elif hashes and sha256(path) != want.sha256:
                problems.append(f"{rel} has the right size but other bytes than when it was packed: a damaged copy")
    return problems


def check(pack_dir: str | Path, *, hashes: bool = True) -> list[str]:
    """Every problem with a pack's files, each naming the file; [] when intact.

    Exactly the files the index lists must be there, as plain files with their size and SHA-256: a missing,
    truncated, changed or unlisted file, or a link anywhere in an entry, is a problem. An index that is
    malformed or names a path outside the pack raises PackError instead.
    """
    pack_dir = Path(pack_dir).expanduser()
    return _problems(pack_dir, read_index(pack_dir), hashes)


def _already_there(target: Path, records: dict[str, FileRecord]) -> bool:
    """The cache holds this folder intact, byte for byte the pack's."""
    try:
        ExportCache.verify(target)
    except CacheCorruptError:
        return False
    return all((target / rel).is_file() and sha256(target / rel) == rec.sha256 for rel, rec in records.items())


def unpack(pack_dir: str | Path, cache_dir: str | Path | None = None, log: Log = print) -> Unpacked:
    """Check a pack byte for byte, then copy its entries into the local cache (default: PHI3KIT_CACHE or the
    user cache folder). An entry already there and intact is left as it is.

    The pack is untrusted input: its index is validated and every file checked before a byte moves; each
    entry is copied into a temporary folder inside the cache and renamed into place, so an interrupted or
    failed unpack leaves nothing behind, and nothing outside the cache is ever written or deleted.
    """
    pack_dir = Path(pack_dir).expanduser()
    index = read_index(pack_dir)
    cache = ExportCache(cache_dir)
    cache.require_writable()  # a read-only cache is named with its fix before gigabytes are hashed
    if problems := _problems(pack_dir, index, hashes=True):
        raise PackDamagedError(f"The pack in {pack_dir} is damaged: " + "; ".join(problems)
                               + ". Fix: copy the pack again from the instructor's copy (nothing was unpacked).")
    todo = []
    present = []
    for entry in index.entries:
        for folder in entry.folders:
            target = cache.root.joinpath(*folder.split("/"))
            if _already_there(target, entry.files_in(folder)):
                present.append(folder)
            else:
                todo.append((entry, folder, target))
    need = sum(rec.size for entry, folder, _ in todo for rec in entry.files_in(folder).values())
    require_free_space(cache.root, need, f"Unpacking {len(todo)} entries of {pack_dir}",
                       "free some space, or unpack into a cache on a bigger disk (--cache-dir or PHI3KIT_CACHE), or "
                       f"use the pack in place: {env_command('PHI3KIT_CACHE', str(pack_dir))}")
    copied = []
    for entry, folder, target in todo:
        target.parent.mkdir(parents=True, exist_ok=True)
        if links := links_between(cache.root, target.parent):
            raise PackError(f"{links[0]} in the cache is a link: unpacking there could write outside the cache. Fix: "
                            "remove the link, or unpack into another cache (--cache-dir).")
        with ExportCache.lock(target):
            if _already_there(target, entry.files_in(folder)):  # another unpack placed it while we waited
                present.append(folder)
                continue
            tmp = temp_dir(target.parent, target.name)
            try:
                copy_files(pack_dir / folder, tmp, files=list(entry.files_in(folder)), desc=folder)
                ExportCache.verify(tmp)  # the manifest travels with the entry
                place_folder(tmp, target, cache.root)
            except CacheCorruptError as exc:
                raise PackDamagedError(f"{folder} in the pack has no usable manifest ({exc}). Fix: copy the pack "
                                       "again; nothing of this entry was unpacked.") from exc
            finally:
                remove_tree(tmp, cache.root)  # already renamed on success; the partial copy otherwise
        copied.append(folder)
        log(f"unpacked {folder}")
    return Unpacked(copied, present, cache.root)


__all__ = ["MANIFEST", "PACK_FILE", "PackDamagedError", "PackError", "PackIndex", "check", "pack", "read_index",
           "unpack"]
