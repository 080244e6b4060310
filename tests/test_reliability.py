"""Reliability: killed and concurrent exports, corrupted cache entries, resource preflight, bad input,
results never overwritten, and memory that stays flat over many generations."""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import psutil
import pytest
from safetensors import safe_open

import phi3kit as kit
from phi3kit import pocket
from phi3kit.cache import CacheCorruptError, ExportCache
from phi3kit.cli import main
from phi3kit.errors import ResourceError
from phi3kit.exporting import prepare
from phi3kit.preflight import SKIP_ENV, FreeSpace, Job, count_parameters, estimate, skip_requested
from phi3kit.sources import resolve
from phi3kit.testing import make_random_phi3

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
GB = 10**9
# Waits below end as soon as the state they wait for arrives; the bound only keeps a broken run from hanging
# forever, and what is asserted afterwards is state (files, processes, exit codes), never elapsed time.
HANG_GUARD_S = 600


def snapshot(folder: Path) -> dict[str, tuple[int, int, str]]:
    """Every file with its size, mtime and hash: proof that nobody wrote into a user's folder."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns,
                                         hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def user_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's own model folder (a tiny random Phi-3); the kit must only ever read it."""
    return make_random_phi3("mini-4k", tmp_path_factory.mktemp("user-model"), seed=7)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def export_cmd(model: Path, cache: Path, precision: str) -> list[str]:
    return [sys.executable, "-m", "phi3kit.cli", "export", "--model", str(model), "--backend", "openvino",
            "--precision", precision, "--cache-dir", str(cache)]


def survivors(path: str, wait_s: float = HANG_GUARD_S) -> list[list[str]]:
    """Processes still working on `path`; a killed child can take a moment to go."""
    deadline = time.monotonic() + wait_s
    while True:
        alive = [p.info["cmdline"] for p in psutil.process_iter(["cmdline", "status"])
                 if p.info["status"] != psutil.STATUS_ZOMBIE and path in " ".join(p.info["cmdline"] or [])]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def entries(cache: Path) -> list[Path]:
    folder = cache / "openvino"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".tmp-"))


# --- interrupted, concurrent and corrupted exports (real optimum-cli exports) ---------------------


