"""The one protocol every backend implements, and the pieces they share."""

from __future__ import annotations

import abc
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

from ..cache import Export, ExportCache
from ..config import GenerationConfig, LoadConfig
from ..errors import DeviceNotFoundError, UnknownChoiceError
from ..sources import ModelSource

Log = Callable[[str], None]
Token = tuple[int, float]


class Backend(abc.ABC):
    """A route to local inference: export a model once, load it, stream token ids.

    Templating, detokenizing, stopping and metrics live in `phi3kit.generate`, so a
    backend only turns prompt ids into new ids. Adding a backend means one new file
    and one line in the registry.
    """

    name: ClassVar[str]
    runtimes: ClassVar[tuple[str, ...]] = ("default",)  # the first is the default
    precisions: ClassVar[tuple[str, ...]]
    requirements: ClassVar[str] = "all.txt"

    # --- class-level: choices and export -------------------------------------------------
    @classmethod
    def default_runtime(cls) -> str:
        return cls.runtimes[0]

    @classmethod
    @abc.abstractmethod
    def devices(cls, runtime: str) -> list[str]:
        """Devices this runtime can see on this machine, in the spelling users pass."""

    @classmethod
    def check(cls, cfg: LoadConfig) -> None:
        """Validate choices before any download or export starts."""
        runtime = cfg.runtime or cls.default_runtime()
        if runtime not in cls.runtimes:
            raise UnknownChoiceError(f"runtime for backend '{cls.name}'", runtime, cls.runtimes)
        if cfg.precision not in cls.precisions:
            raise UnknownChoiceError(f"precision for backend '{cls.name}'", cfg.precision, cls.precisions)
        available = cls.devices(runtime)
        if cfg.device not in available:
            raise DeviceNotFoundError(cls.device_help(cfg.device, available))

    @classmethod
    def device_help(cls, device: str, available: list[str]) -> str:
        return (
            f"Device {device!r} is not available to backend '{cls.name}' on this machine. "
            f"Available: {', '.join(available)}."
        )

    @classmethod
    @abc.abstractmethod
    def export(cls, source: ModelSource, cfg: LoadConfig, cache: ExportCache, log: Log = print) -> Export:
        """Return the folder this backend loads from, building it in the cache if needed."""

    # --- instance-level: a loaded model --------------------------------------------------
    @abc.abstractmethod
    def __init__(self, model_dir: Path, cfg: LoadConfig) -> None:
        """Load the model for `cfg.device`."""

    @abc.abstractmethod
    def stream(self, prompt_ids: list[int], gen: GenerationConfig, stop_ids: list[int]) -> Iterator[Token]:
        """Yield (token id, time.perf_counter() when the runtime produced it), one token at a time.

        Stop at a stop id (yielding it) or at max_new_tokens. Closing the iterator early
        must stop the runtime's generation. `threaded_stream` does all of this for a
        callback-driven runtime, and stamps each token as it is produced, so a slow
        consumer (a notebook printing) never inflates the measured latencies.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free runtime resources early (the garbage collector does it otherwise)."""


def run_logged(cmd: list[str], log: Log, show: Callable[[str], bool] = bool) -> tuple[int, list[str]]:
    """Run a tool (an exporter, a bench worker), passing each output line to `log` as it comes.

    Returns (exit code, every line). Interrupting the caller kills the tool, so a stopped export
    leaves no process behind writing into a folder the cache is about to discard.
    """
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
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
        proc.kill()
        proc.wait()
        raise


class _Raised:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_DONE = object()


def threaded_stream(run: Callable[[Callable[[int | list[int]], bool]], Any]) -> Iterator[Token]:
    """Turn a callback-driven generate loop into an iterator of token ids.

    `run(emit)` runs in a thread; `emit(ids)` returns False once the consumer has
    stopped listening, which the runtime's callback turns into its own stop signal.
    """
    q: queue.SimpleQueue[Any] = queue.SimpleQueue()
    stopped = threading.Event()

    def emit(ids: int | list[int]) -> bool:
        now = time.perf_counter()
        for i in [ids] if isinstance(ids, int) else ids:
            q.put((int(i), now))
        return not stopped.is_set()

    def target() -> None:
        try:
            run(emit)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            q.put(_Raised(exc))
        finally:
            q.put(_DONE)

    thread = threading.Thread(target=target, name="phi3kit-generate", daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not _DONE:
            if isinstance(item, _Raised):
                raise item.exc
            yield item
    finally:
        stopped.set()
        thread.join()
