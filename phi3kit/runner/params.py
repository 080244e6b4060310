"""A run's parameters checked before a kernel starts: names, types and values, read from the notebook's
`parameters` cell (papermill only warns about an unknown name; the kit refuses it)."""

from __future__ import annotations

import ast
import errno
import functools
import math
import os
from pathlib import Path
from typing import Any

from ..config import MAX_NEW_TOKENS
from ..errors import GridError, ParameterError, UnknownChoiceError
from ..safefs import storage_error
from ..text import utf8_text


def find_notebook(notebook: str | Path) -> Path:
    """`notebook` as an existing .ipynb file, or ParameterError saying where it was looked for."""
    path = Path(notebook)
    if path.suffix != ".ipynb":
        raise ParameterError(f"{notebook} is not a notebook (.ipynb) or a grid file (.yaml). Fix: e.g. "
                             "phi3kit run notebooks/openvino.ipynb -p model pocket.")
    if not path.is_file():
        where = "" if path.is_absolute() else f" (relative paths start in {Path.cwd()})"
        raise ParameterError(f"Notebook {notebook} does not exist{where}. Fix: check the path; the kit's notebooks "
                             "are notebooks/openvino.ipynb, directml.ipynb, npu.ipynb and compare.ipynb.")
    return path


def notebook_parameters(notebook: str | Path) -> dict[str, dict[str, Any]]:
    """Name -> {type, default, help} from the notebook's `parameters` cell."""
    path = find_notebook(notebook)
    return {k: dict(v) for k, v in _inspect(str(path), path.stat().st_mtime_ns).items()}


@functools.lru_cache(maxsize=32)
def _inspect(path: str, _mtime_ns: int) -> dict[str, Any]:
    """papermill's reading of a parameters cell, once per version of the file (every check asks for it)."""
    import papermill

    return dict(papermill.inspect_notebook(path))


def check_parameters(notebook: str | Path, parameters: dict[str, Any]) -> None:
    """papermill only warns about an unknown name and runs the default: we refuse instead."""
    known = notebook_parameters(notebook)
    for name in parameters:
        if name not in known:
            raise UnknownChoiceError(f"parameter of {Path(notebook).name}", name, known,
                                     hint="(papermill would silently run with the default value.)")


_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def coerce(notebook: str | Path, raw: dict[str, str]) -> dict[str, Any]:
    """Turn command-line strings into the types the parameters cell declares; ParameterError when one does not read.

    Unknown names are left to `check_parameters` (which lists the known ones).
    """
    known = notebook_parameters(notebook)
    out: dict[str, Any] = {}
    for name, value in raw.items():
        kind = known.get(name, {}).get("inferred_type_name", "str")
        default = known.get(name, {}).get("default", "")
        out[name] = _coerce_one(Path(notebook).name, name, kind, value, default)
    return out


def _coerce_one(notebook: str, name: str, kind: str, value: str, default: str) -> Any:
    utf8_text(value, f"parameter {name}")
    bad = f"parameter {name} of {notebook} is {kind}"
    if kind == "int":
        try:
            return int(value.strip())
        except ValueError:
            raise ParameterError(f"{bad}; got {value!r}, which is not a whole number. Fix: e.g. -p {name} "
                                 f"{default or 128}.") from None
    if kind == "float":
        try:
            number = float(value.strip())
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise ParameterError(f"{bad}; got {value!r}, which is not a finite number. Fix: e.g. -p {name} "
                                 f"{default or 0.5}.")
        return number
    if kind == "bool":
        if value.strip().lower() not in _TRUE + _FALSE:
            raise ParameterError(f"{bad}; got {value!r}. Fix: -p {name} true, or -p {name} false.")
        return value.strip().lower() in _TRUE
    return value


# Notebook -> the backend its `model`, `precision`, `device`... parameters load with (the notebook's own call),
# and the LoadConfig options its other parameters fill (LoadConfig field -> notebook parameter).
NOTEBOOK_ROUTES: dict[str, tuple[str, dict[str, str]]] = {
    "openvino": ("openvino", {"runtime": "runtime"}),
    "directml": ("ortgenai", {"fallback_to_cpu": "fallback_to_cpu", "build_target": "build_target",
                              "group_size": "block_size"}),
}
NOTEBOOK_BACKENDS = {stem: backend for stem, (backend, _) in NOTEBOOK_ROUTES.items()}
_LOAD_PARAMETERS = {"model", "precision", "device", "prefer"}


