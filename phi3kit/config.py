"""Plain dataclasses for what to load and how to generate."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from . import env
from .errors import ExportSettingError, GenerationConfigError

# One default model for every entry point (kit.load, kit.export, LoadConfig, the CLI): the pocket model runs
# offline in seconds. Real checkpoints are named explicitly (a hub id, a folder).
DEFAULT_MODEL = "pocket"
HEADLESS_ENV = env.HEADLESS  # set in the kernels the kit runs headless: no one can click a panel there
# Below this, logits / temperature overflow (a logit of 70 in fp16 already at 1e-3): the sampler sees inf and NaN
# and the runtime fails with its own traceback. Sampling that cold is greedy decoding in all but name.
MIN_TEMPERATURE = 0.01


def yes_no(text: str) -> bool:
    """'true' or 'false' (any case), as a route's {tuned=false} writes it; ValueError otherwise."""
    value = {"true": True, "false": False}.get(text.strip().lower())
    if value is None:
        raise ValueError(f"{text!r} is neither true nor false")
    return value


@dataclass(frozen=True)
class LoadOption:
    """A LoadConfig field a learner sets as text beyond the model, backend, precision and device: `parse` turns
    the text into its value, `flag` is its command-line option (phi3kit export/generate/chat/tune; "" for none; a
    yes/no option's flag sets the opposite of its default), `in_routes` whether a bench route's {key=value} sets it
    (any other key there is a runtime property)."""

    parse: Callable[[str], Any]
    help: str
    flag: str = ""
    in_routes: bool = True
    choices: tuple[str, ...] = ()


# Every such option, written once: the command line (cli/common.py) and bench routes (bench/routes.py) read them here.
LOAD_OPTIONS: dict[str, LoadOption] = {
    "runtime": LoadOption(str, "openvino: genai (default) | optimum", "--runtime", in_routes=False),  # route: a/b:...
    "cache_dir": LoadOption(str, "export cache (default: PHI3KIT_CACHE or the user cache dir)", "--cache-dir",
                            in_routes=False),
    "group_size": LoadOption(int, "int4 group size (OpenVINO default 128)", "--group-size"),
    "ratio": LoadOption(float, "share of int4 layers (OpenVINO default 0.6)", "--ratio"),
    "prefer": LoadOption(str, "ready-made: a folder its publisher converted, used as it is; export: the kit's own "
                         "export from the checkpoint (default: ready-made where the catalog has one)", "--prefer",
                         choices=("ready-made", "export")),
    "trust_remote_code": LoadOption(yes_no, "run the model repo's own code (off by default)", "--trust-remote-code",
                                    in_routes=False),
    "tuned": LoadOption(yes_no, "ignore what `phi3kit tune` stored: the runtime defaults", "--untuned"),
    "reuse_cache": LoadOption(yes_no, "chats: read the whole history at every answer instead of keeping the KV "
                              "cache between answers (OpenVINO GenAI: its prefix cache off too)", "--no-reuse",
                              in_routes=False),  # bench's single prompts always read the whole prompt
    "accuracy_level": LoadOption(int, "ortgenai's int4/int8 matmul compute type (1: fp32 activations, 4: int8)"),
    "build_target": LoadOption(str, "what ONNX Runtime GenAI's builder targets (cpu | dml | cuda)"),
}


