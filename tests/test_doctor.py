"""`phi3kit doctor`: parsing canned machine facts, the recommendation table, and the real report here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from phi3kit.backends.openvino.npu import decode_compiler_version, npu_driver_problem, npu_info
from phi3kit.cli import main
from phi3kit.diagnostics import (
    MAX_PATH,
    NEEDS,
    Facts,
    capabilities_isa,
    cpu_info,
    fit,
    gather,
    isa_features,
    long_paths_enabled,
    os_description,
    recommend,
    report,
    windows_release,
)

ROOT = Path(__file__).resolve().parents[1]

# What py-cpuinfo's get_cpu_info() answers (brand and flags shortened to the interesting ones): on Linux the
# flags are /proc/cpuinfo's; on Windows they come from its CPUID table, spelled without underscores and
# without AVX-512 BF16 or AMX.
METEOR_LAKE = {"brand_raw": "Intel(R) Core(TM) Ultra 7 155H", "flags": ["fpu", "sse4_2", "avx2", "fma", "avx_vnni"]}
SAPPHIRE_RAPIDS = {"brand_raw": "Intel(R) Xeon(R) Platinum 8480+",
                   "flags": ["avx2", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile",
                             "amx_int8", "avx_vnni"]}
WINDOWS_ZEN4 = {"brand_raw": "AMD Ryzen 9 7940HS", "flags": ["avx2", "avx512f", "avx512vnni", "avx512bw"]}
OLD_PC = {"brand_raw": "Intel(R) Core(TM) i5-3470 CPU @ 3.20GHz", "flags": ["sse4_2", "avx"]}
# Arm Linux (Snapdragon X, Ampere): py-cpuinfo reports Arm features, no x86 ISA to report.
ARM = {"brand_raw": "Snapdragon(R) X Elite", "flags": ["fp", "asimd", "aes", "sha2", "crc32", "atomics", "asimddp"]}


@pytest.mark.parametrize(
    ("probe", "model", "isa"),
    [
        (METEOR_LAKE, "Intel(R) Core(TM) Ultra 7 155H", ["AVX2", "AVX-VNNI"]),
        (SAPPHIRE_RAPIDS, "Intel(R) Xeon(R) Platinum 8480+",
         ["AVX2", "AVX-VNNI", "AVX-512", "AVX-512 VNNI", "AVX-512 BF16", "AMX", "AMX-INT8", "AMX-BF16"]),
        (WINDOWS_ZEN4, "AMD Ryzen 9 7940HS", ["AVX2", "AVX-512", "AVX-512 VNNI"]),
        (OLD_PC, "Intel(R) Core(TM) i5-3470 CPU @ 3.20GHz", []),
        (ARM, "Snapdragon(R) X Elite", []),
    ],
)
def test_cpu_flags_are_read_through_py_cpuinfo(probe: dict, model: str, isa: list[str]) -> None:
    """Both spellings of a flag (Linux's and py-cpuinfo's CPUID table's) name the same ISA, once."""
    name, found, source = cpu_info(probe=lambda: probe)
    assert (name, found, source) == (model, isa, "py-cpuinfo")
    assert isa_features(set(probe["flags"])) == isa


def test_openvino_says_bf16_where_cpuid_flags_do_not() -> None:
    """Windows: py-cpuinfo's CPUID table stops short of AVX-512 BF16, so OpenVINO's capabilities fill it in."""
    core = CannedCore(["CPU"], {"OPTIMIZATION_CAPABILITIES": ["FP32", "BF16", "INT8"]})
    name, isa, source = cpu_info(core, probe=lambda: WINDOWS_ZEN4)
    assert isa[-1].startswith("BF16 compute") and "OPTIMIZATION_CAPABILITIES" in source
    assert cpu_info(core, probe=lambda: SAPPHIRE_RAPIDS)[2] == "py-cpuinfo"  # flags already say so
    no_bf16 = CannedCore(["CPU"], {"OPTIMIZATION_CAPABILITIES": ["FP32", "INT8"]})
    assert cpu_info(no_bf16, probe=lambda: WINDOWS_ZEN4)[1] == ["AVX2", "AVX-512", "AVX-512 VNNI"]


def test_openvino_capabilities_stand_in_for_flags_elsewhere() -> None:
    assert capabilities_isa(["FP32", "INT8", "BIN", "EXPORT_IMPORT"]) == ["INT8"]
    assert capabilities_isa(["FP32", "BF16", "FP16", "INT8"])[0].startswith("BF16")


class CannedCore:
    """OpenVINO's Core as an NPU laptop answers it: device list and properties, from a real report."""

    def __init__(self, devices: list[str], props: dict[str, object]) -> None:
        self.available_devices, self.props = devices, props

    def get_property(self, device: str, name: str) -> object:
        value = self.props.get(name)
        if isinstance(value, Exception):
            raise value
        if value is None:
            raise RuntimeError(f"Exception from src/inference/src/cpp/core.cpp:268:\nUnsupported property {name}\n")
        return value


# Values an Intel AI Boost NPU reported on Linux (openvino hello_query_device output).
LINUX_NPU = {"FULL_DEVICE_NAME": "Intel(R) AI Boost", "NPU_DRIVER_VERSION": 1738334590,
             "NPU_COMPILER_VERSION": 393219}


def test_npu_properties_are_decoded() -> None:
    info = npu_info(CannedCore(["CPU", "GPU", "NPU"], LINUX_NPU))
    assert info is not None
    assert (info.name, info.driver_version, info.compiler_version) == ("Intel(R) AI Boost", 1738334590, "6.3")
    assert decode_compiler_version(393219) == "6.3" and info.errors == []
    assert npu_driver_problem(info, "linux") is None
    assert npu_info(CannedCore(["CPU"], LINUX_NPU)) is None  # no NPU listed: nothing to report


def test_npu_without_its_compiler_is_a_driver_problem() -> None:
    vcl = RuntimeError("Exception from plugin_compiler_adapter.cpp:54:\nVCL compiler loading failed, aborting.\n")
    info = npu_info(CannedCore(["CPU", "NPU"], {**LINUX_NPU, "NPU_COMPILER_VERSION": vcl}))
    assert info is not None and info.compiler_version is None
    problem = npu_driver_problem(info, "linux")
    assert problem and "VCL compiler loading failed" in problem and "linux-npu-driver" in problem


@pytest.mark.parametrize(
    ("platform", "driver", "too_old"),
    [("win32", 2408, True), ("win32", 3103, True), ("win32", 3104, False), ("win32", 4512, False),
     ("linux", 1738334590, False), ("linux", 100, False)],  # Linux numbers are another encoding: not judged
)
def test_windows_npu_driver_minimum(platform: str, driver: int, too_old: bool) -> None:
    info = npu_info(CannedCore(["NPU"], {**LINUX_NPU, "NPU_DRIVER_VERSION": driver}))
    assert info is not None
    problem = npu_driver_problem(info, platform)
    assert (problem is not None) == too_old
    if too_old:
        assert problem and f"build {driver}" in problem and "32.0.100.3104" in problem and "intel.com" in problem


def facts(**kw: object) -> Facts:
    base = dict(os="Windows 11", cpu="Intel(R) Core(TM) Ultra 7 155H", isa=["AVX2", "AVX-VNNI"],
                isa_source="canned", ram_total_gb=32.0, ram_available_gb=20.0, cache_dir="C:/cache",
                disk_free_gb=200.0, openvino_devices=[{"device": "CPU", "name": "Intel(R) Core(TM) Ultra 7 155H"}],
                ort_flavour="onnxruntime-genai 0.18.0", ort_devices=["CPU"], ort_backend="ortgenai")
    base.update(kw)
    return Facts(**base)  # type: ignore[arg-type]


CPU = {"device": "CPU", "name": "Intel(R) Core(TM) Ultra 7 155H"}
GPU = {"device": "GPU", "name": "Intel(R) Arc(TM) Graphics (iGPU)", "driver": "32.0.101.6078"}
NPU = {"device": "NPU", "name": "Intel(R) AI Boost", "driver": "4512", "compiler": "7.1"}
IGPU = {"device": "GPU.0", "name": "Intel(R) Arc(TM) Graphics (iGPU)", "type": "integrated"}
ARC = {"device": "GPU.1", "name": "Intel(R) Arc(TM) A570M Graphics (dGPU)", "type": "discrete"}


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({"openvino_devices": [CPU, GPU, NPU]}, ("openvino", "NPU", "int4-cw", "npu.ipynb")),
        ({"openvino_devices": [CPU, GPU]}, ("openvino", "GPU", "int4", "openvino.ipynb")),
        ({"openvino_devices": [CPU, {**GPU, "device": "GPU.0"}]}, ("openvino", "GPU", "int4", "openvino.ipynb")),
        ({"nvidia_gpus": ["GPU 0: NVIDIA GeForce RTX 4060 Laptop GPU"]},
         ("ortgenai", "CUDA", "int4", "directml.ipynb")),
        ({"ort_devices": ["CPU", "CUDA"], "ort_flavour": "onnxruntime-genai-cuda 0.18.0"},
         ("ortgenai", "CUDA", "int4", "directml.ipynb")),
        ({}, ("openvino", "CPU", "int4", "openvino.ipynb")),
        # An NPU the driver cannot drive yet is not recommended: the next best device is, with the fix.
        ({"openvino_devices": [CPU, GPU, NPU], "npu_problem": "The NPU driver is too old"},
         ("openvino", "GPU", "int4", "openvino.ipynb")),
        ({"openvino_devices": [CPU, NPU], "npu_problem": "The NPU driver is too old"},
         ("openvino", "CPU", "int4", "openvino.ipynb")),
        # An iGPU and an Arc dGPU: OpenVINO lists GPU.0 and GPU.1; the discrete one is the one to use.
        ({"openvino_devices": [CPU, IGPU, ARC]}, ("openvino", "GPU.1", "int4", "openvino.ipynb")),
        ({"openvino_devices": [CPU, {**IGPU, "type": ""}, {**ARC, "type": ""}]},
         ("openvino", "GPU", "int4", "openvino.ipynb")),
        # DirectML opens a session (Windows, the DirectML build): it was never recommended.
        ({"ort_devices": ["CPU", "DML"], "ort_flavour": "onnxruntime-genai-directml 0.13.1", "platform": "win32"},
         ("ortgenai", "DML", "int4", "directml.ipynb")),
    ],
)
def test_recommendation_table(kw: dict[str, object], expected: tuple[str, str, str, str]) -> None:
    rec = recommend(facts(**kw))
    assert (rec.backend, rec.device, rec.precision, rec.notebook) == expected
    if rec.device == "NPU":
        assert "channel-wise (group size -1), ratio 1.0" in rec.settings and "npu_preset" in rec.call
    if kw.get("npu_problem"):
        assert any("driver is too old" in n for n in rec.notes)
    if rec.device == "CUDA" and "cuda" not in str(kw.get("ort_flavour", "")):
        assert any("onnxruntime-genai-cuda" in n for n in rec.notes)


