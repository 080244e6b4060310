"""`phi3kit check`: real pocket canaries on every installed route, the report, the room merge, and fakes at the
runtime boundary for what this machine lacks (wrong tokens, a silent CPU fallback, an old NPU driver)."""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import pytest

import phi3kit as kit
import phi3kit.checking.report
import phi3kit.checking.run
from phi3kit import backends, drivers, generate
from phi3kit.backends.base import Backend
from phi3kit.checking import canaries, read_room, room_table
from phi3kit.checking.results import MachineReport, RouteResult
from phi3kit.checking.run import check_machine, driver_table, proof
from phi3kit.cli import main

INSTALLED = ("transformers", "openvino", "ortgenai")  # the dev environment's routes
quiet = lambda m: None  # noqa: E731


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> tuple[MachineReport, Path]:
    """One real check of this machine (every installed route on the CPU), its files written."""
    out = tmp_path_factory.mktemp("check")
    return check_machine(out, devices=["CPU"], log=quiet), out


@pytest.mark.parametrize("backend", [*INSTALLED, "llamacpp"])
def test_pocket_canary_passes_on_every_installed_route(checked, backend):
    report, _ = checked
    if backend == "llamacpp" and importlib.util.find_spec("llama_cpp") is None:
        row = next(r for r in report.routes if r.backend == "llamacpp")
        assert row.status == "SKIPPED" and "not installed" in row.reason and "requirements/llamacpp.txt" in row.reason
        pytest.skip("llama-cpp-python is not installed in this environment (requirements/llamacpp.txt builds it)")
    rows = [r for r in report.routes if r.backend == backend and r.precision]
    assert rows and all(r.status == "PASS" for r in rows), [r.reason for r in rows]
    assert all("pocket answers right (exact text)" in r.reason and r.load_s is not None for r in rows)
    assert all(r.proof.lower().startswith("ran on cpu (") for r in rows), [r.proof for r in rows]  # each hook read


def test_all_pass_means_exit_0_and_the_report_files(checked):
    report, out = checked
    assert report.exit_code == 0 and not report.failed
    data = json.loads((out / f"{report.machine}.json").read_text(encoding="utf-8"))
    assert MachineReport.from_dict(data).routes == report.routes
    page = (out / f"{report.machine}.html").read_text(encoding="utf-8")
    assert "openvino/genai:int4@CPU" in page and "all routes PASS" in page
    assert not re.search(r"<(script|link|img|iframe)\b", page)  # one page that opens offline


def _stop_at_a_word(tokenizer, model_dir: Path) -> list[int]:
    """A deliberately wrong stop token on the OpenVINO route: the id of 'a', which answers contain."""
    real = REAL_STOP_IDS(tokenizer, model_dir)
    return [tokenizer.token_to_id("Ġa")] if "openvino" in str(model_dir) else real


REAL_STOP_IDS = generate.stop_token_ids


def test_a_route_that_answers_wrongly_turns_check_red(monkeypatch):
    monkeypatch.setattr(generate, "stop_token_ids", _stop_at_a_word)
    report = check_machine(routes=["openvino", "ortgenai"], devices=["CPU"], log=quiet)
    by_backend = {r.backend: r for r in report.routes if r.precision}
    assert by_backend["ortgenai"].status == "PASS"
    bad = by_backend["openvino"]
    assert bad.status == "FAIL" and report.exit_code == 1
    assert "Can you introduce yourself?" in bad.reason and "they part at character" in bad.reason