@dataclass
class LoadConfig:
    """What to run: a model, through a backend, at a precision, on a device.

    `model` is a catalog alias (`phi3kit models`), a hub id or a folder; `prefer` picks "ready-made" (a
    folder its publisher converted, loaded as it is) or "export" (the kit's own export from the
    checkpoint); None: ready-made where the catalog has one for this backend, precision and device.
    `precision` None means the backend's own default (int4 where it quantizes, fp32 for PyTorch), or a
    ready-made folder's own.
    `group_size`, `ratio` and `sym` shape int4 weights (None: the backend's default,
    the seed's 128 / 0.6 / symmetric for OpenVINO). `runtime_config` is passed to the
    runtime as-is (OpenVINO properties such as INFERENCE_PRECISION_HINT).
    `build_target` is what ONNX Runtime GenAI's builder targets (cpu | dml | cuda; None: the device's
    provider), kept apart from `device` so a DirectML build can be checked on any CPU.
    `tuned` applies the runtime settings `phi3kit tune` measured fastest for this export on this device
    (only where it measured them); False runs the runtime's defaults and `runtime_config` alone.
    `fallback_to_cpu` lets ortgenai run on the CPU when its device is missing (logged, never silent).
    `reuse_cache` lets a chat keep the backend's KV cache between answers (each turn then reads only its new
    tokens); False reads the whole history at every answer. Single prompts always read the whole prompt.
    `accuracy_level` is ortgenai's int4/int8 matmul compute type (1 = fp32 activations, matches PyTorch;
    4 = int8 activations, much faster on CPU; None: the builder's default, 4 on CPU).
    """

    model: str = DEFAULT_MODEL
    backend: str = "openvino"
    precision: str | None = None
    device: str = "CPU"
    runtime: str | None = None
    revision: str | None = None
    cache_dir: str | None = None
    group_size: int | None = None
    ratio: float | None = None
    sym: bool = True
    group_size_fallback: str = "adjust"
    trust_remote_code: bool = False
    runtime_config: dict[str, Any] = field(default_factory=dict)
    build_target: str | None = None
    fallback_to_cpu: bool = False
    accuracy_level: int | None = None
    prefer: str | None = None
    tuned: bool = True
    reuse_cache: bool = True

    def __post_init__(self) -> None:
        # Out of range, these started a 20-40 s export that failed inside optimum-cli (or, for 0, silently
        # exported with the default 128): refused here, so the command line and the API fail in milliseconds.
        g = self.group_size
        if g is not None and (not isinstance(g, int) or isinstance(g, bool) or not (g == -1 or g > 0)):
            raise ExportSettingError(
                f"group_size must be a positive number of weights per scale, or -1 for channel-wise (one scale per "
                f"output channel), got {g!r}. Fix: e.g. group_size=128 (--group-size 128), 64, or -1; leave it unset "
                "for the backend's default.")
        r = self.ratio
        if r is not None and (isinstance(r, bool) or not isinstance(r, int | float) or not 0 <= r <= 1):
            raise ExportSettingError(  # `not 0 <= r <= 1` also refuses nan
                f"ratio must be the share of layers compressed to int4, a number from 0 to 1, got {r!r}. Fix: e.g. "
                "ratio=0.6 (--ratio 0.6, the seed's), or 1.0 for every layer; leave it unset for the default.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# The longest answer by default, in new tokens: GenerationConfig, `phi3kit generate`, the notebooks' parameters
# (a literal there, for papermill: tests/test_house.py checks it is this one). A chat turn (`phi3kit chat`, the chat
# panel) gets twice as much; a benchmark's timed run (`phi3kit bench`, compare.ipynb) always makes its own number.
MAX_NEW_TOKENS = 128
CHAT_MAX_NEW_TOKENS = 2 * MAX_NEW_TOKENS
BENCH_NEW_TOKENS = 64


@dataclass
class GenerationConfig:
    """How to decode. Greedy by default so runs are reproducible.

    `ignore_eos` keeps generating through end-of-turn tokens up to `max_new_tokens`: benchmarks
    need a fixed number of new tokens per run (as llm_bench and benchmark_e2e do), or a faster
    route that happens to stop early would look better than it is.
    """

    max_new_tokens: int = MAX_NEW_TOKENS
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50
    seed: int | None = None
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or isinstance(self.max_new_tokens, bool) \
                or self.max_new_tokens <= 0:
            raise GenerationConfigError(
                f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}. "
                "Fix: pass e.g. max_new_tokens=128."
            )
        if self.do_sample and not MIN_TEMPERATURE <= self.temperature < math.inf:  # also refuses nan
            raise GenerationConfigError(
                f"temperature must be a finite number >= {MIN_TEMPERATURE} when sampling, got {self.temperature}. "
                "Fix: use do_sample=False for greedy decoding (what a colder temperature amounts to), "
                "or a temperature such as 0.7."
            )
        if not 0 < self.top_p <= 1:  # also refuses nan
            raise GenerationConfigError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.top_k < 0:
            raise GenerationConfigError(f"top_k must be >= 0 (0 disables it), got {self.top_k}.")


