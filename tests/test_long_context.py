"""Long prompts and long chats on every route: past the sliding window, past LongRoPE's original window, inside
the NPU's limits, and a chat that survives a failed answer.

Tiny random Phi-3 models whose sliding window is shrunk (64 tokens in a 512-token context) so that a few hundred
tokens cross it, and a LongRoPE model with Phi-3.5-mini's own original window (4096: ONNX Runtime GenAI switches
factors there, not at a shrunk one), all at fp32 on the CPU. Greedy ids must equal PyTorch's, or the route must
refuse before generating, naming its limit. The lm_head rows of the stop tokens are zeroed, so no answer ends
early and every crossing is really reached.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import phi3kit as kit
from phi3kit.backends.openvino.npu import npu_limits, npu_preset
from phi3kit.context import Limits, memory_window
from phi3kit.generate import Response

ROOT = Path(__file__).resolve().parents[1]
REAL_TOKENIZER = ROOT / "tests" / "data" / "phi3-tokenizer"
WINDOW, CONTEXT, LONGROPE = 64, 512, 4096
ROUTES = [("openvino", "genai"), ("openvino", "optimum"), ("ortgenai", None)]
# ONNX Runtime GenAI 0.13.1's builder (the DirectML build's version; CI runs the window tests with it too) puts the
# window into the graph (GroupQueryAttention's local_window_size) and writes no sliding_window section: a plain
# build of it never ignores the window. 0.18's builder ignores it unless the checkpoint lists its layer types.
BUILDER_KEEPS_WINDOW = kit.backends.get("ortgenai").runtime_versions().get("onnxruntime-genai", "").startswith("0.13")
needs_a_builder_that_drops_the_window = pytest.mark.skipif(
    BUILDER_KEEPS_WINDOW, reason="onnxruntime-genai 0.13.1's builder always builds the window in: no such folder "
                                 "comes from it (0.18's and 2024's builders make them; the dev run covers it)")


def quiet(message: str) -> None:
    pass


def never_stopping(variant: str, out: Path, tokenizer: Path | None, **config: object) -> Path:
    """A random model whose stop tokens can never win the argmax (their lm_head rows are zero)."""
    import torch
    from safetensors.torch import load_file, save_file

    from phi3kit.testing import make_random_phi3
    from phi3kit.tokenizer import Tokenizer

    folder = make_random_phi3(variant, out, tokenizer_dir=tokenizer)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(config)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    weights = load_file(folder / "model.safetensors")
    tok = Tokenizer(folder)
    stops = [tok.token_to_id(t) for t in ("<|end|>", "<|endoftext|>")]
    with torch.no_grad():
        weights["lm_head.weight"][stops] = 0.0
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    made: dict[str, Path] = {}
    recipes = {
        # Phi-3's own tokenizer and vocabulary (32064), the window shrunk so a few hundred tokens cross it.
        "window": ("mini-4k", REAL_TOKENIZER, {"sliding_window": WINDOW, "max_position_embeddings": CONTEXT,
                                               "original_max_position_embeddings": CONTEXT}),
        "longrope": ("3.5-mini", None, {}),  # LongRoPE, original window 4096, context 131072
    }

    def get(name: str) -> Path:
        if name not in made:
            variant, tokenizer, config = recipes[name]
            made[name] = never_stopping(variant, tmp_path_factory.mktemp(name), tokenizer, **config)
        return made[name]

    return get


_sessions: dict[tuple[str, ...], kit.Session] = {}


def session(model: Path, backend: str, runtime: str | None = None) -> kit.Session:
    key = (str(model), backend, str(runtime))
    if key not in _sessions:
        _sessions[key] = kit.load(str(model), backend, "fp32", runtime=runtime, log=quiet)
    return _sessions[key]


def greedy(s: kit.Session, ids: list[int], n: int) -> list[int]:
    return Response(s, ids, kit.GenerationConfig(max_new_tokens=n)).consume().token_ids


def prompt_ids(n: int, vocab: int = 900) -> list[int]:
    return [10 + (i * 7) % vocab for i in range(n)]


_references: dict[tuple[str, tuple[int, ...], int], list[int]] = {}


def reference(model: Path, ids: list[int], n: int) -> list[int]:
    """PyTorch's greedy answer through the kit's transformers route, computed once per (model, prompt, length):
    every route of a parametrized test compares with the same answer (greedy fp32 on the CPU: the same ids)."""
    key = (str(model), tuple(ids), n)
    if key not in _references:
        out = greedy(session(model, "transformers"), ids, n)
        assert len(out) == n  # the stop tokens cannot win: the whole answer, every crossing reached
        _references[key] = out
    return list(_references[key])


# --- past the sliding window --------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(("backend", "runtime"), ROUTES)
@pytest.mark.parametrize(("n_prompt", "n_new"), [(300, 40), (30, 100), (3, CONTEXT - 3)],
                         ids=["prefill-past", "decode-crossing", "whole-context"])
def test_sliding_window_through_every_route(models: Callable[[str], Path], backend: str, runtime: str | None,
                                            n_prompt: int, n_new: int) -> None:
    """ONNX Runtime GenAI 0.18's builder once ignored the window: GroupQueryAttention failed past it (and answered
    with full attention before). The kit builds the window in; every route now follows PyTorch's window."""
    model = models("window")
    ids = prompt_ids(n_prompt)
    assert n_prompt + n_new > WINDOW
    assert greedy(session(model, backend, runtime), ids, n_new) == reference(model, ids, n_new)


