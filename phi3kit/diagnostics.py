"""`phi3kit doctor` (`kit.doctor()`): what this machine has, what Phi-3-mini needs, and which route to take.

Facts are gathered once (`gather()`), then turned into a recommendation by a pure function
(`recommend()`), so the advice can be tested against any machine's facts without that machine.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from . import backends
from .devices import device_family
from .machine import ISA_FLAGS, LIBRARIES, capabilities_isa, cpu_info, isa_features, library_version  # noqa: F401
from .procs import shell_commands
from .safefs import free_bytes

# Every library a route may run on: the doctor's table and every benchmark's hardware record list them.
ORT_BACKEND = "ortgenai"  # the registry name of the ONNX Runtime GenAI route
ORT_FLAVOURS = ("onnxruntime-genai-cuda", "onnxruntime-genai-directml", "onnxruntime-genai")



@dataclass
class Need:
    """What one Phi-3-mini export takes. `basis` says whether it was measured or estimated."""

    precision: str
    export_peak_ram_gb: float
    export_disk_gb: float
    basis: str


# Windows without long paths refuses paths past MAX_PATH (260 characters with the terminating NUL). The longest
# file a catalog download writes below the hub cache (Microsoft's Phi-3-mini-128k CPU ONNX weights) is this path:
# 264 characters in all under C:\Users\<15 characters>\.cache\huggingface\hub.
MAX_PATH = 259
LONGEST_HUB_FILE = ("models--microsoft--Phi-3-mini-128k-instruct-onnx/snapshots/" + "0" * 40 +
                    "/cpu_and_mobile/cpu-int4-rtn-block-32-acc-level-4/"
                    "phi3-mini-128k-instruct-cpu-int4-rtn-block-32-acc-level-4.onnx.data")
LONG_PATHS_KEY = r"SYSTEM\CurrentControlSet\Control\FileSystem"
# Where the caches move when the user folder's name is not ASCII (native loaders fail below such paths).
ASCII_HOME = r"C:\phi3kit"
# Every ONNX Runtime (GenAI) distribution that one CUDA environment must not keep beside onnxruntime-gpu.
ORT_OTHERS = ("onnxruntime-genai", "onnxruntime-genai-directml", "onnxruntime", "onnxruntime-directml")

RECOMMENDED_MODEL = "phi-3-mini-4k"  # the catalog alias the recommendation's call names
# Phi-3-mini-4k-instruct (3.8B parameters). Measured (docs/compatibility.md, full-size model on a 2-core
# Linux box): the seed's int4 export peaks at 11.25 GB RSS and writes 2.78 GB. The others are
# estimates from bytes per weight: check them before promising them to a room of learners.
DOWNLOAD_GB = 7.6  # the bf16 checkpoint in the Hugging Face cache, fetched once
NEEDS = (
    Need("int4 (seed: group 128, ratio 0.6)", 11.3, 2.8, "measured"),
    Need("int4 NPU preset (channel-wise, ratio 1.0)", 11.3, 2.2, "estimate"),
    Need("int8", 12.0, 3.9, "estimate"),
    Need("fp16", 16.0, 7.7, "estimate"),
    Need("fp32", 24.0, 15.3, "estimate"),
)


@dataclass
class Facts:
    """What `recommend()` decides from; every field can be written by hand in a test."""

    os: str = ""
    cpu: str = ""
    isa: list[str] = field(default_factory=list)
    isa_source: str = ""
    ram_total_gb: float = 0.0
    ram_available_gb: float = 0.0
    cache_dir: str = ""
    disk_free_gb: float = 0.0
    openvino_devices: list[dict[str, str]] = field(default_factory=list)  # device, name, driver...
    openvino_error: str = ""
    npu_problem: str = ""
    ort_flavour: str = ""
    ort_devices: list[str] = field(default_factory=list)
    ort_backend: str = ""  # the kit's ONNX Runtime GenAI backend name, when it has one
    nvidia_gpus: list[str] = field(default_factory=list)
    npu_library: str = ""
    platform: str = ""  # sys.platform of that machine: "win32", "linux", "darwin"
    python: str = ""  # the interpreter the advice's pip commands run
    long_paths: bool | None = None  # Windows' LongPathsEnabled; None elsewhere or where unread
    hub_cache: str = ""  # the Hugging Face hub cache (HF_HOME / HF_HUB_CACHE)

    def has(self, device: str) -> bool:
        return any(device_family(d["device"]) == device for d in self.openvino_devices)

    @property
    def windows(self) -> bool:
        return self.platform == "win32"

    def gpu(self) -> str:
        """The OpenVINO GPU to use: 'GPU' (OpenVINO's first), or the discrete one of an iGPU + Arc dGPU laptop."""
        gpus = [d for d in self.openvino_devices if device_family(d["device"]) == "GPU"]
        discrete = [d["device"] for d in gpus if d.get("type") == "discrete"]
        return discrete[0] if len(gpus) > 1 and discrete else "GPU"


@dataclass
class Recommendation:
    """A route for this machine, and the one call that runs it."""

    backend: str
    runtime: str
    device: str
    precision: str
    settings: str
    notebook: str
    why: str
    notes: list[str] = field(default_factory=list)
    model: str = RECOMMENDED_MODEL
    ready_made: str = ""  # the catalog's ready-made folder for this route: no export, no PyTorch

    @property
    def call(self) -> str:
        if preset := backends.get(self.backend).preset_for(self.device):
            return (f'cfg = kit.backends.get("{self.backend}").{preset}(kit.LoadConfig("{self.model}", '
                    f'"{self.backend}", "{self.precision}", "{self.device}")); kit.Session.load(cfg)')
        return f'kit.load("{self.model}", "{self.backend}", "{self.precision}", "{self.device}")'


def with_ready_made(rec: Recommendation) -> Recommendation:
    """The recommendation with the catalog's ready-made folder for its route, when one is published."""
    from .catalog import lookup

    row = lookup(rec.model).ready_made_for(rec.backend, rec.precision, rec.device)
    if row is not None:
        rec.ready_made = row.where
        rec.settings = f"ready-made: {row.recipe} (prefer='export' for the kit's own: {rec.settings})"
        rec.notes.append(f"Ready-made for this route: {row.where} ({row.recipe}). kit.load uses it as it is: no "
                         "11 GB export, no PyTorch (requirements/lean.txt is enough).")
        if not row.verified:  # the NPU's int4-cw ids among them: say so before the learner relies on it
            rec.notes.append(f"{row.where}: {row.note or 'an unverified repo id'}; if it does, prefer='export' "
                             "builds the same precision from the checkpoint.")
    return rec


def recommend(facts: Facts) -> Recommendation:
    """The route, device and precision to start with on a machine with these facts, ready-made where published."""
    return with_ready_made(_route(facts))


def _route(facts: Facts) -> Recommendation:
    notes: list[str] = []
    low = [n for n in NEEDS[:2] if facts.ram_total_gb and facts.ram_total_gb < n.export_peak_ram_gb]
    if low:
        notes.append(f"Exporting Phi-3-mini to int4 peaks near {low[0].export_peak_ram_gb:g} GB of RAM; this machine "
                     f"has {facts.ram_total_gb:.1f} GB. Use the ready-made folder below (no export), or export on a "
                     "bigger machine and copy the folder over (`phi3kit pack`).")
    notes += machine_notes(facts)
    if facts.has("NPU"):
        if not facts.npu_problem:
            return Recommendation(
                "openvino", "genai", "NPU", "int4-cw",
                "NPU preset: int4 symmetric, channel-wise (group size -1), ratio 1.0; MAX_PROMPT_LEN 1024",
                "npu.ipynb", "An Intel NPU is present: sustained, low-power inference through OpenVINO GenAI.",
                notes)
        notes.append(f"An NPU is present but not usable yet: {facts.npu_problem}")
    dml = any(d.upper() == "DML" for d in facts.ort_devices)
    if facts.has("GPU"):
        gpu = facts.gpu()
        which = "The discrete Intel GPU" if gpu != "GPU" else "An Intel GPU"
        return Recommendation("openvino", "genai", gpu, "int4", "int4 symmetric, group size 128, ratio 0.6",
                              "openvino.ipynb", f"{which} is visible to OpenVINO: the fastest local route here.",
                              notes)
    if facts.nvidia_gpus or any(d.upper() == "CUDA" for d in facts.ort_devices):
        if "cuda" not in facts.ort_flavour:
            now = facts.ort_flavour or "the CPU build"
            notes.append(f"Install the CUDA build of ONNX Runtime GenAI (onnxruntime-genai-cuda) in place of {now}: "
                         "every flavour ships the "
                         "same module, and onnxruntime-gpu must not share an environment "
                         "with onnxruntime-directml or onnxruntime. Remove them all first, then install it: "
                         + commands(facts, ["-m", "pip", "uninstall", "-y", *ORT_OTHERS],
                                    ["-m", "pip", "install", "-r", requirement(facts, "cuda.txt")]))
            if dml:
                notes.append("Until then DirectML already runs here: device='DML'.")
        return Recommendation(facts.ort_backend or "ortgenai", "default", "CUDA", "int4", "model builder -e cuda",
                              "directml.ipynb", "An NVIDIA GPU is present: ONNX Runtime GenAI runs Phi-3 on CUDA.",
                              notes)
    if dml:
        return Recommendation(facts.ort_backend or "ortgenai", "genai", "DML", "int4", "model builder -e dml",
                              "directml.ipynb", "DirectML opens a session on this machine's GPU (Windows, the DirectML "
                              "build of ONNX Runtime GenAI): the GPU route OpenVINO does not offer here.", notes)
    return Recommendation("openvino", "genai", "CPU", "int4", "int4 symmetric, group size 128, ratio 0.6",
                          "openvino.ipynb", "No NPU or GPU the kit can use: OpenVINO GenAI int4 is the CPU default, "
                          "with the fastest prefill measured. For faster decode try precision='int4-cw' (check its "
                          "quality with `phi3kit bench`) and `phi3kit tune` (docs/benchmarks.md).", notes)


def commands(facts: Facts, *argvs: list[str]) -> str:
    """shell_commands for the machine the facts describe (its platform, its interpreter)."""
    return shell_commands(list(argvs), facts.platform, facts.python)


def requirement(facts: Facts, name: str) -> str:
    return f"requirements\\{name}" if facts.windows else f"requirements/{name}"


def machine_notes(facts: Facts) -> list[str]:
    """What this machine's paths will break, with the fix: non-ASCII folders, Windows' 260-character limit."""
    notes = []
    if not facts.windows:
        return notes
    odd = {label: path for label, path in (("the kit's cache (PHI3KIT_CACHE)", facts.cache_dir),
                                           ("the NPU's compiled-model cache (CACHE_DIR)",
                                            str(Path(facts.cache_dir) / "npu-blobs") if facts.cache_dir else ""),
                                           ("the Hugging Face cache (HF_HOME)", facts.hub_cache))
           if path and not path.isascii()}
    if odd:
        notes.append(
            "Non-ASCII characters in " + "; ".join(f"{k}: {v}" for k, v in odd.items()) + ". Native loaders fail "
            "below such folders (ONNX Runtime GenAI cannot open the model, onnxruntime-genai#1262; OpenVINO's "
            "CACHE_DIR says \"Couldn't create directory\"). Move the caches to an ASCII folder, in PowerShell: "
            f'$env:PHI3KIT_CACHE="{ASCII_HOME}\\cache"; $env:HF_HOME="{ASCII_HOME}\\hf" (this window), and '
            f'[Environment]::SetEnvironmentVariable("PHI3KIT_CACHE", "{ASCII_HOME}\\cache", "User"); '
            f'[Environment]::SetEnvironmentVariable("HF_HOME", "{ASCII_HOME}\\hf", "User") (new windows).')
    if facts.long_paths is False:
        longest = len(str(Path(facts.hub_cache or "~"))) + 1 + len(LONGEST_HUB_FILE)
        notes.append(
            f"Windows long paths are off (LongPathsEnabled=0): paths stop at {MAX_PATH} characters, and the longest "
            f"ready-made file under this hub cache is {longest}. Turn them on (PowerShell as administrator): "
            'New-ItemProperty -Path "HKLM:\\' + LONG_PATHS_KEY + '" -Name LongPathsEnabled -Value 1 '
            f'-PropertyType DWORD -Force; or use short caches: $env:HF_HOME="{ASCII_HOME}\\hf"; '
            f'$env:PHI3KIT_CACHE="{ASCII_HOME}\\cache".')
    return notes


# --- gathering facts ------------------------------------------------------------------------------
def windows_release(release: str, version: str, build: int | None = None) -> str:
    """'11' for Windows 11, which platform.release() calls '10' (Python < 3.12): its builds start at 22000."""
    if build is None:
        try:
            build = int(version.split(".")[2])
        except (IndexError, ValueError):
            return release
    return "11" if release == "10" and build >= 22000 else release


def os_description(system: str | None = None, release: str | None = None, version: str | None = None,
                   machine: str | None = None, build: int | None = None) -> str:
    """'Windows 11 (build 22631, AMD64)', 'Linux 6.8.0 (x86_64)': this machine's unless given."""
    system = platform.system() if system is None else system
    release = platform.release() if release is None else release
    machine = platform.machine() if machine is None else machine
    if system != "Windows":
        return f"{system} {release} ({machine})"
    version = platform.version() if version is None else version
    if build is None and sys.platform == "win32":
        build = sys.getwindowsversion().build  # type: ignore[attr-defined]
    name = windows_release(release, version, build)
    shown = build if build is not None else version
    return f"{system} {name} (build {shown}, {machine})"


def long_paths_enabled(registry: Any = None, platform_: str = sys.platform) -> bool | None:
    """Windows' LongPathsEnabled (HKLM\\SYSTEM\\CurrentControlSet\\Control\\FileSystem): off unless set to 1;
    None off Windows or where the registry cannot be read. `registry` replaces winreg (tests)."""
    if platform_ != "win32":
        return None
    if registry is None:
        import winreg as registry  # type: ignore[no-redef]
    try:
        with registry.OpenKey(registry.HKEY_LOCAL_MACHINE, LONG_PATHS_KEY) as key:
            value, _ = registry.QueryValueEx(key, "LongPathsEnabled")
    except FileNotFoundError:
        return False  # no value: the default, off
    except OSError:
        return None
    return bool(value)


def _hub_cache() -> str:
    try:
        from huggingface_hub import constants
    except ImportError:
        return ""
    return str(constants.HF_HUB_CACHE)


def _free_gb(path: Path) -> float:
    return free_bytes(path) / 1e9  # the cache folder may not exist yet: the disk it will live on


def _nvidia_gpus() -> list[str]:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, encoding="utf-8", errors="replace", timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.split(" (UUID")[0] for line in out.splitlines() if line.startswith("GPU ")]