def test_small_laptops_are_warned_about_the_export() -> None:
    rec = recommend(facts(ram_total_gb=8.0, ram_available_gb=5.0))
    assert rec.device == "CPU" and any("11.3 GB" in n for n in rec.notes)
    assert any("Use the ready-made folder below (no export)" in n for n in rec.notes)
    notes = recommend(facts()).notes  # a big machine: no warning, only where the ready-made folder is
    assert len(notes) == 1 and notes[0].startswith("Ready-made for this route: OpenVINO/Phi-3-mini-4k-instruct-int4")


def test_needs_are_judged_against_ram_and_disk() -> None:
    seed = NEEDS[0]
    assert seed.basis == "measured" and seed.export_peak_ram_gb == pytest.approx(11.25, abs=0.1)
    assert all(n.basis == "estimate" for n in NEEDS[1:])
    assert fit(seed, facts()).endswith("fits, disk ok")
    assert "too little RAM" in fit(seed, facts(ram_total_gb=8.0))
    assert "tight" in fit(seed, facts(ram_available_gb=6.0))
    assert "too little disk" in fit(seed, facts(disk_free_gb=5.0))


def test_report_renders_as_text_json_and_a_dataframe() -> None:
    r = report(facts(openvino_devices=[CPU, GPU, NPU]))
    text = str(r)
    assert "Intel(R) AI Boost (driver 4512, compiler 7.1)" in text and "Phi-3-mini needs (estimates)" in text
    assert r.get("notebook") == "notebooks/npu.ipynb" and repr(r) == text
    data = json.loads(r.to_json())
    assert data["recommendation"]["device"] == "NPU" and "npu_preset" in data["recommendation"]["call"]
    assert data["facts"]["isa"] == ["AVX2", "AVX-VNNI"] and len(data["rows"]) == len(r.rows)
    frame = r.to_frame()
    assert list(frame.columns) == ["section", "item", "value"] and len(frame) == len(r.rows)
    html = r._repr_html_()
    assert "<table" in html and "Intel(R) AI Boost" in html and "recommendation" in html


