"""Which ONNX Runtime GenAI providers run here: the installed flavour, device spellings, a session opened on a
three-node model (the honest test), and what to install when a device is missing."""

from __future__ import annotations

import json
import sys
import tempfile
from functools import cache
from pathlib import Path

from ...errors import UnknownChoiceError
from ...machine import installed_version
from ...procs import shell_commands

# Device (as users spell it, like the other backends) -> ONNX Runtime GenAI provider name.
PROVIDERS = {"CPU": "cpu", "DML": "dml", "CUDA": "cuda"}
# The three pip distributions that all ship the `onnxruntime_genai` module (never install two).
DISTRIBUTIONS = ("onnxruntime-genai", "onnxruntime-genai-directml", "onnxruntime-genai-cuda")
INSTALL = {
    "dml": ("onnxruntime-genai-directml", "directml.txt",
            "DirectML needs Windows 10/11 and a DirectX 12 GPU; the wheel exists for win_amd64 only"),
    "cuda": ("onnxruntime-genai-cuda", "cuda.txt", "CUDA needs an NVIDIA GPU, its driver and the CUDA 12 runtime"),
}


def genai_distribution() -> tuple[str, str] | None:
    """(distribution, version) of the installed onnxruntime-genai flavour, or None."""
    return next(((dist, found) for dist in DISTRIBUTIONS if (found := installed_version(dist))), None)


def normalize_device(device: str) -> str:
    """'dml', 'Dml' and 'DML' all mean DirectML; raise with the valid spellings otherwise."""
    if isinstance(device, str) and device.upper() in PROVIDERS:
        return device.upper()
    raise UnknownChoiceError("device for backend 'ortgenai'", device, PROVIDERS,
                             hint="(lower case works too: 'cpu', 'dml', 'cuda'.)")



def _probe_dir(root: Path) -> Path:
    """A model of three ONNX nodes with no layers: enough for og.Model to open a session on a provider."""
    import onnx
    from onnx import TensorProto, helper

    vocab = 4
    graph = helper.make_graph(
        [helper.make_node("Cast", ["input_ids"], ["ids_f"], to=TensorProto.FLOAT),
         helper.make_node("Unsqueeze", ["ids_f", "axis"], ["ids_u"]),
         helper.make_node("Expand", ["ids_u", "shape"], ["logits"])],
        "phi3kit-probe",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", vocab])],
        [helper.make_tensor("axis", TensorProto.INT64, [1], [2]),
         helper.make_tensor("shape", TensorProto.INT64, [3], [1, 1, vocab])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(root / "model.onnx"))
    decoder = {"filename": "model.onnx", "head_size": 16, "hidden_size": 16, "num_attention_heads": 1,
               "num_key_value_heads": 1, "num_hidden_layers": 0, "session_options": {"provider_options": []},
               "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                          "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
               "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                           "present_value_names": "present.%d.value"}}
    config = {"model": {"type": "phi3", "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 0,
                        "context_length": 8, "vocab_size": vocab, "decoder": decoder},
              "search": {"max_length": 8}}
    (root / "genai_config.json").write_text(json.dumps(config))
    return root


@cache
def probe(provider: str) -> str | None:
    """None if `provider` can open a session here, else the runtime's own error message.

    `og.is_dml_available()` and friends report how the package was compiled (here they say
    True for providers this build then refuses), so the honest test is to open a session.
    """
    import onnxruntime_genai as og

    with tempfile.TemporaryDirectory(prefix="phi3kit-probe-") as tmp:
        config = og.Config(str(_probe_dir(Path(tmp))))
        config.clear_providers()
        if provider != "cpu":
            config.append_provider(provider)
        try:
            og.Model(config)
        except Exception as exc:  # noqa: BLE001 - any failure means "cannot run here"; the message says why
            return str(exc).strip()
    return None


def unavailable_message(device: str, reason: str) -> str:
    """What is missing for `device`, the package that provides it, and the explicit way out."""
    package, requirements, needs = INSTALL[PROVIDERS[device]]
    dist = genai_distribution()
    installed = dist[0] if dist else "none"
    if installed == package:
        fix = f"{package} is installed, so the device or its driver is missing: {needs}."
    elif device == "DML" and sys.platform != "win32":
        fix = (f"DirectML is Windows-only: on Windows, pip install -r requirements/{requirements} installs "
               f"{package}. Here, use device='CUDA' on an NVIDIA GPU, or the CPU.")
    else:  # every flavour and its onnxruntime out first: they ship the same modules
        others = [*DISTRIBUTIONS, "onnxruntime", "onnxruntime-directml", "onnxruntime-gpu"]
        req = f"requirements\\{requirements}" if sys.platform == "win32" else f"requirements/{requirements}"
        fix = (f"Install {package} ({needs}): "
               + shell_commands([["-m", "pip", "uninstall", "-y", *others], ["-m", "pip", "install", "-r", req]])
               + " (one onnxruntime-genai flavour at a time: they ship the same module).")
    reason = reason.rstrip(".") + "." if reason else "no session could be opened."
    return (f"Device {device!r} is not available to the ortgenai backend here (installed: {installed}). "
            f"ONNX Runtime GenAI said: {reason} {fix} To run on the CPU instead, pass device='CPU', "
            f"or fallback_to_cpu=True to keep the {PROVIDERS[device]} build and run it on the CPU.")
