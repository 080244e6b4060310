"""The seed tutorial's NPU route: intel-npu-acceleration-library, kept because learners follow it.

Upstream archived the library (end of life, April 2025) and points to OpenVINO GenAI on the NPU,
which is the kit's default NPU route (backend "openvino" with `npu_preset`). The library ships a
wheel for Windows (win_amd64) only, and it needs its own environment: its neural-compressor 3.1.1
pin needs numpy<2, which the kit's main environment cannot have (requirements/npu.txt).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from ...config import GenerationConfig, LoadConfig
from ...errors import NPULibraryLimitError, NPULibraryUnavailableError
from ..base import Backend, Token
from ..hf import hf_stream

PACKAGE = "intel-npu-acceleration-library"
DTYPES = {"int4": "int4", "int8": "int8", "fp16": "float16"}  # our precision -> the library's dtype name
QUANTIZED = ("int4", "int8")
ROUTE_1 = ("Use the supported route instead: OpenVINO GenAI on the NPU (backend='openvino' with the NPU preset; "
           "notebooks/npu.ipynb with route='openvino-genai'), which is what Intel now recommends.")

# What this process has compiled with the library: a second int4/int8 model aborts the whole
# process (no Python exception, the kernel just dies), so the second one is refused instead.
LOADED: list[tuple[str, str]] = []


def unavailable_message(platform: str, cause: BaseException | None = None) -> str:
    """Why the library cannot be used on `platform` (sys.platform spelling), and what to do."""
    if platform != "win32":
        where = {"linux": "Linux", "darwin": "macOS"}.get(platform, platform)
        return (f"The 'npu-library' backend runs the seed tutorial's {PACKAGE}, which does not install on {where}: "
                "upstream archived it (end of life, April 2025) and published a wheel for Windows (win_amd64) "
                f"only. On {where} pip falls back to its source archive, whose build downloads an Ubuntu-only "
                f"OpenVINO archive and needs a C++ toolchain. {ROUTE_1}")
    itself = isinstance(cause, ModuleNotFoundError) and cause.name == "intel_npu_acceleration_library"
    found = f" Import failed with: {cause!r}." if cause is not None and not itself else ""
    return (f"The 'npu-library' backend needs {PACKAGE}, which is not importable in this environment.{found} "
            "It needs an environment of its own (its neural-compressor==3.1.1 pin needs numpy<2, which conflicts "
            "with the kit's main environment): `python -m venv .venv-npu`, then "
            r"`.venv-npu\Scripts\pip install -r requirements\npu.txt -e .`, and pick that kernel. "
            f"The library is archived upstream (end of life). {ROUTE_1}")


def import_library() -> Any:
    """The library module, or NPULibraryUnavailableError saying why not."""
    try:
        import intel_npu_acceleration_library as lib
    except ImportError as exc:
        raise NPULibraryUnavailableError(unavailable_message(sys.platform, exc), PACKAGE) from exc
    return lib


def second_model_problem(precision: str, loaded: list[tuple[str, str]]) -> str | None:
    """Why loading another model would crash this process; None when it is safe."""
    earlier = [f"{Path(m).name} ({p})" for m, p in loaded if p in QUANTIZED]
    if precision in QUANTIZED and earlier:
        return (f"This process already compiled {', '.join(earlier)} with {PACKAGE}; compiling a second int4/int8 "
                "model in the same process aborts it (the kernel dies without a Python error). Fix: restart the "
                "kernel (Jupyter: Kernel > Restart) before loading another quantized model, or use "
                f"precision='fp16'. {ROUTE_1}")
    return None


class NPULibraryBackend(Backend):
    name = "npu-library"
    runtimes: ClassVar[tuple[str, ...]] = ("npu-library",)
    precisions: ClassVar[tuple[str, ...]] = tuple(DTYPES)
    requirements = "npu.txt"
    reads_checkpoint: ClassVar[bool] = True  # the library quantizes and compiles the checkpoint when it loads

    @classmethod
    def devices(cls, runtime: str) -> list[str]:
        """NPU when the library finds one; otherwise CPU, which is the library's own fallback, named honestly."""
        import_library()
        from intel_npu_acceleration_library.backend import npu_available

        return ["NPU"] if npu_available() else ["CPU"]

    @classmethod
    def status(cls) -> str:
        try:
            lib = import_library()
        except NPULibraryUnavailableError as exc:
            return f"not importable: {exc}"
        except Exception as exc:  # noqa: BLE001 - a broken install is a report row too
            return f"import failed: {exc!r}"
        from intel_npu_acceleration_library.backend import npu_available

        found = "found" if npu_available() else "not found (CPU fallback)"
        return f"{PACKAGE} {lib.__version__} importable; NPU {found}"

    @classmethod
    def device_help(cls, device: str, available: list[str]) -> str:
        if available == ["CPU"]:
            return (f"{PACKAGE} finds no NPU on this machine. Without one it falls back to the CPU (slower than "
                    "PyTorch); pass device='CPU' to accept that explicitly. An NPU needs a Core Ultra CPU and the "
                    "Intel NPU driver.")
        return (f"Device {device!r}: {PACKAGE} runs on the NPU it finds, with no device choice; "
                f"available here: {', '.join(available)}.")

    @classmethod
    def check(cls, cfg: LoadConfig, *, device: bool = True) -> None:
        super().check(cfg, device=device)
        if problem := second_model_problem(cfg.precision, LOADED):
            raise NPULibraryLimitError(problem)

    def __init__(self, model_dir: Path, cfg: LoadConfig) -> None:
        if problem := second_model_problem(cfg.precision, LOADED):  # also guards direct construction
            raise NPULibraryLimitError(problem)
        lib = import_library()
        from intel_npu_acceleration_library.compiler import CompilerConfig

        # export=False: the library's own cache pickles the model under ./cache/models of the current
        # folder and reloads it with torch.load; the kit keeps notebooks' folders clean and loads no pickles.
        self.model = lib.NPUModelForCausalLM.from_pretrained(
            str(model_dir),
            use_cache=True,
            config=CompilerConfig(dtype=getattr(lib, DTYPES[cfg.precision])),
            attn_implementation="sdpa",
            export=False,
            trust_remote_code=cfg.trust_remote_code,
        )
        LOADED.append((str(model_dir), cfg.precision))

    def stream(self, prompt_ids: list[int], gen: GenerationConfig, stop_ids: list[int]) -> Iterator[Token]:
        return hf_stream(self.model, "cpu", prompt_ids, gen, stop_ids)  # NPU kernels take CPU tensors

    def close(self) -> None:
        self.__dict__.pop("model", None)  # the LOADED record stays: the crash is per process
