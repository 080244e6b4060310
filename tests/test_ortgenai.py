"""ONNX Runtime GenAI backend against the PyTorch reference, on models made offline.

No DirectML or CUDA device exists here: the DirectML and CUDA builds are exercised end to
end on the CPU, and the missing-provider errors are the real ones the runtime raises.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kit_checks import assert_agrees_with_pytorch

import phi3kit as kit
from phi3kit import pocket
from phi3kit.backends.ortgenai import OrtGenAIBackend, builder_command, builder_dialect, parse_builder, probe
from phi3kit.generate import to_messages

PROMPT = "Tell me about OpenVINO on the NPU."
SYSTEM = "You are a helpful assistant."
# mini-128k is left out: it differs from 3.5-mini only in its LongRoPE factors, one code path in every runtime.
VARIANTS = ["mini-4k", "3.5-mini", "4-mini"]

# ONNX Runtime GenAI 0.13.1 (what the DirectML build resolves to on Windows; CI runs this file with it too)
# has no int8 in its model builder: the kit refuses int8 there with its own error (tested below).
needs_int8 = pytest.mark.skipif("int8" not in builder_dialect().precisions,
                                reason="this onnxruntime-genai's model builder has no int8 (0.13.1); the 0.18 run "
                                       "covers int8")

_sessions: dict[tuple[Any, ...], kit.Session] = {}
_logs: dict[tuple[Any, ...], list[str]] = {}


def session(model: str, precision: str, device: str = "CPU", **options: Any) -> kit.Session:
    """One loaded session per configuration for the whole module (exports are cached too)."""
    key = (model, precision, device, *sorted(options.items()))
    if key not in _sessions:
        logs = _logs.setdefault(key, [])
        backend = "transformers" if precision == "ref" else "ortgenai"
        _sessions[key] = kit.load(model, backend, "fp32" if precision == "ref" else precision, device,
                                  log=logs.append, **options)
    return _sessions[key]


def answers() -> dict[str, str]:
    return {q["question"]: q["answer"] for q in pocket.load_qa()}


def graph_attributes(model_dir: Path) -> set[tuple[str, int]]:
    """(attribute, value) pairs of the quantized matmuls the builder wrote."""
    import onnx

    graph = onnx.load(str(model_dir / "model.onnx"), load_external_data=False).graph
    return {(a.name, a.i) for n in graph.node if n.op_type == "MatMulNBits" for a in n.attribute
            if a.name in ("bits", "block_size", "accuracy_level")}


# --- parity with PyTorch ------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_fp32_token_ids_match_pytorch(random_phi3: Callable[[str], Path], variant: str) -> None:
    model = str(random_phi3(variant))
    ref = session(model, "ref").generate(PROMPT, max_new_tokens=24).consume()
    assert len(set(ref.token_ids)) > 3, "the random model should not be degenerate"
    got = session(model, "fp32").generate(PROMPT, max_new_tokens=24).consume()
    assert got.token_ids == ref.token_ids


def teacher_forced(model: str, precision: str, **options: Any) -> tuple[np.ndarray, np.ndarray]:
    """Reference and ORT GenAI logits at every step of PyTorch's own greedy answer.

    Feeding both runtimes the same tokens compares the numbers themselves: a greedy run
    diverges for good after one near-tie flips, which says little about the runtime.
    """
    import onnxruntime_genai as og
    import torch

    ref_session = session(model, "ref")
    r = ref_session.generate(PROMPT, max_new_tokens=24).consume()
    ids, n = r.prompt_ids + r.token_ids, len(r.prompt_ids)
    with torch.inference_mode():
        ref = ref_session.backend.model(torch.tensor([ids])).logits[0, n - 1 : -1].double().numpy()
    backend = session(model, precision, **options).backend
    og_model = backend.model
    params = og.GeneratorParams(og_model)
    params.set_search_options(max_length=backend.search_max_length(len(ids) + 1))  # mini-4k's window: 2047
    generator = og.Generator(og_model, params)
    rows = []
    for chunk in [ids[:n]] + [[t] for t in ids[n:-1]]:
        generator.append_tokens(np.asarray([chunk], dtype=np.int32))
        rows.append(np.asarray(generator.get_logits(), dtype=np.float64).reshape(-1)[-ref.shape[1] :])
    return ref, np.stack(rows)


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_fp16_logits_match_pytorch(random_phi3: Callable[[str], Path], variant: str) -> None:
    """fp16 rounds; a greedy token may flip only where PyTorch's top two are a near tie."""
    # fp16 built for the CPU breaks with grouped-query attention (4-mini): the DirectML build runs anywhere.
    options = {"build_target": "dml"} if variant == "4-mini" else {}
    ref, got = teacher_forced(str(random_phi3(variant)), "fp16", **options)
    assert np.abs(got - ref).max() < 0.03 * np.abs(ref).max()  # measured: at most 1.5 %
    for step in np.flatnonzero(ref.argmax(1) != got.argmax(1)):
        assert ref[step].max() - ref[step, got[step].argmax()] < 0.1, f"step {step} flipped a clear choice"


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["mini-4k", "4-mini"])  # the two attention layouts; LongRoPE is precision-blind
@needs_int8
def test_int8_logits_track_pytorch(random_phi3: Callable[[str], Path], variant: str) -> None:
    """int8 weights and (CPU default) int8 activations: close logits, the same choice at most steps.

    Token-exact parity is not reachable here: these random models have near-ties that int8
    rounding flips (measured: 1-3 of 24 steps), with accuracy_level=1 too.
    """
    ref, got = teacher_forced(str(random_phi3(variant)), "int8")
    assert np.abs(got - ref).max() < 0.3 * np.abs(ref).max()  # measured: 9-17 %
    assert (ref.argmax(1) == got.argmax(1)).mean() >= 0.8  # measured: 88-96 %


