"""KV-cache reuse on the exported routes (ONNX Runtime GenAI, OpenVINO GenAI, optimum-intel, llama.cpp): a scripted
chat with reuse gives the ids of a full prefill at every turn, through a trim, a stop and a failure (slow: each
route exports the pocket model once)."""

from __future__ import annotations

import pytest
from chat_script import assert_parity, cache_matches, play

import phi3kit as kit

pytestmark = pytest.mark.slow
_sessions: dict[tuple[str, ...], kit.Session] = {}


def pocket(backend: str, runtime: str | None = None) -> kit.Session:
    key = (backend, str(runtime))
    if key not in _sessions:
        _sessions[key] = kit.load("pocket", backend, "fp32", runtime=runtime, log=lambda m: None)
    return _sessions[key]


# --- ONNX Runtime GenAI ------------------------------------------------------------------------------


def _og_cache(session: kit.Session, r: kit.Response) -> bool:
    """The kept og.Generator's sequence is the ids its KV cache holds plus the one token sampled last (none after an
    eos, which the generator does not append)."""
    cached = session.backend.cached
    if cached.state is None:
        return not cached.ids and cache_matches(session, r)
    generator, *_ = cached.state
    sequence = [int(i) for i in generator.get_sequence(0)]
    return cached.ids in (sequence, sequence[:-1]) and cache_matches(session, r)


def test_ortgenai_chat_with_reuse_answers_as_a_full_prefill() -> None:
    """One og.Generator kept across turns (append_tokens, rewind_to) gives the fresh generator's ids. Catches the
    token sampled last left out of the cache (appending after it answers wrongly: onnxruntime-genai reads it only
    on the next step), a rewind to the wrong point after a stop or a trim, and reuse that never happens."""
    s = pocket("ortgenai")
    on = play(s, True, check_cache=_og_cache)
    off = play(s, False)
    assert_parity(on, off)
    assert all(t.cache_ok for t in on.turns), [(t.action, t.finish, t.cache_ok) for t in on.turns]


# --- OpenVINO: LLMPipeline caches prefixes itself; optimum-intel's stateful model's state is kept and cut -------------


@pytest.mark.parametrize("runtime", ["genai", "optimum"])
def test_openvino_chat_answers_as_pytorch_with_a_full_prefill(runtime: str) -> None:
    """The scripted chat (a trim, a stop, a failure) on OpenVINO at fp32 (f32 compute and KV cache) gives, turn by
    turn, PyTorch's ids with a full prefill per turn. LLMPipeline reuses cached prefixes by itself (its prefix
    cache, on by default: benchmarks/chat.py measures it); the kit reports no reuse for it, since the pipeline says
    nothing of what it read. optimum-intel's stateful model goes on from its state, cut to the common prefix where
    the prompt diverges (after a stop: the stopped answer's ids the consumer never read are cut off). Catches a
    prefix cache that answers from a stale or cut-off prefix after a stop, a failure or a trim, a state reused for a
    prompt that does not extend it, a state cut at the wrong place, and a trim or a stop that throws it away."""
    ref = play(pocket("transformers"), False)
    s = pocket("openvino", runtime)
    got = play(s, True, check_cache=cache_matches if s.backend.reuses_cache else None)
    assert [(t.action, t.prompt_ids, t.finish) for t in got.turns] == [(t.action, t.prompt_ids, t.finish)
                                                                        for t in ref.turns]
    assert [t.token_ids for t in got.turns if t.finish != "error"] == [t.token_ids for t in ref.turns
                                                                        if t.finish != "error"]
    assert got.history == ref.history and any(t.trimmed for t in got.turns)
    if runtime == "optimum":  # the stateful model went on from its state, cut where a prompt diverged
        assert s.backend.reuses_cache and sum(t.reused > 0 for t in got.turns) >= 4, [t.reused for t in got.turns]
        assert all(t.cache_ok for t in got.turns)
        # A trim changes the prompt right after the system prompt: the state is cut there, not thrown away.
        trims = [b for a, b in zip(got.turns, got.turns[1:], strict=False) if b.trimmed != a.trimmed]
        after_stop = [b for a, b in zip(got.turns, got.turns[1:], strict=False) if a.action == "stop"]
        assert trims and all(0 < t.reused < len(t.prompt_ids) for t in trims + after_stop), \
            [(t.action, t.trimmed, t.reused, len(t.prompt_ids)) for t in got.turns]
    else:
        assert all(t.reused == 0 for t in got.turns)


def test_openvino_genai_reuse_off_turns_its_prefix_cache_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """LLMPipeline on CPU runs continuous batching with prefix caching on: reuse_cache=False must build it with
    prefix caching off (else the chat benchmark's "off" column reads cached prefixes), keeping the latency-oriented
    scheduler's uncapped steps (a plain SchedulerConfig() caps a step at 256 tokens and chunks every prefill,
    changing what a single prompt measures). The pipeline reports neither what it read nor its scheduler, so a spy
    at its constructor reads what reached it; the ids of two identical-prefix prompts match those of the pipeline
    with its prefix cache on. Catches reuse off that never reaches the pipeline, or reaches it with chunked steps."""
    import openvino_genai

    from phi3kit.backends.openvino.runtime import UNLIMITED

    built: list[dict] = []
    real = openvino_genai.LLMPipeline

    def spy(*args, **kwargs):  # the real pipeline, its properties recorded
        built.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(openvino_genai, "LLMPipeline", spy)
    off = kit.load("pocket", "openvino", "fp32", runtime="genai", reuse_cache=False, log=lambda m: None)
    try:
        scheduler = built[-1]["scheduler_config"]
        assert scheduler.enable_prefix_caching is False and scheduler.max_num_batched_tokens == UNLIMITED
        on = pocket("openvino", "genai")
        first = "Tell me about the moon and the tides, the sea and the wind, and what the sailors said."
        for prompt in (first, first + " And the stars?"):
            assert off.generate(prompt, max_new_tokens=12).consume().token_ids == \
                on.generate(prompt, max_new_tokens=12).consume().token_ids
    finally:
        off.close()


def test_openvino_genai_reuse_on_and_chosen_backends_keep_the_pipeline_default() -> None:
    """Reuse on keeps LLMPipeline's own default (prefix caching on); a caller's own ATTENTION_BACKEND or scheduler,
    and the NPU (a stateful pipeline, no scheduler), are left alone. Catches reuse off forced on a caller's choice
    (an explicit scheduler forces paged attention and fails where the pipeline would fall back)."""
    from phi3kit.backends.openvino.runtime import genai_properties

    props = {"INFERENCE_PRECISION_HINT": "f32"}
    assert genai_properties(props, "CPU", True) == props
    assert genai_properties(props, "NPU", False) == props
    sdpa = {**props, "ATTENTION_BACKEND": "SDPA"}
    assert genai_properties(sdpa, "CPU", False) == sdpa
    off = genai_properties(props, "GPU.1", False)
    assert off["INFERENCE_PRECISION_HINT"] == "f32" and off["scheduler_config"].enable_prefix_caching is False