@pytest.mark.slow
def test_the_onnx_build_has_the_window_built_in(models: Callable[[str], Path]) -> None:
    from phi3kit.backends.ortgenai import built_window

    s = session(models("window"), "ortgenai")
    got = built_window(s.export.path)
    assert got["local_window_size"] == [WINDOW]
    assert got["section"].get("window_size") == (None if BUILDER_KEEPS_WINDOW else WINDOW)  # 0.13.1 writes none
    assert s.limits.window == CONTEXT  # the whole context, not the window


@pytest.fixture(scope="module")
def builder_as_is(models: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Callable[[], Path]:
    """The window model as ORT GenAI's builder makes it when run by hand (fp32, CPU), built once for the module:
    the two tests below each copy it and load (or first edit) their copy. Built on first use, so a run where both
    tests are skipped (0.13.1's builder) or deselected builds nothing."""
    import sys

    from phi3kit.backends.ortgenai import builder  # its run_logged: the export zygote's fork where there is one

    built: list[Path] = []

    def get() -> Path:
        if not built:
            out = tmp_path_factory.mktemp("builder-as-is")
            cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(models("window")), "-o",
                   str(out / "model"), "-p", "fp32", "-e", "cpu", "-c", str(out / "c")]
            rc, lines = builder.run_logged(cmd, quiet)
            assert rc == 0, "\n".join(lines[-20:])
            built.append(out / "model")
        return built[0]

    return get


@pytest.mark.slow
@needs_a_builder_that_drops_the_window
def test_a_2024_build_without_the_window_says_its_answers_differ_past_it(
        models: Callable[[str], Path], builder_as_is: Callable[[], Path], tmp_path: Path) -> None:
    """Microsoft's 2024 Phi-3 ONNX folders: no sliding_window in genai_config.json, none in the graph, a config.json
    that declares it. Such a build attends to the whole context: the model's answers up to the window, others past
    it, and no failure. The kit's limits keep the whole context and say so in their note (before: nothing said)."""
    import shutil

    model = models("window")
    out = shutil.copytree(builder_as_is(), tmp_path / "as-in-2024")
    genai = json.loads((out / "genai_config.json").read_text(encoding="utf-8"))
    del genai["model"]["decoder"]["sliding_window"]  # the 2024 builders wrote none
    (out / "genai_config.json").write_text(json.dumps(genai, indent=2), encoding="utf-8")
    shutil.copy2(model / "config.json", out / "config.json")
    s = kit.load(str(out), "ortgenai", log=quiet)
    assert s.limits.window == CONTEXT and f"sliding_window={WINDOW}" in s.limits.note
    assert f"pass {WINDOW + 1} tokens differ from the model's" in s.limits.note
    ids = prompt_ids(40)
    assert greedy(s, ids, WINDOW + 1 - 40) == reference(model, ids, WINDOW + 1 - 40)  # inside the window: the model's
    ids = prompt_ids(300)
    assert greedy(s, ids, 20) != reference(model, ids, 20)  # past it: what the note says