@pytest.mark.slow
@needs_int8
def test_accuracy_level_1_brings_int8_closer(random_phi3: Callable[[str], Path]) -> None:
    model = str(random_phi3("mini-4k"))
    ref, fast = teacher_forced(model, "int8")
    _, exact = teacher_forced(model, "int8", accuracy_level=1)
    assert np.abs(exact - ref).max() < 0.8 * np.abs(fast - ref).max()
    assert ("accuracy_level", 4) in graph_attributes(session(model, "int8").export.path)  # the CPU default
    assert ("accuracy_level", 1) in graph_attributes(session(model, "int8", accuracy_level=1).export.path)


# --- the pocket model ---------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("precision", ["int4", pytest.param("int8", marks=needs_int8)])
def test_pocket_answers_every_training_question(precision: str) -> None:
    """Greedy agreement with PyTorch fp32 on all training questions, not exact text (tests/kit_checks.py)."""
    assert_agrees_with_pytorch(session("pocket", precision), label=f"ortgenai {precision}")


@pytest.mark.slow
def test_og_tokenizer_agrees_with_the_kit() -> None:
    """The kit templates and detokenizes with the HF tokenizer for every backend; ORT GenAI's own agrees.

    Run with 0.13.1 (CI does), og.Tokenizer failed on the shipped folders: "Unsupported tokenizer class:
    TokenizersBackend" (the name transformers 5 writes), which the DirectML notebook's library cell calls.
    """
    import onnxruntime_genai as og

    s = session("pocket", "int4")
    tokenizer = og.Tokenizer(s.backend.model)
    for question in list(answers())[:8]:
        for system in (None, SYSTEM):
            messages = to_messages(question, system)
            text = tokenizer.apply_chat_template(json.dumps(messages), add_generation_prompt=True)
            assert list(tokenizer.encode(text)) == s.encode(messages), question
            r = s.generate(question, system=system).consume()
            stream = tokenizer.create_stream()
            assert len(r.token_ids) > 5 and "".join(stream.decode(t) for t in r.token_ids) == r.text


