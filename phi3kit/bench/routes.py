"""Routes: which backend, runtime, precision and device a benchmark runs, and whether this machine can."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from .. import backends
from ..config import LoadConfig
from ..errors import Phi3kitError

DEFAULT_ROUTES = "transformers:fp32,openvino:int4,openvino:int8,ortgenai:int4"
REFERENCE = "transformers:fp32"
ROUTE_FORMAT = "backend[/runtime]:precision[@device], e.g. openvino:int4, openvino/optimum:int8, ortgenai:int4@CPU"

class BenchError(Phi3kitError, ValueError):
    """A benchmark setting cannot be used (route syntax, prompt length)."""


@dataclass(frozen=True)
class Route:
    """One way to run the model: a backend, its runtime, a precision and a device."""

    backend: str
    precision: str
    runtime: str | None = None
    device: str = "CPU"

    @classmethod
    def parse(cls, spec: str | Route) -> Route:
        if isinstance(spec, Route):
            return spec
        m = re.fullmatch(r"\s*([\w-]+)(?:/([\w-]+))?:(\w+)(?:@([\w.:-]+))?\s*", str(spec))
        if not m:
            raise BenchError(f"Cannot read the route {spec!r}. Write {ROUTE_FORMAT}.")
        backend, runtime, precision, device = m.groups()
        return cls(backend, precision, runtime, device or "CPU")

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
        return f"{self.backend}/{self.resolved_runtime}:{self.precision}{device}"

    def config(self, model: str, cache_dir: str | None = None) -> LoadConfig:
        return LoadConfig(model=model, backend=self.backend, precision=self.precision, device=self.device,
                          runtime=self.runtime, cache_dir=cache_dir)


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


def available(routes: str | Sequence[str | Route]) -> list[tuple[Route, str | None]]:
    """Each route with None if it runs here, else the reason it is skipped."""
    return [(r, problem(r)) for r in parse_routes(routes)]