@pytest.mark.slow
@needs_a_builder_that_drops_the_window
def test_a_build_that_ignores_the_window_is_capped_before_it_fails(
        models: Callable[[str], Path], builder_as_is: Callable[[], Path], tmp_path: Path) -> None:
    """A folder built by the builder as it is (a ready-made folder from elsewhere): the kit serves what it answers
    correctly (prompt + answer <= window + 1) and refuses the rest before generating; past window + 17 the runtime
    itself fails mid-stream, and that answer ends as an error."""
    import shutil

    model = models("window")
    out = shutil.copytree(builder_as_is(), tmp_path / "as-built")
    s = kit.load(str(out), "ortgenai", log=quiet)
    assert s.limits.window == WINDOW + 1 and "ignores the model's sliding window" in s.limits.why
    ids = prompt_ids(40)
    assert greedy(s, ids, WINDOW + 1 - 40) == reference(model, ids, WINDOW + 1 - 40)  # up to the cap: correct
    with pytest.raises(kit.ContextWindowError, match=r"sliding_window \+ 1 = 65.*prefer='export'"):
        s.generate([{"role": "user", "content": "x " * 80}], max_new_tokens=10)
    failing = Response(s, prompt_ids(60), kit.GenerationConfig(max_new_tokens=40))  # past the check: the runtime
    with pytest.raises(RuntimeError):
        failing.consume()
    assert failing.metrics.finish_reason == "error" and isinstance(failing.error, RuntimeError)
    assert 0 < len(failing.token_ids) < 40  # some tokens came before the runtime failed


# --- past LongRoPE's original window -------------------------------------------------------------------
def full_recompute(model: Path, ids: list[int], n: int) -> list[int]:
    """The model's own rule with no cache at all: every step reruns the whole sequence (long factors past 4096)."""
    import torch
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    seq = list(ids)
    with torch.inference_mode():
        for _ in range(n):
            seq.append(int(m(torch.tensor([seq]), logits_to_keep=1).logits[0, -1].argmax()))
    return seq[len(ids):]


@pytest.mark.slow
@pytest.mark.parametrize(("n_prompt", "n_new"), [(4200, 8), (4090, 16)], ids=["prompt-past", "answer-crossing"])
def test_longrope_past_the_original_window(models: Callable[[str], Path], n_prompt: int, n_new: int) -> None:
    """transformers 5.5's own LongRoPE reset ran one token alone, and optimum-intel 2.2 failed at cache_position[0]
    past the original window; both are fixed by the kit. OpenVINO GenAI cannot be made to agree past it: the kit
    limits that route to the original window, and says so before generating."""
    model = models("longrope")
    ids = prompt_ids(n_prompt)
    want = full_recompute(model, ids, n_new)
    assert reference(model, ids, n_new) == want  # the kit's PyTorch route follows the model's rule
    for backend, runtime in (("openvino", "optimum"), ("ortgenai", None)):
        assert greedy(session(model, backend, runtime), ids, n_new) == want, (backend, runtime)
    genai = session(model, "openvino", "genai")
    assert genai.limits.window == LONGROPE and "runtime='optimum'" in genai.limits.fix
    with pytest.raises(kit.ContextWindowError, match="OpenVINO GenAI on a LongRoPE model.*4096"):
        genai.check_fits(n_prompt, n_new)


@pytest.mark.slow
def test_longrope_inside_the_original_window_on_genai(models: Callable[[str], Path]) -> None:
    model = models("longrope")
    ids = prompt_ids(LONGROPE - 40)
    assert greedy(session(model, "openvino", "genai"), ids, 40) == reference(model, ids, 40)


# --- chats that grow past the window ----------------------------------------------------------------
QUESTIONS = ["Tell me about NPUs and how they compare with GPUs for local inference.",
             "What does OpenVINO GenAI do with a prompt?", "And ONNX Runtime GenAI?", "Summarise all of that.",
             "What is a sliding window?", "Why does it matter?", "Which route is fastest?", "Thank you."]


_reference_chats: dict[str, list[tuple[int, int, list[int]]]] = {}


