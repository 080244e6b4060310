"""OpenVINO backend against the PyTorch reference, on models made offline."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from kit_checks import assert_agrees_with_pytorch

import phi3kit as kit
from phi3kit import pocket
from phi3kit.backends.openvino import export_command

PROMPT = "Tell me about OpenVINO on the NPU."
QUESTIONS = ["Can you introduce yourself?", "What is an NPU?", "What is OpenVINO?"]

_sessions: dict[tuple[str, ...], kit.Session] = {}


def session(model: str, backend: str, precision: str, runtime: str | None = None) -> kit.Session:
    key = (model, backend, precision, str(runtime))
    if key not in _sessions:
        _sessions[key] = kit.load(model, backend, precision, "CPU", runtime)
    return _sessions[key]


def answers() -> dict[str, str]:
    qa = {q["question"]: q["answer"] for q in pocket.load_qa()}
    return {q: qa[q] for q in QUESTIONS}


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["mini-4k", "3.5-mini", "4-mini"])  # mini-128k: 3.5-mini's code path
def test_fp32_token_ids_match_pytorch(random_phi3: Callable[[str], Path], variant: str) -> None:
    model = str(random_phi3(variant))
    ref = session(model, "transformers", "fp32").generate(PROMPT, max_new_tokens=24).consume()
    assert len(set(ref.token_ids)) > 3, "the random model should not be degenerate"
    for runtime in ("genai", "optimum"):
        got = session(model, "openvino", "fp32", runtime).generate(PROMPT, max_new_tokens=24).consume()
        assert got.token_ids == ref.token_ids, f"{variant} {runtime}"


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_pocket_answers_exactly_at_fp32_and_fp16(precision: str) -> None:
    """Full and half precision keep every trained answer to the letter (fp16 logits differ by rounding only)."""
    s = session("pocket", "openvino", precision)
    for question, answer in answers().items():
        r = s.generate(question, max_new_tokens=96)
        streamed = "".join(r)
        assert streamed == r.text == answer, f"{precision}: {question}"
        assert r.metrics.finish_reason == "stop" and "<|end|>" not in r.text


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_pocket_quantized_answers_agree_with_pytorch(precision: str) -> None:
    """int8 and int4 (group 128, ratio 0.6): greedy agreement with PyTorch fp32, not exact text (kit_checks)."""
    assert_agrees_with_pytorch(session("pocket", "openvino", precision), QUESTIONS, f"openvino {precision}")


@pytest.mark.slow
def test_optimum_runtime_answers_like_genai() -> None:
    """optimum-intel on the int8 export is held to the same agreement with PyTorch as GenAI on it."""
    assert_agrees_with_pytorch(session("pocket", "openvino", "int8", "optimum"), QUESTIONS[:1], "optimum int8")


@pytest.mark.slow
def test_metrics_are_recorded() -> None:
    r = session("pocket", "openvino", "int8").generate(QUESTIONS[1]).consume()
    m = r.metrics
    assert m.new_tokens == len(m.token_latencies_s) == len(r.token_ids) + 1  # + the <|end|> token
    assert m.prompt_tokens == len(r.prompt_ids) > 5
    assert 0 < m.ttft_s < m.total_s and m.tokens_per_s > 0 and m.peak_rss_mb > 100
    assert m.load_s > 0 and "tokens/s" in m.summary()


@pytest.mark.slow
def test_max_new_tokens_bounds_the_answer_and_cancel_stops_it() -> None:
    s = session("pocket", "openvino", "int8")
    full = s.generate(QUESTIONS[0]).consume()
    r = s.generate(QUESTIONS[0], max_new_tokens=5).consume()
    assert r.metrics.new_tokens == 5 and r.metrics.finish_reason == "length"
    assert r.token_ids == full.token_ids[:5]  # the same greedy answer, cut at 5 tokens
    r = s.generate(QUESTIONS[0], max_new_tokens=64)
    first = next(iter(r))
    r.cancel()
    assert r.text == first and r.metrics.finish_reason == "cancelled"
    # Usable after a cancel: the same answer as before it (a cancel that left state behind would change it).
    assert s.generate(QUESTIONS[0]).consume().token_ids == full.token_ids


@pytest.mark.slow
def test_prompt_over_the_context_window_is_refused() -> None:
    s = session("pocket", "openvino", "int8")
    per_word = len(s.encode([{"role": "user", "content": "word " * 101}])) - len(
        s.encode([{"role": "user", "content": "word " * 100}]))
    long = "word " * (4000 // per_word)  # about 4000 tokens: fits alone, not with 200 more
    n = len(s.encode([{"role": "user", "content": long}]))
    assert 3896 < n < 4096
    with pytest.raises(kit.ContextWindowError, match=f"prompt \\({n} tokens\\).*context window of 4096.*<= {4096 - n}"):
        s.generate(long, max_new_tokens=200)
    with pytest.raises(kit.ContextWindowError, match="shorten the prompt"):
        s.generate(long * 2)
    assert s.generate(long, max_new_tokens=4096 - n).prompt_ids  # exactly full is allowed


@pytest.mark.parametrize(("device", "hint"), [("NPU", "NPU driver"), ("GPU.1", "graphics compute runtime")])
def test_missing_device_names_what_is_there(fake_openvino, device: str, hint: str) -> None:  # type: ignore[no-untyped-def]
    """On a machine whose OpenVINO sees the CPU and an iGPU (faked: the same on any machine), a missing device
    is refused with the list and the family's fix. Catches: the device check skipped, or the hint per family lost.
    'GPU' is there: OpenVINO takes it for GPU.0 (tests/test_doctor.py checks the family rule)."""
    fake_openvino(["CPU", "GPU.0"])
    with pytest.raises(kit.DeviceNotFoundError) as err:
        kit.load("pocket", "openvino", "int4", device=device)
    assert "available: CPU, GPU, GPU.0, AUTO" in str(err.value) and hint in str(err.value)


@pytest.mark.parametrize(
    ("options", "what"),
    [({"backend": "tensorrt"}, "backend"), ({"precision": "int3"}, "precision"), ({"runtime": "cpp"}, "runtime")],
)
def test_unknown_choices_list_the_valid_ones(options: dict[str, str], what: str) -> None:
    args = {"model": "pocket", "backend": "openvino", "precision": "int4", **options}
    with pytest.raises(kit.UnknownChoiceError, match=f"Unknown {what}.*Valid choices"):
        kit.load(**args)


def test_int4_group_size_fallback(tmp_path: Path) -> None:
    cfg = {"hidden_size": 192, "intermediate_size": 512}
    logs: list[str] = []
    cmd = export_command(tmp_path, tmp_path / "o", kit.LoadConfig(precision="int4"), cfg, logs.append)
    assert cmd[cmd.index("--group-size") + 1] == "128" and "--sym" in cmd
    assert "--group-size-fallback" in cmd and "does not divide hidden_size=192" in logs[0]
    with pytest.raises(kit.ExportError, match="group_size"):
        export_command(tmp_path, tmp_path / "o", kit.LoadConfig(group_size_fallback="error"), cfg, logs.append)
    logs.clear()
    export_command(tmp_path, tmp_path / "o", kit.LoadConfig(group_size=64), cfg, logs.append)
    assert logs == []
