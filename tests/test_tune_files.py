"""Issue 19 for `phi3kit tune`: it proves it can store its result before measuring, keeps the measurements when
storing fails anyway, and a stored file of the wrong shape is refused by name (never a TypeError or a runtime's
message). A hypothesis test writes arbitrary bytes and JSON where the stored file lives.

Full and read-only disks are faked at the OS boundary (`os.mkdir`, `os.replace` raising OSError): file modes do
not stop root. tests/test_disk_failures.py has the real read-only and full tmpfs mounts.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kit_checks import read_only_below

import phi3kit as kit
from phi3kit import pocket
from phi3kit.cli import main
from phi3kit.errors import Phi3kitError, StorageError, TuningFileError
from phi3kit.tuned import TUNED_DIR, _shape_problem, stored_path

SMALL = {"runs": 2, "prompt_tokens": 32, "new_tokens": 4, "agreement_prompts": 1, "agreement_tokens": 2}


def quiet(message: str) -> None:
    pass


@dataclass
class Tunable:
    root: Path  # the cache
    cfg: kit.LoadConfig  # as the session completed it
    export: Any
    path: Path  # where the choice for this export is stored
    keys: list[str]  # the settings the tuner tries here


@pytest.fixture(scope="module")
def tunable(tmp_path_factory: pytest.TempPathFactory, pocket_exports: Callable[..., Path]) -> Tunable:
    """The pocket model's int8 IR in a cache of its own (the run's export, copied), and where its tuning result
    belongs."""
    root = pocket_exports(tmp_path_factory.mktemp("tune-cache"), ("openvino", "int8"))
    with kit.load("pocket", "openvino", "int8", cache_dir=str(root), log=quiet) as s:
        cfg, export = s.config, s.export
    keys = sorted({k for c in kit.backends.get("openvino").tune_candidates(cfg) for k in c.properties})
    return Tunable(root, cfg, export, stored_path(cfg, export), keys)


@pytest.fixture
def clean(tunable: Tunable) -> Iterator[Tunable]:
    """No stored result before or after the test."""
    tunable.path.unlink(missing_ok=True)
    yield tunable
    tunable.path.unlink(missing_ok=True)


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


# --- 5. storing the result ---------------------------------------------------------------------------------------
def test_tune_proves_it_can_store_before_measuring(clean: Tunable, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # Catches: a read-only cache found only when the result is written, after minutes of measuring (a traceback
    # from Path.mkdir then); on the command line, found only after the model was loaded (an export can take minutes).
    tuned = clean.root / TUNED_DIR
    read_only_below(monkeypatch, tuned)
    shutil.rmtree(tuned, ignore_errors=True)  # (inside this module's cache) so the check has a folder to make
    logs: list[str] = []
    with kit.load("pocket", "openvino", "int8", cache_dir=str(clean.root), log=quiet) as s:
        with pytest.raises(StorageError) as err:
            kit.tune(s, log=logs.append, **SMALL)
    msg = str(err.value)
    assert str(tuned) in msg and "read-only" in msg and "--dry-run" in msg and "PHI3KIT_CACHE" in msg
    assert logs == []  # no candidate was measured
    loads: list[object] = []
    monkeypatch.setattr(kit.Session, "load", classmethod(lambda cls, *a, **k: loads.append(a)))
    assert main(["tune", "--model", "pocket", "--precision", "int8", "--cache-dir", str(clean.root)]) == 2
    assert "Cannot write" in capsys.readouterr().err and loads == []  # refused before the load


def test_a_result_that_cannot_be_stored_after_measuring_is_still_shown(
        clean: Tunable, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # Catches: the disk filling while measuring losing the measurements to a traceback; a half-written result
    # replacing the previous good one (the write is atomic: the old file stays).
    clean.path.parent.mkdir(parents=True, exist_ok=True)
    previous = json.dumps({"candidate": "default", "properties": {}, "numerics": False})
    clean.path.write_text(previous, encoding="utf-8")
    real_replace = os.replace

    def replace(src: object, dst: object, *args: object, **kw: object) -> None:
        if str(dst).startswith(str(clean.root / TUNED_DIR)):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        real_replace(src, dst, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", replace)
    with kit.load("pocket", "openvino", "int8", cache_dir=str(clean.root), log=quiet) as s:
        result = kit.tune(s, only=[], log=quiet, **SMALL)
    assert result.saved is None and "the disk is full" in result.save_error and str(clean.path) in result.save_error
    assert len(result.measured[0].objective_s) == 4 and "NOT STORED" in str(result)  # the measurements are all here
    assert clean.path.read_text(encoding="utf-8") == previous  # the old result, whole
    assert [p.name for p in clean.path.parent.iterdir()] == [clean.path.name]  # no temporary file left

    code = main(["tune", "--model", "pocket", "--precision", "int8", "--cache-dir", str(clean.root), "--only",
                 "default", "--runs", "2", "--prompt-tokens", "32", "--new-tokens", "4"])
    out, err = capsys.readouterr()
    assert code == 1 and "chosen: default" in out and "decode tok/s" in out  # the table first...
    assert "measured but not stored" in err and "the disk is full" in err  # ...then why it was not kept


# --- 6. stored files of the wrong shape ---------------------------------------------------------------------
BAD = {
    "a list": (b"[]", "JSON list"),
    "properties not a table": (b'{"properties": "x"}', "'properties' is \"x\""),
    "a list value": (b'{"properties": {"DYNAMIC_QUANTIZATION_GROUP_SIZE": [64]}}', "not a number, text"),
    "a null value": (b'{"properties": {"DYNAMIC_QUANTIZATION_GROUP_SIZE": null}}', "not a number, text"),
    "an empty table": (b'{"properties": {"DYNAMIC_QUANTIZATION_GROUP_SIZE": {}}}', "not a number, text"),
    "unknown property": (b'{"properties": {"NOT_AN_OPENVINO_PROPERTY": 1}}', "'NOT_AN_OPENVINO_PROPERTY' is not a "
                                                                            "setting the tuner chooses"),
    "numerics not a bool": (b'{"properties": {}, "numerics": "yes"}', "'numerics'"),
    "not UTF-8": (b'{"properties": {"\xff\xfe": 1}}', "not UTF-8 JSON"),
    "not JSON": (b"{properties: 64", "not UTF-8 JSON"),
    "nested too deep": (b'{"properties": ' + b'{"a": ' * 20 + b"1" + b"}" * 21, "nested deeper"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_a_stored_result_of_the_wrong_shape_is_refused_by_name(clean: Tunable, name: str) -> None:
    # Catches: TypeError ('str' object is not a mapping), KeyError ('properties'), AttributeError, OpenVINO's
    # "Unsupported property" RuntimeError, or a file silently ignored: none of which names the file.
    content, says = BAD[name]
    clean.path.parent.mkdir(parents=True, exist_ok=True)
    clean.path.write_bytes(content)
    with pytest.raises(TuningFileError) as err:
        kit.load("pocket", "openvino", "int8", cache_dir=str(clean.root), log=quiet)
    msg = str(err.value)
    assert str(clean.path) in msg and says in msg, msg
    assert "phi3kit tune" in msg and "--untuned" in msg and "tuned=False" in msg and "Remove-Item" in msg
    assert err.value.path == clean.path and clean.path.read_bytes() == content  # named, never rewritten


def test_a_well_formed_result_applies_and_tuned_false_skips_a_bad_one(clean: Tunable) -> None:
    # Catches: the validation refusing what the tuner itself writes (each candidate's properties), and
    # tuned=False still reading the file.
    clean.path.parent.mkdir(parents=True, exist_ok=True)
    key = clean.keys[0]
    props = {key: next(c.properties[key] for c in kit.backends.get("openvino").tune_candidates(clean.cfg)
                       if key in c.properties)}  # what the tuner itself would store
    clean.path.write_text(json.dumps({"candidate": "x", "properties": props, "numerics": True}), encoding="utf-8")
    with kit.load("pocket", "openvino", "int8", cache_dir=str(clean.root), log=quiet) as s:
        assert s.tuning is not None and s.config.runtime_config == props and "tuned:" in repr(s)
    clean.path.write_bytes(b"[]")
    with kit.load("pocket", "openvino", "int8", cache_dir=str(clean.root), tuned=False, log=quiet) as s:
        assert s.tuning is None


def test_setting_names_come_from_the_backends_candidates_not_the_backends_name() -> None:
    # Catches: an OpenVINO-only check (a nested ONNX Runtime GenAI overlay refused, or anything let through for
    # backends the tuner has no candidates for).
    threads = {"model": {"decoder": {"session_options": {"intra_op_num_threads": 1}}}}
    ortgenai = kit.LoadConfig(backend="ortgenai", precision="int4")
    assert _shape_problem({"properties": threads, "numerics": False}, ortgenai) == ""
    other = {"model": {"decoder": {"session_options": {"inter_op_num_threads": 1}}}}
    assert "inter_op_num_threads' is not a setting" in _shape_problem({"properties": other}, ortgenai)
    torch = kit.LoadConfig(backend="transformers", precision="fp32")
    assert "it tries: none" in _shape_problem({"properties": {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 64}}, torch)
    assert _shape_problem({"properties": {}}, torch) == ""  # a kept default is a result


# --- 7. anything at all in the stored file ----------------------------------------------------------------------
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                max_size=3), max_leaves=8)
# Near the real shape, so some files pass the check and reach the runtime with odd values.
VALUES = st.integers(-3, 2**70) | st.booleans() | st.text(max_size=6) | st.floats(allow_nan=True) | JSON


def near_valid(keys: list[str]) -> st.SearchStrategy[Any]:
    names = st.sampled_from([*keys, "NOT_A_PROPERTY", "model"])
    return st.fixed_dictionaries({"properties": st.dictionaries(names, VALUES, max_size=2)},
                                 optional={"numerics": st.booleans() | JSON, "candidate": JSON})


def test_any_stored_file_loads_or_fails_as_a_kit_error(clean: Tunable) -> None:
    # Catches: any shape or byte sequence that escapes the check as a TypeError, KeyError, RecursionError,
    # UnicodeDecodeError or a runtime's own exception, and a load that writes anywhere (the stored file, the
    # cache's entries, the pocket model) while reading it.
    clean.path.parent.mkdir(parents=True, exist_ok=True)
    entry, model = clean.export.path, pocket.path()

    def names() -> list[str]:  # every name in the cache but the stored file, and in the working folder but
        # hypothesis's own cache (.hypothesis/, made on its first run even with database=None)
        return sorted(p.name for p in [*clean.root.rglob("*"), *Path.cwd().iterdir()]
                      if p != clean.path and p.name != ".hypothesis")

    before = snapshot(entry), snapshot(model), names()
    outcomes: dict[str, int] = {}

    @settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.one_of(JSON.map(lambda v: json.dumps(v).encode()), st.binary(max_size=40),
                     near_valid(clean.keys).map(lambda v: json.dumps(v).encode())))
    def load_once(content: bytes) -> None:
        clean.path.write_bytes(content)
        try:
            kit.load("pocket", "openvino", "int8", cache_dir=str(clean.root), log=quiet).close()
            outcome = "loaded"
        except Phi3kitError as exc:
            outcome = type(exc).__name__
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        assert clean.path.read_bytes() == content  # read, never rewritten

    load_once()
    assert (snapshot(entry), snapshot(model), names()) == before
    assert outcomes.get("TuningFileError", 0) > 0, outcomes