def _defaults(known: dict[str, dict[str, Any]]) -> dict[str, Any]:
    values = {}
    for name, info in known.items():
        try:
            values[name] = ast.literal_eval(str(info.get("default")))
        except (ValueError, SyntaxError):
            values[name] = info.get("default")
    return values


def check_values(notebook: str | Path, parameters: dict[str, Any]) -> None:
    """What the notebook would refuse in its first cells, refused now with the kit's own checks (before a kernel).

    The generation settings go through GenerationConfig, the model, backend, precision, runtime, device and
    prefer through the checks `kit.export` starts with (the catalog, the route plan, the backend's choices and
    devices), built as the notebook builds them; nothing is downloaded or loaded.
    """
    from ..config import GenerationConfig, LoadConfig

    notebook = Path(notebook)
    values = {**_defaults(notebook_parameters(notebook)), **parameters}
    if "max_new_tokens" in parameters or "do_sample" in parameters:
        GenerationConfig(max_new_tokens=values.get("max_new_tokens", MAX_NEW_TOKENS),
                         do_sample=bool(values.get("do_sample")))
    if "group_size" in parameters:  # the NPU notebook's: LoadConfig's own range check
        LoadConfig(group_size=values["group_size"])
    if "routes" in parameters or "prompt_lengths" in parameters:  # the compare notebook's benchmark
        from ..bench.routes import parse_lengths, parse_routes, refuse_unknown

        for route in parse_routes(str(values.get("routes", ""))):
            refuse_unknown(route)
        parse_lengths(str(values.get("prompt_lengths", "")))
    if notebook.stem not in NOTEBOOK_ROUTES:
        return
    backend, fields = NOTEBOOK_ROUTES[notebook.stem]
    if not set(parameters) & (_LOAD_PARAMETERS | set(fields.values())):
        return  # the defaults are the notebook's own business (e.g. DML on a machine without it)
    from ..backends import get
    from ..exporting import complete, plan

    options: dict[str, Any] = {"device": values.get("device", "CPU"), "prefer": values.get("prefer") or None}
    for option, name in fields.items():  # a flag stays a bool; an empty text or 0 means the default (None)
        flag = isinstance(getattr(LoadConfig(), option), bool)
        options[option] = bool(values.get(name)) if flag else values.get(name) or None
    cfg = complete(LoadConfig(model=str(values.get("model")), backend=backend, precision=values.get("precision"),
                              **options))
    plan(cfg)
    get(backend).check(cfg, device=True)


def absolute_paths(parameters: dict[str, Any], cwd: str | Path | None = None) -> dict[str, Any]:
    """Folders given relative to where the command ran, made absolute (the kernel runs in the notebook's folder).

    A `*_dir` parameter that names a file is refused; a relative `model` that is a folder here is made absolute.
    """
    base = Path(cwd or Path.cwd())
    out = dict(parameters)
    for name, value in parameters.items():
        if not isinstance(value, str) or not value.strip():
            continue
        path = Path(os.path.expanduser(value))
        if name.endswith("_dir"):
            full = path if path.is_absolute() else base / path
            if full.exists() and not full.is_dir():
                raise storage_error(NotADirectoryError(errno.ENOTDIR, "not a folder", str(full)), full,
                                    f"parameter {name} must name a folder (new or existing), not a file")
            out[name] = str(full)
        elif name == "model" and value != "pocket" and not path.is_absolute() and (base / path).is_dir():
            out[name] = str(base / path)
    return out


def validate(notebook: str | Path, parameters: dict[str, Any]) -> dict[str, Any]:
    """Every check a run's parameters get before a kernel starts; the parameters with folders made absolute."""
    check_parameters(notebook, parameters)
    check_types(notebook, parameters)
    check_values(notebook, parameters)
    return absolute_paths(parameters)
_TYPES: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def check_types(notebook: str | Path, values: dict[str, Any]) -> None:
    """A value of the wrong type would reach the notebook as-is (papermill does not convert): refuse it."""
    known = notebook_parameters(notebook)
    for name, value in values.items():
        kind = known.get(name, {}).get("inferred_type_name", "None")
        ok = _TYPES.get(kind)
        if ok and (not isinstance(value, ok) or (kind in ("int", "float") and isinstance(value, bool))):
            raise GridError(f"parameter {name} of {Path(notebook).name} is {kind}; got {value!r} "
                            f"({type(value).__name__}). Fix: write a {kind} value (in YAML, quote strings, "
                            "leave numbers unquoted).")