def _ort(facts: Facts) -> None:
    facts.ort_flavour = next((f"{p} {v}" for p in ORT_FLAVOURS if (v := library_version(p)) != "not installed"), "")
    try:
        backend = backends.get(ORT_BACKEND)
    except Exception as exc:  # noqa: BLE001 - a report row, not a crash
        backend, facts.ort_devices = None, [f"unavailable: {exc}"]
    if backend is not None:
        facts.ort_backend = backend.name
        try:
            facts.ort_devices = list(backend.devices(backend.default_runtime()))
        except Exception as exc:  # noqa: BLE001 - a report row, not a crash
            facts.ort_devices = [f"unavailable: {exc}"]
    elif facts.ort_flavour and not facts.ort_devices:
        facts.ort_devices = ["CUDA"] if "cuda" in facts.ort_flavour else \
            ["DML"] if "directml" in facts.ort_flavour else ["CPU"]


def _openvino(facts: Facts) -> Any:
    try:
        facts.openvino_devices = backends.get("openvino").device_rows()
    except ImportError as exc:  # MissingDependencyError is one
        facts.openvino_error = f"openvino is not installed ({getattr(exc, 'name', None) or exc})"
        return None
    facts.npu_problem = next((d.pop("problem") for d in facts.openvino_devices if "problem" in d), "")
    return backends.get("openvino").cpu_probe()


def _npu_library() -> str:
    return backends.get("npu-library").status() or ""


def gather() -> Facts:
    """Everything `recommend()` and the report need, read from this machine."""
    from .cache import default_cache_dir

    mem = psutil.virtual_memory()
    cache = default_cache_dir()
    facts = Facts(os=os_description(), ram_total_gb=mem.total / 1e9, ram_available_gb=mem.available / 1e9,
                  cache_dir=str(cache), disk_free_gb=_free_gb(cache), platform=sys.platform, python=sys.executable,
                  long_paths=long_paths_enabled(), hub_cache=_hub_cache())
    core = _openvino(facts)
    facts.cpu, facts.isa, facts.isa_source = cpu_info(core)
    _ort(facts)
    facts.nvidia_gpus = _nvidia_gpus()
    facts.npu_library = _npu_library()
    return facts


# --- the report -----------------------------------------------------------------------------------
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
    r.add("ONNX Runtime GenAI", "package", facts.ort_flavour or "not installed")
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