# doctor's ISA names -> the same feature in numpy's own CPU dispatch table (cpuid + OS support, not /proc/cpuinfo)
NUMPY_FEATURE = {"AVX2": "AVX2", "AVX-512": "AVX512F", "AVX-512 VNNI": "AVX512VNNI", "AVX-512 BF16": "AVX512BF16"}


def test_this_machines_facts_agree_with_openvino_and_numpy() -> None:
    """The real probe here, checked against what the libraries report themselves: no NPU, GPU or ISA is assumed.

    Catches: device rows that drift from OpenVINO's list (a device dropped, renamed or invented), an NPU row
    without its driver/compiler, ISA flags misread from /proc/cpuinfo (wrong line, wrong processor), a
    recommendation for a device the machine lacks, or one naming a notebook that does not exist.
    """
    import openvino as ov
    from numpy._core._multiarray_umath import __cpu_features__

    from phi3kit.backends.openvino.npu_library import NPULibraryUnavailableError, import_library

    f = gather()
    core = ov.Core()
    assert [d["device"] for d in f.openvino_devices] == core.available_devices
    for row in f.openvino_devices:
        assert row["name"] == str(core.get_property(row["device"], "FULL_DEVICE_NAME"))
    assert f.has("NPU") == ("NPU" in core.available_devices)
    info = npu_info(core)
    if info is not None:  # an NPU laptop: its row carries what npu_info reads
        npu = next(d for d in f.openvino_devices if d["device"] == "NPU")
        assert (npu["driver"], npu["compiler"]) == (str(info.driver_version), str(info.compiler_version))
    for name, feature in NUMPY_FEATURE.items():
        assert (name in f.isa) == bool(__cpu_features__.get(feature, False)), (name, f.isa)
    if sys.platform.startswith("linux"):
        assert f.isa_source.startswith("py-cpuinfo") and f.cpu  # "unknown" would mean the probe broke
    assert f.ram_total_gb >= f.ram_available_gb > 0 and f.disk_free_gb > 0
    try:
        import_library()
        assert "importable; NPU" in f.npu_library, f.npu_library
    except NPULibraryUnavailableError as exc:
        assert f.npu_library == f"not importable: {exc}"
    rec = recommend(f)
    if rec.device in ("NPU", "GPU"):
        assert f.has(rec.device) and rec.backend == "openvino"
    elif rec.device == "CUDA":
        assert f.nvidia_gpus or "CUDA" in f.ort_devices
    else:
        assert rec.device == "CPU" and not f.has("GPU") and not (f.has("NPU") and not f.npu_problem)
    assert (ROOT / "notebooks" / rec.notebook).is_file()


