"""The suite's exporters, started once: a Python that has imported them forks for each export (test-only, Linux).

Each export the kit runs is a fresh `python -m optimum.commands.optimum_cli ...` or `python -m
onnxruntime_genai.models.builder ...` (procs.run_logged). Importing torch, transformers, optimum-intel, NNCF and
the model builder costs about 8 CPU-seconds per child on a 2-core machine, far more than exporting the pocket
model itself, and the suite exports dozens of times. Here those modules are imported once; every export is a fork
of that process running the same module as `__main__` with the same arguments, environment and working directory,
its output written to a file the caller reads back as lines. Same code, same arguments, a child process per export
(nothing it sets leaks into the next one), minus the imports.

What the fork changes is only where the child starts from: the kit's own way of starting an exporter (procs.popen:
the supervisor, UTF-8 pipes, the Windows job object) is still run by every export in a kernel, the CLI or a bench
worker, and by tests/test_procs.py, test_reliability.py and test_house.py (killed and concurrent exports).

Protocol (one JSON line each way): request {"module", "args", "env", "cwd", "out"}; replies {"pid"}, then {"rc"}.
"""

from __future__ import annotations

import gc
import json
import os
import runpy
import sys
import traceback

# What a fork starts with already imported (absent ones are skipped: the lean environment has none of them).
PRELOAD = ("torch", "transformers", "onnx", "optimum.exporters.openvino", "optimum.commands.optimum_cli", "nncf",
           "onnxruntime_genai.models.builder", "openvino_tokenizers.cli_tools.convert_tokenizer")
MODULES = ("optimum.commands.optimum_cli", "onnxruntime_genai.models.builder")
# `python -c` programs the kit runs as exporters (backends/openvino/export.py: a tokenizer converted alone, from a
# local folder: the hub's cache location, which tests point at a hub cache of their own, does not matter to it)
CODE_FROM = ("from openvino_tokenizers.cli_tools.convert_tokenizer import ",)
HUB_LOCATION = ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")


