"""The NPU routes: OpenVINO GenAI's NPU preset (run on the CPU) and the seed's archived library.

Nothing here depends on whether this machine has an NPU: the preset's export and answers run for real on the
CPU, the NPU-only pipeline options and error paths are checked where they act, with the device list and the
NPU's driver faked where the kit reads them (the `fake_openvino` fixture), and the library's adapter runs only
where the library imports (Windows, in its own environment); elsewhere it is skipped with the reason.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from kit_checks import assert_agrees_with_pytorch

import phi3kit as kit
from phi3kit import pocket
from phi3kit.backends.openvino import OpenVINOBackend, export_command, npu_library
from phi3kit.backends.openvino.npu import (
    NPUDriverError,
    check_npu_context,
    npu_blob_dir,
    npu_compile_failure,
    npu_preset,
)
from phi3kit.backends.openvino.npu_library import (
    NPULibraryBackend,
    NPULibraryLimitError,
    NPULibraryUnavailableError,
    import_library,
    second_model_problem,
    unavailable_message,
)

ROOT = Path(__file__).resolve().parents[1]
_sessions: dict[tuple[str, ...], kit.Session] = {}


def preset_session(precision: str = "int4", **options: object) -> kit.Session:
    """The pocket model through the NPU preset, on the CPU (explicitly: whether or not this machine has an NPU)."""
    key = (precision, *map(str, sorted(options.items())))
    if key not in _sessions:
        cfg = npu_preset(kit.LoadConfig(model="pocket", precision=precision, device="CPU", **options))  # type: ignore[arg-type]
        _sessions[key] = kit.Session.load(cfg, log=lambda m: None)
    return _sessions[key]


# --- route 1: the NPU preset ---------------------------------------------------------------------
def test_preset_export_settings_are_the_npu_guides() -> None:
    cfg = npu_preset(kit.LoadConfig(model="pocket", precision="int4", device="CPU"))
    assert cfg.precision == "int4-cw" and (cfg.group_size, cfg.ratio, cfg.sym) == (None, None, True)  # the named one
    settings = OpenVINOBackend.export_settings(cfg)
    assert (settings["group_size"], settings["ratio"], settings["sym"]) == (-1, 1.0, True)
    assert cfg.runtime_config == {}  # the CPU plugin rejects NPU options: none are passed to it
    cmd = export_command(Path("src"), Path("out"), cfg, {"hidden_size": 256, "intermediate_size": 512}, print)
    assert cmd[cmd.index("--weight-format") + 1] == "int4"
    assert cmd[cmd.index("--group-size") + 1] == "-1" and cmd[cmd.index("--ratio") + 1] == "1.0" and "--sym" in cmd
    grouped = npu_preset(kit.LoadConfig(precision="int4", group_size=128))  # group-wise is allowed: an export
    assert (grouped.precision, grouped.group_size, grouped.ratio) == ("int4", 128, 1.0)
    fp16 = npu_preset(kit.LoadConfig(precision="fp16", device="CPU"))
    assert (fp16.group_size, fp16.ratio) == (None, None)


def test_preset_pipeline_options_on_the_npu(tmp_path: Path) -> None:
    cfg = npu_preset(kit.LoadConfig(precision="int4", device="NPU", cache_dir=str(tmp_path),
                                    runtime_config={"MIN_RESPONSE_LEN": 512}),
                     max_prompt_len=2048, generate_hint="BEST_PERF")
    assert cfg.runtime_config == {"MIN_RESPONSE_LEN": 512, "MAX_PROMPT_LEN": 2048, "GENERATE_HINT": "BEST_PERF",
                                  "CACHE_DIR": str(npu_blob_dir(str(tmp_path)))}  # explicit entries win
    assert npu_blob_dir(str(tmp_path)).parent == tmp_path.resolve() / "npu-blobs"
    assert kit.backends.get("openvino").npu_blob_dir is npu_blob_dir  # type: ignore[attr-defined]  # the notebook's
    assert "CACHE_DIR" not in npu_preset(kit.LoadConfig(device="NPU"), blob_cache=False).runtime_config
    assert kit.backends.get("openvino").npu_preset is npu_preset  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("options", "preset", "what"),
    [
        ({"precision": "int8"}, {}, "precision for the NPU preset"),
        ({"group_size": 64}, {}, "group_size for the NPU"),
        ({"ratio": 0.6}, {}, "ratio for the NPU"),
        ({"sym": False}, {}, "sym for the NPU"),
        ({"backend": "transformers"}, {}, "backend for the NPU preset"),
        ({"device": "NPU", "runtime": "optimum"}, {}, "runtime for the NPU"),
        ({"device": "NPU"}, {"generate_hint": "FASTEST"}, "GENERATE_HINT"),
    ],
)
def test_preset_refuses_what_the_npu_cannot_run(options: dict[str, object], preset: dict[str, str], what: str) -> None:
    with pytest.raises(kit.UnknownChoiceError, match=f"Unknown {what}.*Valid choices"):
        npu_preset(kit.LoadConfig(**options), **preset)  # type: ignore[arg-type]


def test_npu_context_is_checked_before_generating() -> None:
    check_npu_context(1000, 100, {})  # 1000 <= 1024, 1100 <= 1024 + 128
    with pytest.raises(kit.ContextWindowError, match="MAX_PROMPT_LEN=1024.*max_prompt_len=1280"):
        check_npu_context(1100, 10, {})
    with pytest.raises(kit.ContextWindowError, match="1152 tokens.*max_new_tokens <= 152"):
        check_npu_context(1000, 200, {})
    check_npu_context(1000, 600, {"MIN_RESPONSE_LEN": 600})


def test_missing_npu_fails_before_the_export_and_says_what_to_do(fake_openvino, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fake_openvino(["CPU"])  # a machine without an NPU, even where this one has one
    with pytest.raises(kit.DeviceNotFoundError) as err:
        kit.load("pocket", "openvino", "int4", device="NPU", cache_dir=str(tmp_path / "cache"))
    msg = str(err.value)
    assert not (tmp_path / "cache").exists()  # refused before any export
    assert "'NPU' is not available" in msg and "NPU driver" in msg
    assert "device='CPU' explicitly" in msg and "phi3kit doctor" in msg


def test_npu_without_its_compiler_fails_before_the_export(fake_openvino, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """An NPU OpenVINO lists but whose driver cannot load the compiler: NPUDriverError with the fix, no export.

    Catches: OpenVINOBackend.check no longer probing the NPU (the export would run for minutes, then fail)."""
    vcl = RuntimeError("Exception from plugin_compiler_adapter.cpp:54:\nVCL compiler loading failed, aborting.\n")
    fake_openvino(["CPU", "NPU"], NPU={"NPU_COMPILER_VERSION": vcl})
    with pytest.raises(NPUDriverError, match="cannot load its compiler.*VCL compiler loading failed.*NPU driver"):
        kit.load("pocket", "openvino", "int4", device="NPU", cache_dir=str(tmp_path / "cache"))
    assert not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_npu_pipeline_failure_is_explained(fake_openvino) -> None:  # type: ignore[no-untyped-def]
    """Past the device check, the real LLMPipeline fails to compile for the NPU; the kit says why and what to do.

    NPU.7 is an NPU no machine has (laptops have one, NPU or NPU.0), so the real pipeline fails on every machine,
    an NPU laptop included; the NPU the message reports is a faked Intel AI Boost, so the text is known.
    Catches: the RuntimeError escaping raw, or the message losing the driver seen and the preset's fix.
    """
    fake_openvino(["CPU", "NPU"])
    export = preset_session().export.path
    cfg = npu_preset(kit.LoadConfig(model="pocket", precision="int4", device="NPU.7"))
    with pytest.raises(NPUDriverError) as err:
        OpenVINOBackend(export, cfg)
    msg = str(err.value)
    assert "could not compile" in msg and "npu_preset()" in msg
    assert "NPU seen: Intel(R) AI Boost, driver 1738334590, compiler 6.3" in msg
    assert isinstance(err.value, kit.DeviceNotFoundError) and err.value.__cause__ is not None


def test_compile_failure_message_names_the_driver_seen() -> None:
    from phi3kit.backends.openvino.npu import NPUInfo

    msg = npu_compile_failure(RuntimeError("a\nZE_RESULT_ERROR_UNSUPPORTED_FEATURE\n"),
                              NPUInfo("Intel(R) AI Boost", 2408, "5.4", []), platform="win32")
    assert "(ZE_RESULT_ERROR_UNSUPPORTED_FEATURE)" in msg and "driver 2408, compiler 5.4" in msg
    assert "intel-npu-driver-windows" in msg


@pytest.mark.slow
def test_preset_export_is_channel_wise_int4() -> None:
    import openvino as ov

    model = ov.Core().read_model(preset_session().export.path / "openvino_model.xml")
    weights = {op.get_friendly_name(): (op.get_output_element_type(0).get_type_name(), list(op.get_output_shape(0)))
               for op in model.get_ordered_ops()
               if op.get_type_name() == "Constant" and op.get_friendly_name().endswith(".weight")
               and len(op.get_output_shape(0)) >= 2}
    layers = {k: v for k, v in weights.items() if ".layers." in k}
    assert len(layers) == 8  # 2 layers x (qkv, o, gate_up, down)
    assert all(t == "i4" and len(shape) == 2 for t, shape in layers.values()), layers  # ratio 1.0, one scale/row
    # NNCF keeps the embedding and the LM head in int8 unless all_layers is set; OpenVINO's NPU guide accepts that.
    assert {t for k, (t, _) in weights.items() if ".layers." not in k} == {"u8"}


@pytest.mark.slow
def test_pocket_answers_its_questions_exactly_through_the_fp16_preset() -> None:
    """fp16 through the preset keeps every trained answer to the letter."""
    s = preset_session("fp16")
    assert "MAX_PROMPT_LEN" not in s.backend.properties  # type: ignore[attr-defined]
    wrong = []
    for qa in pocket.load_qa():
        r = s.generate(qa["question"], max_new_tokens=160)
        if r.text != qa["answer"] or r.metrics.finish_reason != "stop":
            wrong.append((qa["question"], r.text))
    assert wrong == []
    m = r.metrics
    assert m.new_tokens > 5 and m.ttft_s > 0 and m.tokens_per_s > 0


@pytest.mark.slow
def test_channel_wise_int4_preset_agrees_with_pytorch() -> None:
    """Channel-wise int4 at ratio 1.0 does not degrade the pocket model: greedy agreement with PyTorch fp32 on
    every training question (tests/kit_checks.py; measured: 1.000 identical, every answer exact)."""
    s = preset_session("int4")
    assert "MAX_PROMPT_LEN" not in s.backend.properties  # type: ignore[attr-defined]  # the CPU gets no NPU options
    assert_agrees_with_pytorch(s, label="NPU preset int4 on the CPU")


# --- route 2: the seed's intel-npu-acceleration-library ----------------------------------------------
def test_library_route_is_refused_with_the_reason_where_it_does_not_import() -> None:
    try:
        import_library()
    except NPULibraryUnavailableError:
        pass
    else:
        pytest.skip("intel-npu-acceleration-library imports here: the real-library tests below cover it")
    with pytest.raises(kit.MissingDependencyError) as err:
        kit.load("pocket", "npu-library", "int4", device="NPU")
    msg = str(err.value)
    assert "archived" in msg and "route='openvino-genai'" in msg
    assert err.value.package == "intel-npu-acceleration-library"
    if sys.platform != "win32":
        assert "win_amd64" in msg and "Ubuntu-only" in msg
    else:
        assert "numpy<2" in msg and "npu.txt" in msg


@pytest.mark.parametrize(
    ("platform", "cause", "expected", "absent"),
    [
        ("linux", None, ["does not install on Linux", "Ubuntu-only OpenVINO archive", "OpenVINO GenAI"], ["numpy"]),
        ("darwin", None, ["does not install on macOS", "win_amd64"], []),
        ("win32", ModuleNotFoundError("No module named 'intel_npu_acceleration_library'",
                                      name="intel_npu_acceleration_library"),
         ["environment of its own", "numpy<2", r"requirements\npu.txt", "end of life"], ["Import failed"]),
        ("win32", ModuleNotFoundError("No module named 'neural_compressor.adaptor'", name="neural_compressor.adaptor"),
         ["Import failed with", "neural_compressor.adaptor", "neural-compressor==3.1.1"], []),
    ],
)
def test_library_unavailable_messages(platform: str, cause: BaseException | None, expected: list[str],
                                      absent: list[str]) -> None:
    msg = unavailable_message(platform, cause)
    for text in expected:
        assert text in msg
    for text in absent:
        assert text not in msg


def test_second_quantized_model_is_refused_not_crashed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert second_model_problem("int4", []) is None
    assert second_model_problem("fp16", [("a", "int4")]) is None
    assert second_model_problem("int4", [("a", "fp16")]) is None
    problem = second_model_problem("int8", [("/models/phi3", "int4")])
    assert problem and "phi3 (int4)" in problem and "Restart" in problem and "fp16" in problem
    # The guard runs before the library is touched, so it holds even where the library is missing.
    monkeypatch.setattr(npu_library, "LOADED", [("/models/phi3", "int4")])
    with pytest.raises(NPULibraryLimitError, match="aborts it"):
        NPULibraryBackend(tmp_path, kit.LoadConfig(backend="npu-library", precision="int4", device="NPU"))


def test_npu_requirements_are_windows_only_and_pinned() -> None:
    lines = [line.strip() for line in (ROOT / "requirements" / "npu.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "-r base.txt"
    pins = {line.split(";")[0].strip() for line in lines[1:]}
    assert pins == {"intel-npu-acceleration-library==1.4.0", "neural-compressor==3.1.1", "numpy<2",
                    "setuptools<81", "six"}
    assert all('sys_platform == "win32"' in line for line in lines[1:])
    assert "openvino" not in " ".join(lines)  # the library bundles its own OpenVINO


def _library_or_skip() -> None:
    try:
        import_library()
    except NPULibraryUnavailableError as exc:
        pytest.skip(f"intel-npu-acceleration-library does not import here: {str(exc)[:160]}...")


@pytest.mark.slow
def test_library_adapter_streams_the_pocket_answer() -> None:
    _library_or_skip()
    device = NPULibraryBackend.devices("npu-library")[0]  # NPU, or the library's own CPU fallback, named
    s = kit.load("pocket", "npu-library", "fp16", device=device)
    qa = pocket.load_qa()[0]
    r = s.generate(qa["question"], max_new_tokens=96)
    assert "".join(r) == r.text and r.text.split()[:3] == qa["answer"].split()[:3]
    assert r.metrics.new_tokens > 3 and r.metrics.tokens_per_s > 0


@pytest.mark.slow
def test_library_second_int4_model_is_refused_for_real() -> None:
    _library_or_skip()
    device = NPULibraryBackend.devices("npu-library")[0]
    kit.load("pocket", "npu-library", "int4", device=device)
    with pytest.raises(NPULibraryLimitError):
        kit.load("pocket", "npu-library", "int8", device=device)


def _cell(notebook: Path, cell_id: str) -> str:
    import nbformat

    return next(c.source for c in nbformat.read(str(notebook), as_version=4).cells if c.get("id") == cell_id)


@pytest.mark.parametrize("lang", ["", "fr", "zh", "fa", "id", "ro"])
def test_the_seed_library_route_never_needs_openvino_genai_and_never_pickles(lang: str) -> None:
    """route="npu-library" runs in the Windows environment that has no openvino_genai: the library cell imported
    it for every route and aborted there. And the seed's own call, without export=False, pickles the model under a
    drive-relative ./cache/models folder that the next run's torch.load refuses (backends/npu_library passes it)."""
    import ast

    notebook = Path(__file__).resolve().parents[1] / "notebooks" / lang / "npu.ipynb"
    tree = ast.parse(_cell(notebook, "genai"))
    guarded = [node for node in tree.body if isinstance(node, ast.If) and "openvino-genai" in ast.unparse(node.test)]
    top_imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not top_imports and guarded, "openvino_genai must be imported only on the openvino-genai route"
    assert any(isinstance(n, ast.Import) and n.names[0].name == "openvino_genai" for n in ast.walk(guarded[0]))
    calls = [n for n in ast.walk(ast.parse(_cell(notebook, "npu-library")))
             if isinstance(n, ast.Call) and ast.unparse(n.func).endswith("NPUModelForCausalLM.from_pretrained")]
    assert calls and all(any(k.arg == "export" and ast.unparse(k.value) == "False" for k in c.keywords) for c in calls)


def test_npu_blob_cache_is_one_folder_per_driver_and_openvino_version(tmp_path: Path, fake_openvino) -> None:  # type: ignore[no-untyped-def]
    """A driver upgrade must never load a blob the old driver compiled (openvino.genai#2082).

    Catches: CACHE_DIR losing the driver or the OpenVINO version from its key, or the preset not reading the NPU.
    """
    from phi3kit.machine import library_version

    fake_openvino(["CPU", "NPU"], NPU={"NPU_DRIVER_VERSION": 3104})
    old = npu_blob_dir(str(tmp_path))
    assert old.name == f"openvino-{library_version('openvino')}-driver-3104"
    assert npu_preset(kit.LoadConfig(device="NPU", cache_dir=str(tmp_path))).runtime_config["CACHE_DIR"] == str(old)
    fake_openvino(["CPU", "NPU"], NPU={"NPU_DRIVER_VERSION": 3617})
    assert npu_blob_dir(str(tmp_path)) != old and npu_blob_dir(str(tmp_path)).parent == old.parent