CORE_ULTRA = ["CPU", "GPU", "NPU"]


def canned_machine(monkeypatch: pytest.MonkeyPatch, fake_openvino, devices, **changes) -> None:  # type: ignore[no-untyped-def]
    """gather() on another machine: its OpenVINO devices, a Core Ultra's CPU probe, no NVIDIA GPU or CUDA."""
    doctor = sys.modules[gather.__module__]  # the module (phi3kit.doctor is also the name of a function)

    fake_openvino(devices, **changes)
    monkeypatch.setattr(doctor, "cpu_info", lambda core=None: ("Intel(R) Core(TM) Ultra 7 155H",
                                                               ["AVX2", "AVX-VNNI"], "canned"))
    monkeypatch.setattr(doctor, "_nvidia_gpus", lambda: [])

    def ort(facts: Facts) -> None:  # a CUDA build of ONNX Runtime GenAI here would outrank the CPU route
        facts.ort_flavour, facts.ort_devices, facts.ort_backend = "onnxruntime-genai 0.18.0", ["CPU"], "ortgenai"

    monkeypatch.setattr(doctor, "_ort", ort)


def test_gather_on_an_npu_laptop(monkeypatch: pytest.MonkeyPatch, fake_openvino) -> None:  # type: ignore[no-untyped-def]
    """A Core Ultra with GPU and NPU: the rows, the NPU's driver and compiler, and the NPU route.

    Catches: gather() reading devices from somewhere other than OpenVINO's list, the NPU row losing its
    driver/compiler (npu_info not wired in), or the recommendation ignoring an NPU that is there.
    """
    canned_machine(monkeypatch, fake_openvino, CORE_ULTRA)
    f = gather()
    assert [d["device"] for d in f.openvino_devices] == ["CPU", "GPU", "NPU"]
    assert f.openvino_devices[1]["driver"] == "32.0.101.6078"
    npu = f.openvino_devices[2]
    assert (npu["name"], npu["driver"], npu["compiler"]) == ("Intel(R) AI Boost", "1738334590", "6.3")
    assert f.npu_problem == "" and f.isa == ["AVX2", "AVX-VNNI"]
    r = report(f)
    assert r.get("NPU") == "Intel(R) AI Boost (driver 1738334590, compiler 6.3)"
    assert r.get("notebook") == "notebooks/npu.ipynb" and (ROOT / "notebooks" / "npu.ipynb").is_file()


