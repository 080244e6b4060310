"""What accelerators OpenVINO can see, what it calls them, and what to do when one is missing."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from ...devices import device_family

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


def with_families(devices: list[str]) -> list[str]:
    """`devices` plus the bare family name of indexed ones, which OpenVINO also accepts: a laptop with an
    iGPU and an Arc dGPU reports ['CPU', 'GPU.0', 'GPU.1'], and device 'GPU' means its first GPU (GPU.0)."""
    out: list[str] = []
    for dev in devices:
        family = device_family(dev)
        if dev != family and "." in dev and family not in devices and family not in out:
            out.append(family)
        if dev not in out:
            out.append(dev)
    return out


def device_available(device: str, available: list[str]) -> bool:
    """Whether `device` names one of `available`: exactly, or as the family of an indexed device ('GPU')."""
    return device in with_families(available)


def openvino_devices() -> list[str]:
    """Devices OpenVINO accepts here, e.g. ['CPU', 'GPU', 'NPU'] (['CPU', 'GPU', 'GPU.0', 'GPU.1'] with two
    GPUs: 'GPU' is the first), plus the AUTO plugin."""
    return with_families([*core().available_devices, "AUTO"])


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
        if device_family(dev) == "GPU":
            try:  # Type.DISCRETE / Type.INTEGRATED: which of an iGPU + dGPU laptop's two GPUs is the Arc card
                row["type"] = str(ov.get_property(dev, "DEVICE_TYPE")).rsplit(".", 1)[-1].lower()
            except RuntimeError:
                pass
        rows.append(row)
    return rows


def missing_device_message(device: str, available: list[str], backend: str) -> str:
    family = device_family(device)
    hint = HINTS.get(family, "")
    return (
        f"Device {device!r} is not available to the {backend} backend on this machine "
        f"(available: {', '.join(available)}). {hint} "
        f"To run anyway, pass device='CPU' explicitly."
    ).replace("  ", " ")


def execution_devices(device: str) -> list[str]:
    """The devices OpenVINO really runs a model on when asked for `device`: EXECUTION_DEVICES of a compiled probe.

    LLMPipeline exposes no compiled model, so a one-layer model is compiled on the same device string and asked.
    An explicit device ('GPU', 'NPU') compiles there or fails, never falls back; 'AUTO' answers what it picked.
    """
    import openvino as ov
    from openvino import opset13 as ops

    param = ops.parameter([1, 8], ov.Type.f32)
    probe = ov.Model([ops.relu(param)], [param], "phi3kit-device-probe")
    return [str(d) for d in core().compile_model(probe, device).get_property("EXECUTION_DEVICES")]