@pytest.mark.slow
def test_killed_export_leaves_nothing_trusted_and_the_next_run_rebuilds(user_model: Path, cache_dir: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(user_model)
    proc = subprocess.Popen(export_cmd(user_model, cache_dir, "fp16"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=sys.platform != "win32")
    deadline = time.monotonic() + HANG_GUARD_S
    while not list((cache_dir / "openvino").glob(".tmp-*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the export ended before it was killed: nothing was interrupted"
    assert list((cache_dir / "openvino").glob(".tmp-*")), "the export never started building"
    if sys.platform == "win32":
        proc.kill()  # TerminateProcess: the kit's job object then ends its optimum-cli child
    else:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole process group: phi3kit and its optimum-cli child
    proc.wait()
    stale = list((cache_dir / "openvino").glob(".tmp-*"))
    assert stale and entries(cache_dir) == [] and ExportCache(cache_dir).entries() == []
    assert not survivors(str(stale[0])), "SIGKILL of the group also ends the optimum-cli child"

    # The next run: `phi3kit export` again, in this process (a process was killed above; this one need not be new)
    from phi3kit.cli import main

    capsys.readouterr()
    rc = main(export_cmd(user_model, cache_dir, "fp16")[3:])
    out, err = capsys.readouterr()
    assert rc == 0, err[-2000:]
    assert out.splitlines()[-1].startswith("built ")
    assert not any(p.exists() for p in stale), "the killed run's temp folder is cleaned up"
    [entry] = entries(cache_dir)
    ExportCache.verify(entry)
    assert snapshot(user_model) == before


def watched_export_cmd(model: Path, cache: Path, precision: str, log: Path, name: str,
                       peers: list[str]) -> list[str]:
    """`phi3kit export` in a process that logs its cache-lock events (tests/kit_checks.py: the real lock, watched)."""
    code = (f"import sys; sys.path.insert(0, {str(TESTS)!r}); from kit_checks import watch_cache_lock; "
            f"watch_cache_lock({str(log)!r}, {name!r}, {peers!r}, {str(cache)!r}); "
            "from phi3kit.cli import main; sys.exit(main(sys.argv[1:]))")
    return [sys.executable, "-c", code, *export_cmd(model, cache, precision)[3:]]


@pytest.mark.slow
def test_two_processes_exporting_at_once_make_one_export(user_model: Path, cache_dir: Path, tmp_path: Path) -> None:
    """Two `phi3kit export` runs of one model at once: one exports, the other waits at the lock and reuses it.

    They provably overlap: the first to hold the lock keeps it until the other has asked for it, and the
    shared log shows the second waiting while the first held it (fails without the lock, or with a lock that
    does not exclude)."""
    from kit_checks import assert_lock_serialized, lock_events

    before = snapshot(user_model)
    log, names = tmp_path / "lock-events.log", ["a", "b"]
    procs = {n: subprocess.Popen(watched_export_cmd(user_model, cache_dir, "int8", log, n, names),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in names}
    outs = {n: p.communicate(timeout=HANG_GUARD_S) for n, p in procs.items()}
    assert [p.returncode for p in procs.values()] == [0, 0], [err[-1500:] for _, err in outs.values()]
    events = lock_events(log)
    holders = [e.split()[0] for e in events if e.endswith(" holding")]
    assert holders, f"neither export went through the cache's lock: {events}"
    first, second = holders[0], next(n for n in names if n != holders[0])
    assert_lock_serialized(events, first, second)
    built, reused = (outs[n][0].splitlines()[-1] for n in (first, second))
    assert built.startswith("built ") and reused.startswith("reused ")  # the one that held the lock first built
    assert built.split()[1] == reused.split()[1]
    int8 = [e for e in entries(cache_dir) if "-int8-" in e.name]
    assert len(int8) == 1 and not list((cache_dir / "openvino").glob(".tmp-*"))
    ExportCache.verify(int8[0])
    assert snapshot(user_model) == before


@pytest.mark.slow
def test_corrupted_export_is_detected_and_rebuilt(user_model: Path, cache_dir: Path) -> None:
    first = subprocess.run(export_cmd(user_model, cache_dir, "fp16"), capture_output=True, text=True,
                           timeout=HANG_GUARD_S)
    assert first.returncode == 0, first.stderr[-1500:]
    entry = Path(first.stdout.splitlines()[-1].split()[1])
    tokenizer = entry / "openvino_tokenizer.xml"
    kept = tokenizer.read_bytes()
    tokenizer.unlink()  # a file deleted by hand or by a cleanup tool
    with pytest.raises(CacheCorruptError, match="missing openvino_tokenizer.xml"):
        ExportCache.verify(entry)
    tokenizer.write_bytes(kept)
    ExportCache.verify(entry)
    weights = entry / "openvino_model.bin"
    size = weights.stat().st_size
    with weights.open("r+b") as f:  # a copy cut short, a full disk mid-write
        f.truncate(size // 2)
    # The rebuild goes through the preflight too: told there is no room, and asked to skip it, it warns.
    logs: list[str] = []
    cfg = kit.LoadConfig(model=str(user_model), backend="openvino", precision="fp16", cache_dir=str(cache_dir))
    _, exp = prepare(cfg, logs.append, skip_preflight=True, free=FreeSpace(disk_bytes=0, ram_bytes=0))
    assert not exp.cached and exp.path == entry and weights.stat().st_size == size
    assert any("incomplete or corrupted" in m and "openvino_model.bin" in m and "truncated" in m
               and "Rebuilding" in m for m in logs), logs
    assert any(m.startswith("Preflight skipped on request") and "of disk" in m for m in logs)
    with kit.load(str(user_model), "openvino", "fp16", cache_dir=str(cache_dir), log=lambda m: None) as s:
        assert s.generate("hi", max_new_tokens=4).consume().metrics.new_tokens == 4  # the rebuilt export runs


# --- preflight: disk and RAM, checked before an export starts -------------------------------------


def test_preflight_refuses_before_starting(tmp_path: Path) -> None:
    cfg = kit.LoadConfig(model="pocket", backend="openvino", precision="fp32", cache_dir=str(tmp_path / "c"))
    needs = estimate(Job("pocket", "openvino", "fp32", count_parameters(resolve("pocket").path)))
    with safe_open(resolve("pocket").path / "model.safetensors", "np") as f:  # the tensors themselves, counted
        assert needs.params == sum(f.get_tensor(k).size for k in f.keys())  # exact, from the header alone
    logs: list[str] = []
    with pytest.raises(ResourceError) as err:
        prepare(cfg, logs.append, skip_preflight=False, free=FreeSpace(disk_bytes=1_000_000, ram_bytes=64 * GB))
    msg = str(err.value)
    assert f"needs about {needs.disk_bytes / 1e6:.0f} MB of disk" in msg and "1 MB is free" in msg
    assert "Fix:" in msg and SKIP_ENV in msg
    assert "RAM" not in msg
    with pytest.raises(ResourceError, match=r"needs about 0\.5 GB of RAM while converting, and 0\.2 GB is avail"):
        prepare(cfg, logs.append, skip_preflight=False, free=FreeSpace(disk_bytes=GB, ram_bytes=200_000_000))
    ram = estimate(Job("pocket", "openvino", "fp32", needs.params)).ram_bytes  # a shortfall one decimal hides
    shown = rf"needs about {ram / 1e9:.3f} GB of RAM .+ and {(ram - 1e6) / 1e9:.3f} GB is available"
    with pytest.raises(ResourceError, match=shown):
        prepare(cfg, logs.append, skip_preflight=False, free=FreeSpace(disk_bytes=GB, ram_bytes=ram - 1_000_000))
    assert logs == []  # no export was started: nothing logged, nothing written (below)
    assert not list((tmp_path / "c").rglob("*.xml")) and not list((tmp_path / "c").rglob(".tmp-*"))


def test_preflight_skips_a_cached_export_and_scales_with_precision() -> None:
    kit.export("pocket", "openvino", "int8", log=lambda m: None)  # shared test cache
    cfg = kit.LoadConfig(model="pocket", backend="openvino", precision="int8")
    _, exp = prepare(cfg, lambda m: None, skip_preflight=False, free=FreeSpace(0, 0))
    assert exp.cached  # reusing an export needs no room: no check
    params = count_parameters(resolve("pocket").path)
    sizes = [estimate(Job("pocket", "openvino", p, params)).disk_bytes for p in ("int4", "int8", "fp16", "fp32")]
    assert sizes == sorted(sizes) and sizes[3] > 5 * sizes[0]


def test_preflight_bypass_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SKIP_ENV, raising=False)
    assert skip_requested() is False
    for value in ("1", "true", "YES"):
        monkeypatch.setenv(SKIP_ENV, value)
        assert skip_requested() is True and skip_requested(False) is False
    monkeypatch.setenv(SKIP_ENV, "0")
    assert skip_requested() is False and skip_requested(True) is True


# --- bad input: the gaps other test files leave --------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "pattern"),
    [
        ({"backend": "transformers", "device": "TPU"}, kit.DeviceNotFoundError, "'TPU' is not available.*CPU"),
        ({"backend": "transformers", "precision": "int4"}, kit.UnknownChoiceError,
         "Unknown precision.*Valid choices: fp32, bf16, fp16"),
        ({"backend": "transformers", "runtime": "onnx"}, kit.UnknownChoiceError, "Unknown runtime.*pytorch"),
        ({"backend": "openvino", "device": "TPU"}, kit.DeviceNotFoundError, "TPU.*CPU"),
        ({"backend": "openvino", "runtime": "GenAI"}, kit.UnknownChoiceError, "Valid choices: genai, optimum"),
        ({"backend": "OpenVINO"}, kit.UnknownChoiceError, "Valid choices: transformers, openvino"),
    ],
)
def test_bad_choices_name_the_valid_ones(options: dict[str, str], error: type[Exception], pattern: str) -> None:
    args = {"model": "pocket", "backend": "openvino", "precision": "fp32", **options}
    with pytest.raises(error, match=pattern):
        kit.load(**args, log=lambda m: None)


def test_a_folder_that_is_not_phi3_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(kit.ModelSourceError, match="model_type 'llama', not a Phi-3 family model.*model='pocket'"):
        kit.load(str(llama), "transformers", "fp32")
    assert main(["export", "--model", str(llama), "--cache-dir", str(tmp_path / "c")]) == 2
    assert "not a Phi-3 family model" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()  # refused before the cache was touched
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(kit.ModelSourceError, match="no config.json"):
        kit.load(str(empty), "transformers", "fp32")
    (empty / "config.json").write_text("{not json")
    with pytest.raises(kit.ModelSourceError, match="not valid JSON"):
        kit.load(str(empty), "transformers", "fp32")


def test_unknown_notebook_parameter_on_the_command_line(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    nb = ROOT / "notebooks" / "openvino.ipynb"
    assert main(["run", str(nb), "-p", "max_tokens", "5", "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "Unknown parameter of openvino.ipynb: 'max_tokens'" in err and "max_new_tokens" in err
    assert list(tmp_path.iterdir()) == []  # nothing ran, nothing was written


def test_generation_settings_out_of_range() -> None:
    s = kit.load("pocket", "transformers", "fp32", log=lambda m: None)
    for bad, pattern in (({"max_new_tokens": 0}, "max_new_tokens"), ({"max_new_tokens": -3}, "max_new_tokens"),
                         ({"do_sample": True, "temperature": 0.0}, "temperature"),
                         ({"do_sample": True, "temperature": 1e-258}, "temperature"),  # found by hypothesis
                         ({"do_sample": True, "temperature": math.inf}, "temperature"), ({"top_p": 0.0}, "top_p"),
                         ({"top_k": -1}, "top_k")):
        with pytest.raises(kit.Phi3kitError, match=pattern):
            s.generate("hi", **bad)
    with pytest.raises(kit.ContextWindowError, match="Fix: set max_new_tokens <= "):
        s.generate("hi", max_new_tokens=4096)


# --- nothing a user made is overwritten ----------------------------------------------------------


def test_phi3kit_run_numbers_results_instead_of_overwriting(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('label: str = "first"  # which run this is')
    params.metadata["tags"] = ["parameters"]
    nb.cells += [params, nbformat.v4.new_code_cell("print('run by', label)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    src = tmp_path / "tiny.ipynb"
    nbformat.write(nb, str(src))
    original = src.read_bytes()
    out = tmp_path / "out"

    def run(*extra: str) -> list[str]:
        assert main(["run", str(src), "-o", str(out), *extra]) == 0
        return capsys.readouterr().out.split()

    def printed(path: Path) -> str:
        cells = nbformat.read(str(path), as_version=4).cells
        return "".join(o.get("text", "") for c in cells for o in c.get("outputs", []))

    first = run()
    assert str(out / "tiny.ipynb") in first and str(out / "tiny.html") in first
    kept = snapshot(out)
    second = run("-p", "label", "second")
    assert str(out / "tiny-1.ipynb") in second and str(out / "tiny-1.html") in second
    assert {k: v for k, v in snapshot(out).items() if k in kept} == kept  # the first results are untouched
    assert "run by first" in printed(out / "tiny.ipynb") and "run by second" in printed(out / "tiny-1.ipynb")
    run("-p", "label", "third", "--overwrite", "--no-html")
    assert "run by third" in printed(out / "tiny.ipynb") and not (out / "tiny-2.ipynb").exists()
    assert src.read_bytes() == original  # the source notebook itself is never written


def test_a_user_folder_passed_as_model_is_only_read(tmp_path: Path) -> None:
    import shutil

    mine = tmp_path / "my-pocket"
    shutil.copytree(pocket.path(), mine)
    before = snapshot(mine)
    with kit.load(str(mine), "transformers", "fp32", log=lambda m: None) as s:
        assert s.generate("What is an NPU?").text
    assert snapshot(mine) == before and sorted(p.name for p in mine.iterdir()) == sorted(
        p.name for p in pocket.path().iterdir())


# --- soak: memory stays flat ---------------------------------------------------------------------

SOAK_BOUND_MB = 50


@pytest.mark.slow
def test_fifty_generations_do_not_grow_memory(record_property) -> None:  # type: ignore[no-untyped-def]
    questions = [q["question"] for q in pocket.load_qa()]
    proc = psutil.Process()
    with kit.load("pocket", "openvino", "int8", log=lambda m: None) as s:
        for q in questions[:5]:  # warm-up: first compilations, allocator pools
            s.generate(q, max_new_tokens=64).consume()
        gc.collect()
        warm = proc.memory_info().rss
        for i in range(50):
            r = s.generate(questions[(5 + i) % len(questions)], max_new_tokens=64).consume()
            assert r.text, i
        gc.collect()
        after = proc.memory_info().rss
    growth_mb = (after - warm) / 2**20
    record_property("soak_rss_warm_mb", round(warm / 2**20, 1))
    record_property("soak_rss_growth_mb", round(growth_mb, 1))
    print(f"soak: RSS after warm-up {warm / 2**20:.1f} MB, after 50 generations {after / 2**20:.1f} MB, "
          f"growth {growth_mb:+.1f} MB (bound +{SOAK_BOUND_MB} MB)")
    assert growth_mb < SOAK_BOUND_MB
