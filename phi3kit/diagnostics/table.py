"""The doctor's table: the facts, the fit of each export, the libraries and the recommendation, as rows."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil

from ..machine import ISA_FLAGS, LIBRARIES, NOT_INSTALLED, library_version
from .advice import Recommendation, recommend
from .facts import DOWNLOAD_GB, NEEDS, Facts, Need
from .probes import gather


def fit(need: Need, facts: Facts) -> str:
    """Whether this machine can do one export, judged against the estimates."""
    ram = "fits" if facts.ram_total_gb >= need.export_peak_ram_gb else "too little RAM"
    if ram == "fits" and facts.ram_available_gb < need.export_peak_ram_gb:
        ram = "tight (close other programs)"
    disk = "disk ok" if facts.disk_free_gb >= need.export_disk_gb + DOWNLOAD_GB else "too little disk"
    return (f"peak RAM {need.export_peak_ram_gb:g} GB, {need.export_disk_gb:g} GB on disk (+{DOWNLOAD_GB:g} GB "
            f"download), {need.basis}: {ram}, {disk}")


@dataclass(repr=False)
class Report:
    """Rows of (section, item, value); prints as a table, renders as a DataFrame in notebooks."""

    rows: list[tuple[str, str, str]] = field(default_factory=list)
    facts: Facts | None = None
    recommendation: Recommendation | None = None

    def add(self, section: str, item: str, value: object) -> None:
        self.rows.append((section, item, str(value)))

    def get(self, item: str) -> str | None:
        return next((v for _, i, v in self.rows if i == item), None)

    def __str__(self) -> str:
        frame = self.to_frame()
        left = {c: f"{{:<{max(len(v) for v in frame[c])}}}".format for c in frame.columns}
        text = frame.to_string(index=False, header=False, formatters=left)
        return "\n".join(line.rstrip() for line in text.splitlines())

    __repr__ = __str__

    def to_dict(self) -> dict[str, Any]:
        return {"rows": [{"section": s, "item": i, "value": v} for s, i, v in self.rows],
                "facts": asdict(self.facts) if self.facts else None,
                "recommendation": {**asdict(self.recommendation), "call": self.recommendation.call}
                if self.recommendation else None}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame(self.rows, columns=["section", "item", "value"])

    def _repr_html_(self) -> str:
        return self.to_frame().style.hide(axis="index").set_properties(**{"text-align": "left"}).to_html()


def report(facts: Facts) -> Report:
    """The table `phi3kit doctor` prints, from facts."""
    r = Report(facts=facts, recommendation=recommend(facts))
    r.add("system", "OS", facts.os)
    r.add("system", "Python", sys.version.split()[0])
    r.add("system", "CPU", facts.cpu)
    r.add("system", "ISA", f"{', '.join(facts.isa) or 'none of ' + '/'.join(dict.fromkeys(ISA_FLAGS.values()))} "
                           f"(from {facts.isa_source})")
    r.add("system", "cores", f"{psutil.cpu_count(logical=False)} physical / {psutil.cpu_count()} logical")
    r.add("system", "RAM", f"{facts.ram_total_gb:.1f} GB total, {facts.ram_available_gb:.1f} GB available")
    r.add("system", "export cache", f"{facts.cache_dir} ({facts.disk_free_gb:.1f} GB free)")
    if facts.hub_cache:
        r.add("system", "hub cache", facts.hub_cache)
    if facts.windows:
        r.add("system", "long paths", {True: "enabled", False: "disabled (LongPathsEnabled=0: see the note below)",
                                       None: "unknown (registry not readable)"}[facts.long_paths])
    for need in NEEDS:
        r.add("Phi-3-mini needs (estimates)", need.precision, fit(need, facts))
    for lib in LIBRARIES:
        r.add("libraries", lib, library_version(lib))
    if facts.openvino_error:
        r.add("OpenVINO devices", "-", facts.openvino_error)
    for d in facts.openvino_devices:
        extra = [f"{k} {d[k]}" for k in ("driver", "compiler") if k in d]
        r.add("OpenVINO devices", d["device"], d["name"] + (f" ({', '.join(extra)})" if extra else ""))
    if not facts.has("NPU"):
        r.add("OpenVINO devices", "NPU", "not found (no NPU, or no NPU driver)")
    elif facts.npu_problem:
        r.add("OpenVINO devices", "NPU problem", facts.npu_problem)
    for line in facts.drivers:
        r.add("drivers", line.split(" ", 1)[0], line)
    r.add("ONNX Runtime GenAI", "package", facts.ort_flavour or NOT_INSTALLED)
    r.add("ONNX Runtime GenAI", "devices", ", ".join(facts.ort_devices) or "-")
    r.add("NVIDIA", "GPUs", ", ".join(facts.nvidia_gpus) or "none found (nvidia-smi)")
    r.add("NPU library (seed route)", "intel-npu-acceleration-library", facts.npu_library)
    rec = r.recommendation
    assert rec is not None
    r.add("recommendation", "route", f"{rec.backend} ({rec.runtime}) on {rec.device}, {rec.precision}")
    r.add("recommendation", "settings", rec.settings)
    r.add("recommendation", "why", rec.why)
    r.add("recommendation", "notebook", f"notebooks/{rec.notebook}")
    r.add("recommendation", "ready-made", rec.ready_made or "none published: the kit exports it")
    r.add("recommendation", "call", rec.call)
    for note in rec.notes:
        r.add("recommendation", "note", note)
    return r


def doctor() -> Report:
    """Gather this machine's facts and report them with a recommendation."""
    return report(gather())
