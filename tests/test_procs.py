"""Child processes (phi3kit.procs): what they print reaches the kit whatever the code page, and a child the
system would not tie to the kit is reported, not silently left to outlive it.

The Windows job object cannot run here: its tests drive a fake kernel32 that answers like the real one.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from kit_checks import cp1252_env

from phi3kit import procs

ROOT = Path(__file__).resolve().parents[1]
# A native library printing a path under a non-ASCII user name (UTF-8), then a byte no encoding can read.
NATIVE_OUTPUT = "saving to C:\\Users\\Hélène\\Á\\فارسی\n".encode() + b"\xff end\n"
CHILDREN = {
    # what a C++ library writes: raw bytes, whatever Python's encodings say
    "native": f"import sys; sys.stdout.buffer.write({NATIVE_OUTPUT!r}); sys.stdout.flush()",
    # what the kit's Python children (optimum-cli, the model builder) write with print()
    "python": "print('caf\\u00e9 \\u00c1 \\u0641\\u0627\\u0631\\u0633\\u06cc \\u5f20\\u4f1f')",
}
PARENT = """
import sys
from phi3kit.procs import run, run_logged
code, lines = run_logged([sys.executable, "-c", sys.argv[1]], lambda line: None)
done = run([sys.executable, "-c", sys.argv[1]], stdout=-1, stderr=-1, text=True)
print(ascii([code, lines, done.returncode, done.stdout.splitlines(), done.stderr[-300:]]))
"""


@pytest.mark.parametrize("child", sorted(CHILDREN))
def test_child_output_survives_a_cp1252_parent(tmp_path: Path, child: str) -> None:
    """procs decoded child pipes strictly in the system code page: under cp1252 a native library printing a
    UTF-8 path ("Á", "ف") raised UnicodeDecodeError and ended the export; a Python child printing non-ASCII
    text died with UnicodeEncodeError in its own cp1252 stdout. Catches: text pipes without encoding="utf-8"
    and errors="replace", and children not told PYTHONIOENCODING=utf-8."""
    env = cp1252_env(tmp_path)
    check = subprocess.run([sys.executable, "-c", "import locale; print(locale.getpreferredencoding(False))"],
                           env=env, capture_output=True, encoding="ascii", errors="replace")
    assert check.stdout.strip().lower() == "cp1252", check  # the parent really runs in cp1252
    out = subprocess.run([sys.executable, "-c", PARENT, CHILDREN[child]], env=env, capture_output=True,
                         encoding="utf-8", errors="replace", timeout=120)
    assert out.returncode == 0, out.stderr[-1500:]
    code, lines, run_code, run_lines, run_err = eval(out.stdout)  # ascii() of plain lists: a literal
    assert code == 0 and run_code == 0, run_err
    if child == "native":
        want = ["saving to C:\\Users\\Hélène\\Á\\فارسی", "\ufffd end"]
    else:
        want = ["café Á فارسی 张伟"]
    assert lines == want
    assert run_lines == want


def test_text_pipes_are_utf8_and_children_are_told(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same rule in-process (any OS): text pipes get UTF-8 with replacement, an explicit choice wins,
    binary pipes stay binary, and the child's environment (given or inherited) gets the UTF-8 variables."""
    monkeypatch.setenv("PYTHONIOENCODING", "cp1252")
    opts = procs.pipe_options({"text": True, "stdout": subprocess.PIPE})
    assert (opts["encoding"], opts["errors"]) == ("utf-8", "replace") and "text" not in opts
    assert opts["env"]["PYTHONIOENCODING"] == "utf-8" and opts["env"]["PYTHONUTF8"] == "1"
    assert procs.pipe_options({"universal_newlines": True})["encoding"] == "utf-8"
    assert procs.pipe_options({"encoding": "utf-16"})["encoding"] == "utf-16"
    binary = procs.pipe_options({"stdout": subprocess.PIPE, "env": {"A": "1"}})
    assert "encoding" not in binary and binary["env"] == {"A": "1", **procs.CHILD_ENV}


# --- Windows job objects, through a fake kernel32 ------------------------------------------------------------
class Fn:
    """One kernel32 function: records its calls and the C signature the kit declares on it."""

    def __init__(self, result: Any) -> None:
        self.result, self.calls = result, []
        self.argtypes: Any = None
        self.restype: Any = "unset"

    def __call__(self, *args: Any) -> Any:
        self.calls.append(args)
        return self.result


def fake_kernel32(create: Any = 0x1234, set_info: int = 1, assign: int = 1) -> SimpleNamespace:
    return SimpleNamespace(CreateJobObjectW=Fn(create), SetInformationJobObject=Fn(set_info),
                           AssignProcessToJobObject=Fn(assign), CloseHandle=Fn(1))


@pytest.fixture
def windows(monkeypatch: pytest.MonkeyPatch) -> Any:
    """`windows(kernel32)`: procs talks to that kernel32 (a fresh job), Windows error 5 (access denied) last."""
    def install(kernel32: SimpleNamespace) -> SimpleNamespace:
        monkeypatch.setattr(procs, "_JOB", None)
        monkeypatch.setattr(procs, "_kernel32", lambda: kernel32)
        monkeypatch.setattr(procs, "_last_error", lambda: 5)
        return kernel32
    return install


def child() -> Any:
    return SimpleNamespace(pid=4242, args=["C:\\Python311\\python.exe", "-m", "optimum"], _handle=0x88)


def test_job_functions_get_c_signatures_and_a_tied_child_says_nothing(windows: Any) -> None:
    """The job object's kernel32 calls had no argtypes/restype (handles passed as C ints, results unread).
    Catches: any of the four functions left undeclared, the kill-on-close limit or the handle not passed."""
    from ctypes import wintypes

    k = windows(fake_kernel32())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert procs.tie_to_job(child()) is True
    for name in ("CreateJobObjectW", "SetInformationJobObject", "AssignProcessToJobObject", "CloseHandle"):
        fn = getattr(k, name)
        assert fn.argtypes and fn.restype in (wintypes.HANDLE, wintypes.BOOL), name
    assert k.CreateJobObjectW.restype is wintypes.HANDLE
    job, klass, info, size = k.SetInformationJobObject.calls[0]
    assert (job, klass) == (0x1234, 9) and size > 100  # JOBOBJECT_EXTENDED_LIMIT_INFORMATION
    assert info._obj.BasicLimitInformation.LimitFlags == 0x2000  # KILL_ON_JOB_CLOSE
    assert k.AssignProcessToJobObject.calls == [(0x1234, 0x88)]


@pytest.mark.parametrize("failing", ["create", "set_info", "assign"])
def test_a_child_that_cannot_be_tied_is_reported(windows: Any, failing: str) -> None:
    """A refused AssignProcessToJobObject (or a job that was never made) left the child untied in silence.
    Catches: unchecked return values; a NULL job handed on to AssignProcessToJobObject."""
    k = windows(fake_kernel32(**{failing: 0}))
    with pytest.warns(procs.ChildNotTiedWarning, match=r"4242 \(python.exe\).*Windows error 5.*Stop-Process -Id 4242"):
        assert procs.tie_to_job(child()) is False
    if failing != "assign":
        assert k.AssignProcessToJobObject.calls == []
    if failing == "set_info":
        assert k.CloseHandle.calls == [(0x1234,)]
