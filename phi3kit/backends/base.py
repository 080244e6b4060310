"""The one protocol every backend implements, and the pieces they share."""

from __future__ import annotations

import abc
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..cache import Export, ExportCache
from ..config import GenerationConfig, LoadConfig
from ..context import Limits, model_limits
from ..errors import DeviceNotFoundError, ModelSourceError, UnknownChoiceError
from ..sources import ModelSource

Log = Callable[[str], None]
Token = tuple[int, float]


# Properties whose value changes the arithmetic, so greedy ids may change: a tuned session says so.
NUMERIC_KEYS = ("INFERENCE_PRECISION_HINT", "DYNAMIC_QUANTIZATION_GROUP_SIZE", "KV_CACHE_PRECISION",
                "KEY_CACHE_PRECISION", "VALUE_CACHE_PRECISION")


@dataclass(frozen=True)
class Candidate:
    """One set of runtime properties to try, merged over the session's own."""

    name: str
    properties: dict[str, Any]
    why: str = ""

    @property
    def numerics(self) -> bool:
        return any(k in NUMERIC_KEYS for k in flat_properties(self.properties))


def flat_properties(props: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in props.items():
        if isinstance(v, dict):
            out.update(flat_properties(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}" if prefix else k] = v
    return out


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading ids `a` and `b` share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


@dataclass
class CachedIds:
    """The token ids a runtime's KV cache holds, in order: what the next prompt of a chat can reuse.

    Ids, not text: the answer re-tokenized inside the next turn's prompt may split differently from the
    ids the model generated, and only the ids say what the cache really holds. A backend records what it
    feeds (`ids`), asks `keep(prompt)` before each answer, and `forget()`s when the cache's content is
    unknown (a failed answer). `reused` is how many prompt ids the last answer did not prefill.
    """

    ids: list[int] = field(default_factory=list)
    reused: int = 0
    state: Any = None  # the runtime's own object that holds the cache, where it has one (a DynamicCache...)

    def keep(self, prompt_ids: list[int], *, can_rewind: bool = True) -> int:
        """How many leading prompt ids to keep in the cache: 0 starts afresh, len(ids) extends it, anything
        between rewinds to the common prefix (0 where the runtime cannot rewind). The last prompt id is
        always run again, since its logits choose the first new token."""
        n = min(common_prefix(self.ids, prompt_ids), len(prompt_ids) - 1)
        if n < len(self.ids) and not can_rewind:
            n = 0
        return max(n, 0)

    def forget(self) -> None:
        self.ids, self.reused, self.state = [], 0, None


class Backend(abc.ABC):
    """A route to local inference: export a model once (or take a ready-made folder), load it, stream token ids.

    Templating, detokenizing, stopping and metrics live in `phi3kit.generate`, and where a model comes
    from (catalog, hub, cache, pack) in `phi3kit.exporting`, so a backend says what its exports are
    made of, builds one into a folder, checks a ready-made folder, and turns prompt ids into new ids.
    Adding a backend means one new package (phi3kit/backends/<name>/) and one line in the registry.
    """

    name: ClassVar[str]
    runtimes: ClassVar[tuple[str, ...]] = ("default",)  # the first is the default
    precisions: ClassVar[tuple[str, ...]]
    default_precision: ClassVar[str] = "int4"  # what `precision=None` means for this backend
    requirements: ClassVar[str] = "all.txt"
    # The folder kind this backend loads as it is ("openvino" IR, "ortgenai" genai_config.json), if any, and the
    # file that marks a folder of that kind (backends.folder_format reads it).
    ready_made_format: ClassVar[str | None] = None
    ready_made_marker: ClassVar[str | None] = None
    # True for backends that read the PyTorch checkpoint itself (nothing to export).
    reads_checkpoint: ClassVar[bool] = False
    # True where the runtime holds the weights converted to the route's precision in RAM (PyTorch): a decode step
    # reads, and a load needs, the weights at that precision, not the size of the files (bench/measure.py).
    converts_on_load: ClassVar[bool] = False
    # LoadConfig fields that only shape an export: setting one means the kit's own export (prefer="export").
    export_only: ClassVar[tuple[str, ...]] = ()
    # Peak RAM of this backend's exporter per parameter, where it differs from optimum-cli's (preflight.py).
    export_ram_bytes_per_param: ClassVar[float | None] = None
    # The libraries that make an export: recorded in its manifest (not its key).
    exporter: ClassVar[tuple[str, ...]] = ()
    # Modules an export needs (module -> package): absent in the lean environment, which runs ready-made folders.
    exporter_modules: ClassVar[dict[str, str]] = {}

    # --- class-level: choices and export -------------------------------------------------
    @classmethod
    def default_runtime(cls) -> str:
        return cls.runtimes[0]

    @classmethod
    @abc.abstractmethod
    def devices(cls, runtime: str) -> list[str]:
        """Devices this runtime can see on this machine, in the spelling users pass."""

    @classmethod
    def check(cls, cfg: LoadConfig, *, device: bool = True) -> None:
        """Validate choices before any download or export starts (`device=False`: all but the device's
        presence, for preparing files on a machine without it)."""
        runtime = cfg.runtime or cls.default_runtime()
        if runtime not in cls.runtimes:
            raise UnknownChoiceError(f"runtime for backend '{cls.name}'", runtime, cls.runtimes)
        if cfg.precision not in cls.precisions:
            raise UnknownChoiceError(f"precision for backend '{cls.name}'", cfg.precision, cls.precisions)
        if not device:
            return
        available = cls.devices(runtime)
        if cfg.device not in available:
            raise DeviceNotFoundError(cls.device_help(cfg.device, available))

    @classmethod
    def device_help(cls, device: str, available: list[str]) -> str:
        return (
            f"Device {device!r} is not available to backend '{cls.name}' on this machine. "
            f"Available: {', '.join(available)}."
        )

    # --- exports and ready-made folders ---------------------------------------------------------
    @classmethod
    def device_rows(cls) -> list[dict[str, str]]:
        """This machine's devices as the doctor lists them (device, name, driver...); a row whose driver is known
        not to run LLMs carries a `problem` with its fix. ImportError where the runtime is not installed."""
        return [{"device": d} for d in cls.devices(cls.default_runtime())]

    @classmethod
    def status(cls) -> str | None:
        """One line for the doctor about what this backend finds here beyond its devices, or None."""
        return None

    @classmethod
    def cpu_probe(cls) -> Any:
        """The runtime's own view of the CPU for the doctor (an object whose get_property("CPU",
        "OPTIMIZATION_CAPABILITIES") lists what it computes in, as OpenVINO's Core does), or None."""
        return None

    @classmethod
    def for_device(cls, cfg: LoadConfig) -> LoadConfig:
        """`cfg` through the preset its device needs (`preset_for`: OpenVINO's NPU preset); as it is elsewhere.
        `phi3kit check` loads each route this way, as a learner following the notebooks would."""
        from ..devices import device_family

        preset = cls.preset_for(device_family(cfg.device))
        return getattr(cls, preset)(cfg) if preset else cfg

    @classmethod
    def device_name(cls, cfg: LoadConfig) -> str | None:
        """The device as its runtime names it (a GPU's model, not "GPU.1"), where the runtime can say; else None."""
        return None

    @classmethod
    def preset_for(cls, device: str) -> str | None:
        """The name of this class's method that turns a LoadConfig into what `device` needs (the doctor's call
        shows it), or None where a plain `kit.load` serves the device."""
        return None

    @classmethod
    def tune_candidates(cls, cfg: LoadConfig) -> list[Any]:
        """Runtime settings worth timing against the defaults for this device (a Candidate each)."""
        return []

    @classmethod
    def notes(cls, cfg: LoadConfig) -> list[str]:
        """What the user should be told about this load, whatever the route (a fallback to another device...)."""
        return []

    @classmethod
    def export_settings(cls, cfg: LoadConfig) -> dict[str, Any]:
        """What shapes this backend's export of a model (part of its cache key), validated."""
        return {"precision": cfg.precision}

    @classmethod
    def runtime_versions(cls) -> dict[str, str]:
        """The libraries that read an export (major.minor): an entry made for one serves the same versions.

        Exporter versions are recorded in the entry's manifest, not in its key, so a workshop pack is
        found on laptops that have the runtime but not the exporter.
        """
        return {}

    @classmethod
    def exporter_versions(cls) -> dict[str, str]:
        from ..machine import library_version

        return {lib: library_version(lib) for lib in cls.exporter}

    @classmethod
    def missing_exporter(cls) -> str | None:
        """The package an export needs that this environment lacks, or None."""
        import importlib.util

        for module, package in cls.exporter_modules.items():
            try:
                if importlib.util.find_spec(module) is None:
                    return package
            except ModuleNotFoundError:  # a parent package is absent
                return package
        return None

    @classmethod
    def label(cls, name: str, cfg: LoadConfig) -> str:
        """A readable name for an export's cache folder (the key's hash follows it)."""
        return f"{name}-{cfg.precision}"

    @classmethod
    def recipe(cls, cfg: LoadConfig) -> str:
        """How the kit's own export makes the weights, in words (shown in the session and its metrics)."""
        return cfg.precision or cls.default_precision

    @classmethod
    def build(cls, source: ModelSource, cfg: LoadConfig, out: Path, log: Log = print) -> None:
        """Write this backend's export of `source` into the empty folder `out`."""
        raise NotImplementedError(f"backend '{cls.name}' has no export step")

    @classmethod
    def ready_made(cls, folder: Path, cfg: LoadConfig, cache: ExportCache, log: Log = print) -> Export:
        """Check a ready-made folder (complete, Phi-3, the precision asked for) and say what it is."""
        raise ModelSourceError(f"backend '{cls.name}' does not load ready-made folders; give it a PyTorch checkpoint.")

    @classmethod
    def open(cls, export: Export, cfg: LoadConfig) -> Backend:
        """Load an export (a backend that needs more of it than its folder overrides this)."""
        return cls(export.path, cfg)

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

        Backends with `reuses_cache` take a keyword `reuse`: False (the default, and what benchmarks, tune and
        single prompts use) prefills the whole prompt on an empty cache; True keeps what the cache holds of
        this prompt (`CachedIds.keep`). Either way the answer's ids are the same at fp32 greedy.
        """

    # True where `stream(..., reuse=True)` keeps the KV cache across calls: a prompt that starts with the ids the
    # cache holds (the chat so far) prefills only the rest, and reports it in `cached.reused`.
    reuses_cache: bool = False
    cached: CachedIds  # set by backends that reuse (their __init__)

    # Bytes per KV-cache element as this runtime keeps it (for the chat window's memory cap): a cautious default.
    kv_element_bytes: float = 2.0

    def limits(self, context_length: int) -> Limits:
        """The prompt and answer lengths this loaded route serves: the model's window unless the runtime narrows it."""
        return model_limits(context_length)

    def logits(self, ids: list[int]) -> Any:
        """Next-token logits for every position of `ids`, shape [len(ids), vocab] (for perplexity).

        Optional: a runtime that exposes no logits raises NotImplementedError saying so.
        Each call starts from an empty KV cache.
        """
        raise NotImplementedError(f"backend '{self.name}' exposes no logits")

    logits_source: ClassVar[str] = ""  # how `logits()` obtains them, for reports

    # How `ran_on()` knows, in words, for reports ("og.Model.device_type"...).
    ran_on_source: ClassVar[str] = ""

    def ran_on(self) -> list[str] | None:
        """The devices that really run this loaded model, as the runtime reports them ('CPU', 'GPU.0', 'cuda:0'), so
        `phi3kit check` can tell a silent fallback from the device asked for; None where the runtime cannot say."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free runtime resources early (the garbage collector does it otherwise)."""

    def free_for_logits(self) -> None:  # noqa: B027 - optional hook
        """Before a run of `logits()` calls (perplexity): a runtime whose logits come from a second copy of the
        model frees the copy that streams."""


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
        while (item := _interruptible_get(q)) is not _DONE:
            if isinstance(item, _Raised):
                raise item.exc
            yield item
    finally:
        stopped.set()
        while thread.is_alive():  # the runtime stops at its next callback (a long prefill ends first)
            thread.join(WAIT_SLICE_S)


# Waits are cut in slices: on Windows an unbounded lock wait (queue.get(), thread.join()) cannot be interrupted
# before Python 3.14, so Ctrl-C would wait for the next token; a bounded one returns to Python between slices.
WAIT_SLICE_S = 0.2


def _interruptible_get(q: queue.SimpleQueue[Any]) -> Any:
    while True:
        try:
            return q.get(timeout=WAIT_SLICE_S)
        except queue.Empty:
            continue


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
