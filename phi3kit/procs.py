"""Child processes (exporter, model builder, bench workers) that die with the process that started them.

A learner who restarts a kernel stuck in an 11 GB export, or a script killed by SIGTERM or SIGKILL,
must not leave the exporter running on its own, holding the memory while the retry starts a second
one beside it. Python has no such option, so the kit asks the operating system:

* Linux: the command runs under a small supervisor that asks the kernel for a signal when its parent
  dies (prctl PR_SET_PDEATHSIG) and then kills its whole process group, the command's own children
  included. The signal is tied to the thread that started the child: the kit starts children from
  threads that wait for them.
* Windows: each child joins a job object that kills its processes when the last handle to it
  closes, which the system does when this process ends, however it ends.
* Elsewhere (macOS) children are killed when the kit sees an exception, not when it is killed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

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


_JOB: Any = None  # the Windows job object: kept open for this process's lifetime, closed by the system at exit


def _windows_job() -> Any:
    global _JOB
    if _JOB is None:
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

        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        kernel32.CreateJobObjectW.restype = wintypes.HANDLE
        job = kernel32.CreateJobObjectW(None, None)
        info = Extended()
        info.BasicLimitInformation.LimitFlags = 0x2000  # JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
        kernel32.SetInformationJobObject(job, 9, ctypes.byref(info), ctypes.sizeof(info))  # 9: extended limits
        _JOB = (kernel32, job)
    return _JOB


def popen(cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """subprocess.Popen for a child that must not outlive this process (see the module docstring)."""
    proc = subprocess.Popen(tied(cmd), **kwargs)
    if sys.platform == "win32":
        kernel32, job = _windows_job()
        kernel32.AssignProcessToJobObject(job, int(proc._handle))  # type: ignore[attr-defined]
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
    proc = popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
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


__all__ = ["SUPERVISOR", "popen", "run", "run_logged", "stop", "tied"]