@pytest.mark.slow
def test_block_size_reaches_the_builder() -> None:
    """0.18 reads `block_size`; the `int4_block_size` spelling would be ignored silently."""
    default = session("pocket", "int4").export.path
    assert {("bits", 4), ("block_size", 32), ("accuracy_level", 4)} <= graph_attributes(default)
    s = session("pocket", "int4", group_size=128)
    assert ("block_size", 128) in graph_attributes(s.export.path) and s.export.path != default
    assert_agrees_with_pytorch(s, ["What is OpenVINO?"], "ortgenai int4 block 128")  # the export runs


def test_builder_command_spells_the_options(tmp_path: Path) -> None:
    cfg = kit.LoadConfig(model="pocket", backend="ortgenai", precision="int4", device="cpu", group_size=16,
                         accuracy_level=1)
    cmd = builder_command(tmp_path / "src", tmp_path / "out", tmp_path / "c", cfg)
    assert cmd[:3] == [sys.executable, "-m", "onnxruntime_genai.models.builder"]
    assert cmd[cmd.index("-e") + 1] == "cpu" and cmd[cmd.index("-p") + 1] == "int4"
    names = builder_dialect()  # 0.18: block_size, accuracy_level; 0.13.1: int4_block_size, int4_accuracy_level
    assert cmd[cmd.index("--extra_options") + 1 :] == [f"{names.block_size}=16", f"{names.accuracy_level}=1"]
    fp16 = builder_command(tmp_path, tmp_path, tmp_path, kit.LoadConfig(precision="fp16", device="DML"))
    assert "--extra_options" not in fp16 and fp16[fp16.index("-e") + 1] == "dml"


# Lines of onnxruntime-genai-directml 0.13.1's builder.py, PyPI's newest DirectML build (win_amd64 only).
BUILDER_0_13 = """
        "--precision",
        required=True,
        choices=["int4", "bf16", "fp16", "fp32"],
                int4_accuracy_level = 1/2/3/4: Specify the minimum accuracy level for activation of MatMul in int4.
                int4_block_size = 16/32/64/128/256: Specify the block size for int4 quantization (MatMulNBits).
"""


def test_builder_dialects() -> None:
    """0.13 (Windows DirectML) and 0.18 spell the options differently, and each ignores the other's names."""
    old = parse_builder(BUILDER_0_13)
    assert old.precisions == ("int4", "bf16", "fp16", "fp32")
    assert (old.block_size, old.accuracy_level) == ("int4_block_size", "int4_accuracy_level")
    installed = builder_dialect()  # 0.18 in the dev environment, 0.13.1 in CI's DirectML-version run
    if OrtGenAIBackend.runtime_versions().get("onnxruntime-genai", "").startswith("0.13"):
        assert "int8" not in installed.precisions and installed.block_size == "int4_block_size"
    else:
        assert "int8" in installed.precisions and installed.block_size == "block_size"


# --- DirectML and CUDA without the hardware -----------------------------------------------------------
@pytest.mark.slow
def test_directml_build_runs_on_the_cpu() -> None:
    s = session("pocket", "int4", build_target="dml")
    genai_config = json.loads((s.export.path / "genai_config.json").read_text())
    assert "dml" in json.dumps(genai_config["model"]["decoder"]["session_options"]["provider_options"])
    assert s.backend.provider == "cpu" and "int4-dml" in s.export.path.name
    assert_agrees_with_pytorch(s, list(answers())[:5], "ortgenai int4 DirectML build on the CPU")


@pytest.mark.slow
@pytest.mark.parametrize("device", ["DML", "cuda"])
def test_fallback_to_cpu_is_explicit_and_logged(device: str) -> None:
    if device.upper() in OrtGenAIBackend.devices("genai"):
        pytest.skip(f"{device} is available here: nothing to fall back from")
    s = session("pocket", "int4", device, fallback_to_cpu=True)
    logs = _logs[("pocket", "int4", device, ("fallback_to_cpu", True))]
    assert any("fallback_to_cpu=True" in line and "run on the CPU" in line for line in logs), logs
    assert s.backend.provider == "cpu" and s.backend.fell_back
    assert f"int4-{device.lower()}" in s.export.path.name  # still the device's build, not a CPU build
    assert_agrees_with_pytorch(s, ["What is an NPU?"], f"ortgenai int4 {device} build on the CPU")


