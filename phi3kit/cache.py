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

from .errors import CacheCorruptError
from .safefs import atomic_write, is_inside, place_folder, remove_tree, temp_dir

MANIFEST = "phi3kit-manifest.json"
_SLUG = re.compile(r"[^A-Za-z0-9._-]+|\.{2,}")


def default_cache_dir() -> Path:
    """PHI3KIT_CACHE if set, else the platform's user cache folder."""
    env = os.environ.get("PHI3KIT_CACHE")
    return Path(env) if env else Path(platformdirs.user_cache_dir("phi3kit", appauthor=False))


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
        final.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
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
            except BaseException:
                remove_tree(tmp, self.root)
                raise
        return Export(final, False, time.perf_counter() - start)

    @staticmethod
    def lock(final: Path) -> filelock.FileLock:
        """The lock every writer of the entry `final` holds: exports, ready-made copies, unpacks."""
        return filelock.FileLock(str(final) + ".lock")

    def entries(self) -> list[dict[str, Any]]:
        """Every entry with its key and, if it fails verification, the problem (it will be rebuilt)."""
        out = []
        for manifest in sorted(self.root.glob(f"*/*/{MANIFEST}")):
            entry = manifest.parent
            if entry.name.startswith(".tmp-"):
                continue
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
