"""The export cache: atomic entries, corruption detection, locking, safe paths."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import pytest

from phi3kit.cache import MANIFEST, ExportCache, slug

HANG_GUARD_S = 600


def write_files(out: Path, payload: bytes = b"x" * 1000) -> None:
    (out / "model.bin").write_bytes(payload)
    (out / "sub").mkdir()
    (out / "sub" / "config.json").write_text("{}")


def test_build_then_reuse(tmp_path: Path) -> None:
    cache = ExportCache(tmp_path)
    calls = []

    def build(out: Path) -> None:
        calls.append(out)
        write_files(out)

    first = cache.get_or_build("openvino", "m-int4", {"a": 1}, build)
    second = cache.get_or_build("openvino", "m-int4", {"a": 1}, build)
    assert (first.cached, second.cached) == (False, True)
    assert first.path == second.path and len(calls) == 1
    manifest = json.loads((first.path / MANIFEST).read_text())
    assert manifest["files"] == {"model.bin": 1000, "sub/config.json": 2}
    assert not list(first.path.parent.glob(".tmp-*"))
    other = cache.get_or_build("openvino", "m-int4", {"a": 2}, build)
    assert other.path != first.path and len(calls) == 2


def test_failed_build_leaves_nothing(tmp_path: Path) -> None:
    cache = ExportCache(tmp_path)

    def build(out: Path) -> None:
        write_files(out)
        raise RuntimeError("export crashed")

    with pytest.raises(RuntimeError, match="export crashed"):
        cache.get_or_build("openvino", "m", {"k": 1}, build)
    assert cache.lookup("openvino", "m", {"k": 1}) is None
    assert [p.name for p in (tmp_path / "openvino").iterdir() if p.suffix != ".lock"] == []


@pytest.mark.parametrize("damage", ["truncate", "delete", "manifest"])
def test_corrupt_entry_is_rebuilt(tmp_path: Path, damage: str) -> None:
    cache = ExportCache(tmp_path)
    exp = cache.get_or_build("ov", "m", {"k": 1}, write_files)
    if damage == "truncate":
        (exp.path / "model.bin").write_bytes(b"x" * 10)
    elif damage == "delete":
        (exp.path / "sub" / "config.json").unlink()
    else:
        (exp.path / MANIFEST).unlink()
    assert cache.lookup("ov", "m", {"k": 1}) is None
    messages: list[str] = []
    again = cache.get_or_build("ov", "m", {"k": 1}, write_files, log=messages.append)
    assert not again.cached and "corrupted" in messages[0]
    assert (again.path / "model.bin").stat().st_size == 1000


def test_stale_temp_dir_from_a_killed_run_is_removed(tmp_path: Path) -> None:
    cache = ExportCache(tmp_path)
    final = cache.entry_dir("ov", "m", {"k": 1})
    stale = final.parent / f".tmp-{final.name}-deadbeef"
    stale.mkdir(parents=True)
    (stale / "half.bin").write_bytes(b"half")
    cache.get_or_build("ov", "m", {"k": 1}, write_files)
    assert not stale.exists()


@pytest.mark.parametrize("label", ["../../etc/passwd", "/abs/path", "a/../../b", "..", "C:\\Users\\x"])
def test_labels_cannot_escape_the_root(tmp_path: Path, label: str) -> None:
    cache = ExportCache(tmp_path / "cache")
    path = cache.entry_dir("../backend", label, {"k": 1})
    assert cache.root in path.parents
    assert "/" not in slug(label) and ".." not in slug(label).strip(".")


def _build_in_a_process(root: str, log: str, name: str, peers: list[str], results: mp.Queue) -> None:  # type: ignore[type-arg]
    from kit_checks import note, watch_cache_lock

    watch_cache_lock(log, name, peers, root)

    def build(out: Path) -> None:
        note(Path(log), f"{name} building")
        (out / "model.bin").write_bytes(b"y" * 100)
        note(Path(log), f"{name} built")

    exp = ExportCache(root).get_or_build("ov", "m", {"k": 1}, build, log=lambda m: None)
    results.put((name, exp.cached, str(exp.path)))


def test_two_processes_build_once(tmp_path: Path) -> None:
    """Two processes ask for one entry at once: one builds under the lock, the other waits and reuses it.

    The overlap is made, not hoped for: the first holder keeps the lock until the other has asked for it
    (tests/kit_checks.py), and the shared log proves the order. Without the lock (or with one that does not
    exclude), the log shows no wait, or both building, and this fails.
    """
    from kit_checks import assert_lock_serialized, lock_events

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    log, names = tmp_path / "events.log", ["a", "b"]
    root = tmp_path / "cache"
    procs = [ctx.Process(target=_build_in_a_process, args=(str(root), str(log), n, names, q)) for n in names]
    for p in procs:
        p.start()
    for p in procs:
        p.join(HANG_GUARD_S)  # returns when the process ends; the guard only keeps a broken run from hanging
    assert [p.exitcode for p in procs] == [0, 0], lock_events(log)
    results = sorted(q.get(timeout=60) for _ in procs)  # already written: both processes have ended
    events = lock_events(log)
    holders = [e.split()[0] for e in events if e.endswith(" holding")]
    assert holders, f"neither process went through the cache's lock: {events}"
    first = holders[0]
    second = next(n for n in names if n != first)
    assert_lock_serialized(events, first, second)
    assert [e for e in events if e.endswith(("building", "built"))] == [f"{first} building", f"{first} built"]
    assert events.index(f"{first} built") < events.index(f"{first} released")  # built while holding the lock
    assert dict((n, cached) for n, cached, _ in results) == {first: False, second: True}
    assert results[0][2] == results[1][2]
    ExportCache.verify(Path(results[0][2]))