# --- fakes at the runtime boundary --------------------------------------------------------------------------------
class FakeRuntime(Backend):
    """A runtime on a machine with a GPU and an NPU: it answers (right or wrong) and says where it ran."""

    name = "fake"
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)
    default_precision: ClassVar[str] = "fp32"
    reads_checkpoint: ClassVar[bool] = True
    answers: ClassVar[str] = "right"  # or "wrong"
    ran: ClassVar[dict[str, list[str]]] = {}  # requested device -> what the runtime reports it ran on
    rows: ClassVar[list[dict[str, str]]] = []

    @classmethod
    def devices(cls, runtime: str) -> list[str]:
        return ["CPU", "GPU", "NPU"]

    @classmethod
    def device_rows(cls) -> list[dict[str, str]]:
        return cls.rows

    def __init__(self, model_dir: Path, cfg: kit.LoadConfig) -> None:
        from transformers import AutoTokenizer

        self.device, self.tok = cfg.device, AutoTokenizer.from_pretrained(model_dir)

    def stream(self, prompt_ids, gen, stop_ids) -> Iterator[tuple[int, float]]:
        from phi3kit import pocket

        prompt = self.tok.decode(prompt_ids, skip_special_tokens=True).strip()
        answer = next(x["answer"] for x in pocket.load_qa() if x["question"] == prompt)
        ids = self.tok(answer, add_special_tokens=False)["input_ids"]
        if self.answers == "wrong":  # garbage after the first words, as on a broken driver
            ids = ids[:3] + [(i + 7) % 200 + 10 for i in ids[3:]]
        for i in [*ids, stop_ids[0]][: gen.max_new_tokens]:
            yield i, 0.0

    def ran_on(self) -> list[str] | None:
        return self.ran.get(self.device, [self.device])


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setitem(backends.REGISTRY, "fake", f"{__name__}:FakeRuntime")
    monkeypatch.setattr(FakeRuntime, "answers", "right")
    monkeypatch.setattr(FakeRuntime, "ran", {})
    monkeypatch.setattr(FakeRuntime, "rows", [{"device": "NPU", "name": "Intel(R) AI Boost", "driver": "3104"}])
    return FakeRuntime


def _by_device(report: MachineReport) -> dict[str, RouteResult]:
    return {r.device: r for r in report.routes if r.backend == "fake"}


def test_fake_that_behaves_passes_on_gpu_and_npu(fake):
    report = check_machine(routes=["fake"], log=quiet, platform="win32")
    rows = _by_device(report)
    assert set(rows) == {"CPU", "GPU", "NPU"} and all(r.status == "PASS" for r in rows.values())
    assert rows["NPU"].proof == "ran on NPU" and report.exit_code == 0
    assert any(d.startswith("load ") and "reload" in d for d in rows["NPU"].details)  # the blob cache's effect


def test_wrong_tokens_fail_naming_question_expected_and_produced(fake):
    fake.answers = "wrong"
    report = check_machine(routes=["fake"], devices=["GPU"], log=quiet)
    row = _by_device(report)["GPU"]
    assert row.status == "FAIL" and report.exit_code == 1
    assert "agreement" in row.reason and "expected 'I am the pocket model" in row.reason
    assert "produced" in row.reason and "they part at character" in row.reason


def test_cpu_execution_for_an_npu_request_is_a_silent_fallback(fake):
    fake.ran = {"NPU": ["CPU"]}
    report = check_machine(routes=["fake"], devices=["NPU"], log=quiet)
    row = _by_device(report)["NPU"]
    assert row.status == "FAIL" and "asked for NPU, ran on CPU: a silent fallback" in row.reason
    assert "NPU driver" in row.reason  # the fix


def test_an_old_npu_driver_fails_the_npu_route_with_where_to_get_one(fake):
    fake.rows = [{"device": "NPU", "name": "Intel(R) AI Boost", "driver": "2408"}]
    report = check_machine(routes=["fake"], log=quiet, platform="win32")
    rows = _by_device(report)
    assert rows["NPU"].status == "FAIL" and "older than 32.0.100.3104" in rows["NPU"].reason
    assert "intel-npu-driver-windows" in rows["NPU"].reason
    assert rows["CPU"].status == rows["GPU"].status == "PASS"
    assert any(d["status"] == "too old" for d in report.drivers)


def test_openvino_npu_driver_is_judged_from_the_data_file(fake_openvino):
    fake_openvino(["CPU", "NPU"], NPU={"NPU_DRIVER_VERSION": 2408})
    rows, verdicts = driver_table("win32")
    assert any(r["backend"] == "openvino" and r["device"] == "NPU" for r in rows)
    npu = next(v for v in verdicts if v.device == "NPU")
    assert npu.status == "too old" and npu.problem and "intel-npu-driver-windows" in npu.get


def test_openvino_reads_where_a_model_really_runs(fake_openvino):
    """The OpenVINO hook's probe: an NPU request that a runtime reports on the CPU is a silent fallback."""
    from phi3kit.backends.openvino.devices import execution_devices

    assert execution_devices("CPU") == ["CPU"]  # the real OpenVINO on this machine
    assert proof("AUTO", execution_devices("AUTO"))[1].startswith("AUTO chose CPU")
    fake_openvino(["CPU", "NPU"], NPU={"EXECUTION_DEVICES": ["CPU"]})
    ok, text = proof("NPU", execution_devices("NPU"), backends.get("openvino").ran_on_source)
    assert not ok and "asked for NPU, ran on CPU (EXECUTION_DEVICES of a probe model" in text


