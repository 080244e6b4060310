"""Workshop packs as untrusted input, and the file rules under them (safefs): a crafted pack can neither
write nor delete outside the cache, `--check` verifies exactly the listed files, an unpack that fails leaves
nothing behind, and a folder placed over a held file on Windows is retried, not deleted.

The packs here are made by hand in the format `phi3kit pack` writes (an entry folder with its manifest, an
index of every file's size and SHA-256); tests/test_ready_made.py packs real exports end to end.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phi3kit import safefs
from phi3kit.cache import MANIFEST, ExportCache, copy_files, write_manifest
from phi3kit.cli import main
from phi3kit.errors import CacheCorruptError, Phi3kitError, ResourceError, UnsafePathError
from phi3kit.workshop import PACK_FILE, PackDamagedError, PackError, check, unpack

ENTRY = "openvino/pocket-int8-0123456789abcdef"


def quiet(_: str) -> None:
    pass


def snapshot(folder: Path) -> dict[str, str]:
    """Every path under `folder` (links as links) with its content's hash: proof nothing there changed."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(folder).as_posix()
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_file():
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[rel] = "dir"
    return out


def make_pack(root: Path, folders: tuple[str, ...] = (ENTRY,)) -> Path:
    """A pack as `phi3kit pack` writes it: entry folders with manifests, and the index listing every file."""
    pack = root / "pack"
    files = {}
    for n, folder in enumerate(folders):
        entry = pack.joinpath(*folder.split("/"))
        entry.mkdir(parents=True)
        (entry / "openvino_model.xml").write_text(f"<net {n}/>", encoding="utf-8")
        (entry / "openvino_model.bin").write_bytes(bytes(range(256)) * (n + 4))
        write_manifest(entry, {"key": {"n": n}})
        for p in sorted(entry.rglob("*")):
            files[p.relative_to(pack).as_posix()] = {"size": p.stat().st_size,
                                                     "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
    index = {"format": 1, "entries": [{"model": "pocket", "route": "openvino/genai:int8", "folders": list(folders),
                                       "files": {r: v for r, v in files.items()
                                                 if any(r.startswith(f + "/") for f in folders)}}]}
    (pack / PACK_FILE).write_text(json.dumps(index), encoding="utf-8")
    return pack


def rewrite_index(pack: Path, change) -> None:  # type: ignore[no-untyped-def]
    index = json.loads((pack / PACK_FILE).read_text(encoding="utf-8"))
    change(index)
    (pack / PACK_FILE).write_text(json.dumps(index), encoding="utf-8")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A learner's home: the cache at ~/.cache/phi3kit, and a folder of their own beside it."""
    mine = tmp_path / "home" / "victim"
    mine.mkdir(parents=True)
    (mine / "thesis.txt").write_text("four years of work", encoding="utf-8")
    (tmp_path / "home" / ".cache" / "phi3kit").mkdir(parents=True)
    return tmp_path / "home"


def cache_of(home: Path) -> Path:
    return home / ".cache" / "phi3kit"


# --- paths in the index --------------------------------------------------------------------------------
TRAVERSALS = ["../../victim", "../..", "..", "openvino/../../../victim", "/tmp/abs-entry", "C:/Users/x",
              "C:x/y", "\\\\server\\share", "openvino\\..\\..", "CON/x", "openvino/nul.txt", "openvino/./x",
              "openvino//x", "openvino/x ", "openvino/x.", "openvino/a:b"]


@pytest.mark.parametrize("folder", TRAVERSALS)
def test_a_pack_folder_outside_the_cache_is_refused_before_anything_moves(home: Path, tmp_path: Path,
                                                                         folder: str) -> None:
    """The severe bug: `../../victim` made unpack delete the learner's folder and copy the pack there."""
    pack = make_pack(tmp_path)

    def aim(index: dict) -> None:
        entry = index["entries"][0]
        entry["files"] = {r.replace(ENTRY, folder, 1): v for r, v in entry["files"].items()}
        entry["folders"] = [folder]

    rewrite_index(pack, aim)
    before = snapshot(home)
    with pytest.raises(PackError, match="refused|not a valid pack index"):
        unpack(pack, cache_of(home), log=quiet)
    with pytest.raises(PackError):  # --check does not call it intact either
        check(pack)
    assert snapshot(home) == before
    assert main(["unpack", str(pack), "--check"]) == 2
    assert main(["unpack", str(pack), "--cache-dir", str(cache_of(home))]) == 2
    assert snapshot(home) == before


@pytest.mark.parametrize("rel", ["../../victim/thesis.txt", f"{ENTRY}/../../../victim/thesis.txt", "/etc/passwd",
                                 f"{ENTRY}/sub/../../x", "openvino/other-entry/file"])
def test_a_pack_file_outside_its_entry_folder_is_refused(home: Path, tmp_path: Path, rel: str) -> None:
    pack = make_pack(tmp_path)
    rewrite_index(pack, lambda i: i["entries"][0]["files"].update({rel: {"size": 1, "sha256": "0" * 64}}))
    before = snapshot(home)
    with pytest.raises(PackError, match=r"refused|outside the entry's folders"):
        unpack(pack, cache_of(home), log=quiet)
    assert snapshot(home) == before


def test_check_relative_accepts_plain_names_and_refuses_the_rest() -> None:
    assert safefs.check_relative("openvino/pocket-int8-01ab/openvino_model.bin", "f")
    assert safefs.check_relative("a/b.c/d_e-f", "f")
    for bad in [*TRAVERSALS, "", None, 5, "a/AUX.json", "a/LPT1", "a/b\x00", "a/b\n", "a/b|c", "a/b?"]:
        with pytest.raises(UnsafePathError):
            safefs.check_relative(bad, "f")


# --- what --check guarantees ----------------------------------------------------------------------------
def test_check_verifies_exactly_the_listed_files(home: Path, tmp_path: Path) -> None:
    pack = make_pack(tmp_path)
    assert check(pack) == []
    added = pack / ENTRY / "extra.bin"
    added.write_bytes(b"not packed")
    assert check(pack) == [f"{ENTRY}/extra.bin is not in the pack's index (route openvino/genai:int8): an added file"]
    with pytest.raises(PackDamagedError, match="an added file"):
        unpack(pack, cache_of(home), log=quiet)
    assert not any(cache_of(home).rglob("extra.bin"))
    assert main(["unpack", str(pack), "--check"]) == 1
    added.unlink()
    (pack / ENTRY / "openvino_model.xml").unlink()
    assert check(pack) == [f"{ENTRY}/openvino_model.xml is missing (route openvino/genai:int8)"]


def test_a_link_inside_a_pack_is_never_followed(home: Path, tmp_path: Path) -> None:
    """`leak.txt -> ~/secret.txt` in an entry copied the secret into the cache."""
    secret = home / "secret.txt"
    secret.write_text("password", encoding="utf-8")
    pack = make_pack(tmp_path)
    (pack / ENTRY / "leak.txt").symlink_to(secret)
    digest = hashlib.sha256(b"password").hexdigest()
    rewrite_index(pack, lambda i: i["entries"][0]["files"].update({f"{ENTRY}/leak.txt": {"size": 8, "sha256": digest}}))
    assert check(pack) == [f"{ENTRY}/leak.txt is a link (route openvino/genai:int8): a pack holds plain files only"]
    with pytest.raises(PackDamagedError, match="is a link"):
        unpack(pack, cache_of(home), log=quiet)
    assert not any(p.read_bytes() == b"password" for p in cache_of(home).rglob("*") if p.is_file())


def test_a_linked_entry_folder_is_refused(home: Path, tmp_path: Path) -> None:
    pack = make_pack(tmp_path)
    real = pack / ENTRY
    real.rename(tmp_path / "elsewhere")
    real.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    assert check(pack) == [f"{ENTRY} is a link (route openvino/genai:int8): a pack holds plain files only"]


@pytest.mark.parametrize("index", [
    [], "entries", {"entries": {"a": 1}}, {"entries": [5]}, {"entries": [{"folders": [7], "files": {}}]},
    {"entries": [{"folders": "openvino/x", "files": {}}]}, {"entries": [{"folders": ["openvino/x"], "files": []}]},
    {"entries": [{"folders": ["openvino/x"], "files": {"openvino/x/a": {"size": "1", "sha256": "0" * 64}}}]},
    {"entries": [{"folders": ["openvino/x"], "files": {"openvino/x/a": {"size": 1, "sha256": "nope"}}}]},
    {"entries": [{"folders": ["openvino/x"], "files": {"openvino/x/a": 12}}]},
    {"entries": [{"model": 3, "folders": ["openvino/x"], "files": {}}]},
    {"entries": [{"folders": ["openvino"], "files": {}}]}, {"format": "1", "entries": []},
])
def test_a_malformed_index_is_a_clear_error(tmp_path: Path, index: object,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    pack = tmp_path / "pack"
    pack.mkdir()
    (pack / PACK_FILE).write_text(json.dumps(index), encoding="utf-8")
    with pytest.raises(PackError, match=rf"{PACK_FILE} (is not a valid pack index|is refused): .+ Fix: "):
        check(pack)
    assert main(["unpack", str(pack), "--check"]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_an_index_from_a_newer_kit_says_so_and_an_older_one_still_reads(home: Path, tmp_path: Path) -> None:
    pack = make_pack(tmp_path)
    rewrite_index(pack, lambda i: i.update(format=99))
    with pytest.raises(PackError, match="newer phi3kit"):
        check(pack)
    rewrite_index(pack, lambda i: i.pop("format"))  # packs written before the format was recorded
    assert check(pack) == []
    assert unpack(pack, cache_of(home), log=quiet).copied == [ENTRY]


# --- unpacking -------------------------------------------------------------------------------------------
def test_unpack_places_entries_verifies_them_and_leaves_intact_ones(home: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    pack = make_pack(tmp_path, (ENTRY, "openvino/tokenizer-77"))
    cache = cache_of(home)
    done = unpack(pack, cache, log=quiet)
    assert done.copied == [ENTRY, "openvino/tokenizer-77"] and done.cache == cache
    ExportCache.verify(cache / ENTRY, hashes=True)
    assert [p.name for p in (cache / "openvino").iterdir() if p.name.startswith(".")] == [
        p.name for p in (cache / "openvino").iterdir() if p.suffix == ".lock" and p.name.startswith(".")]
    again = unpack(pack, cache, log=quiet)
    assert again.present == [ENTRY, "openvino/tokenizer-77"] and again.copied == []
    assert main(["unpack", str(pack), "--cache-dir", str(cache)]) == 0  # the pack flow's next step: the check
    assert "Next: `phi3kit check`" in capsys.readouterr().out
    # same size, other bytes in the cache's copy: it is not "already there", it is replaced
    weights = cache / ENTRY / "openvino_model.bin"
    weights.write_bytes(bytes(reversed(weights.read_bytes())))
    assert unpack(pack, cache, log=quiet).copied == [ENTRY]
    ExportCache.verify(cache / ENTRY, hashes=True)


def test_a_full_disk_is_found_before_unpacking(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pack = make_pack(tmp_path)
    monkeypatch.setattr(safefs, "free_bytes", lambda folder: 100)
    before = snapshot(home)
    with pytest.raises(ResourceError, match=r"Unpacking 1 entries of .+ needs about .+ of disk at .+ Fix: "):
        unpack(pack, cache_of(home), log=quiet)
    assert snapshot(home) == before


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
def test_an_unpack_that_fails_midway_leaves_nothing_and_keeps_what_was_there(
        home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: BaseException) -> None:
    pack = make_pack(tmp_path)
    cache = cache_of(home)
    unpack(pack, cache, log=quiet)
    old = cache / ENTRY / "openvino_model.bin"
    old.write_bytes(b"x" * old.stat().st_size)  # damaged in the cache: this unpack will replace it
    damaged = snapshot(cache / ENTRY)

    def copy_then_fail(src: Path, dst: Path, files: list[str] | None = None, desc: str = "") -> None:
        copy_files(src, dst, files=(files or [])[:1], desc=desc)
        raise failure

    monkeypatch.setattr("phi3kit.workshop.copy_files", copy_then_fail)
    with pytest.raises(type(failure)):
        unpack(pack, cache, log=quiet)
    assert snapshot(cache / ENTRY) == damaged  # not half-replaced
    assert not [p for p in (cache / "openvino").iterdir() if p.name.startswith((".tmp-", ".old-"))]


def test_unpack_never_writes_through_a_link_in_the_cache(home: Path, tmp_path: Path) -> None:
    pack = make_pack(tmp_path)
    cache = cache_of(home)
    (cache / "openvino").symlink_to(home / "victim", target_is_directory=True)
    before = snapshot(home / "victim")
    with pytest.raises(PackError, match="is a link"):
        unpack(pack, cache, log=quiet)
    assert snapshot(home / "victim") == before


def test_a_read_only_cache_is_named_before_the_pack_is_hashed(home: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    pack = make_pack(tmp_path)
    hashed: list[Path] = []
    monkeypatch.setattr("phi3kit.workshop.sha256", lambda p: hashed.append(p) or "0" * 64)

    real_write = Path.write_bytes

    def read_only(self: Path, data: bytes) -> int:  # the cache's disk, as a read-only mount answers
        if cache_of(home) in self.parents:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", read_only)
    with pytest.raises(Phi3kitError, match=r"Cannot write .+phi3kit: the location is read-only .+ Fix: .+cache"):
        unpack(pack, cache_of(home), log=quiet)
    assert hashed == []


UNPACK_CHILD = """
import sys
from phi3kit.workshop import unpack
print(unpack(sys.argv[1], sys.argv[2], log=lambda m: None).copied)
"""


def test_two_unpacks_into_one_cache_at_once_both_succeed(home: Path, tmp_path: Path) -> None:
    """They shared a temporary folder name, and one failed with FileNotFoundError."""
    pack = make_pack(tmp_path, tuple(f"openvino/entry-{n}" for n in range(6)))
    cache = cache_of(home)
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    procs = [subprocess.Popen([sys.executable, "-c", UNPACK_CHILD, str(pack), str(cache)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, encoding="utf-8", env=env) for _ in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert check(pack) == []
    for n in range(6):
        ExportCache.verify(cache / "openvino" / f"entry-{n}", hashes=True)


# --- fuzz: any index, any tree -----------------------------------------------------------------------
NASTY = st.sampled_from(["..", ".", "", "openvino", "x", "CON", "a:b", "/", "\\", "C:", "..\\..", " ", "~",
                         "victim", "entry-1", "nul.bin", "é", "张"])
PATHS = st.lists(NASTY, min_size=1, max_size=5).map("/".join)
RECORD = st.one_of(st.fixed_dictionaries({"size": st.integers(-1, 2**40), "sha256": st.sampled_from(["0" * 64, "x"])}),
                   st.integers(), st.text(max_size=3), st.none())
ENTRY_S = st.fixed_dictionaries({"folders": st.one_of(st.lists(PATHS, max_size=3), PATHS, st.integers()),
                                 "files": st.one_of(st.dictionaries(PATHS, RECORD, max_size=4), st.lists(PATHS))},
                                optional={"model": st.one_of(st.text(max_size=5), st.integers()),
                                          "route": st.text(max_size=5)})
INDEX = st.one_of(st.fixed_dictionaries({"entries": st.lists(ENTRY_S, max_size=3)},
                                        optional={"format": st.integers(-1, 3)}),
                  st.lists(st.integers(), max_size=2), st.text(max_size=5), st.none())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(index=INDEX, tree=st.lists(PATHS, max_size=4), link=st.booleans())
def test_fuzz_any_index_and_tree_ends_in_success_or_the_kits_error(tmp_path: Path, index: object, tree: list[str],
                                                                  link: bool) -> None:
    import shutil
    import uuid

    base = tmp_path / uuid.uuid4().hex
    home = base / "home"
    (home / "victim").mkdir(parents=True)
    (home / "victim" / "thesis.txt").write_text("mine", encoding="utf-8")
    cache = home / ".cache" / "phi3kit"
    pack = cache / ".." / ".." / ".." / "pack"  # the pack beside home: `..` paths aim at home and beyond
    pack.mkdir(parents=True)
    for rel in tree:  # files where the index may point, safe names or not (written only inside the pack)
        try:
            safefs.check_relative(rel, "t")
        except UnsafePathError:
            continue
        try:
            (pack / rel).parent.mkdir(parents=True, exist_ok=True)
            if not (pack / rel).exists():
                (pack / rel).write_bytes(b"data")
        except (FileExistsError, NotADirectoryError):
            continue  # a file where an earlier path of the tree put one ('a', then 'a/b'): the tree keeps the file
    if link and tree:
        try:
            (pack / "openvino").mkdir(exist_ok=True)
            (pack / "openvino" / "x").symlink_to(home / "victim", target_is_directory=True)
        except OSError:
            pass
    (pack / PACK_FILE).write_text(json.dumps(index), encoding="utf-8")
    before = snapshot(home / "victim")
    outside = sorted(p.name for p in base.iterdir())
    try:
        check(pack)
        unpack(pack, cache, log=quiet)
    except Phi3kitError:
        pass
    assert snapshot(home / "victim") == before
    assert sorted(p.name for p in base.iterdir()) == outside
    assert sorted(p.name for p in home.iterdir()) == [".cache", "victim"]
    shutil.rmtree(base)


# --- safefs: placing, deleting, copying ----------------------------------------------------------------
def held(winerror: int) -> PermissionError:
    exc = PermissionError(errno.EACCES, "The process cannot access the file because it is being used")
    exc.winerror = winerror  # type: ignore[attr-defined]
    return exc


def test_a_rename_over_a_held_file_is_retried_and_the_finished_folder_kept(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows: Defender holds a file just written; the rename fails twice with WinError 32, then works."""
    root = tmp_path / "cache"
    tmp = safefs.temp_dir(root / "openvino", "entry")
    (tmp / "model.bin").write_bytes(b"gigabytes")
    real, calls, slept = os.replace, [], []

    def flaky(src: object, dst: object) -> None:
        calls.append(src)
        if len(calls) <= 2:
            raise held(32)
        real(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    monkeypatch.setattr(safefs.time, "sleep", slept.append)
    safefs.place_folder(tmp, root / "openvino" / "entry", root)
    assert (root / "openvino" / "entry" / "model.bin").read_bytes() == b"gigabytes"
    assert len(calls) == 3 and slept == list(safefs.RETRY_DELAYS[:2])


def test_a_rename_that_keeps_failing_leaves_the_old_folder_in_place(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "cache"
    final = root / "openvino" / "entry"
    final.mkdir(parents=True)
    (final / "old.bin").write_bytes(b"old")
    tmp = safefs.temp_dir(final.parent, "entry")
    real = os.replace

    def refuse_new(src: object, dst: object) -> None:
        if Path(src) == tmp:  # type: ignore[arg-type]
            raise PermissionError(errno.EACCES, "Permission denied")  # not a held file: not retried
        real(src, dst)

    monkeypatch.setattr(os, "replace", refuse_new)
    with pytest.raises(PermissionError):
        safefs.place_folder(tmp, final, root)
    assert (final / "old.bin").read_bytes() == b"old"


def test_the_kit_deletes_only_inside_its_root(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    (root / "openvino").mkdir(parents=True)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "f").write_text("x", encoding="utf-8")
    for target in (mine, root, root / ".." / "mine", tmp_path):
        with pytest.raises(UnsafePathError, match="refusing to delete"):
            safefs.remove_tree(target, root)
    (root / "openvino" / "link").symlink_to(mine, target_is_directory=True)
    with pytest.raises(UnsafePathError, match="is a link"):
        safefs.remove_tree(root / "openvino" / "link" / "f", root)
    assert (mine / "f").exists()


def test_copies_from_a_read_only_pack_can_be_deleted_later(tmp_path: Path) -> None:
    """copystat copied a pack's read-only attribute, so a later rmtree of the cache entry failed on Windows."""
    src = tmp_path / "pack-entry"
    src.mkdir()
    (src / "model.bin").write_bytes(b"w")
    (src / "model.bin").chmod(0o444)
    copy_files(src, tmp_path / "copy")
    assert (tmp_path / "copy" / "model.bin").stat().st_mode & 0o200
    assert (tmp_path / "copy" / "model.bin").stat().st_mtime_ns == (src / "model.bin").stat().st_mtime_ns


def test_atomic_write_keeps_the_old_file_when_the_disk_fills(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "results.csv"
    target.write_text("good", encoding="utf-8")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(Phi3kitError, match=rf"Cannot write {target}: the disk is full .+ Fix: "):
        safefs.atomic_write(target, "half")
    assert target.read_text(encoding="utf-8") == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]


# --- the cache root as typed, and hashes in manifests ------------------------------------------------
@pytest.mark.parametrize("how", ["symlink", "relative"])
def test_a_linked_or_relative_cache_root_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """Each entry's path was resolved and compared with the root as typed: every load died with 'would escape'."""
    real = tmp_path / "real-cache"
    real.mkdir()
    if how == "symlink":
        root = tmp_path / "linked-cache"
        root.symlink_to(real, target_is_directory=True)
    else:
        monkeypatch.chdir(tmp_path)
        root = Path("real-cache")
    monkeypatch.setenv("PHI3KIT_CACHE", str(root))
    cache = ExportCache()
    export = cache.get_or_build("openvino", "pocket", {"k": 1}, lambda out: (out / "m.bin").write_bytes(b"m"), quiet)
    assert not export.cached and (real / "openvino").is_dir()
    assert cache.get_or_build("openvino", "pocket", {"k": 1}, lambda out: None, quiet).cached


def test_manifests_hash_every_file_and_older_ones_are_hashed_once(tmp_path: Path) -> None:
    cache = ExportCache(tmp_path)
    export = cache.get_or_build("openvino", "m", {"k": 2}, lambda out: (out / "w.bin").write_bytes(b"abcd"), quiet)
    manifest = json.loads((export.path / MANIFEST).read_text(encoding="utf-8"))
    assert manifest["sha256"] == {"w.bin": hashlib.sha256(b"abcd").hexdigest()}
    (export.path / "w.bin").write_bytes(b"abcX")  # same size, other bytes
    ExportCache.verify(export.path)  # a load does not hash gigabytes
    with pytest.raises(CacheCorruptError, match="other bytes than when it was written"):
        ExportCache.verify(export.path, hashes=True)
    del manifest["sha256"]  # a manifest from before hashes were recorded
    (export.path / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    ExportCache.verify(export.path, hashes=True)
    stored = json.loads((export.path / MANIFEST).read_text(encoding="utf-8"))["sha256"]
    assert stored == {"w.bin": hashlib.sha256(b"abcX").hexdigest()}
