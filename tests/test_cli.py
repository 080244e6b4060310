"""The `phi3kit` command line drives the same API."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from phi3kit.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_the_commands() -> None:
    out = subprocess.run([sys.executable, "-m", "phi3kit.cli", "--help"], capture_output=True, text=True, check=True)
    for command in ("export", "generate", "run", "doctor", "devices", "cache"):
        assert command in out.stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["generate", "hi", "--backend", "tensorrt"], "Unknown backend"),
        (["generate", "hi", "--model", "/nonexistent/folder"], "neither an existing folder nor a hub id"),
        (["generate", "hi", "--max-new-tokens", "0", "--model", "pocket", "--backend", "transformers",
          "--precision", "fp32"], "max_new_tokens must be a positive integer"),
    ],
)
def test_bad_input_exits_2_with_the_fix(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_generate_on_a_missing_npu_names_the_driver(fake_openvino, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A machine whose OpenVINO lists no NPU (faked, so this holds on an NPU laptop too): exit 2 with the fix.

    Catches: the device check skipped (the export would start), or the missing-device hint losing the NPU driver.
    """
    fake_openvino(["CPU"])
    assert main(["generate", "hi", "--device", "NPU", "--cache-dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "'NPU' is not available" in err and "NPU driver" in err and "available: CPU, AUTO" in err
    assert not (tmp_path / "c").exists()  # refused before the export


def test_generate_on_an_npu_without_its_compiler_says_update_the_driver(fake_openvino, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """The NPU is listed but its driver's compiler does not load (what an outdated driver does): exit 2, no export.

    Catches: OpenVINOBackend.check no longer probing the NPU's driver before the export.
    """
    vcl = RuntimeError("Exception from plugin_compiler_adapter.cpp:54:\nVCL compiler loading failed, aborting.\n")
    fake_openvino(["CPU", "NPU"], NPU={"NPU_COMPILER_VERSION": vcl})
    assert main(["generate", "hi", "--device", "NPU", "--cache-dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "cannot load its compiler" in err and "VCL compiler loading failed" in err and "NPU driver" in err
    assert not (tmp_path / "c").exists()


def test_generate_streams_the_pocket_answer(capsys: pytest.CaptureFixture[str]) -> None:
    from phi3kit import pocket

    qa = pocket.load_qa()[0]
    assert main(["generate", qa["question"], "--backend", "transformers", "--precision", "fp32"]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == qa["answer"] and "tokens/s" in out.err


def test_doctor_reports_devices(capsys: pytest.CaptureFixture[str]) -> None:
    """The printed device rows are OpenVINO's own list here, and the recommended notebook exists.

    Catches: a device dropped, renamed or invented on the way to the table; the NPU line claiming "not found" on
    a machine that has one (or staying silent on one without); a recommendation naming a renamed notebook.
    """
    import openvino as ov

    assert main(["doctor"]) == 0
    rows = [re.split(r"\s{2,}", line, maxsplit=2) for line in capsys.readouterr().out.splitlines()]
    devices = [(item, value) for section, item, value in (r for r in rows if len(r) == 3)
               if section == "OpenVINO devices"]
    core = ov.Core()
    listed = [(item, value) for item, value in devices if not value.startswith("not found")]
    assert [item for item, _ in listed] == core.available_devices
    for item, value in listed:
        assert value.startswith(str(core.get_property(item, "FULL_DEVICE_NAME")))
    assert (("NPU", "not found (no NPU, or no NPU driver)") in devices) == ("NPU" not in core.available_devices)
    recommended = dict((r[1], r[2]) for r in rows if len(r) == 3 and r[0] == "recommendation")
    assert recommended["notebook"].startswith("notebooks/") and (ROOT / recommended["notebook"]).is_file()
    device = recommended["route"].split(" on ")[1].split(",")[0]
    assert device in ("CPU", "CUDA") or device in core.available_devices


@pytest.mark.slow
def test_generate_ignore_eos_runs_to_max_new_tokens(capsys: pytest.CaptureFixture[str]) -> None:
    """The pocket model ends its answer with <|end|>; --ignore-eos keeps going to exactly --max-new-tokens."""
    import json

    from phi3kit import pocket

    question = pocket.load_qa()[0]["question"]
    argv = ["generate", question, "--backend", "transformers", "--precision", "fp32", "--max-new-tokens", "200",
            "--json"]
    assert main(argv) == 0
    stopped = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert main([*argv, "--ignore-eos"]) == 0
    forced = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert stopped["finish_reason"] == "stop" and stopped["new_tokens"] < 200
    assert forced["finish_reason"] == "length" and forced["new_tokens"] == 200
