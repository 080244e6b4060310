"""Device names as users spell them: the family a device belongs to ('GPU.1' is a GPU).

What each runtime can see lives in its backend (phi3kit/backends/<name>/), which asks its runtime.
"""

from __future__ import annotations


def device_family(device: str) -> str:
    """The device's family: 'GPU.1' -> 'GPU', 'npu' -> 'NPU', 'AUTO:GPU,CPU' -> 'AUTO'."""
    return device.split(":")[0].split(".")[0].strip().upper()