def test_an_old_npu_driver_reported_by_openvino_fails_its_npu_route_before_loading(fake_openvino, monkeypatch):
    from phi3kit.checking import run

    fake_openvino(["CPU", "NPU"], NPU={"NPU_DRIVER_VERSION": 2408})
    monkeypatch.setattr(run.Session, "load", lambda cfg, log=None: pytest.fail("an old driver is not loaded"))
    report = check_machine(routes=["openvino"], runtimes=["genai"], devices=["NPU"], log=quiet, platform="win32")
    [row] = report.routes
    assert row.status == "FAIL" and "NPU driver 2408 is older than 32.0.100.3104" in row.reason
    assert "intel-npu-driver-windows" in row.reason and report.exit_code == 1


# --- drivers and proof, as data -------------------------------------------------------------------------------------
def test_driver_rules_from_data():
    assert drivers.judge("NPU", "3104", "win32").status == "ok"
    assert drivers.judge("NPU", "32.0.100.3053", "win32").status == "too old"
    assert drivers.judge("NPU.0", None, "win32").status == "unknown"
    assert drivers.judge("NPU", "1738334590", "linux").status == "ok"  # no Linux minimum is published
    assert drivers.judge("GPU", "32.0.101.6078", "win32").status == "ok"
    assert drivers.judge("CUDA", "555", "linux").status == "not judged"
    rule = replace(drivers.rule_for("NPU", "win32"), known_bad=("32.0.100.9999",))
    assert all(r.source.startswith("https://") and r.get.startswith("https://") for r in drivers.rules())
    assert rule.known_bad


def test_os_driver_rows_windows_and_linux(tmp_path):
    one = {"DeviceName": "Intel(R) AI Boost", "DriverVersion": "32.0.100.3104", "DeviceClass": "ComputeAccelerator"}
    assert drivers.windows_rows(one) == [{"device": "NPU", "name": "Intel(R) AI Boost", "version": "32.0.100.3104",
                                          "read_from": "Win32_PnPSignedDriver"}]
    assert [r["device"] for r in drivers.windows_rows([one, {**one, "DeviceClass": "Display"}])] == ["NPU", "GPU"]
    (tmp_path / "intel_vpu").mkdir()
    (tmp_path / "intel_vpu" / "version").write_text("1.10.0\n", encoding="utf-8")
    (tmp_path / "i915").mkdir()
    rows = drivers._linux_drivers(tmp_path)
    assert {(r["device"], r["version"]) for r in rows} == {("NPU", "1.10.0"), ("GPU", "in-kernel")}


def test_proof_of_device():
    assert proof("NPU", ["NPU"]) == (True, "ran on NPU")
    assert proof("AUTO", ["CPU"]) == (True, "AUTO chose CPU")
    assert proof("GPU.1", ["GPU.1"])[0] and proof("cuda", ["cuda:0"])[0]
    ok, text = proof("GPU", ["CPU"])
    assert not ok and "silent fallback" in text
    assert proof("GPU", None) == (True, "cannot be read: the runtime does not report where it ran")


def test_where_they_part():
    assert "at character 6" in canaries.where_they_part("Hello world", "Hello there")
    assert "at character 5" in canaries.where_they_part("Hello", "Hello, and more")


# --- the room -------------------------------------------------------------------------------------------------------
def _faked_machines(folder: Path) -> None:
    old = MachineReport("lab-07", "Windows 11", "3.12.4", "0.1.0", "Intel(R) Core(TM) Ultra 7 155H",
                        drivers=[{"device": "NPU", "version": "2408", "status": "too old", "message": "old",
                                  "get": "https://www.intel.com/content/www/us/en/download/794734/"
                                         "intel-npu-driver-windows.html"}],
                        routes=[RouteResult("openvino", "CPU", "int4", "genai", status="PASS", load_s=1.0),
                                RouteResult("openvino", "NPU", "int4-cw", "genai", status="FAIL",
                                            reason="NPU driver 2408 is older than 32.0.100.3104")])
    gpu = MachineReport("lab-12", "Windows 11", "3.12.4", "0.1.0", "Intel(R) Core(TM) Ultra 5 125U",
                        routes=[RouteResult("openvino", "CPU", "int4", "genai", status="PASS"),
                                RouteResult("openvino", "GPU", "int4", "genai", status="FAIL",
                                            reason="asked for GPU, ran on CPU: a silent fallback"),
                                RouteResult("ortgenai", "DML", "int4", "genai", status="PASS")])
    for rep in (old, gpu):
        (folder / f"{rep.machine}.json").write_text(json.dumps(rep.to_dict()), encoding="utf-8")


