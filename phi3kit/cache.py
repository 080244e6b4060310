"""Export cache: one folder per (model, backend, precision, settings, library versions).

An entry is trusted only when its manifest (written last, listing every file with its size and
SHA-256) matches what is on disk. A load checks sizes (seconds, not minutes, for gigabytes);
`verify(..., hashes=True)` (`phi3kit cache --verify`) checks every byte. Builds go to a temporary
folder renamed into place, under a file lock, so an interrupted export leaves nothing a later run
would trust, and two processes asking for the same export produce one.

The root is used as the user typed it, never resolved: on Windows resolving turns a mapped drive
into a UNC path and follows junctions. Entry names are slugs, so no entry can leave the root, and
the cache deletes only inside it (safefs.remove_tree).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import filelock
import platformdirs

from . import env
from .errors import CacheCorruptError, StorageError, last_line
from .safefs import (
    atomic_write,
    free_bytes,
    human_size,
    is_inside,
    place_folder,
    remove_tree,
    storage_error,
    temp_dir,
    writable_dir,
)

MANIFEST = "phi3kit-manifest.json"
# What to do when the cache cannot be written: another folder, in each place a cache folder is given.
CACHE_FIX = ("use a cache folder on a disk you can write to, with room: --cache-dir on the command line, cache_dir= "
             "in Python, or PHI3KIT_CACHE for every run (PowerShell: $env:PHI3KIT_CACHE=\"D:\\phi3kit-cache\"; "
             "bash: export PHI3KIT_CACHE=~/phi3kit-cache)")
# Below this much free space after a failed build, the disk filling up is what stopped it: exporters rarely say so
# (OpenVINO's serializer reports a full disk as "basic_ios::clear: iostream error").
LOW_DISK_BYTES = 64 * 2**20
# How a full disk reads in a child process's output (optimum-cli, the ONNX builder, llama.cpp), where no errno is left.
_FULL_DISK_TEXT = ("no space left on device", "not enough space on the disk", "disk quota exceeded")
_SLUG = re.compile(r"[^A-Za-z0-9._-]+|\.{2,}")


def default_cache_dir() -> Path:
    """PHI3KIT_CACHE if set, else the platform's user cache folder."""
    folder = env.text(env.CACHE)
    return Path(folder) if folder else Path(platformdirs.user_cache_dir("phi3kit", appauthor=False))


def slug(text: str, limit: int = 60) -> str:
    """A folder-name-safe label: model ids and paths can never escape the cache root."""
    s = _SLUG.sub("-", text).strip("-.")[:limit]
    return s or "model"


def key_hash(key: dict[str, Any]) -> str:
    blob = json.dumps(key, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass
class Export:
    """Where a loadable model folder lives, whether this call built it, and what it is.

    `route` is "export" (the kit built it), "ready-made" (its publisher did) or "checkpoint" (read as it
    is: PyTorch); `origin` says where it came from and `recipe` how its weights were made.
    `tokenizer_dir` holds tokenizer models the kit converted for a ready-made IR that shipped without them.
    """

    path: Path
    cached: bool
    seconds: float
    route: str = "export"
    origin: str = ""
    recipe: str = ""
    precision: str = ""
    tokenizer_dir: Path | None = None


@dataclass
class Damaged:
    """A cache entry that failed `verify_entries` (every byte checked), the problem, and whether it was deleted."""

    path: Path
    problem: str
    removed: bool = False


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(16 * 2**20):
            h.update(chunk)
    return h.hexdigest()


def copy_files(src: Path, dst: Path, files: list[str] | None = None, desc: str = "copying") -> None:
    """Copy a folder's files as real files (symlinks followed: hub snapshots are links, USB sticks are often
    FAT), with a progress bar sized in bytes."""
    from tqdm.auto import tqdm

    rels = files if files is not None else sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
    total = sum((src / r).stat().st_size for r in rels)
    with tqdm(total=total, unit="B", unit_scale=True, desc=desc, leave=False) as bar:
        for rel in rels:
            target = dst / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with (src / rel).open("rb") as fin, target.open("wb") as fout:
                while chunk := fin.read(16 * 2**20):
                    fout.write(chunk)
                    bar.update(len(chunk))
            st = (src / rel).stat()  # times only: a read-only attribute copied from a pack would block deletion
            os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))


