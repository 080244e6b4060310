"""What accelerators each runtime can see, and what to do when one is missing."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

# Why a device is usually missing, and the fix, per OpenVINO device family.
HINTS = {
    "GPU": "Intel GPU needs the Intel graphics compute runtime (OpenCL, libOpenCL.so.1 on Linux; "
    "the Arc/Iris Xe driver on Windows).",
    "NPU": "Intel NPU needs a Core Ultra CPU and the Intel NPU driver (Windows: Device Manager > "
    "Neural processors; Linux: the linux-npu-driver package, then add your user to the 'render' group).",
}


@lru_cache(maxsize=1)
def core() -> Any:
    """One OpenVINO Core per process (creating one loads every device plugin)."""
    import openvino as ov

    return ov.Core()


def openvino_devices() -> list[str]:
    """Devices OpenVINO reports here, e.g. ['CPU', 'GPU', 'NPU'], plus the AUTO plugin."""
    return [*core().available_devices, "AUTO"]


def openvino_device_info() -> list[dict[str, str]]:
    """Name, full name and driver version (where the plugin reports one) of each device."""
    ov = core()
    rows = []
    for dev in ov.available_devices:
        row = {"device": dev, "name": str(ov.get_property(dev, "FULL_DEVICE_NAME"))}
        for prop in ("GPU_DRIVER_VERSION", "NPU_DRIVER_VERSION"):
            try:
                row["driver"] = str(ov.get_property(dev, prop))
            except RuntimeError:
                continue
        rows.append(row)
    return rows


def missing_device_message(device: str, available: list[str], backend: str) -> str:
    family = device.split(".")[0].split(":")[0].upper()
    hint = HINTS.get(family, "")
    return (
        f"Device {device!r} is not available to the {backend} backend on this machine "
        f"(available: {', '.join(available)}). {hint} "
        f"To run anyway, pass device='CPU' explicitly."
    ).replace("  ", " ")