def test_gather_on_an_npu_without_its_compiler(monkeypatch: pytest.MonkeyPatch, fake_openvino) -> None:  # type: ignore[no-untyped-def]
    """The NPU is listed but its driver cannot compile: reported with the fix, and the GPU recommended instead."""
    vcl = RuntimeError("Exception from plugin_compiler_adapter.cpp:54:\nVCL compiler loading failed, aborting.\n")
    canned_machine(monkeypatch, fake_openvino, CORE_ULTRA, NPU={"NPU_COMPILER_VERSION": vcl})
    f = gather()
    assert "VCL compiler loading failed" in f.npu_problem
    r = report(f)
    assert "VCL compiler loading failed" in (r.get("NPU problem") or "")
    assert r.recommendation is not None and r.recommendation.device == "GPU"


def test_gather_on_a_cpu_only_machine(monkeypatch: pytest.MonkeyPatch, fake_openvino) -> None:  # type: ignore[no-untyped-def]
    """No NPU listed (whatever this machine has): the report says so and recommends the CPU route."""
    canned_machine(monkeypatch, fake_openvino, ["CPU"])
    f = gather()
    assert not f.has("NPU") and not f.has("GPU")
    r = report(f)
    assert r.get("NPU") == "not found (no NPU, or no NPU driver)"
    assert r.recommendation is not None and (r.recommendation.device, r.recommendation.notebook) == \
        ("CPU", "openvino.ipynb")


def test_cli_doctor_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"rows", "facts", "recommendation"} <= set(data)
    assert any(row["section"] == "OpenVINO devices" and row["item"] == "CPU" for row in data["rows"])
    assert data["recommendation"]["backend"] in ("openvino", "ortgenai")


# --- Windows: device families, DirectML, PowerShell advice, Windows 11, non-ASCII and long paths ------------
IGPU_ARC_LAPTOP = {
    "CPU": {"FULL_DEVICE_NAME": "Intel(R) Core(TM) Ultra 7 155H"},
    "GPU.0": {"FULL_DEVICE_NAME": "Intel(R) Arc(TM) Graphics (iGPU)", "DEVICE_TYPE": "Type.INTEGRATED"},
    "GPU.1": {"FULL_DEVICE_NAME": "Intel(R) Arc(TM) A570M Graphics (dGPU)", "DEVICE_TYPE": "Type.DISCRETE"},
}


