"""Whether llama-cpp-python is installed and how it was built: the import with its fix, its version, llama.cpp's
system info (AMX kernels compiled in or not), and the CPU's physical cores."""

from __future__ import annotations

import os
import re
from functools import cache
from typing import Any

from ... import machine
from ...errors import LlamaCppBuildError as LlamaCppBuildError  # defined in errors.py; its import name here kept
from ...errors import LlamaCppMissingError

PACKAGE = "llama-cpp-python"
REQUIREMENTS = "llamacpp.txt"
# The build the kit needs (requirements/llamacpp.txt says why: ggml's AMX kernels crash in batched prefill).
CMAKE_ARGS = ("-DGGML_NATIVE=ON -DCMAKE_C_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16' "
              "-DCMAKE_CXX_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16' -DLLAVA_BUILD=OFF")
INSTALL = f'CMAKE_ARGS="{CMAKE_ARGS}" pip install --no-cache-dir -r requirements/{REQUIREMENTS}'


def missing(cause: BaseException | None = None) -> LlamaCppMissingError:
    """The error for a llama-cpp-python that is absent, or present but not importable (`cause`)."""
    return LlamaCppMissingError(missing_message(cause), PACKAGE)


def missing_message(cause: BaseException | None = None) -> str:
    if cause is None or (isinstance(cause, ModuleNotFoundError) and cause.name == "llama_cpp"):
        what = f"{PACKAGE} is not installed"
    else:
        what = f"{PACKAGE} is installed but does not import here ({type(cause).__name__}: {cause})"
    return (f"{what}: the 'llamacpp' backend runs llama.cpp through it. Fix: build it from source as "
            f"requirements/{REQUIREMENTS} says (about 6 minutes on 2 cores): {INSTALL}")


def import_llama() -> Any:
    """The llama_cpp module, or LlamaCppMissingError saying how to build it."""
    try:
        import llama_cpp
    except (ImportError, OSError) as exc:  # OSError: the shared library does not load
        raise missing(exc) from exc
    return llama_cpp


def installed_version() -> str | None:
    return machine.installed_version(PACKAGE)


@cache
def system_info() -> str:
    """llama.cpp's build and CPU features, as `llama_print_system_info()` prints them."""
    return import_llama().llama_print_system_info().decode("utf-8", "replace")


def amx_compiled(info: str) -> bool:
    """Whether ggml's AMX kernels are compiled in (`AMX_INT8 = 1`: built with -march=native on an AMX Xeon)."""
    return re.search(r"\bAMX_INT8\s*=\s*1\b", info) is not None


def physical_cores() -> int:
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1