def _child(req: dict) -> None:
    """In the fork: become `python -m MODULE ARGS...` (or `python -c CODE ARGS...`) run in `cwd` with `env`, writing
    to `out`; never return."""
    code = 1
    try:
        fd = os.open(req["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.environ.clear()
        os.environ.update(req["env"])
        os.chdir(req["cwd"])
        try:
            if req.get("code") is not None:
                sys.path[0] = ""  # as `python -c` puts the working directory first
                sys.argv = ["-c", *req["args"]]
                exec(compile(req["code"], "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
            else:
                sys.path[0] = req["cwd"]  # as `python -m` does
                sys.argv = [req["module"], *req["args"]]
                runpy.run_module(req["module"], run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exc:
            if exc.code is None or isinstance(exc.code, int):
                code = exc.code or 0
            else:
                print(exc.code, file=sys.stderr)
                code = 1
        except BaseException:  # noqa: BLE001 - reported as a real interpreter would, with its exit code
            traceback.print_exc()
            code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve() -> None:
    for name in PRELOAD:
        try:
            __import__(name)
        except Exception:  # noqa: BLE001, S110 - not installed here: its exports run as they would without the zygote
            pass
    # Every object imported so far leaves the collector's view: the exporters call gc.collect() (optimum-intel three
    # times per export), and in a fork each full collection would walk, and copy page by page, the whole preloaded
    # heap of torch, transformers and optimum (about a CPU-second per export). What an export allocates is collected
    # as usual; the frozen objects live as long as the fork, as they would in a fresh interpreter.
    gc.freeze()
    # What its imports set in its environment (KMP_*, TORCHINDUCTOR_CACHE_DIR, ORT_LIB_PATH...): a fresh child has
    # the same, from importing the same modules or from a parent that did.
    print(json.dumps({"ready": True, "env": _import_time_env(dict(os.environ))}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(req)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)


# --- the suite's side --------------------------------------------------------------------------------------------
# Variables a preloaded library reads when it is imported: a request whose values differ from the zygote's runs as a
# fresh process instead (what the fork inherited would not be what a fresh interpreter reads).
READ_AT_IMPORT = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "TOKENIZERS_", "TORCH", "PYTORCH_", "OMP_", "MKL_", "KMP_",
                  "ONNX", "ORT_", "OV_", "OPENVINO", "NNCF", "PYTHON", "CUDA", "LD_", "XDG_", "HOME")


def _import_time_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(READ_AT_IMPORT)}


class ZygoteGone(RuntimeError):
    """The zygote died before it took the request: the export runs in a fresh interpreter instead."""


class Zygote:
    """The suite's handle on the zygote (conftest.py's `export_zygote` puts it in place of procs.run_logged)."""

    def __init__(self, env: dict[str, str]) -> None:
        """`env`: what the zygote imports its modules under (the run's environment when it started)."""
        import subprocess

        self.env = dict(env)
        # A plain Popen, not procs.popen: the kit ties its children to the thread that starts them (Linux's parent-
        # death signal), and the first export may come from a thread that ends long before the run does. The zygote
        # ends by itself when this process closes its stdin (or dies).
        self.proc = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, encoding="utf-8", env=self.env)
        self.imported: dict[str, str] | None = None  # its import-time variables once its imports are done
        self.broken = False

    def handles(self, cmd: list[str]) -> bool:
        """A `python -m` run of an exporter (or a `python -c` one of CODE_FROM), in an environment whose import-
        time variables are the zygote's: those it started with, or the values its own imports set (the test
        process has made the same imports)."""
        from phi3kit.procs import child_env

        if self.broken or len(cmd) < 3 or cmd[0] != sys.executable:
            return False
        if not ((cmd[1] == "-m" and cmd[2] in MODULES) or (cmd[1] == "-c" and cmd[2].startswith(CODE_FROM))):
            return False
        if self.imported is None:
            self.imported = self._reply()["env"]
        now, before = _import_time_env(child_env()), _import_time_env(self.env)
        changed = {k for k in set(now) | set(before) if now.get(k) != before.get(k)}
        if cmd[1] == "-c":  # a converter of a local folder: where the hub's cache lies is never read
            changed -= set(HUB_LOCATION)
        return all(now.get(k) == self.imported.get(k) for k in changed)

    def _reply(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.broken = True
            raise ZygoteGone(f"the export zygote ended (exit {self.proc.wait()})")
        return json.loads(line)

    def run(self, cmd: list[str]) -> tuple[int, list[str]]:
        """(exit code, output lines) of `cmd` run as a fork, as procs.run_logged returns them."""
        import contextlib
        import signal
        import tempfile

        from phi3kit.procs import child_env

        with tempfile.TemporaryDirectory(prefix="phi3kit-zygote-") as tmp:
            out = os.path.join(tmp, "output.txt")
            module, code = (cmd[2], None) if cmd[1] == "-m" else (None, cmd[2])
            req = {"module": module, "code": code, "args": list(cmd[3:]), "env": child_env(), "cwd": os.getcwd(),
                   "out": out}
            try:
                self.proc.stdin.write(json.dumps(req) + "\n")
                self.proc.stdin.flush()
            except OSError as exc:
                self.broken = True
                raise ZygoteGone(f"the export zygote is gone ({exc})") from exc
            pid = self._reply()["pid"]
            try:
                rc = self._reply()["rc"]
            except BaseException:  # an interrupt, or the zygote gone: its reply would come out of turn, so no more
                self.broken = True
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                raise
            with open(out, encoding="utf-8", errors="replace") as f:  # as procs.popen's text pipes read it
                lines = [line.rstrip() for line in f.read().splitlines()]
        return rc, lines

    def close(self) -> None:
        """End of input: the zygote returns and is reaped (its CPU time counts in the suite's, as a child's does)."""
        import subprocess

        from phi3kit.procs import stop

        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            stop(self.proc)


if __name__ == "__main__":
    serve()
