"""Errors the kit raises on purpose: each names the problem and the fix."""

from __future__ import annotations

from collections.abc import Iterable


class Phi3kitError(Exception):
    """Base class: catch this to handle every error the kit documents.

    `exit_code` is what the command line returns for it: 2 for input the kit refuses (the default), 1 for a
    run that was tried and failed.
    """

    exit_code = 2


class UnknownChoiceError(Phi3kitError, ValueError):
    """A parameter took a value the kit does not know (backend, device, precision, runtime...)."""

    def __init__(self, what: str, value: object, choices: Iterable[str], hint: str = "") -> None:
        self.what, self.value, self.choices = what, value, list(choices)
        msg = f"Unknown {what}: {value!r}. Valid choices: {', '.join(self.choices)}."
        super().__init__(f"{msg} {hint}".strip())


class DeviceNotFoundError(Phi3kitError, RuntimeError):
    """The device asked for is not visible to the runtime (missing hardware or driver)."""


class MissingDependencyError(Phi3kitError, ImportError):
    """A route needs a package that is not installed in this environment."""

    def __init__(self, package: str, purpose: str, requirements: str = "") -> None:
        self.package = package
        fix = f"pip install -r requirements/{requirements}" if requirements else f"pip install {package}"
        super().__init__(f"{purpose} needs the '{package}' package, which is not installed. Fix: {fix}")


class ContextWindowError(Phi3kitError, ValueError):
    """The prompt plus the tokens asked for do not fit the model's context window."""


class ModelSourceError(Phi3kitError, ValueError):
    """A model id or folder cannot be used (not found, not Phi-3 family, unsafe path)."""


class ExportError(Phi3kitError, RuntimeError):
    """An export failed; the cache keeps nothing half-written."""


class ResourceError(Phi3kitError, RuntimeError):
    """Not enough disk or memory for the export asked for, found before it starts."""


class CacheCorruptError(Phi3kitError, RuntimeError):
    """A cache entry fails its manifest check (missing, truncated or changed files): it is not used."""

    exit_code = 1


class UnsafePathError(Phi3kitError, ValueError):
    """A path read from outside (a pack's index) could reach outside its folder, or a deletion would."""


class StorageError(Phi3kitError, OSError):
    """A location the kit must write cannot take it: read-only, full, or a file where a folder belongs."""

    def __init__(self, message: str, path: object = None) -> None:
        super().__init__(message)
        self.path = path


class CachedEntryError(Phi3kitError, RuntimeError):
    """A runtime failed to load a folder from the kit's cache: its files may be damaged (the load checks sizes,
    not bytes), so the message names the entry and how to check and rebuild it."""

    exit_code = 1

    def __init__(self, message: str, entry: object = None) -> None:
        super().__init__(message)
        self.entry = entry


class TuningFileError(Phi3kitError, ValueError):
    """A stored `phi3kit tune` result cannot be used (not UTF-8 JSON, the wrong shape, a setting the tuner
    never chooses): the message names the file and how to replace it."""

    def __init__(self, message: str, path: object = None) -> None:
        super().__init__(message)
        self.path = path


class ParameterError(Phi3kitError, ValueError):
    """A value given on the command line (a notebook parameter, a prompt) cannot be used as written."""


class ExportSettingError(Phi3kitError, ValueError):
    """An export setting (int4 group size, ratio) is out of range: refused before any export starts."""


class NotebookRunError(Phi3kitError, RuntimeError):
    """A notebook ran and stopped at an error: the executed notebook, error included, is kept and named."""

    exit_code = 1

    def __init__(self, message: str, notebook: object = None) -> None:
        super().__init__(message)
        self.notebook = notebook


class CheckReportError(Phi3kitError, ValueError):
    """A machine report given to `phi3kit check --room` cannot be read (not JSON, the wrong shape, another
    format): the message names the file and what is wrong in it."""

    def __init__(self, message: str, path: object = None) -> None:
        super().__init__(message)
        self.path = path


def last_line(exc: BaseException) -> str:
    """The last non-empty line of an exception's message: what a C++ runtime's long error actually says."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


class GridError(Phi3kitError, ValueError):
    """A grid file cannot be used as written."""


class GenerationConfigError(Phi3kitError, ValueError):
    """A generation setting is out of range."""


class TuneError(Phi3kitError, ValueError):
    """A tuning request that cannot be run as asked."""


class BenchError(Phi3kitError, ValueError):
    """A benchmark setting cannot be used (route syntax, prompt length)."""


class PackError(Phi3kitError, RuntimeError):
    """A pack cannot be made or used as it is (a damaged copy, a folder that is not a pack, an unsafe index)."""


class PackDamagedError(PackError):
    """The pack's files differ from its index: a run that failed (exit 1), not input the kit refused."""

    exit_code = 1


# --- raised by one backend, kept here with the rest (the backend re-exports its own) ---------------------
class NPUDriverError(DeviceNotFoundError):
    """The NPU is there, but its driver (or the compiler inside it) cannot run this model."""


class NPULibraryUnavailableError(MissingDependencyError):
    """intel-npu-acceleration-library cannot be imported here; the message says why and what to use."""

    def __init__(self, message: str, package: str = "intel-npu-acceleration-library") -> None:
        self.package = package
        ImportError.__init__(self, message)


class NPULibraryLimitError(Phi3kitError, RuntimeError):
    """A load the library would answer by killing the process."""


class LlamaCppMissingError(MissingDependencyError):
    """llama-cpp-python cannot be imported here; the message (install.missing_message) says how to build it."""

    def __init__(self, message: str, package: str = "llama-cpp-python") -> None:
        self.package = package
        ImportError.__init__(self, message)


class LlamaCppBuildError(Phi3kitError, RuntimeError):
    """The installed llama-cpp-python was built in a way that would crash this route."""