@pytest.mark.parametrize(
    ("device", "package", "said"),
    [("DML", "onnxruntime-genai-directml", "not been built with DML support"),
     ("dml", "requirements/directml.txt", "DML"),
     ("CUDA", "onnxruntime-genai-cuda", "libonnxruntime-genai-cuda"),
     ("cuda", "requirements/cuda.txt", "Cuda")],
)
def test_missing_provider_names_the_package(device: str, package: str, said: str, tmp_path: Path) -> None:
    if device.upper() in OrtGenAIBackend.devices("genai"):
        pytest.skip(f"{device} is available here")
    with pytest.raises(kit.DeviceNotFoundError) as err:
        kit.load("pocket", "ortgenai", "int4", device, cache_dir=str(tmp_path))
    msg = str(err.value)
    assert package in msg and said in msg and "fallback_to_cpu=True" in msg and "device='CPU'" in msg
    assert not any(tmp_path.iterdir())  # refused before any build


def test_devices_lists_only_what_opens_a_session() -> None:
    devices = OrtGenAIBackend.devices("genai")
    assert devices[0] == "CPU" and probe("cpu") is None
    for device, provider in (("DML", "dml"), ("CUDA", "cuda")):
        assert (device in devices) == (probe(provider) is None)
    if sys.platform != "win32":
        assert "DML" not in devices  # DirectML is Windows-only


# --- choices and builder traps, refused before any work -----------------------------------------------
@pytest.mark.parametrize(
    ("options", "match"),
    [({"precision": "fp32", "device": "DML", "fallback_to_cpu": True}, "invalid fp32 graph"),
     ({"precision": "fp32", "build_target": "cuda"}, "invalid fp32 graph"),
     ({"precision": "bf16"}, "builds it for the CPU but cannot run it"),
     ({"group_size": 48}, "block size.*Valid choices: 16, 32, 64, 128, 256"),
     ({"accuracy_level": 5}, "accuracy_level"),
     ({"build_target": "webgpu"}, "build_target"),
     ({"device": "NPU"}, "device for backend 'ortgenai'.*CPU, DML, CUDA"),
     ({"runtime": "optimum"}, "runtime")],
)
def test_bad_choices_fail_fast(options: dict[str, Any], match: str, tmp_path: Path) -> None:
    args = {"model": "pocket", "backend": "ortgenai", "precision": "int4", "cache_dir": str(tmp_path), **options}
    with pytest.raises(kit.UnknownChoiceError, match=match):
        kit.load(**args)
    assert not any(tmp_path.iterdir())


def trap_model(tmp_path: Path, **config: Any) -> str:
    """A folder with the pocket tokenizer and a patched config: the traps are caught before weights are read."""
    src = pocket.path()
    out = tmp_path / "model"
    out.mkdir()
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(src / f, out / f)
    cfg = json.loads((src / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**cfg, **config}))
    return str(out)