@pytest.mark.slow
@pytest.mark.parametrize(("backend", "runtime"), ROUTES)
def test_a_multi_turn_chat_that_grows_past_the_window(models: Callable[[str], Path], backend: str,
                                                      runtime: str | None) -> None:
    """Each route keeps its KV cache across the turns (reuse on) and still answers as PyTorch does with a full
    prefill at every turn: past the window (ONNX Runtime GenAI's sliding-window cache extends, and starts afresh
    where a rewind would need positions it evicted) and past the context (a trim). Catches reuse that breaks past
    the window, a chat whose prompts re-tokenize the answers (each turn then rewinds into the previous answer), and
    a rewind into evicted positions that answers from a wrong cache instead of starting afresh."""
    model = models("window")
    reused: list[int] = []

    def turns(s: kit.Session, reuse: bool) -> list[tuple[int, int, list[int]]]:
        s.reuse_cache = reuse
        conv = kit.Conversation(s, max_new_tokens=64)
        out = []
        try:
            for q in QUESTIONS:
                r = conv.say(q)
                r.consume()
                out.append((len(r.prompt_ids), r.trimmed_turns, r.token_ids))
                reused.append(r.metrics.reused_tokens)
        finally:
            s.reuse_cache = True
        return out

    if str(model) not in _reference_chats:  # PyTorch's chat once, for every route (greedy fp32: the same turns)
        _reference_chats[str(model)] = turns(session(model, "transformers"), False)
    want = _reference_chats[str(model)]
    assert want[2][0] > WINDOW  # past the sliding window from the third turn on...
    assert any(trimmed for _, trimmed, _ in want)  # ...and past the context: older turns left out
    reused.clear()
    s = session(model, backend, runtime)
    assert turns(s, True) == want
    # A turn that starts where the previous one did goes on from the previous prompt and its answer's own ids (all
    # but the answer's last token, which no forward pass read when it ended at max_new_tokens): past the window too.
    # OpenVINO GenAI's LLMPipeline does not say what its prefix cache served.
    grows = [i for i in range(1, len(want)) if want[i][1] == want[i - 1][1]]
    trim = next(i for i in range(1, len(want)) if want[i][1] > want[i - 1][1])
    if runtime != "genai":
        assert all(reused[i] >= want[i - 1][0] + len(want[i - 1][2]) - 1 for i in grows), reused
    if backend == "ortgenai":
        assert reused[2] > WINDOW, reused
        # The trim rewinds to the start. 0.18's cache is the window (plus its slack) and evicts: a rewind to an
        # evicted position starts afresh. 0.13.1's builder puts the window into the graph and keeps a full-length
        # cache: every rewind is possible.
        assert (reused[trim] > 0) == BUILDER_KEEPS_WINDOW, reused


# --- the NPU's two limits -------------------------------------------------------------------------------
def test_npu_limits_are_the_preset_shapes() -> None:
    props = npu_preset(kit.LoadConfig(device="NPU"), max_prompt_len=64, min_response_len=32).runtime_config
    limits = npu_limits(props, 4096)
    assert (limits.window, limits.max_prompt) == (96, 64)
    with pytest.raises(kit.ContextWindowError, match=r"65 tokens.*MAX_PROMPT_LEN=64.*up to 64.*max_prompt_len=256"):
        limits.check(65, 8)
    with pytest.raises(kit.ContextWindowError, match=r"max_new_tokens=40 exceed.*96 tokens.*<= 32"):
        limits.check(64, 40)
    limits.check(64, 32)
    assert npu_limits(props, 80).window == 80  # never past the model's own window


def test_chat_trimming_keeps_to_the_npu_limits() -> None:
    """Chat trimmed to the model's window once let an NPU conversation outgrow MAX_PROMPT_LEN after a few turns and
    raise; it now trims to the NPU's shapes (the preset's properties, driven on the CPU)."""
    s = kit.load("pocket", "transformers", log=quiet)
    props = npu_preset(kit.LoadConfig(device="NPU"), max_prompt_len=96, min_response_len=64).runtime_config
    s.limits = npu_limits(props, s.source.context_length)
    s.context_length = s.limits.window
    s.chat_window, s.chat_window_why = s.limits.window, s.limits.why
    conv = kit.Conversation(s, max_new_tokens=48)
    trimmed, notices = [], 0
    for q in ["What is an NPU?", "What is OpenVINO?", "What is papermill?", "What is DirectML?"]:
        r = conv.say(q)
        r.consume()
        assert len(r.prompt_ids) <= 96 and len(r.prompt_ids) + 48 <= 160
        trimmed.append(r.trimmed_turns)
        if r.trimmed_now:  # the notice comes with each new trim (not with every answer after one)
            assert "NPU pipeline, compiled for MAX_PROMPT_LEN=96" in r.trim_notice
            notices += 1
    assert trimmed[0] == 0 and any(trimmed) and notices
    with pytest.raises(kit.ContextWindowError, match="MAX_PROMPT_LEN=96"):
        s.generate("word " * 200, max_new_tokens=8)


# --- a window that fits the machine's memory -------------------------------------------------------------
def test_long_context_chats_get_a_window_that_fits_the_memory() -> None:
    """A 128k-token chat window would be a 25-100 GB KV cache: the default caps it to a share of the RAM."""
    limits = Limits(131072, 131071, "the model's context window of 131072 tokens")
    kv = 2 * 32 * 32 * 96 * 2  # Phi-3-mini, fp16 keys and values: 384 KiB a token
    assert memory_window(limits, kv, 8 * 2**30) == 5120  # a quarter of 8 GB, in steps of 1024
    assert memory_window(limits, kv, 512 * 2**30) == 131072  # a server keeps the whole window
    small = Limits(4096, 4095, "the model's context window of 4096 tokens")
    assert memory_window(small, kv, 1 * 2**30) == 4096  # a 4k model keeps its window