class ExportCache:
    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        # Absolute but never resolved: see the module's docstring.
        self.root = Path(os.path.abspath(Path(root or default_cache_dir()).expanduser()))

    def entry_dir(self, backend: str, label: str, key: dict[str, Any]) -> Path:
        path = self.root / slug(backend) / f"{slug(label)}-{key_hash(key)}"
        if not is_inside(path, self.root):  # defence in depth: slug() already forbids this
            raise ValueError(f"cache entry {path} would escape the cache root {self.root}")
        return path

    @staticmethod
    def verify(path: Path, hashes: bool = False) -> None:
        """Raise CacheCorruptError naming the first problem found in an entry.

        Sizes always; with `hashes`, every byte against the manifest's SHA-256. A manifest written before
        the kit recorded hashes is hashed the first time it is verified with `hashes`, and then kept.
        """
        manifest = path / MANIFEST
        if not manifest.is_file():
            raise CacheCorruptError(f"{path.name} has no manifest (an interrupted export?)")
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
            files, digests = data["files"], data.get("sha256", {})
            if not isinstance(files, dict) or not all(isinstance(v, int) for v in files.values()):
                raise ValueError("'files' is not a table of sizes")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CacheCorruptError(f"{path.name} has an unreadable manifest ({exc})") from exc
        for rel, size in files.items():
            f = path / rel
            if not f.is_file():
                raise CacheCorruptError(f"{path.name} is missing {rel}")
            if f.stat().st_size != size:
                raise CacheCorruptError(
                    f"{path.name}/{rel} is {f.stat().st_size} bytes, the manifest says {size} (truncated?)"
                )
        if not hashes:
            return
        for rel in files:
            if rel in digests and sha256(path / rel) != digests[rel]:
                raise CacheCorruptError(f"{path.name}/{rel} has other bytes than when it was written (damaged)")
        if missing := [rel for rel in files if rel not in digests]:
            data["sha256"] = {**digests, **{rel: sha256(path / rel) for rel in missing}}
            try:
                atomic_write(manifest, json.dumps(data, indent=2, default=str))
            except OSError:
                pass  # a read-only cache (a pack used in place) is verified all the same, just not remembered

    def lookup(self, backend: str, label: str, key: dict[str, Any],
               log: Callable[[str], None] | None = None) -> Path | None:
        """The verified entry for `key`, or None; an entry that is there but damaged is reported to `log`."""
        path = self.entry_dir(backend, label, key)
        try:
            self.verify(path)
        except CacheCorruptError as exc:
            if log is not None and path.exists():
                log(f"Cache entry is incomplete or corrupted: {exc}. It is not used.")
            return None
        return path

    def get_or_build(
        self,
        backend: str,
        label: str,
        key: dict[str, Any],
        build: Callable[[Path], None],
        log: Callable[[str], None] = print,
        made_with: dict[str, str] | None = None,
    ) -> Export:
        """Return a verified entry, building it with `build(tmp_dir)` if needed; `made_with` (the exporter's
        versions) goes into the manifest."""
        final = self.entry_dir(backend, label, key)
        start = time.perf_counter()
        try:  # a finished entry is only ever replaced by a rename: checking it needs no lock, nor a writable cache
            self.verify(final)
            return Export(final, True, time.perf_counter() - start)
        except CacheCorruptError:
            pass
        self.require_writable(final.parent)  # a read-only or misplaced cache says so now, not mid-build
        with self.lock(final):
            if final.exists():
                try:
                    self.verify(final)
                    return Export(final, True, time.perf_counter() - start)
                except CacheCorruptError as exc:
                    log(f"Cache entry is incomplete or corrupted: {exc}. Rebuilding it.")
                    remove_tree(final, self.root)  # useless, and its space is needed for the rebuild
            for stale in final.parent.glob(f".tmp-{final.name}-*"):
                remove_tree(stale, self.root)  # left by a killed process; we hold the lock
            tmp = temp_dir(final.parent, final.name)
            try:
                build(tmp)
                paths = [p for p in sorted(tmp.rglob("*")) if p.is_file()]
                if not paths:
                    raise RuntimeError("the export wrote no files")
                write_manifest(tmp, {
                    "key": key,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "build_seconds": round(time.perf_counter() - start, 3),
                    "made_with": made_with or {},
                })
                place_folder(tmp, final, self.root)
            except BaseException as exc:
                full = disk_filled(exc, tmp, final) if isinstance(exc, Exception) else None  # before tmp's space
                remove_tree(tmp, self.root)  # comes back
                if full is not None:
                    raise full from exc
                raise
        return Export(final, False, time.perf_counter() - start)

    def require_writable(self, folder: Path | None = None) -> Path:
        """StorageError naming the folder and the fix unless `folder` (default: the root) can be written.

        Called only where a write is needed: a read-only cache whose entries are all there (a workshop pack
        used in place) loads without it.
        """
        return writable_dir(folder or self.root, CACHE_FIX)

    def verify_entries(self, remove_damaged: bool = False) -> list[Damaged]:
        """Every entry checked byte by byte (`phi3kit cache --verify`): the damaged ones, with the problem.

        A load checks sizes only (seconds for gigabytes); a file whose bytes changed but not its size (a bad
        sector, a broken copy) passes that and fails in the runtime. `remove_damaged` deletes the damaged
        entries (only inside the cache) so the next load rebuilds them.
        """
        found = []
        for entry in self._entry_dirs():
            try:
                self.verify(entry, hashes=True)
            except CacheCorruptError as exc:
                found.append(Damaged(entry, str(exc)))
            except OSError as exc:  # a file that cannot be read back (an I/O error) is damage too
                found.append(Damaged(entry, f"{entry.name} cannot be read ({exc})"))
        for damaged in found if remove_damaged else []:
            try:
                with self.lock(damaged.path):
                    remove_tree(damaged.path, self.root)
            except OSError as exc:
                raise storage_error(exc, damaged.path, CACHE_FIX) from exc
            damaged.removed = True
        return found

    def _entry_dirs(self) -> list[Path]:
        return [m.parent for m in sorted(self.root.glob(f"*/*/{MANIFEST}"))
                if not m.parent.name.startswith((".tmp-", ".old-"))]

    @staticmethod
    def lock(final: Path) -> filelock.FileLock:
        """The lock every writer of the entry `final` holds: exports, ready-made copies, unpacks."""
        return filelock.FileLock(str(final) + ".lock")

    def entries(self) -> list[dict[str, Any]]:
        """Every entry with its key and, if it fails verification, the problem (it will be rebuilt)."""
        out = []
        for entry in self._entry_dirs():
            manifest = entry / MANIFEST
            try:
                self.verify(entry)
                problem = ""
            except CacheCorruptError as exc:
                problem = str(exc)
            try:
                data = json.loads(manifest.read_text(encoding="utf-8"))
                size = sum(data.get("files", {}).values())
            except (ValueError, TypeError, AttributeError):
                data, size = {}, 0
            out.append({"path": str(entry), "size_mb": round(size / 2**20, 1), "problem": problem,
                        **data.get("key", {})})
        return out