@pytest.mark.parametrize(
    ("config", "precision", "match"),
    [({"hidden_size": 96, "num_attention_heads": 4}, "int4", "head size 24 .* multiple of 16"),
     ({"hidden_size": 128, "num_attention_heads": 4,
       "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.75}},
      "int4", "cache width of 12"),
     pytest.param({"vocab_size": 1024, "intermediate_size": 512}, "int8", "gate_up_proj has vocab_size=1024 outputs",
                  marks=needs_int8),
     ({"num_key_value_heads": 2}, "fp16", "grouped-query attention")],
)
def test_builder_traps_are_refused_before_building(tmp_path: Path, config: dict[str, Any], precision: str,
                                                   match: str) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(kit.ExportError, match=match):
        kit.export(trap_model(tmp_path, **config), "ortgenai", precision, cache_dir=str(cache))
    assert kit.ExportCache(cache).entries() == []


def test_missing_onnx_ir_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The builder imports onnx_ir without declaring it; a None entry is how Python marks a module unimportable."""
    monkeypatch.setitem(sys.modules, "onnx_ir", None)
    with pytest.raises(kit.MissingDependencyError, match="onnx-ir.*requirements/directml.txt"):
        kit.export("pocket", "ortgenai", "fp32", cache_dir=str(tmp_path), log=lambda _: None)
    assert kit.ExportCache(tmp_path).entries() == []


# --- generation behaviour -----------------------------------------------------------------------------
@pytest.mark.slow
@needs_int8
def test_exports_are_cached_and_keyed(tmp_path: Path) -> None:
    first = kit.export("pocket", "ortgenai", "int8", device="cpu", cache_dir=str(tmp_path), log=lambda _: None)
    again = kit.export("pocket", "ortgenai", "int8", device="CPU", cache_dir=str(tmp_path), log=lambda _: None)
    assert not first.cached and again.cached and again.path == first.path
    (entry,) = kit.ExportCache(tmp_path).entries()
    assert entry["target"] == "cpu" and entry["block_size"] == 32 and entry["model"] == "pocket"
    assert entry["runtime"] == {"onnxruntime-genai": "0.18"} and len(entry["fingerprint"]) == 16


@pytest.mark.slow
def test_metrics_max_new_tokens_and_cancel() -> None:
    s = session("pocket", "int4")
    question = "Can you introduce yourself?"
    r = s.generate(question).consume()
    m = r.metrics
    assert m.new_tokens == len(m.token_latencies_s) == len(r.token_ids) + 1  # + the <|end|> token
    assert 0 < m.ttft_s < m.total_s and m.tokens_per_s > 0 and m.finish_reason == "stop"
    full = r
    r = s.generate(question, max_new_tokens=5).consume()
    assert r.metrics.new_tokens == 5 and r.metrics.finish_reason == "length"
    assert r.token_ids == full.token_ids[:5]  # the same greedy answer, cut at 5 tokens
    r = s.generate(question, max_new_tokens=64)
    first = next(iter(r))
    r.cancel()
    assert r.text == first and r.metrics.finish_reason == "cancelled"
    # Usable after a cancel: the same answer as before it (a generator left behind would change it).
    assert s.generate(question).consume().token_ids == full.token_ids


@pytest.mark.slow
def test_sampling_follows_the_seed() -> None:
    s = session("pocket", "int4")
    question = "What is OpenVINO?"
    a = s.generate(question, do_sample=True, temperature=5.0, seed=7, max_new_tokens=20).consume()
    b = s.generate(question, do_sample=True, temperature=5.0, seed=7, max_new_tokens=20).consume()
    c = s.generate(question, do_sample=True, temperature=5.0, seed=8, max_new_tokens=20).consume()
    greedy = s.generate(question, max_new_tokens=20).consume()
    assert a.token_ids == b.token_ids
    assert a.token_ids != greedy.token_ids and c.token_ids != a.token_ids


def test_folders_name_a_tokenizer_class_every_runtime_reads(tmp_path: Path) -> None:
    """transformers 5 writes "TokenizersBackend", which ONNX Runtime GenAI 0.13.1 refuses in og.Tokenizer."""
    from phi3kit.backends.ortgenai import name_tokenizer_for_runtime

    shipped = [pocket.path().parent / "ready" / n for n in ("ortgenai-int4-cpu", "ortgenai-int4-dml")]
    for folder in shipped:
        config = json.loads((folder / "tokenizer_config.json").read_text())
        assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    real = Path(__file__).parent / "data" / "phi3-tokenizer"  # Phi-3's SentencePiece-style BPE
    for src, want in ((real, "LlamaTokenizer"), (pocket.path(), "PreTrainedTokenizerFast")):
        folder = tmp_path / src.name
        shutil.copytree(src, folder)
        assert json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"] == "TokenizersBackend"
        assert name_tokenizer_for_runtime(folder) == want
        assert name_tokenizer_for_runtime(folder) is None  # a class the runtimes know is left as it is
