"""What the doctor decides from (`Facts`, written by hand in tests) and what Phi-3-mini needs (`NEEDS`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..devices import device_family


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
    drivers: list[str] = field(default_factory=list)  # each driver read, judged by data/drivers.yaml (with the fix)

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
