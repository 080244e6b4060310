"""Where `phi3kit tune`'s choices are kept, and the lookup a load makes: one JSON file per export, device
identity and library versions, under the cache's `tuned/` folder. A stored file is read as untrusted input:
checked before anything of it reaches a runtime. The experiment that makes the choices is phi3kit.tuning.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from .backends.base import flat_properties
from .cache import CACHE_FIX, ExportCache
from .errors import TuningFileError
from .machine import hardware, installed_version
from .safefs import atomic_write, writable_dir

TUNED_DIR = "tuned"  # under the cache root: one JSON file per (export, device identity, libraries)
SCALARS = (bool, int, float, str)  # what a runtime property's value is; a nested table only where the runtime nests
MAX_DEPTH = 8  # ONNX Runtime GenAI's overlay nests four deep; deeper is not a tuning file
SAVE_FIX = f"{CACHE_FIX}; or measure without storing: --dry-run (save=False in Python)"
# The runtimes whose versions a choice belongs to (measured with one, it is not applied with another).
RUNTIME_LIBRARIES = ("openvino", "openvino-genai", "onnxruntime-genai", "onnxruntime-genai-directml",
                     "onnxruntime-genai-cuda")


def describe(props: dict[str, Any]) -> str:
    pairs = flat_properties(props).items()
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in pairs) or "the runtime's defaults"


def identity(cfg: Any, export: Any) -> dict[str, Any]:
    """What a measurement belongs to: the export, the device as the runtime reports it, the library versions."""
    from .backends import get

    # The device itself, as its runtime names it: GPU.1 (an Arc dGPU) is not GPU.0 (the iGPU).
    device = {"device": cfg.device, **({"name": name} if (name := get(cfg.backend).device_name(cfg)) else {})}
    hw = hardware()
    device.update(cpu=hw["cpu"], isa=hw["isa"], cores=hw["cores_physical"], threads=hw["cores_logical"])
    libs = {lib: v for lib in RUNTIME_LIBRARIES if (v := installed_version(lib))}
    return {"backend": cfg.backend, "runtime": cfg.runtime or "", "precision": cfg.precision,
            "export": export.path.name if export.route == "export" else export.origin or str(export.path),
            "device": device, "libraries": libs}


def _store(cache_root: Path, ident: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Path(cache_root) / TUNED_DIR / f"{ident['backend']}-{digest}.json"


def stored_path(cfg: Any, export: Any) -> Path:
    """Where the choice for exactly this export, device and libraries is kept (whether or not it is there)."""
    return _store(ExportCache(cfg.cache_dir).root, identity(cfg, export))


def stored(cfg: Any, export: Any) -> dict[str, Any] | None:
    """The choice measured for exactly this export, device and libraries, or None (then nothing is applied).

    A file that is there is checked before anything of it reaches a runtime: a hand edit, a broken copy or
    another tool's file must fail here naming the file, not as a TypeError or a runtime's message later.
    """
    path = stored_path(cfg, export)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise _unusable(path, f"it cannot be read ({exc.strerror or exc})") from exc
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _unusable(path, f"it is not UTF-8 JSON ({type(exc).__name__}: {str(exc)[:120]})") from exc
    if problem := _shape_problem(data, cfg):
        raise _unusable(path, problem)
    return data


def _unusable(path: Path, problem: str) -> TuningFileError:
    return TuningFileError(
        f"The stored tuning result {path} cannot be used: {problem}. Fix: delete that file (PowerShell: "
        f"Remove-Item \"{path}\"; bash: rm \"{path}\") and run `phi3kit tune` again, or load without it: "
        "--untuned on the command line, tuned=False in Python.", path=path)


def _leaves(props: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Each setting's path (("model", "decoder", ...) for nested overlays) and value; ValueError on any other shape."""
    if len(prefix) >= MAX_DEPTH:
        raise ValueError(f"settings nested deeper than {MAX_DEPTH} levels")
    out: dict[tuple[str, ...], Any] = {}
    for key, value in props.items():
        here = (*prefix, str(key))
        if isinstance(value, dict) and value:
            out.update(_leaves(value, here))
        elif isinstance(value, SCALARS):
            out[here] = value
        else:
            raise ValueError(f"setting '{'.'.join(here)}' is {json.dumps(value)[:60]}, not a number, text or "
                             "true/false")
    return out


def _shape_problem(data: Any, cfg: Any) -> str:
    """What is wrong with a stored choice for `cfg`, or '' when it is what `save_choice` writes.

    Setting names are checked against what the tuner itself tries for this backend and device (its candidates),
    so a name the tuner never chooses is refused whatever the runtime would make of it.
    """
    from .backends import get

    if not isinstance(data, dict):
        return f"it holds a JSON {type(data).__name__} where a table with 'properties' belongs"
    props = data.get("properties")
    if not isinstance(props, dict):
        return f"its 'properties' is {json.dumps(props)[:60]}, not a table of runtime settings"
    if not isinstance(data.get("numerics", False), bool):
        return f"its 'numerics' is {json.dumps(data.get('numerics'))[:60]}, not true or false"
    try:
        leaves = _leaves(props)
    except ValueError as exc:
        return str(exc)
    if not leaves:  # {}: the default was kept, which is a result too
        return ""
    known = {path for c in get(cfg.backend).tune_candidates(cfg) for path in _leaves(c.properties)}
    if unknown := [".".join(path) for path in leaves if path not in known]:
        names = ", ".join(sorted({".".join(path) for path in known})) or "none: it keeps the runtime's defaults"
        return (f"'{unknown[0]}' is not a setting the tuner chooses for {cfg.backend} on {cfg.device} (it tries: "
                f"{names})")
    return ""


def require_storable(cache_dir: Any) -> Path:
    """The folder tuning results go to, proven writable before minutes of measuring (StorageError otherwise)."""
    return writable_dir(ExportCache(cache_dir).root / TUNED_DIR, SAVE_FIX)


def save_choice(session: Any, result: Any) -> Path:
    """Store the choice (the default too: a tuned-and-kept default is a result) for later loads."""
    path = _store(ExportCache(session.config.cache_dir).root, result.identity)  # the identity measured
    chosen = result.chosen
    data = {"candidate": chosen.name, "properties": chosen.properties, "numerics": chosen.numerics,
            "objective": result.objective, "reason": result.choice.reason,
            "agreement": result.agreement.get(chosen.name), "identity": result.identity,
            "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "table": result.rows()}
    return atomic_write(path, json.dumps(data, indent=1, default=str), SAVE_FIX)
