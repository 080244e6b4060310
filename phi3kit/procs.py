"""Child processes (exporter, model builder, bench workers) that die with the process that started them.

A learner who restarts a kernel stuck in an 11 GB export, or a script killed by SIGTERM or SIGKILL,
must not leave the exporter running on its own, holding the memory while the retry starts a second
one beside it. Python has no such option, so the kit asks the operating system:

* Linux: the command runs under a small supervisor that asks the kernel for a signal when its parent
  dies (prctl PR_SET_PDEATHSIG) and then kills its whole process group, the command's own children
  included. The signal is tied to the thread that started the child: the kit starts children from
  threads that wait for them.
* Windows: each child joins a job object that kills its processes when the last handle to it
  closes, which the system does when this process ends, however it ends. A child that cannot join
  (the system refused) runs untied, and the kit says so with a warning naming its process id.
* Elsewhere (macOS) children are killed when the kit sees an exception, not when it is killed.

Output: a child's pipes are read as UTF-8 with undecodable bytes replaced, never with the system's
code page (cp1252 and friends on Windows), which cannot decode what native libraries print (a path
under C:\\Users\\Hélène, an Arabic file name) and used to end the export with UnicodeDecodeError.
The kit's children are told to write UTF-8 (PYTHONIOENCODING=utf-8, PYTHONUTF8=1 for Python ones).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .env import environment

Log = Callable[[str], None]

# Runs as `python -c SUPERVISOR PARENT_PID CMD...`: waits for CMD, passes on its exit code, and kills CMD's
# process group when the parent dies (PR_SET_PDEATHSIG) or when it is told to stop (SIGTERM/SIGINT).
SUPERVISOR = r"""
import ctypes, os, signal, subprocess, sys
parent, cmd = int(sys.argv[1]), sys.argv[2:]
os.setpgid(0, 0)  # one group: the supervisor, the command, and whatever the command starts
def stop(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.killpg(0, signal.SIGKILL)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
if os.getppid() != parent:  # the parent died before the request took effect
    stop(None, None)
try:
    code = subprocess.call(cmd)
except OSError as exc:
    print(f"phi3kit: cannot start {cmd[0]}: {exc}", file=sys.stderr, flush=True)
    code = 127
sys.exit(code if code >= 0 else 128 - code)
"""


def _linux() -> bool:
    return sys.platform.startswith("linux")


def tied(cmd: Sequence[str]) -> list[str]:
    """`cmd` wrapped so that it dies with this process (Linux); unchanged elsewhere."""
    if not _linux():
        return list(cmd)
    return [sys.executable, "-c", SUPERVISOR, str(os.getpid()), *cmd]


# What the kit's children are told, whatever this process's own locale: the kit reads their pipes as UTF-8.
CHILD_ENV = {"PYTHONIOENCODING": "utf-8", "PYTHONUTF8": "1"}
PIPE_ENCODING = {"encoding": "utf-8", "errors": "replace"}


class ChildNotTiedWarning(RuntimeWarning):
    """A child process could not be tied to this one: it would outlive this process if this process is killed."""


def child_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`env` (default: this process's environment) with the kit's children told to write UTF-8."""
    return {**(environment() if env is None else env), **CHILD_ENV}


def pipe_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Popen arguments with text pipes decoded as UTF-8 (undecodable bytes replaced), not the system code page."""
    out = dict(kwargs)
    text = [out.pop("text", None), out.pop("universal_newlines", None)]
    if any(text) or out.get("encoding") or out.get("errors"):
        out.setdefault("encoding", PIPE_ENCODING["encoding"])
        out.setdefault("errors", PIPE_ENCODING["errors"])
    out["env"] = child_env(out.get("env"))
    return out


# --- Windows job objects (ctypes; cannot be exercised off Windows: tests drive a fake kernel32) --------
JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE = 0x2000
JOB_OBJECT_EXTENDED_LIMIT_INFORMATION = 9  # JOBOBJECTINFOCLASS value


def _structures() -> Any:
    import ctypes
    from ctypes import wintypes

    class Basic(ctypes.Structure):
        _fields_ = [("PerProcessUserTimeLimit", ctypes.c_int64), ("PerJobUserTimeLimit", ctypes.c_int64),
                    ("LimitFlags", wintypes.DWORD), ("MinimumWorkingSetSize", ctypes.c_size_t),
                    ("MaximumWorkingSetSize", ctypes.c_size_t), ("ActiveProcessLimit", wintypes.DWORD),
                    ("Affinity", ctypes.c_size_t), ("PriorityClass", wintypes.DWORD),
                    ("SchedulingClass", wintypes.DWORD)]

    class IoCounters(ctypes.Structure):
        _fields_ = [(name, ctypes.c_uint64) for name in ("ReadOperationCount", "WriteOperationCount",
                                                         "OtherOperationCount", "ReadTransferCount",
                                                         "WriteTransferCount", "OtherTransferCount")]

    class Extended(ctypes.Structure):
        _fields_ = [("BasicLimitInformation", Basic), ("IoInfo", IoCounters),
                    ("ProcessMemoryLimit", ctypes.c_size_t), ("JobMemoryLimit", ctypes.c_size_t),
                    ("PeakProcessMemoryUsed", ctypes.c_size_t), ("PeakJobMemoryUsed", ctypes.c_size_t)]

    return Extended


def _kernel32() -> Any:
    import ctypes

    return ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]


def _last_error() -> int:
    import ctypes

    return int(ctypes.get_last_error())  # type: ignore[attr-defined]


def declare(kernel32: Any) -> Any:
    """kernel32's job-object functions with their C signatures: without them ctypes passes handles as C ints
    (truncated on 64-bit Windows) and reads every result as an int."""
    import ctypes
    from ctypes import wintypes

    kernel32.CreateJobObjectW.argtypes = [ctypes.c_void_p, wintypes.LPCWSTR]
    kernel32.CreateJobObjectW.restype = wintypes.HANDLE
    kernel32.SetInformationJobObject.argtypes = [wintypes.HANDLE, ctypes.c_int, ctypes.c_void_p, wintypes.DWORD]
    kernel32.SetInformationJobObject.restype = wintypes.BOOL
    kernel32.AssignProcessToJobObject.argtypes = [wintypes.HANDLE, wintypes.HANDLE]
    kernel32.AssignProcessToJobObject.restype = wintypes.BOOL
    kernel32.CloseHandle.argtypes = [wintypes.HANDLE]
    kernel32.CloseHandle.restype = wintypes.BOOL
    return kernel32


def make_job(kernel32: Any) -> Any:
    """A job object whose processes die when its last handle closes; OSError (with the Windows error) if not."""
    import ctypes

    job = kernel32.CreateJobObjectW(None, None)
    if not job:
        raise OSError(f"CreateJobObjectW failed (Windows error {_last_error()})")
    info = _structures()()
    info.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
    if not kernel32.SetInformationJobObject(job, JOB_OBJECT_EXTENDED_LIMIT_INFORMATION, ctypes.byref(info),
                                            ctypes.sizeof(info)):
        code = _last_error()
        kernel32.CloseHandle(job)
        raise OSError(f"SetInformationJobObject(KILL_ON_JOB_CLOSE) failed (Windows error {code})")
    return job


_JOB: Any = None  # (kernel32, job handle): kept open for this process's lifetime, closed by the system at exit


def _windows_job() -> Any:
    global _JOB
    if _JOB is None:
        kernel32 = declare(_kernel32())
        _JOB = (kernel32, make_job(kernel32))
    return _JOB


def tie_to_job(proc: subprocess.Popen[Any]) -> bool:
    """Put `proc` in this process's job object (Windows). False, with a ChildNotTiedWarning, if that failed."""
    try:
        kernel32, job = _windows_job()
        if not kernel32.AssignProcessToJobObject(job, int(proc._handle)):  # type: ignore[attr-defined]
            raise OSError(f"AssignProcessToJobObject failed (Windows error {_last_error()})")
    except OSError as exc:
        warnings.warn(f"phi3kit: child process {proc.pid} ({_name(proc)}) is not tied to this process: {exc}. "
                      "If this process is killed, end that process yourself (Task Manager, or "
                      f"Stop-Process -Id {proc.pid}).", ChildNotTiedWarning, stacklevel=3)
        return False
    return True


def _name(proc: subprocess.Popen[Any]) -> str:
    args = proc.args
    first = args if isinstance(args, (str, bytes, os.PathLike)) else (list(args) or [""])[0]
    return os.fsdecode(first).replace("\\", "/").rsplit("/", 1)[-1]


def popen(cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """subprocess.Popen for a child that must not outlive this process (see the module docstring).

    Text pipes are UTF-8 with undecodable bytes replaced, and the child is told to write UTF-8.
    """
    proc = subprocess.Popen(tied(cmd), **pipe_options(kwargs))
    if sys.platform == "win32":
        tie_to_job(proc)
    return proc


def stop(proc: subprocess.Popen[Any]) -> None:
    """End a child started by `popen` and everything it started, then reap it."""
    if proc.poll() is None:
        if _linux():
            proc.terminate()  # the supervisor kills its whole process group
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        else:
            proc.kill()
    proc.wait()


def run(cmd: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
    """subprocess.run with `popen`'s guarantee; an interrupted caller stops the child."""
    input_ = kwargs.pop("input", None)
    proc = popen(cmd, **kwargs)
    try:
        out, err = proc.communicate(input_)
    except BaseException:
        stop(proc)
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_logged(cmd: Sequence[str], log: Log, show: Callable[[str], bool] = bool) -> tuple[int, list[str]]:
    """Run a tool (an exporter, a bench worker), passing each output line to `log` as it comes.

    Returns (exit code, every line). Interrupting the caller stops the tool, so a stopped export
    leaves no process behind writing into a folder the cache is about to discard.
    """
    proc = popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)  # UTF-8
    lines: list[str] = []
    assert proc.stdout is not None
    try:
        for raw in proc.stdout:  # text mode turns tqdm's carriage returns into lines
            line = raw.rstrip()
            lines.append(line)
            if show(line):
                log(line)
        return proc.wait(), lines
    except BaseException:
        stop(proc)
        raise


# --- a kit function in a fresh Python ----------------------------------------------------------------
def python_command(entry: str, *args: str | os.PathLike[str]) -> list[str]:
    """`python -c "from MODULE import NAME; NAME()" ARGS...` for `entry` "MODULE:NAME": a kit function in a fresh
    interpreter. `-c`, not multiprocessing: it works from a script, a notebook or stdin alike (nothing re-imports
    the caller's __main__), and the child is an ordinary process that `popen` ties to this one."""
    module, _, name = entry.partition(":")
    return [sys.executable, "-c", f"from {module} import {name}; {name}()", *map(str, args)]


def run_json_job(entry: str, job: Any, log: Callable[[str], None] | None = None) -> tuple[Any, int, list[str]]:
    """Run `entry` ("MODULE:NAME", a function that calls `json_job_main`) in a fresh Python with `job` (JSON).

    Returns (what the child wrote, or None if it wrote nothing; its exit code; its output lines). With `log`, each
    line of its output (stdout and stderr) goes to `log` as it comes; without, its stderr is kept for the caller.
    """
    import json
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="phi3kit-job-") as tmp:
        job_file, out = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job_file.write_text(json.dumps(job), encoding="utf-8")
        cmd = python_command(entry, job_file, out)
        if log is not None:
            rc, lines = run_logged(cmd, log)
        else:
            proc = run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # UTF-8 (popen)
            rc, lines = proc.returncode, proc.stderr.splitlines()
        result = json.loads(out.read_text(encoding="utf-8")) if out.is_file() else None
    return result, rc, lines


def json_job_main(work: Callable[[Any], Any], argv: Sequence[str] | None = None) -> None:
    """The child's side of `run_json_job`: read the job (argv[0]), write `work(job)` as JSON (argv[1])."""
    import json
    from pathlib import Path

    job_path, out_path = (sys.argv[1:3] if argv is None else argv)[:2]
    result = work(json.loads(Path(job_path).read_text(encoding="utf-8")))
    Path(out_path).write_text(json.dumps(result), encoding="utf-8")


__all__ = ["CHILD_ENV", "SUPERVISOR", "ChildNotTiedWarning", "child_env", "json_job_main", "pipe_options", "popen",
           "python_command", "run", "run_json_job", "run_logged", "stop", "tie_to_job", "tied"]


def shell_commands(argvs: list[list[str]], platform_: str = sys.platform, python: str | None = None) -> str:
    """Commands for that platform's shell, each running `python` (default: this interpreter) with its arguments:
    PowerShell on Windows (`& "python.exe"`, joined by `;`: Windows PowerShell 5.1 has no `&&`), a POSIX shell
    elsewhere (joined by `&&`)."""
    python = sys.executable if python is None else python
    if platform_ == "win32":
        exe = f'& "{python}"' if python else "py"
        return "; ".join(" ".join([exe, *argv]) for argv in argvs)
    return " && ".join(shlex.join([python or "python3", *argv]) for argv in argvs)


def env_command(name: str, value: str, platform_: str = sys.platform) -> str:
    """How to set an environment variable for this shell session: PowerShell on Windows, a POSIX shell elsewhere
    (`VAR=value cmd` is no PowerShell syntax)."""
    if platform_ == "win32":
        return f'$env:{name}="{value}"'
    return f"export {name}={shlex.quote(value)}"
