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

import hashlib
import json
import platform
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .backends.base import Log
from .cache import MANIFEST, ExportCache, copy_files
from .config import LoadConfig
from .errors import Phi3kitError

PACK_FILE = "phi3kit-pack.json"


class PackError(Phi3kitError, RuntimeError):
    """A pack cannot be made or used as it is (a damaged copy, a folder that is not a pack)."""


@dataclass
class Unpacked:
    """What `unpack()` did: entries copied, entries already there, where they went."""

    copied: list[str]
    present: list[str]
    cache: Path


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(16 * 2**20):
            h.update(chunk)
    return h.hexdigest()


def _entry_files(root: Path, entry: Path) -> dict[str, dict[str, Any]]:
    return {p.relative_to(root).as_posix(): {"size": p.stat().st_size, "sha256": sha256(p)}
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
    index = json.loads(index_file.read_text(encoding="utf-8")) if index_file.is_file() else {"entries": []}
    entries = [e for e in index["entries"] if e["model"] != model]
    for route in parse_routes(routes):
        cfg = LoadConfig(model=model, backend=route.backend, precision=route.precision, device=route.device,
                         runtime=route.runtime, revision=revision, cache_dir=str(out))
        log(f"--- {route.label}")
        _, export = prepare(cfg, log, check_device=False, adopt=True)
        folders = [p for p in (export.path, export.tokenizer_dir) if p is not None]
        inside = [f for f in folders if out.resolve() in f.resolve().parents]
        if export.route == "checkpoint":
            raise PackError(f"{route.label} reads the PyTorch checkpoint from the hub cache; a pack carries exports "
                            "and ready-made folders. Fix: pack an openvino or ortgenai route.")
        if not inside:  # shipped with the kit (the pocket): every laptop already has it
            log(f"{route.label}: {export.origin} ships with the kit; nothing to pack.")
            continue
        files: dict[str, dict[str, Any]] = {}
        for folder in inside:
            files.update(_entry_files(out, folder))
        entries.append({"model": model, "route": route.label, "precision": export.precision, "device": route.device,
                        "origin": export.origin, "recipe": export.recipe, "folders": [
                            f.resolve().relative_to(out.resolve()).as_posix() for f in inside], "files": files})
        size_mb = sum(f["size"] for f in files.values()) / 1e6
        log(f"{route.label}: {export.route} from {export.origin}, {size_mb:.1f} MB")
    index.update(entries=entries, kit=_kit_version(), created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 made_on=f"{platform.system()} {platform.machine()}")
    index_file.write_text(json.dumps(index, indent=1), encoding="utf-8")
    return out


def _kit_version() -> str:
    from . import __version__

    return __version__


def read_index(pack_dir: Path) -> dict[str, Any]:
    index_file = pack_dir / PACK_FILE
    if not index_file.is_file():
        raise PackError(f"{pack_dir} is not a workshop pack (no {PACK_FILE}). Fix: point at the folder `phi3kit pack` "
                        "wrote, or copy it again.")
    try:
        return json.loads(index_file.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise PackError(f"{index_file} is damaged ({exc}): copy the pack again.") from exc


def check(pack_dir: str | Path, *, hashes: bool = True) -> list[str]:
    """Every problem with a pack's files (missing, truncated, changed), each naming the file; [] when intact."""
    pack_dir = Path(pack_dir)
    problems = []
    for entry in read_index(pack_dir)["entries"]:
        for rel, want in entry["files"].items():
            path = pack_dir / rel
            if not path.is_file():
                problems.append(f"{rel} is missing (route {entry['route']})")
            elif (size := path.stat().st_size) != want["size"]:
                problems.append(f"{rel} is {size} bytes, the pack says {want['size']}: a truncated copy")
            elif hashes and sha256(path) != want["sha256"]:
                problems.append(f"{rel} has the right size but other bytes than when it was packed: a damaged copy")
    return problems


def unpack(pack_dir: str | Path, cache_dir: str | Path | None = None, log: Log = print) -> Unpacked:
    """Check a pack byte for byte, then copy its entries into the local cache (default: PHI3KIT_CACHE or the
    user cache folder). An entry already there and intact is left as it is."""
    pack_dir = Path(pack_dir).expanduser()
    if problems := check(pack_dir):
        raise PackError(f"The pack in {pack_dir} is damaged: " + "; ".join(problems)
                        + ". Fix: copy the pack again from the instructor's copy (nothing was unpacked).")
    cache = ExportCache(cache_dir)
    copied, present = [], []
    for entry in read_index(pack_dir)["entries"]:
        for folder in entry["folders"]:
            target = cache.root / folder
            try:
                ExportCache.verify(target)
                present.append(folder)
                continue
            except Exception:  # noqa: BLE001 - absent or damaged: copied afresh below
                pass
            tmp = target.parent / f".tmp-{target.name}-unpack"
            shutil.rmtree(tmp, ignore_errors=True)
            copy_files(pack_dir / folder, tmp, desc=folder)
            ExportCache.verify(tmp)  # the manifest travels with the entry
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)
            copied.append(folder)
            log(f"unpacked {folder}")
    return Unpacked(copied, present, cache.root)


__all__ = ["MANIFEST", "PACK_FILE", "PackError", "check", "pack", "unpack"]
