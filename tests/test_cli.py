"""The `phi3kit` command line drives the same API."""

from __future__ import annotations

import subprocess
import sys

import pytest

from phi3kit.cli import main


def test_help_lists_the_commands() -> None:
    out = subprocess.run([sys.executable, "-m", "phi3kit.cli", "--help"], capture_output=True, text=True, check=True)
    for command in ("export", "generate", "run", "doctor", "devices", "cache"):
        assert command in out.stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["generate", "hi", "--backend", "tensorrt"], "Unknown backend"),
        (["generate", "hi", "--device", "NPU"], "NPU driver"),
        (["generate", "hi", "--model", "/nonexistent/folder"], "neither an existing folder nor a hub id"),
        (["generate", "hi", "--max-new-tokens", "0", "--model", "pocket", "--backend", "transformers",
          "--precision", "fp32"], "max_new_tokens must be a positive integer"),
    ],
)
def test_bad_input_exits_2_with_the_fix(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_generate_streams_the_pocket_answer(capsys: pytest.CaptureFixture[str]) -> None:
    from phi3kit import pocket

    qa = pocket.load_qa()[0]
    assert main(["generate", qa["question"], "--backend", "transformers", "--precision", "fp32"]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == qa["answer"] and "tokens/s" in out.err


def test_doctor_reports_devices(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "OpenVINO devices" in out and "openvino" in out

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
