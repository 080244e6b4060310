"""Every bad input a clear error (exit 2, no traceback, before slow work), and outputs that cannot be lost (issue 19).

Most cases drive `phi3kit.cli.main` in-process: its checks run before any kernel, export or model load, so
they cost milliseconds. The few that need a kernel run a three-cell notebook made here, not a kit notebook.
"""

from __future__ import annotations

import errno
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

import phi3kit as kit
from phi3kit.cli import eof_keys, main
from phi3kit.errors import ExportSettingError, ParameterError, Phi3kitError, StorageError
from phi3kit.runner import GridError, absolute_paths, coerce, load_grid, to_html, validate, write_results

ROOT = Path(__file__).resolve().parents[1]
OPENVINO = ROOT / "notebooks" / "openvino.ipynb"


def tiny_notebook(folder: Path, body: str, name: str = "tiny.ipynb") -> Path:
    """A notebook with a parameters cell (`n: int`, `text: str`) and one cell of `body`."""
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('n: int = 1  # a number\ntext: str = "hi"  # a text')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = folder / name
    nbformat.write(nb, str(path))
    return path


# --- 1. the command line: exit codes, --debug, --version ------------------------------------------


def test_debug_flag_and_env_show_the_traceback_plain_runs_do_not(monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Catches: the traceback printed on every refusal, or lost for good (no --debug / PHI3KIT_DEBUG)."""
    monkeypatch.delenv("PHI3KIT_DEBUG", raising=False)
    assert main(["models", "phi-3-mini-4kk"]) == 2
    plain = capsys.readouterr().err
    assert "Traceback" not in plain and plain.startswith("phi3kit: error: Unknown model alias: 'phi-3-mini-4kk'")
    assert main(["--debug", "models", "phi-3-mini-4kk"]) == 2
    debug = capsys.readouterr().err
    assert "Traceback (most recent call last)" in debug and "UnknownChoiceError" in debug
    assert debug.rstrip().splitlines()[-1].startswith("phi3kit: error: Unknown model alias")  # the message stays last
    assert main(["models", "phi-3-mini-4kk", "--debug"]) == 2  # after the command too
    assert "Traceback (most recent call last)" in capsys.readouterr().err
    monkeypatch.setenv("PHI3KIT_DEBUG", "1")
    assert main(["models", "phi-3-mini-4kk"]) == 2
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_version_is_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    """Catches: `phi3kit --version` missing, or printing a version other than the package's (once written twice)."""
    import tomllib

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"phi3kit {kit.__version__}"
    # ...and the package's version is that one: pyproject.toml reads it from phi3kit/__init__.py, not a copy of it
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in pyproject["project"] and "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "phi3kit.__version__"}


# --- 2, 3. phi3kit run: parameters checked before the kernel ------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-p", "max_new_tokens", "abc"], "max_new_tokens of openvino.ipynb is int; got 'abc'"),
        (["-p", "max_new_tokens", "12.5"], "got '12.5', which is not a whole number"),
        (["-p", "do_sample", "maybe"], "do_sample of openvino.ipynb is bool; got 'maybe'. Fix: -p do_sample true"),
        (["-p", "model", "phi-3-mini-4kk"], "Unknown model alias: 'phi-3-mini-4kk'. Valid choices: phi-3-mini-4k"),
        (["-p", "precision", "int3"], "Unknown precision for backend 'openvino': 'int3'"),
        (["-p", "device", "NPU"], "'NPU' is not available"),
        (["-p", "max_new_tokens", "0"], "max_new_tokens must be a positive integer, got 0"),
        (["-p", "prompt", "What \udcff"], "prompt holds bytes that are not UTF-8"),
        (["-p", "cache_dir", str(ROOT / "pyproject.toml")], "a file is in the way where a folder is needed"),
    ],
)
def test_run_refuses_bad_parameters_before_the_kernel(argv: list[str], message: str, tmp_path: Path,
                                                       fake_openvino, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    """Exit 2, the kit's own message, no traceback, and nothing written: the kernel never started.

    Catches: a ValueError traceback for -p values that do not read; ~40 lines of papermill traceback (and an
    unnamed partial notebook) for values the kit's checks refuse; a 0-byte notebook for non-UTF-8 text.
    """
    fake_openvino(["CPU"])  # a CPU-only machine, faked: the NPU case means the same on an NPU laptop
    out = tmp_path / "out"
    assert main(["run", str(OPENVINO), *argv, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("phi3kit: error: ") and message in err and "Traceback" not in err
    assert not out.exists()


def test_run_names_a_missing_notebook(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Catches: FileNotFoundError's traceback from papermill for a mistyped notebook path."""
    assert main(["run", str(tmp_path / "openvnio.ipynb"), "-p", "model", "pocket"]) == 2
    err = capsys.readouterr().err
    assert "openvnio.ipynb does not exist" in err and "notebooks/openvino.ipynb" in err and "Traceback" not in err


def test_relative_folders_are_the_callers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """-p cache_dir mycache means ./mycache where the command ran, not beside the notebook in the repo.

    Catches: relative *_dir parameters handed to the kernel as written (it runs in the notebook's folder).
    """
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "mine").mkdir(parents=True)
    got = validate(OPENVINO, coerce(OPENVINO, {"cache_dir": "mycache", "model": "pocket", "prompt": "hi/there"}))
    assert got == {"cache_dir": str(tmp_path / "mycache"), "model": "pocket", "prompt": "hi/there"}
    assert absolute_paths({"model": "models/mine"})["model"] == str(tmp_path / "models" / "mine")
    grid = tmp_path / "g.yaml"
    grid.write_text(f"notebook: {OPENVINO}\ngrid: {{cache_dir: [a, b]}}\n", encoding="utf-8")
    assert load_grid(grid).grid["cache_dir"] == [str(tmp_path / "a"), str(tmp_path / "b")]


def test_a_notebook_that_fails_is_kept_under_a_clear_name_and_its_error_leads(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A failure only the notebook can find: exit 1, the notebook's own message first, <name>-failed.ipynb kept.

    Catches: papermill's traceback before the kit's message; exit 2 for a run that was tried; the executed
    notebook (with the error in it) lost or left under the good run's name.
    """
    nb = tiny_notebook(tmp_path, 'import phi3kit as kit\nraise kit.ContextWindowError(f"too long: {text}. Fix: x.")')
    out = tmp_path / "out"
    assert main(["run", str(nb), "-p", "text", "ünïcode", "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("phi3kit: error: too long: ünïcode. Fix: x. (ContextWindowError in cell [") , err
    assert "Traceback" not in err and "PapermillExecutionError" not in err
    failed = out / "tiny-failed.ipynb"
    assert str(failed) in err and sorted(p.name for p in out.iterdir()) == ["tiny-failed.ipynb"]
    outputs = [o for c in nbformat.read(str(failed), as_version=4).cells if c.cell_type == "code" for o in c.outputs]
    assert any(o.get("ename") == "ContextWindowError" for o in outputs)


def test_a_cell_that_times_out_is_a_failed_run_not_a_storage_error(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """nbclient's CellTimeoutError is an OSError (TimeoutError) without an errno: exit 1 and the notebook kept.

    Catches: a timeout reported as 'Cannot write ...' (exit 2) and the executed notebook thrown away.
    """
    nb = tiny_notebook(tmp_path, "import time\ntime.sleep(30)")
    out = tmp_path / "out"
    assert main(["run", str(nb), "--timeout", "2", "-o", str(out), "--no-html"]) == 1
    err = capsys.readouterr().err
    assert "CellTimeoutError" in err and "Cannot write" not in err and str(out / "tiny-failed.ipynb") in err
    assert sorted(p.name for p in out.iterdir()) == ["tiny-failed.ipynb"]


# --- 4. outputs that cannot be lost ----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("when", ["kernel-starting", "cell-running"])
def test_ctrl_c_during_overwrite_keeps_the_previous_results(tmp_path: Path, when: str) -> None:
    """`phi3kit run --overwrite` interrupted mid-run: the good notebook and handout stay, no temporary is left.

    Catches: papermill writing straight onto the old notebook (a partial one replaced it) and the old .html
    left beside a notebook it no longer describes; a kernel left running after the kit has said it stopped
    (interrupted while it started, it lived on and logged "Parent appears to have exited" after the kit's line).
    """
    nb = tiny_notebook(tmp_path, "import time\nprint('started', flush=True)\ntime.sleep(120)")
    out = tmp_path / "out"
    out.mkdir()
    (out / "tiny.ipynb").write_text("GOOD NOTEBOOK", encoding="utf-8")
    (out / "tiny.html").write_text("GOOD HANDOUT", encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "phi3kit.cli", "run", str(nb), "-o", str(out), "--overwrite"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8")
    try:
        deadline = time.monotonic() + 90
        # papermill writes its first copy before the kernel starts, and again as the cell starts ("running")
        while not (tmp := list(out.glob(".tiny.ipynb.*.tmp"))) or (
                when == "cell-running" and '"running"' not in tmp[0].read_text(encoding="utf-8")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # The kit's own words last, no KeyboardInterrupt traceback: the kernel is gone before they are written.
    assert proc.returncode == 130 and "KeyboardInterrupt" not in err, err[-2000:]
    assert err.rstrip().endswith("phi3kit: interrupted (Ctrl-C); earlier results are as they were.")
    assert (out / "tiny.ipynb").read_text(encoding="utf-8") == "GOOD NOTEBOOK"
    assert (out / "tiny.html").read_text(encoding="utf-8") == "GOOD HANDOUT"
    assert sorted(p.name for p in out.iterdir()) == ["tiny.html", "tiny.ipynb"]


def test_a_run_puts_its_files_in_place_and_overwrite_replaces_them_on_success(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The success path through the temporary files: notebook and handout in place, no temporary left.

    Catches: a result left under its temporary name, or a handout rendered from the wrong (old) notebook.
    """
    nb = tiny_notebook(tmp_path, "print('answer', n)")
    out = tmp_path / "out"
    (out).mkdir()
    (out / "tiny.ipynb").write_text("OLD", encoding="utf-8")
    (out / "tiny.html").write_text("OLD", encoding="utf-8")
    assert main(["run", str(nb), "-p", "n", "7", "-o", str(out), "--overwrite"]) == 0
    assert f"executed notebook: {out / 'tiny.ipynb'}" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["tiny.html", "tiny.ipynb"]
    assert "answer 7" in (out / "tiny.html").read_text(encoding="utf-8")
    assert "answer 7" in (out / "tiny.ipynb").read_text(encoding="utf-8")


@pytest.mark.slow
def test_a_grid_keeps_failed_runs_and_writes_its_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two runs, one failing, in their own processes (-j 2): exit 1, both notebooks kept, the table says which failed.

    Catches: the temporary-file path losing a failed run's notebook (it shows the error) or its table row.
    """
    import csv

    nb = tiny_notebook(tmp_path, "assert n == 1, f'n is {n}'\nprint('ok', n)")
    out = tmp_path / "out"
    assert main(["run", str(nb), "-g", "n", "1,2", "-j", "2", "-o", str(out)]) == 1
    assert "1 of 2 runs succeeded" in capsys.readouterr().out
    rows = list(csv.DictReader((out / "results.csv").open(encoding="utf-8")))
    assert [(r["n"], r["status"]) for r in rows] == [("1", "ok"), ("2", "failed")]
    assert "AssertionError: n is 2" in rows[1]["error"]
    assert sorted(p.name for p in out.iterdir()) == ["results.csv", "tiny-n-1.html", "tiny-n-1.ipynb", "tiny-n-2.html",
                                                     "tiny-n-2.ipynb"]


def test_a_full_disk_keeps_the_previous_handout_and_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC when the new file is put in place: StorageError naming the path, the old file whole, no temp left.

    Catches: handouts and results.csv written in place (a full disk left a 0-byte or half file).
    """
    from phi3kit.runner import GridRun

    nb = tmp_path / "run.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# run")]), str(nb))
    (tmp_path / "run.html").write_text("GOOD HANDOUT", encoding="utf-8")
    (tmp_path / "results.csv").write_text("GOOD TABLE", encoding="utf-8")

    def full(src: object, dst: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(StorageError, match=r"run\.html: the disk is full.*Fix: free some space"):
        to_html(nb, overwrite=True)
    with pytest.raises(StorageError, match=r"results\.csv: the disk is full"):
        write_results([GridRun({"n": 1}, nb, status="ok")], tmp_path / "results.csv")
    monkeypatch.undo()
    assert (tmp_path / "run.html").read_text(encoding="utf-8") == "GOOD HANDOUT"
    assert (tmp_path / "results.csv").read_text(encoding="utf-8") == "GOOD TABLE"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv", "run.html", "run.ipynb"]


def test_an_output_folder_that_is_a_file_is_refused_before_the_kernel(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Catches: the kernel started (and the run lost) before the output folder turned out unusable."""
    blocker = tmp_path / "out"
    blocker.write_text("a file", encoding="utf-8")
    assert main(["run", str(OPENVINO), "-p", "model", "pocket", "-o", str(blocker)]) == 2
    err = capsys.readouterr().err
    assert f"Cannot write {blocker}" in err and "Fix:" in err and "Traceback" not in err


def test_a_read_only_output_folder_is_refused_before_the_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """EROFS at the OS boundary (root writes anywhere, so it is faked): exit 2 naming the folder, no kernel started.

    Catches: the output folder first tried when papermill writes, after the kernel started.
    """
    real = Path.write_bytes

    def read_only(self: Path, data: bytes) -> int:
        if self.name.startswith(".phi3kit-probe"):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", read_only)
    started = []
    monkeypatch.setattr("phi3kit.runner.execute", lambda *a, **k: started.append(a))
    assert main(["run", str(OPENVINO), "-p", "model", "pocket", "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"Cannot write {tmp_path / 'out'}: the location is read-only" in err and "Fix:" in err
    assert started == []


# --- 5. bytes and encodings ------------------------------------------------------------------------


def test_generate_refuses_a_prompt_that_is_not_utf8(capsys: pytest.CaptureFixture[str]) -> None:
    """argv bytes that were not UTF-8 (surrogate escapes): exit 2 naming the fix, never the tokenizer's TypeError."""
    assert main(["generate", "What \udcff", "--model", "pocket"]) == 2
    err = capsys.readouterr().err
    assert "The prompt holds bytes that are not UTF-8" in err and "PowerShell" in err and "Traceback" not in err


@pytest.mark.slow
def test_chat_survives_bytes_that_are_not_utf8_with_its_history() -> None:
    """Catches: `printf 'a\\xff\\n' | phi3kit chat` ending the chat (and its history) with a TypeError."""
    from phi3kit import pocket

    qa = pocket.load_qa()
    script = b"What \xff is this\n" + qa[0]["question"].encode() + b"\n"
    done = subprocess.run([sys.executable, "-u", "-m", "phi3kit.cli", "chat", "--backend", "openvino",
                           "--precision", "int4", "--context-length", "130", "--max-new-tokens", "64"], input=script,
                          capture_output=True, timeout=300, cwd=ROOT)
    err = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 0 and "Traceback" not in err, err[-2000:]
    assert "not UTF-8" in err and err.count("tokens/s") == 2  # both messages answered: the chat went on
    assert "the oldest turn was left out" in err  # the first (repaired) turn was in the history, trimmed to fit
    answers = [line.split("model> ", 1)[1] for line in done.stdout.decode("utf-8").splitlines() if "model> " in line]
    assert len(answers) == 2 and answers[1] == qa[0]["answer"]


def test_output_in_a_legacy_code_page_does_not_crash() -> None:
    """PYTHONIOENCODING=cp1252 (a redirected Windows console): Chinese text comes out as UTF-8, no UnicodeEncodeError.

    Catches: print() of a Chinese or Persian text raising UnicodeEncodeError in a code page without it.
    """
    env = {**os.environ, "PYTHONIOENCODING": "cp1252"}
    done = subprocess.run([sys.executable, "-m", "phi3kit.cli", "models", "英特尔模型"], capture_output=True, env=env,
                          timeout=120)
    err = done.stderr.decode("utf-8")
    assert done.returncode == 2 and "Traceback" not in err and "'英特尔模型'" in err
    both = subprocess.run([sys.executable, "-c", "import sys; from phi3kit.cli import safe_output; safe_output(); "
                           "print('英特尔 NPU'); print('پردازنده', file=sys.stderr)"], capture_output=True, env=env,
                          timeout=120)
    assert both.returncode == 0 and both.stdout.decode("utf-8").strip() == "英特尔 NPU"
    assert both.stderr.decode("utf-8").strip() == "پردازنده"


def test_the_eof_hint_names_windows_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Catches: the chat telling Windows users Ctrl-D, which does nothing in their console."""
    assert eof_keys() == "Ctrl-D"
    monkeypatch.setattr(os, "name", "nt")
    assert eof_keys() == "Ctrl-Z then Enter"


# --- 6, 7, 8. export settings, folders, catalog, bench routes ----------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [("--group-size", "-5", "group_size must be a positive number"), ("--group-size", "0", "got 0"),
     ("--ratio", "2", "ratio must be the share of layers"), ("--ratio", "nan", "got nan"),
     ("--ratio", "-0.1", "from 0 to 1")],
)
def test_export_settings_out_of_range_are_refused_at_once(option: str, value: str, message: str, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Catches: a 20-40 s export failing inside optimum-cli, and --group-size 0 silently exporting with 128."""
    cache = tmp_path / "cache"
    start = time.perf_counter()
    assert main(["export", "--model", "pocket", option, value, "--cache-dir", str(cache)]) == 2
    assert time.perf_counter() - start < 5 and not cache.exists()
    err = capsys.readouterr().err
    assert message in err and "Fix:" in err


def test_load_config_checks_export_settings_for_the_api_too() -> None:
    """The Python API gets the command line's check; -1 (channel-wise), 0 <= ratio <= 1 and None stay valid."""
    for bad in ({"group_size": -2}, {"group_size": 0}, {"group_size": 1.5}, {"group_size": True}, {"ratio": 1.01},
                {"ratio": math.nan}, {"ratio": math.inf}, {"ratio": "0.5"}):
        with pytest.raises(ExportSettingError):
            kit.LoadConfig(**bad)  # type: ignore[arg-type]
    for good in ({"group_size": -1, "ratio": 1.0}, {"group_size": 128, "ratio": 0.6}, {"group_size": 64, "ratio": 0},
                 {"ratio": 1}, {}):
        kit.LoadConfig(**good)  # type: ignore[arg-type]


def test_cache_dir_that_is_a_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Catches: NotADirectoryError's traceback from deep in the cache."""
    blocker = tmp_path / "cache"
    blocker.write_text("x", encoding="utf-8")
    assert main(["generate", "hi", "--model", "pocket", "--cache-dir", str(blocker)]) == 2
    err = capsys.readouterr().err
    assert f"Cannot write {blocker}" in err and "--cache-dir must name a folder" in err


def test_models_with_an_unknown_alias_lists_the_aliases(capsys: pytest.CaptureFixture[str]) -> None:
    """Catches: `phi3kit models phi-3-mini-4kk` printing 'Empty DataFrame' and exiting 0."""
    assert main(["models", "phi-3-mini-4kk"]) == 2
    out = capsys.readouterr()
    assert "Empty DataFrame" not in out.out and "Valid choices: phi-3-mini-4k, phi-3-mini-128k" in out.err
    assert main(["models", "pocket"]) == 0 and "pocket" in capsys.readouterr().out


@pytest.mark.parametrize(("routes", "message"), [
    ("openvino:int3", "Unknown precision for backend 'openvino' in route openvino/genai:int3: 'int3'"),
    ("openvino/genie:int4", "Unknown runtime for backend 'openvino'"),
    ("openvin:int4", "Unknown backend: 'openvin'"),
    ("openvino:int4{group_size=-5}", "group_size must be a positive number"),
])
def test_bench_refuses_unknown_routes_before_anything_runs(routes: str, message: str, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Catches: the only route skipped, the 37 s reference still run, exit 0."""
    start = time.perf_counter()
    assert main(["bench", "--model", "pocket", "--routes", routes, "-o", str(tmp_path / "b")]) == 2
    assert time.perf_counter() - start < 10 and not (tmp_path / "b").exists()
    assert message in capsys.readouterr().err


# --- 10. fuzz: the validation either passes or says the kit's own error ------------------------------


@pytest.mark.parametrize("name", ["openvino", "directml", "npu", "compare"])
def test_fuzz_run_parameters_give_the_kit_error_or_a_value(name: str, fake_openvino) -> None:  # type: ignore[no-untyped-def]
    """Arbitrary text for any parameter of a kit notebook: a checked value or a Phi3kitError, nothing else.

    Catches: a ValueError, TypeError, UnicodeError... escaping coerce/validate (what a user then sees as a traceback).
    """
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from phi3kit.runner import notebook_parameters

    fake_openvino(["CPU"])
    notebook = ROOT / "notebooks" / f"{name}.ipynb"
    names = st.sampled_from([*sorted(notebook_parameters(notebook)), "max_tokens", "précision", ""])  # some unknown
    text = st.one_of(st.text(max_size=30), st.sampled_from([
        "int4", "int8", "NPU", "CPU", "DML", "pocket", "0", "-1", "1e9", "true", "nan", "phi-3-mini-4k", "a/b", "\x00",
        "\udcff", "optimum", "export", "ready-made", " 12 ", "openvino:int3", "ortgenai:int4@CPU,transformers:fp32",
        "openvino:int4{group_size=0}", "16,48", "0,-3", "openvino-genai", "npu-library"]))

    @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.dictionaries(names, text, max_size=3))
    def check(raw: dict[str, str]) -> None:
        try:
            values = validate(notebook, coerce(notebook, raw))
        except Phi3kitError:
            return
        assert set(values) == set(raw)

    check()


def test_fuzz_grid_files_give_the_kit_error_or_a_grid(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Arbitrary YAML (and bytes) as a grid file: a Grid or a Phi3kitError (GridError, UnknownChoiceError...).

    Catches: TypeError from an odd YAML shape (a list notebook, a number key), UnicodeDecodeError from bytes.
    """
    import yaml
    from hypothesis import HealthCheck, example, given, settings
    from hypothesis import strategies as st

    folder = tmp_path_factory.mktemp("grids")
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 300), st.floats(allow_nan=True),
                        st.text(max_size=12), st.sampled_from(["int4", "int8", "pocket", str(OPENVINO)]))
    values = st.one_of(scalars, st.lists(scalars, max_size=3))
    names = st.one_of(st.sampled_from(["precision", "max_new_tokens", "do_sample", "model", "cache_dir", "nope"]),
                      st.integers(0, 3))
    body = st.one_of(st.dictionaries(names, st.lists(scalars, min_size=1, max_size=3), max_size=3),
                     st.dictionaries(names, values, max_size=3), scalars)
    kinds = {"grid": st.fixed_dictionaries({"notebook": st.just(str(OPENVINO))},
                                           optional={"grid": body, "fixed": body}),
             "odd notebook": st.fixed_dictionaries({"notebook": scalars}, optional={"grid": body})}

    def document(kind: str) -> st.SearchStrategy[bytes]:
        return st.binary(max_size=40) if kind == "bytes" else kinds[kind].map(lambda d: yaml.safe_dump(d).encode())

    documents = st.sampled_from(["grid"] * 7 + ["odd notebook", "bytes"]).flatmap(document)  # mostly reach Grid()

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(documents)
    @example(f"notebook: {OPENVINO}\ngrid: {{0: [null]}}\nfixed: {{0: null}}\n".encode())  # found: a TypeError
    def check(data: bytes) -> None:
        path = folder / "grid.yaml"
        path.write_bytes(data)
        try:
            grid = load_grid(path)
        except Phi3kitError:
            return
        assert grid.notebook.is_file() and isinstance(grid.runs(), list)

    check()


def test_grid_file_that_is_not_utf8_or_missing_is_the_kit_error(tmp_path: Path) -> None:
    """Catches: UnicodeDecodeError / FileNotFoundError tracebacks from reading a grid file."""
    (tmp_path / "g.yaml").write_bytes(b"notebook: \xff\n")
    with pytest.raises(GridError, match="not UTF-8"):
        load_grid(tmp_path / "g.yaml")
    with pytest.raises(GridError, match="Cannot read the grid file"):
        load_grid(tmp_path / "missing.yaml")
    with pytest.raises(ParameterError):
        coerce(OPENVINO, {"max_new_tokens": "twelve"})


# --- 9. the OpenVINO notebook's conversation window -----------------------------------------------

FOLLOW_UP_ZH = "OpenVINO GenAI 和 optimum-intel 在英特尔 NPU 上运行 Phi-3 时有什么区别？"


@pytest.mark.parametrize("lang", ["zh", "en"])
@pytest.mark.slow
def test_the_conv_cell_takes_an_ordinary_follow_up_and_still_trims(lang: str,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """The cell as built, run on the pocket model: a 57-character Chinese follow-up fits at the default
    max_new_tokens and at a lower one, and the first turn is still left out to show a trim.

    Catches: the window `max_new_tokens + 40`, which stopped this follow-up with ContextWindowError, and shrank
    with max_new_tokens so that the error's own fix (lower max_new_tokens) failed again.
    """
    from phi3kit.runner import notebook_parameters

    notebook = ROOT / "notebooks" / (f"{lang}/openvino.ipynb" if lang != "en" else "openvino.ipynb")
    cell = next(c for c in nbformat.read(str(notebook), as_version=4).cells if c.get("id") == "conv")
    session = kit.load("pocket", "transformers", "fp32", log=lambda m: None)
    chat_prompt = notebook_parameters(notebook)["chat_prompt"]["default"].strip("\"'")
    for max_new_tokens in (128, 32):
        scope = {"kit": kit, "session": session, "system": "", "chat_prompt": chat_prompt, "follow_up": FOLLOW_UP_ZH,
                 "max_new_tokens": max_new_tokens}
        exec(compile(cell.source, f"{notebook.name}:conv", "exec"), scope)  # noqa: S102 - the notebook's own cell
        printed = capsys.readouterr().out
        assert "the oldest turn was left out" in printed, printed
        assert printed.rstrip().endswith("4 messages in conv.history")


def test_the_context_window_errors_fix_works_when_followed() -> None:
    """With a fixed window, the max_new_tokens the error names makes the same message fit.

    Catches: a suggested fix that fails again (the number off by the template, or counted with dropped turns).
    """
    import re

    session = kit.load("pocket", "transformers", "fp32", log=lambda m: None)
    conv = kit.Conversation(session, max_new_tokens=100, context_length=120)
    with pytest.raises(kit.ContextWindowError, match=r"Fix: set max_new_tokens <= \d+") as refused:
        conv.say(FOLLOW_UP_ZH)
    fixed = int(re.search(r"max_new_tokens <= (\d+)", str(refused.value)).group(1))  # type: ignore[union-attr]
    conv = kit.Conversation(session, max_new_tokens=fixed, context_length=120)
    assert conv.say(FOLLOW_UP_ZH).consume().text
