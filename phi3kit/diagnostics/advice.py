"""The route to take, a pure function of the facts (`recommend`), and the notes that come with it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .. import backends
from ..procs import shell_commands
from .facts import ASCII_HOME, LONG_PATHS_KEY, LONGEST_HUB_FILE, MAX_PATH, NEEDS, RECOMMENDED_MODEL, Facts

# Every ONNX Runtime (GenAI) distribution that one CUDA environment must not keep beside onnxruntime-gpu.
ORT_OTHERS = ("onnxruntime-genai", "onnxruntime-genai-directml", "onnxruntime", "onnxruntime-directml")


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
    from ..catalog import lookup

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
