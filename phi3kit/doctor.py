"""`phi3kit doctor`: what this machine has, and what the kit can run on it."""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version

import psutil

LIBRARIES = ("phi3kit", "torch", "transformers", "openvino", "openvino-genai", "optimum-intel", "nncf",
             "onnxruntime-genai", "onnxruntime-genai-directml", "onnxruntime-genai-cuda",
             "intel-npu-acceleration-library")


@dataclass
class Report:
    """Rows of (section, item, value); prints as a table, renders as HTML in notebooks."""

    rows: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, section: str, item: str, value: object) -> None:
        self.rows.append((section, item, str(value)))

    def get(self, item: str) -> str | None:
        return next((v for _, i, v in self.rows if i == item), None)

    def __str__(self) -> str:
        w = [max(len(r[k]) for r in self.rows) for k in range(2)]
        return "\n".join(f"{s:<{w[0]}}  {i:<{w[1]}}  {v}" for s, i, v in self.rows)

    def _repr_html_(self) -> str:
        body = "".join(
            f"<tr><td>{s}</td><th style='text-align:left'>{i}</th><td>{v}</td></tr>" for s, i, v in self.rows
        )
        return f"<table><tr><th>section</th><th>item</th><th>value</th></tr>{body}</table>"


def _version(pkg: str) -> str:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return "not installed"


def doctor() -> Report:
    r = Report()
    r.add("system", "OS", f"{platform.system()} {platform.release()} ({platform.machine()})")
    r.add("system", "Python", sys.version.split()[0])
    r.add("system", "CPU", platform.processor() or platform.machine())
    r.add("system", "cores", f"{psutil.cpu_count(logical=False)} physical / {psutil.cpu_count()} logical")
    mem = psutil.virtual_memory()
    r.add("system", "RAM", f"{mem.total / 2**30:.1f} GiB total, {mem.available / 2**30:.1f} GiB available")
    for lib in LIBRARIES:
        r.add("libraries", lib, _version(lib))
    try:
        from .devices import openvino_device_info

        for d in openvino_device_info():
            r.add("OpenVINO devices", d["device"], d["name"] + (f" (driver {d['driver']})" if "driver" in d else ""))
    except ImportError:
        r.add("OpenVINO devices", "-", "openvino is not installed")
    return r
