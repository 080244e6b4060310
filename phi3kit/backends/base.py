"""The one protocol every backend implements, and the pieces they share."""

from __future__ import annotations

import abc
import queue
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
    default_precision: ClassVar[str] = "int4"  # what `precision=None` means for this backend
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

    def logits(self, ids: list[int]) -> Any:
        """Next-token logits for every position of `ids`, shape [len(ids), vocab] (for perplexity).

        Optional: a runtime that exposes no logits raises NotImplementedError saying so.
        Each call starts from an empty KV cache.
        """
        raise NotImplementedError(f"backend '{self.name}' exposes no logits")

    logits_source: ClassVar[str] = ""  # how `logits()` obtains them, for reports

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free runtime resources early (the garbage collector does it otherwise)."""


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


def cancel_criterion() -> type:
    """transformers' StoppingCriteria that stops every sequence once `stopped()` says so.

    Its answer lives on the device of `input_ids` (CUDA included): transformers combines it with
    its own stopping tensors there.
    """
    import torch
    from transformers import StoppingCriteria

    class Cancel(StoppingCriteria):
        def __init__(self, stopped: Callable[[], bool]) -> None:
            self.stopped = stopped

        def __call__(self, input_ids: Any, scores: Any, **kw: Any) -> Any:
            return torch.full((input_ids.shape[0],), self.stopped(), dtype=torch.bool, device=input_ids.device)

    return Cancel


def hf_stream(
    model: Any, device: str, prompt_ids: list[int], gen: GenerationConfig, stop_ids: list[int]
) -> Iterator[Token]:
    """Stream ids out of any `generate()` with transformers' interface (PyTorch, optimum-intel)."""
    import torch
    from transformers import StoppingCriteriaList
    from transformers.generation.streamers import BaseStreamer

    class Emit(BaseStreamer):
        def __init__(self, emit: Any) -> None:
            self.emit, self.prompt_seen, self.go = emit, False, True

        def put(self, value: Any) -> None:
            if not self.prompt_seen:  # the first call carries the prompt
                self.prompt_seen = True
                return
            self.go = self.emit(value.reshape(-1).tolist())

        def end(self) -> None:
            pass

    Cancel = cancel_criterion()

    def run(emit: Any) -> None:
        streamer = Emit(emit)
        kwargs: dict[str, Any] = dict(
            max_new_tokens=gen.max_new_tokens,
            do_sample=gen.do_sample,
            eos_token_id=None if gen.ignore_eos else stop_ids,  # None: no stop, and no logits masked
            pad_token_id=stop_ids[-1],
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([Cancel(lambda: not streamer.go)]),
        )
        if gen.do_sample:
            kwargs.update(temperature=gen.temperature, top_p=gen.top_p, top_k=gen.top_k)
            if gen.seed is not None:
                torch.manual_seed(gen.seed)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        ids = torch.tensor([prompt_ids], device=device)
        with torch.inference_mode():
            model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)

    return threaded_stream(run)