@pytest.mark.slow
def test_the_chat_window_cap_is_stated_and_can_be_raised(models: Callable[[str], Path],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Driven with a laptop's memory: the tiny model's KV cache (2 KiB a token) against 64 MiB available."""
    from collections import namedtuple

    import psutil

    memory = namedtuple("memory", "available total")
    monkeypatch.setattr(psutil, "virtual_memory", lambda: memory(available=64 * 2**20, total=16 * 2**30))
    s = kit.load(str(models("longrope")), "transformers", "fp32", log=quiet)
    assert s.context_length == 131072 and s.chat_window == 8192  # 16 MiB of KV cache: a quarter of 64 MiB
    assert "capped from the model's context window of 131072 tokens" in s.chat_window_why
    conv = kit.Conversation(s, max_new_tokens=8)
    assert conv.window == s.chat_window
    raised = kit.Conversation(s, max_new_tokens=8, context_length=s.chat_window + 4096)
    assert raised.window == s.chat_window + 4096
    many = [{"role": r, "content": "many words of history " * 50} for _ in range(200) for r in ("user", "assistant")]
    r = s.chat([*many, {"role": "user", "content": "and now?"}], max_new_tokens=8)
    assert r.trimmed_turns and "8192-token context window (capped from the model's" in r.trim_notice


# --- an answer that fails -----------------------------------------------------------------------------------
def failing_after(s: kit.Session, n: int, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make the backend raise after `n` tokens (n=0: before the first one), as a runtime error would."""
    calls: list[int] = []
    real = s.backend.stream

    def stream(prompt_ids: list[int], gen: kit.GenerationConfig, stop_ids: list[int],
               **kw: bool) -> Iterator[tuple[int, float]]:  # kw: reuse=, where the backend keeps its cache
        calls.append(len(prompt_ids))
        if n == 0:
            raise RuntimeError("the runtime refused the prompt")
        for i, item in enumerate(real(prompt_ids, gen, stop_ids, **kw)):
            if i == n:
                raise RuntimeError("the runtime failed mid-answer")
            yield item

    monkeypatch.setattr(s.backend, "stream", stream)
    return calls


@pytest.mark.parametrize("after", [0, 3], ids=["before-the-first-token", "mid-stream"])
def test_a_failed_answer_ends_as_an_error_and_the_chat_goes_on(after: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure inside a stream once ended as finish_reason='stop' and stored the partial text as an answer; one
    before the first token left the Response neither done nor failed, and the next say() added a second user turn."""
    s = kit.load("pocket", "transformers", log=quiet)
    conv = kit.Conversation(s, max_new_tokens=32)
    first = conv.say("What is an NPU?")
    first.consume()
    before = conv.history
    failing_after(s, after, monkeypatch)
    r = conv.say("What is OpenVINO?")
    with pytest.raises(RuntimeError, match="the runtime"):
        r.consume()
    assert r.metrics.finish_reason == "error" and r.failed and isinstance(r.error, RuntimeError)
    assert len(r.token_ids) == after
    assert conv.history == before  # the failed question is not kept as an orphan
    monkeypatch.undo()
    retry = conv.say("What is OpenVINO?")  # the same question again, from a clean turn
    unfailed = kit.Conversation(s, max_new_tokens=32)
    unfailed.say("What is an NPU?").consume()
    assert retry.text == unfailed.say("What is OpenVINO?").text  # as if the failure never happened
    assert [m["role"] for m in conv.history] == ["user", "assistant", "user", "assistant"]


def test_the_chat_panel_shows_the_error_and_stays_usable(monkeypatch: pytest.MonkeyPatch) -> None:
    s = kit.load("pocket", "transformers", log=quiet)
    panel = kit.chat(s, max_new_tokens=32, interactive=False)
    failing_after(s, 2, monkeypatch)
    panel.send("What is an NPU?")
    panel.wait(600)
    assert "The answer failed: RuntimeError: the runtime failed mid-answer" in panel.notice.value
    assert "[failed]" in panel.answer.value and not panel.send_button.disabled and panel.stop_button.disabled
    assert panel.conversation.history == []
    monkeypatch.undo()
    panel.send("What is an NPU?")
    panel.wait(600)
    assert panel.response is not None and panel.response.metrics.finish_reason in ("stop", "length")
    assert [m["role"] for m in panel.conversation.history] == ["user", "assistant"]
