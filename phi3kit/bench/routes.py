"""Routes: which backend, runtime, precision and device a benchmark runs, and whether this machine can."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from .. import backends, config
from ..config import LoadConfig
from ..errors import BenchError, Phi3kitError, UnknownChoiceError

DEFAULT_ROUTES = "transformers:fp32,openvino:int4,openvino:int8,ortgenai:int4"
REFERENCE = "transformers:fp32"
ROUTE_FORMAT = ("backend[/runtime]:precision[@device][{key=value;...}], e.g. openvino:int4, openvino/optimum:int8, "
                "ortgenai:int4@CPU, openvino:int4{INFERENCE_PRECISION_HINT=f32}, ortgenai:int4{accuracy_level=1}")
# Options that are load settings (config.LOAD_OPTIONS, their parsers); any other key is a runtime property.
LOAD_OPTIONS = {name: option.parse for name, option in config.LOAD_OPTIONS.items() if option.in_routes}


@dataclass(frozen=True)
class Route:
    """One way to run the model: a backend, its runtime, a precision and a device."""

    backend: str
    precision: str
    runtime: str | None = None
    device: str = "CPU"
    # Settings beyond the four above, as (key, value) text pairs: load settings (LOAD_OPTIONS) or runtime
    # properties. `tuned` is false unless asked: a benchmark measures what it names, not a stored choice.
    options: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", tuple((str(k), str(v)) for k, v in self.options))  # from JSON lists
        for key, value in self.options:
            if key in LOAD_OPTIONS:
                try:
                    LOAD_OPTIONS[key](value)
                except (ValueError, KeyError):
                    raise BenchError(f"Route option {key}={value!r} is not a valid {key}.") from None

    @classmethod
    def parse(cls, spec: str | Route) -> Route:
        if isinstance(spec, Route):
            return spec
        m = re.fullmatch(r"\s*([\w-]+)(?:/([\w-]+))?:([\w-]+)(?:@([\w.:-]+))?(?:\{([^{}]*)\})?\s*", str(spec))
        if not m:
            raise BenchError(f"Cannot read the route {spec!r}. Write {ROUTE_FORMAT}.")
        backend, runtime, precision, device, opts = m.groups()
        options = []
        for item in (opts or "").split(";"):
            if not item.strip():
                continue
            key, eq, value = item.partition("=")
            if not eq or not key.strip() or not value.strip():
                raise BenchError(f"Cannot read the option {item!r} of route {spec!r}: write key=value, "
                                 "several separated by ';'.")
            options.append((key.strip(), value.strip()))
        return cls(backend, precision, runtime, device or "CPU", tuple(options))

    @property
    def resolved_runtime(self) -> str:
        if self.runtime:
            return self.runtime
        try:
            return backends.get(self.backend).default_runtime()
        except Phi3kitError:  # an unknown backend: `problem()` says so
            return "default"

    @property
    def label(self) -> str:
        device = "" if self.device == "CPU" else f"@{self.device}"
        options = "{" + ";".join(f"{k}={v}" for k, v in self.options) + "}" if self.options else ""
        return f"{self.backend}/{self.resolved_runtime}:{self.precision}{device}{options}"

    def config(self, model: str, cache_dir: str | None = None) -> LoadConfig:
        load: dict[str, object] = {"tuned": False}
        properties: dict[str, object] = {}
        for key, value in self.options:
            if key in LOAD_OPTIONS:
                load[key] = LOAD_OPTIONS[key](value)
            else:
                properties[key] = value
        return LoadConfig(model=model, backend=self.backend, precision=self.precision, device=self.device,
                          runtime=self.runtime, cache_dir=cache_dir, runtime_config=properties, **load)  # type: ignore[arg-type]


def parse_routes(routes: str | Sequence[str | Route]) -> list[Route]:
    """'transformers:fp32,openvino:int4' or a list of specs -> Routes (duplicates removed, order kept)."""
    items = routes.split(",") if isinstance(routes, str) else list(routes)
    out: list[Route] = []
    for item in items:
        if isinstance(item, str) and not item.strip():
            continue
        route = Route.parse(item)
        if route not in out:
            out.append(route)
    if not out:
        raise BenchError(f"No routes given. Write a comma-separated list of {ROUTE_FORMAT}.")
    return out


def parse_lengths(lengths: str | int | Sequence[int]) -> list[int]:
    """'128,512', 128 or [128, 512] -> [128, 512]; every length a positive integer."""
    items = str(lengths).split(",") if isinstance(lengths, str | int) else list(lengths)
    try:
        out = [int(x) for x in items if str(x).strip()]
    except ValueError as exc:
        raise BenchError(f"prompt lengths must be whole numbers of tokens, got {lengths!r}. Fix: e.g. '128,512'.") \
            from exc
    if not out or min(out) <= 0:
        raise BenchError(f"prompt lengths must be positive token counts, got {lengths!r}. Fix: e.g. '128,512'.")
    return out


def problem(route: Route) -> str | None:
    """Why `route` cannot run on this machine (unknown choice, missing package, missing device), or None."""
    try:
        backend = backends.get(route.backend)
        runtime = route.runtime or backend.default_runtime()
        if runtime not in backend.runtimes:
            return f"backend {route.backend} has no runtime {runtime!r} (it has: {', '.join(backend.runtimes)})"
        if route.precision not in backend.precisions:
            return (f"backend {route.backend} has no precision {route.precision!r} "
                    f"(it has: {', '.join(backend.precisions)})")
        devices = backend.devices(runtime)
    except (Phi3kitError, ImportError) as exc:
        return str(exc)
    if route.device not in devices and route.device.upper() not in devices:
        return f"device {route.device} is not available to {route.backend} here (available: {', '.join(devices)})"
    return None


def refuse_unknown(route: Route) -> None:
    """Raise UnknownChoiceError for a backend, runtime or precision that exists nowhere (a typo such as
    openvino:int3): such a route would be skipped, and the benchmark would run the rest (or only its reference)
    and exit 0. A missing device or package stays a skip: it is this machine's, not the route's."""
    try:
        backend = backends.get(route.backend)
    except ImportError:  # the backend's module needs a package this environment lacks: problem() says so
        return
    runtime = route.runtime or backend.default_runtime()
    if runtime not in backend.runtimes:
        raise UnknownChoiceError(f"runtime for backend '{route.backend}' in route {route.label}", runtime,
                                 backend.runtimes, hint=f"Routes are written {ROUTE_FORMAT}.")
    if route.precision not in backend.precisions:
        raise UnknownChoiceError(f"precision for backend '{route.backend}' in route {route.label}", route.precision,
                                 backend.precisions, hint=f"Routes are written {ROUTE_FORMAT}.")
    route.config("pocket")  # its load options in range (LoadConfig's own checks: group_size, ratio)


def available(routes: str | Sequence[str | Route]) -> list[tuple[Route, str | None]]:
    """Each route with None if it runs here, else the reason it is skipped."""
    return [(r, problem(r)) for r in parse_routes(routes)]