def test_room_table_of_three_machines(checked, tmp_path, capsys):
    report, out = checked
    (tmp_path / f"{report.machine}.json").write_bytes((out / f"{report.machine}.json").read_bytes())
    _faked_machines(tmp_path)
    table = room_table(read_room(tmp_path))
    assert list(table.index) == sorted(["lab-07", "lab-12", report.machine])
    assert table.loc["lab-07", "openvino/genai:int4-cw@NPU"] == "FAIL"
    assert "intel-npu-driver-windows" in table.loc["lab-07", "needs driver"]
    assert "silent fallback" in table.loc["lab-12", "failed"] and table.loc["lab-12", "needs driver"] == ""
    assert "ortgenai/genai:int4@CPU" in table.loc[report.machine, "ready"]
    assert table.loc["lab-12", "ortgenai/genai:int4@DML"] == "PASS"
    assert table.loc["lab-07", "ortgenai/genai:int4@DML"] == "-"  # not on that machine
    assert main(["check", "--room", str(tmp_path), "--csv", str(tmp_path / "room.csv")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"openvino/genai:int4-cw@NPU\s+FAIL\s+-\s+-", out)  # the route x machine grid
    assert "  needs driver: NPU 2408 (too old): https://www.intel.com" in out
    assert "  FAIL openvino/genai:int4@GPU: asked for GPU, ran on CPU: a silent fallback" in out
    assert (tmp_path / "room.csv").is_file()


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "not UTF-8 JSON"),
    ("[1, 2]", "top level is not an object"),
    ('{"format": 99, "machine": "x"}', "format 99"),
    ('{"format": 1, "machine": "x", "os": "", "python": "", "kit": "", "routes": [{"backend": "ov", '
     '"device": "CPU", "status": "GREEN"}]}', "status 'GREEN'"),
    ('{"format": 1, "machine": "x", "os": "", "python": "", "kit": "", "evil": 1}', "unknown fields"),
    ('{"format": 1, "machine": "x"}', "no os, python, kit"),
    ('{"format": 1, "machine": "x", "os": "", "python": "", "kit": "", "routes": [{"status": "PASS"}]}',
     "route 0 is not a route row"),
    ('{"format": 1, "machine": "x", "os": "", "python": "", "kit": "", "routes": [{"backend": "ov", '
     '"device": "CPU", "status": "PASS", "load_s": "fast"}]}', "not a number"),
])
def test_room_refuses_bad_reports_by_name(tmp_path, capsys, content, message):
    (tmp_path / "bad.json").write_text(content, encoding="utf-8")
    assert main(["check", "--room", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "bad.json is not a phi3kit check report" in err and message in err


def test_room_refuses_an_empty_folder_and_a_machine_twice(tmp_path, capsys):
    assert main(["check", "--room", str(tmp_path)]) == 2
    assert "holds no .json report" in capsys.readouterr().err
    _faked_machines(tmp_path)
    (tmp_path / "copy.json").write_bytes((tmp_path / "lab-07.json").read_bytes())
    with pytest.raises(kit.CheckReportError, match="lab-07 has more than one report"):
        read_room(tmp_path)


# --- real models, the command line ----------------------------------------------------------------------------------
@pytest.mark.slow  # a 3,500-token prompt through PyTorch: about 25 s on 2 cores
def test_real_model_canaries_judge_answers_and_the_long_prompt(random_phi3):
    """A random-weight Phi-3 stands in for a real one: it cannot know 7 x 8 or the hidden code, so the canaries,
    whose expected answers are data (data/canaries.yaml), must fail it, naming the prompt and the answer."""
    folder = str(random_phi3("mini-4k"))
    report = check_machine(routes=["transformers"], devices=["CPU"], models=[folder], long=True, log=quiet)
    real = next(r for r in report.routes if r.canary == f"real:{folder}")
    assert real.status == "FAIL" and "'What is 7 times 8? Answer with the number only.': expected '56'" in real.reason
    long = next(r for r in report.routes if r.canary == "long")
    assert long.status == "FAIL" and "loses the start of long prompts" in long.reason
    prompt_tokens = int(re.search(r"long prompt \((\d+) tokens\)", long.reason).group(1))
    assert 3000 < prompt_tokens <= canaries.data()["real"]["long"]["tokens"]
    assert report.exit_code == 1


def test_a_real_model_is_never_downloaded_unless_asked(monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    seen = []

    def snapshot_download(*args, **kwargs):  # the hub's boundary: say whether a download would have been allowed
        seen.append(bool(constants.HF_HUB_OFFLINE or kwargs.get("local_files_only")))
        raise LocalEntryNotFoundError("not in the local cache")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # a laptop on the network
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    cfg = kit.LoadConfig(backend="transformers", precision="fp32", runtime="pytorch", tuned=False)
    target = [kit.checking.run.Target("transformers", "pytorch", "CPU", "fp32", cfg)]
    rows = kit.checking.run.check_model("microsoft/Phi-3-mini-4k-instruct", target, {}, False, False, quiet)
    assert seen and all(seen) and rows[0].status == "SKIPPED" and "--download fetches it" in rows[0].reason
    seen.clear()
    rows = kit.checking.run.check_model("microsoft/Phi-3-mini-4k-instruct", target, {}, False, True, quiet)
    assert seen[0] is False and rows[0].status == "FAIL"


def test_cli_check_prints_the_route_table_and_refuses_a_mistyped_backend(capsys, tmp_path):
    assert main(["check", "--backend", "ortgenai", "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "ortgenai/genai:int4@CPU  pocket  PASS" in out and "all routes PASS" in out
    assert len(list(tmp_path.glob("*.json"))) == 1
    assert main(["check", "--backend", "openvno"]) == 2
    assert "Unknown backend to check: 'openvno'" in capsys.readouterr().err
    (tmp_path / "file").write_text("x", encoding="utf-8")
    assert main(["check", "-o", str(tmp_path / "file")]) == 2  # refused before any route runs


def test_a_device_this_route_does_not_see_is_skipped_with_why(fake):
    report = check_machine(routes=["fake"], devices=["CUDA"], log=quiet)
    [row] = report.routes
    assert row.status == "SKIPPED" and "'CUDA' is not available to backend 'fake'" in row.reason
    assert report.exit_code == 0  # SKIPPED is not a failure


def test_the_npu_route_is_loaded_with_the_npu_preset_and_a_failing_compile_is_a_fail(fake_openvino, monkeypatch):
    """On an NPU laptop the check loads what the NPU notebook loads (the preset: static shapes, the blob cache keyed
    by driver); an NPU that OpenVINO lists but that fails to load the model is a FAIL, not a SKIPPED."""
    from phi3kit.checking import run

    fake_openvino(["CPU", "NPU"])
    loaded = []

    def load(cfg, log=None):
        loaded.append(cfg)
        raise RuntimeError("Exception from src/plugins/intel_npu: compilation failed")

    monkeypatch.setattr(run.Session, "load", load)
    report = check_machine(routes=["openvino"], devices=["NPU"], log=quiet)
    row = next(r for r in report.routes if r.runtime == "genai" and r.device == "NPU")
    assert row.status == "FAIL" and "compilation failed" in row.reason and report.exit_code == 1
    optimum = next(r for r in report.routes if r.runtime == "optimum" and r.device == "NPU")
    assert optimum.status == "SKIPPED" and "through OpenVINO GenAI's LLMPipeline" in optimum.reason
    [cfg] = loaded
    assert cfg.precision == "int4-cw" and cfg.runtime_config["MAX_PROMPT_LEN"] == 1024
    assert Path(cfg.runtime_config["CACHE_DIR"]).name.endswith("-driver-1738334590")


def test_a_notebook_checks_only_its_own_runtime():
    """The OpenVINO notebook's canary cell passes runtimes=[runtime]: optimum-intel is not loaded for a genai run."""
    report = check_machine(routes=["openvino"], runtimes=["genai"], devices=["CPU"], log=quiet)
    assert [(r.runtime, r.device, r.status) for r in report.routes] == [("genai", "CPU", "PASS")]


def test_the_html_page_marks_failures_and_escapes_what_runtimes_said():
    report = MachineReport("lab-3", "Windows 11", "3.12", "0.1.0", routes=[
        RouteResult("openvino", "GPU", "int4", "genai", status="FAIL", reason="produced '<script>alert(1)</script>'"),
        RouteResult("openvino", "CPU", "int4", "genai", status="PASS")])
    page = kit.checking.report.to_html(report)
    assert '<tr class="FAIL"><td>openvino/genai:int4@GPU' in page and "1 route(s) FAIL" in page
    assert "<script>" not in page and "&lt;script&gt;" in page