def test_a_gpu_family_is_accepted_where_openvino_lists_gpu_0_and_gpu_1(monkeypatch: pytest.MonkeyPatch,
                                                                        fake_openvino) -> None:  # type: ignore[no-untyped-def]
    """An iGPU + Arc dGPU laptop lists GPU.0 and GPU.1; the exact match rejected device 'GPU', which the doctor
    recommended and OpenVINO itself accepts (its first GPU). Catches: the device check, the bench's route
    check or the doctor's device test going back to exact names; an index that is not there being accepted."""
    import phi3kit as kit
    from phi3kit import backends
    from phi3kit.backends.openvino.devices import device_available, openvino_devices
    from phi3kit.bench.routes import Route, problem
    from phi3kit.devices import device_family
    from phi3kit.errors import DeviceNotFoundError

    canned_machine(monkeypatch, fake_openvino, IGPU_ARC_LAPTOP)
    assert openvino_devices() == ["CPU", "GPU", "GPU.0", "GPU.1", "AUTO"]
    openvino = backends.get("openvino")
    for device in ("GPU", "GPU.0", "GPU.1", "CPU", "AUTO"):
        openvino.check(kit.LoadConfig("pocket", "openvino", "int4", device))
    for device in ("GPU.2", "NPU"):
        with pytest.raises(DeviceNotFoundError):
            openvino.check(kit.LoadConfig("pocket", "openvino", "int4", device))
    assert problem(Route("openvino", "int4", device="GPU")) is None
    assert device_family("gpu.1") == "GPU" and device_family("AUTO:GPU.1,CPU") == "AUTO"
    assert device_available("GPU", ["CPU", "GPU.0"]) and not device_available("NPU", ["CPU", "GPU.0"])

    f = gather()
    assert f.has("GPU") and [d.get("type") for d in f.openvino_devices] == [None, "integrated", "discrete"]
    rec = report(f).recommendation
    assert rec is not None and rec.device == "GPU.1"
    openvino.check(kit.LoadConfig("pocket", "openvino", rec.precision, rec.device))  # the kit takes its own advice


def win(**kw: object) -> Facts:
    return facts(platform="win32", python="C:\\Users\\Ana\\phi3kit\\.venv\\Scripts\\python.exe", **kw)


def test_cuda_advice_removes_the_directml_pair_in_powershell_form() -> None:
    """The CUDA advice left onnxruntime-directml beside onnxruntime-gpu and joined commands with `&&`, a syntax
    error in Windows PowerShell 5.1. Catches: a flavour or runtime left installed, `&&` or a bare `pip` on
    Windows, a POSIX path to the requirements file there."""
    nvidia = {"nvidia_gpus": ["GPU 0: NVIDIA GeForce RTX 4060 Laptop GPU"],
              "ort_flavour": "onnxruntime-genai-directml 0.13.1", "ort_devices": ["CPU", "DML"]}
    rec = recommend(win(**nvidia))
    [note] = [n for n in rec.notes if "CUDA build" in n]
    assert ('& "C:\\Users\\Ana\\phi3kit\\.venv\\Scripts\\python.exe" -m pip uninstall -y onnxruntime-genai '
            "onnxruntime-genai-directml onnxruntime onnxruntime-directml; ") in note
    assert note.endswith('-m pip install -r requirements\\cuda.txt') and "&&" not in note
    assert "device='DML'" in " ".join(rec.notes)  # DirectML works meanwhile
    linux = [n for n in recommend(facts(**nvidia, platform="linux", python="/venv/bin/python")).notes
             if "CUDA build" in n]
    assert linux[0].endswith("onnxruntime-directml && /venv/bin/python -m pip install -r requirements/cuda.txt")


@pytest.mark.parametrize(("release", "version", "build", "want"), [
    ("10", "10.0.22631", None, "11"), ("10", "10.0.26100", 26100, "11"), ("10", "10.0.19045", None, "10"),
    ("11", "10.0.26100", 26100, "11"), ("10", "", None, "10")])
def test_windows_11_is_named(release: str, version: str, build: int | None, want: str) -> None:
    """platform.release() says "10" on Windows 11 (Python 3.11). Catches: the build number (>= 22000) ignored."""
    assert windows_release(release, version, build) == want


def test_os_description() -> None:
    assert os_description("Windows", "10", "10.0.22631", "AMD64", 22631) == "Windows 11 (build 22631, AMD64)"
    assert os_description("Windows", "10", "10.0.19045", "ARM64") == "Windows 10 (build 10.0.19045, ARM64)"
    assert os_description("Linux", "6.8.0", "#1 SMP", "x86_64") == "Linux 6.8.0 (x86_64)"


