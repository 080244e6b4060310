"""Issue 19: a damaged, read-only or full cache ends in a message naming the place and the fix, never a runtime's
traceback, and nothing the user made is lost.

Real exports of the pocket model (a few seconds each) are damaged byte by byte; read-only and full disks are
real tmpfs mounts where this machine allows them (root on Linux), and an OSError faked at the OS boundary
(`os.mkdir`, `shutil.disk_usage`) everywhere else: file modes do not stop root.
"""

from __future__ import annotations

import errno
import gc
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from kit_checks import read_only_below

import phi3kit as kit
import phi3kit.cache as cache_mod
from phi3kit.cache import ExportCache
from phi3kit.cli import main
from phi3kit.errors import CachedEntryError, ExportError, Phi3kitError, StorageError
from phi3kit.exporting import prepare


def quiet(message: str) -> None:
    pass


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, pocket_exports: Callable[..., Path]) -> Path:
    """A cache holding the pocket model's int8 OpenVINO export (the run's, copied); tests damage copies of it."""
    return pocket_exports(tmp_path_factory.mktemp("built-cache"), ("openvino", "int8"))


def copy_cache(built: Path, to: Path) -> Path:
    shutil.copytree(built, to)
    (entry,) = [p for p in (to / "openvino").iterdir() if p.is_dir()]
    return entry


def flip(path: Path, zeros: bool = False, n: int = 8) -> None:
    """Change `n` bytes mid-file in place, the size unchanged: what a bad sector or a broken copy does.

    `zeros` writes NULs, which no XML parser takes (OpenVINO's reads flipped high bytes in a name as a name).
    """
    data = bytearray(path.read_bytes())
    i = len(data) // 2
    data[i:i + n] = bytes(n) if zeros else bytes(b ^ 0xFF for b in data[i:i + n])
    path.write_bytes(bytes(data))