def write_manifest(folder: Path, fields: dict[str, Any]) -> None:
    """Write an entry's manifest last: every file under `folder` with its size and SHA-256, plus `fields`."""
    paths = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*"))
             if p.is_file() and p.name != MANIFEST}
    manifest = {**fields, "files": {r: p.stat().st_size for r, p in paths.items()},
                "sha256": {r: sha256(p) for r, p in paths.items()}}
    atomic_write(folder / MANIFEST, json.dumps(manifest, indent=2, default=str))


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    here: BaseException | None = exc
    while here is not None and here not in seen:
        seen.append(here)
        here = here.__cause__ or here.__context__
    return seen


def disk_filled(exc: BaseException, tmp: Path, final: Path) -> StorageError | None:
    """The kit's message when a failed build failed because the disk filled up, else None.

    Exporters seldom say so: OpenVINO's serializer reports "basic_ios::clear: iostream error", a child process
    leaves only its text. So: an ENOSPC anywhere in the chain, those words in a message, or a disk left with
    under LOW_DISK_BYTES free (measured before the partial build is deleted) mean the disk was full.
    """
    chain = _chain(exc)
    full_codes = (errno.ENOSPC, getattr(errno, "EDQUOT", -1))
    said = any(isinstance(e, OSError) and e.errno in full_codes for e in chain) or any(
        t in str(e).lower() for e in chain for t in _FULL_DISK_TEXT)
    try:
        free = free_bytes(tmp)
    except OSError:
        free = None
    if not said and (free is None or free >= LOW_DISK_BYTES):
        return None
    left = f"; {human_size(free)} is free there now" if free is not None else ""
    return StorageError(
        f"The disk filled up while {final.name} was being written into the cache at {final.parent}{left} "
        f"(what failed: {last_line(exc)}). The partial files were deleted; nothing half-written is kept. Fix: "
        f"free some space, or {CACHE_FIX}. The pre-flight check measures the room before an export starts: do not "
        "skip it (PHI3KIT_SKIP_PREFLIGHT / skip_preflight) on a disk this tight.", path=final.parent)