@pytest.mark.parametrize("user", ["Hélène", "张伟"])
def test_non_ascii_user_folders_are_flagged_with_the_powershell_fix(user: str) -> None:
    """Native loaders fail below C:\\Users\\Hélène (ONNX Runtime GenAI, OpenVINO's CACHE_DIR); the doctor said
    nothing. Catches: a cache path left unchecked, advice in a POSIX shell's form, or the note on ASCII paths."""
    home = f"C:\\Users\\{user}"
    rec = recommend(win(cache_dir=f"{home}\\AppData\\Local\\phi3kit\\Cache",
                        hub_cache=f"{home}\\.cache\\huggingface\\hub"))
    [note] = [n for n in rec.notes if "Non-ASCII" in n]
    for part in ("PHI3KIT_CACHE", "CACHE_DIR", "HF_HOME", f"{home}\\AppData", "onnxruntime-genai#1262",
                 '$env:PHI3KIT_CACHE="C:\\phi3kit\\cache"; $env:HF_HOME="C:\\phi3kit\\hf"',
                 '[Environment]::SetEnvironmentVariable("HF_HOME", "C:\\phi3kit\\hf", "User")'):
        assert part in note
    assert "export " not in note and "&&" not in note
    only_hub = recommend(win(cache_dir="C:\\phi3kit\\cache", hub_cache=f"{home}\\.cache\\huggingface\\hub"))
    assert any("Non-ASCII" in n and "HF_HOME" in n and "kit's cache (" not in n for n in only_hub.notes)
    assert not any("Non-ASCII" in n for n in recommend(win(cache_dir="C:\\Users\\Ana\\cache")).notes)


class FakeWinreg:
    """winreg as a Windows machine answers it: LongPathsEnabled's value, its absence, or a refusal."""

    HKEY_LOCAL_MACHINE = object()

    def __init__(self, value: object) -> None:
        self.value, self.opened = value, []

    def OpenKey(self, root: object, path: str):  # type: ignore[no-untyped-def]  # noqa: N802 - winreg's name
        import contextlib

        assert root is self.HKEY_LOCAL_MACHINE
        self.opened.append(path)
        if isinstance(self.value, Exception):
            raise self.value
        return contextlib.nullcontext(path)

    def QueryValueEx(self, key: str, name: str) -> tuple[object, int]:  # noqa: N802 - winreg's name
        assert name == "LongPathsEnabled"
        return self.value, 4  # REG_DWORD


@pytest.mark.parametrize(("value", "want"), [(0, False), (1, True), (FileNotFoundError(2, "absent"), False),
                                             (PermissionError(5, "denied"), None)])
def test_long_paths_are_read_from_the_registry(value: object, want: bool | None) -> None:
    """Catches: the wrong key or value name, a missing value (the default: off) read as on, and a registry
    refusal read as off."""
    reg = FakeWinreg(value)
    assert long_paths_enabled(reg, "win32") is want
    assert reg.opened == ["SYSTEM\\CurrentControlSet\\Control\\FileSystem"]
    assert long_paths_enabled(FakeWinreg(0), "linux") is None


def test_long_paths_off_is_a_note_with_the_fix() -> None:
    """Microsoft's Phi-3 ONNX snapshot path outgrows MAX_PATH under a 15-character user name."""
    hub = "C:\\Users\\Alexandra.Popesc\\.cache\\huggingface\\hub"
    rec = recommend(win(long_paths=False, hub_cache=hub))
    [note] = [n for n in rec.notes if "long paths are off" in n]
    longest = int(note.split("under this hub cache is ")[1].split(".")[0])
    assert longest > MAX_PATH
    assert ('New-ItemProperty -Path "HKLM:\\SYSTEM\\CurrentControlSet\\Control\\FileSystem" -Name LongPathsEnabled '
            "-Value 1 -PropertyType DWORD -Force") in note
    assert not any("long paths" in n for n in recommend(win(long_paths=True, hub_cache=hub)).notes)
    assert report(win(long_paths=False, hub_cache=hub)).get("long paths").startswith("disabled")


def test_doctor_shows_each_driver_judged_by_the_data_file(monkeypatch: pytest.MonkeyPatch, fake_openvino) -> None:  # type: ignore[no-untyped-def]
    """Catches: the doctor no longer reading drivers through data/drivers.yaml (phi3kit.drivers.verdicts)."""
    canned_machine(monkeypatch, fake_openvino, CORE_ULTRA)
    f = gather()
    assert any(line.startswith("GPU driver 32.0.101.6078") for line in f.drivers)
    assert any(line.startswith("NPU driver 1738334590") for line in f.drivers)
    assert ("drivers", "GPU", next(x for x in f.drivers if x.startswith("GPU"))) in report(f).rows