@contextmanager
def tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A real small filesystem at `folder` (Linux, root), unmounted afterwards; skips the test where none can be
    mounted (not root, no CAP_SYS_ADMIN in the container, Windows, macOS)."""
    if sys.platform != "linux" or not shutil.which("mount"):
        pytest.skip("a real small or read-only disk needs Linux's mount (the faked-OSError tests cover the rest)")
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}): needs root")
    try:
        yield folder
    finally:
        gc.collect()  # a closed session's memory-mapped weights
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)  # detached now, freed when unused


def read_only(folder: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True, capture_output=True)


# --- 1. phi3kit cache --verify: every byte, on request --------------------------------------------------------
@pytest.mark.slow
def test_verify_finds_bytes_changed_in_place_and_removes_only_the_damaged(
        built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # Catches: --verify checking sizes only (as a load does), a wrong exit code, --remove-damaged deleting an
    # intact entry or nothing, and a normal load that hashes gigabytes.
    root = tmp_path / "cache"
    entry = copy_cache(built, root)
    other = ExportCache(root).get_or_build("openvino", "other", {"k": 1}, lambda out: (out / "a.bin").write_bytes(b"x"),
                                           quiet).path
    assert main(["cache", "--cache-dir", str(root), "--verify"]) == 0
    assert "every entry is intact" in capsys.readouterr().out

    flip(entry / "openvino_model.bin")
    ExportCache.verify(entry)  # the size check a load does cannot see it
    hashed: list[Path] = []
    real_sha = cache_mod.sha256
    monkeypatch.setattr(cache_mod, "sha256", lambda p: hashed.append(p) or real_sha(p))
    try:
        kit.load("pocket", "openvino", "int8", cache_dir=str(root), log=quiet).close()
    except Phi3kitError:
        pass  # whether the runtime notices changed weights is its business; hashing is what is checked here
    assert hashed == []  # a normal load does not hash

    assert main(["cache", "--cache-dir", str(root), "--verify"]) == 1
    out = capsys.readouterr().out
    assert f"DAMAGED: {entry}" in out and "openvino_model.bin has other bytes" in out and "--remove-damaged" in out
    assert str(other) not in out.split("DAMAGED", 1)[1] and entry.is_dir()  # reported, not deleted

    assert main(["cache", "--cache-dir", str(root), "--remove-damaged"]) == 2  # only with --verify
    assert "--verify --remove-damaged" in capsys.readouterr().err and entry.is_dir()

    assert main(["cache", "--cache-dir", str(root), "--verify", "--remove-damaged"]) == 1
    assert "deleted: the next load rebuilds it" in capsys.readouterr().out
    assert not entry.exists() and other.is_dir()
    assert main(["cache", "--cache-dir", str(root), "--verify"]) == 0


# --- 2. a runtime that cannot load a cached entry: the entry is named -------------------------------------------
@pytest.mark.slow
def test_a_cached_entry_the_runtime_cannot_parse_is_named_with_the_fix(built: Path, tmp_path: Path) -> None:
    # Catches: OpenVINO's raw "Error parsing element attribute" RuntimeError reaching the user with no folder and
    # no way out; and the fix it names not working (the entry is deleted and the next load rebuilds and runs).
    root = tmp_path / "cache"
    entry = copy_cache(built, root)
    flip(entry / "openvino_model.xml", zeros=True)
    with pytest.raises(CachedEntryError) as err:
        kit.load("pocket", "openvino", "int8", cache_dir=str(root), log=quiet)
    msg = str(err.value)
    assert str(entry) in msg and "Error parsing" in msg  # the entry, and the runtime's last line
    assert "phi3kit cache --verify" in msg and "--remove-damaged" in msg
    assert "verify_entries(remove_damaged=True)" in msg
    assert err.value.exit_code == 1 and err.value.entry == entry and isinstance(err.value.__cause__, RuntimeError)

    (damaged,) = ExportCache(root).verify_entries(remove_damaged=True)  # the Python form of the fix
    assert damaged.path == entry and "openvino_model.xml" in damaged.problem and damaged.removed
    with kit.load("pocket", "openvino", "int8", cache_dir=str(root), log=quiet) as s:
        assert not s.export.cached and s.generate("hi", max_new_tokens=2).consume().metrics.new_tokens == 2


@pytest.mark.slow
def test_a_folder_outside_the_cache_keeps_the_runtimes_own_error(built: Path, tmp_path: Path) -> None:
    # Catches: the cache's advice given for a user's own folder, which `phi3kit cache` cannot check or delete.
    entry = copy_cache(built, tmp_path / "cache")
    mine = tmp_path / "my-ir"
    shutil.copytree(entry, mine)
    flip(mine / "openvino_tokenizer.xml", zeros=True)  # the model's IR is checked before loading; this one is not
    with pytest.raises(RuntimeError, match="Error parsing") as err:
        kit.load(str(mine), "openvino", cache_dir=str(tmp_path / "other-cache"), log=quiet)
    assert not isinstance(err.value, CachedEntryError)


# --- 3. a read-only cache -------------------------------------------------------------------------------------
def test_a_read_only_cache_says_so_before_the_export_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Catches: "OSError: [Errno 30] Read-only file system" from deep inside the build (or the lock), after the
    # pre-flight and the conversion started, with no word on where to put the cache instead.
    root = tmp_path / "cache"
    read_only_below(monkeypatch, root)
    logs: list[str] = []
    cfg = kit.LoadConfig(model="pocket", backend="openvino", precision="int8", cache_dir=str(root))
    with pytest.raises(StorageError) as err:
        prepare(cfg, logs.append)
    msg = str(err.value)
    assert str(root) in msg and "read-only" in msg and "--cache-dir" in msg and "cache_dir=" in msg
    assert '$env:PHI3KIT_CACHE="D:\\phi3kit-cache"' in msg
    assert logs == [] and not root.exists()  # nothing started: no export log line, nothing written


@pytest.mark.slow
def test_a_read_only_pack_used_in_place_loads_and_an_absent_entry_is_refused(built: Path, tmp_path: Path) -> None:
    # Catches: a writability check on every load (a pack on a read-only stick must still load what it holds), and
    # the raw Errno 30 for an entry that is not in it.
    with tmpfs(tmp_path / "stick", "16m") as stick:
        entry = copy_cache(built, stick / "cache")
        read_only(stick)
        with kit.load("pocket", "openvino", "int8", cache_dir=str(stick / "cache"), log=quiet) as s:
            assert s.export.path == entry and s.generate("hi", max_new_tokens=2).consume().metrics.new_tokens == 2
        assert ExportCache(stick / "cache").verify_entries() == []  # hashed, though nothing can be written
        with pytest.raises(StorageError, match=r"Cannot write .*stick.*read-only.*PHI3KIT_CACHE"):
            kit.load("pocket", "openvino", "fp16", cache_dir=str(stick / "cache"), log=quiet)


# --- 4. a disk that fills up during an export -----------------------------------------------------------------
def fake_build(exc: BaseException):  # type: ignore[no-untyped-def]
    def build(out: Path) -> None:
        (out / "openvino_model.bin").write_bytes(b"\0" * 1000)  # a partial export...
        raise exc  # ...then what the exporter says when the disk is full

    return build


@pytest.mark.parametrize("free_mb", [10, 10_000])
def test_an_export_that_fails_on_a_nearly_full_disk_says_the_disk_filled(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, free_mb: int) -> None:
    # Catches: OpenVINO's bare "basic_ios::clear: iostream error" as the whole story when the disk is full; and the
    # other way round, every failed export blamed on the disk when it has room.
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=free_mb * 2**20))
    cache = ExportCache(tmp_path / "cache")
    opaque = RuntimeError("Exception from src/core/src/pass/serialize.cpp:1234:\nbasic_ios::clear: iostream error\n")
    if free_mb < 64:
        with pytest.raises(StorageError) as err:
            cache.get_or_build("openvino", "m", {"k": 1}, fake_build(opaque), quiet)
        msg = str(err.value)
        assert "disk filled up" in msg and "basic_ios::clear: iostream error" in msg and "10 MB is free" in msg
        assert "Fix: free some space" in msg and "PHI3KIT_CACHE" in msg and err.value.__cause__ is opaque
    else:
        with pytest.raises(RuntimeError) as err:
            cache.get_or_build("openvino", "m", {"k": 1}, fake_build(opaque), quiet)
        assert err.value is opaque
    assert [p.name for p in (tmp_path / "cache" / "openvino").iterdir()] == ["m-" + cache_mod.key_hash({"k": 1})
                                                                          + ".lock"]  # nothing half-written kept


def test_an_enospc_anywhere_in_the_chain_is_a_full_disk(tmp_path: Path) -> None:
    # Catches: a full disk reported in a child process's text (optimum-cli's OSError, re-raised as ExportError).
    cache = ExportCache(tmp_path / "cache")
    try:
        raise OSError(errno.ENOSPC, "No space left on device")
    except OSError as low:
        try:
            raise ExportError("optimum-cli export failed (exit 1)") from low
        except ExportError as high:
            wrapped = high
    with pytest.raises(StorageError, match="disk filled up"):
        cache.get_or_build("openvino", "m", {"k": 2}, fake_build(wrapped), quiet)
    text_only = ExportError("optimum-cli export failed (exit 1):\nOSError: [Errno 28] No space left on device: 'x'")
    with pytest.raises(StorageError, match=r"disk filled up.*No space left on device"):
        cache.get_or_build("openvino", "m", {"k": 3}, fake_build(text_only), quiet)


@pytest.mark.slow
def test_a_real_full_disk_during_an_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Catches: the export's own traceback (a failed rename deep in optimum, or OpenVINO's iostream error) as the
    # message when the pre-flight was skipped and the disk really filled.
    monkeypatch.setenv("PHI3KIT_SKIP_PREFLIGHT", "1")
    with tmpfs(tmp_path / "small", "1m") as small:
        with pytest.raises(StorageError) as err:
            kit.export("pocket", "openvino", "int8", cache_dir=str(small / "cache"), log=quiet)
        assert "disk filled up" in str(err.value) and "Fix:" in str(err.value)
        assert not list((small / "cache").rglob(".tmp-*"))  # the partial export is gone: its space is back
