"""llama.cpp backend (llama-cpp-python): the route without the package everywhere, the real one where it is built.

CI has no llama-cpp-python (requirements/llamacpp.txt compiles it): there the route is skipped with its reason,
loading it fails before any export, and the converter's sources are fetched from a stand-in archive. Where it is
installed, tiny random Phi-3 models are exported with llama.cpp's own converter (from PHI3KIT_LLAMA_CPP, or the
installed version's source archive, which the kit fetches once into the test cache) and checked against PyTorch.
"""

from __future__ import annotations

import importlib.util
import io
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import phi3kit as kit
from phi3kit import bench, procs
from phi3kit.backends import llamacpp
from phi3kit.backends.llamacpp import LlamaCppBackend
from phi3kit.bench.routes import Route, problem
from phi3kit.cache import ExportCache
from phi3kit.exporting import complete, prepare
from phi3kit.testing import make_random_phi3, variant_config

ROOT = Path(__file__).resolve().parents[1]
PHI3_TOKENIZER = ROOT / "tests" / "data" / "phi3-tokenizer"
PROMPT = "Tell me about OpenVINO on the NPU."
HAVE_LLAMA = importlib.util.find_spec("llama_cpp") is not None
needs_llama = pytest.mark.skipif(not HAVE_LLAMA, reason="llama-cpp-python is not installed (requirements/llamacpp.txt "
                                 "builds it from source; CI runs without it)")


# --- without the package (CI): the route says why it cannot run ----------------------------------------------
@pytest.fixture
def no_llama(monkeypatch: pytest.MonkeyPatch) -> None:
    """This environment as one without llama-cpp-python (where it is installed, its import is blocked)."""
    if HAVE_LLAMA:
        monkeypatch.setitem(sys.modules, "llama_cpp", None)  # find_spec gives None, `import llama_cpp` fails


def test_route_is_skipped_with_its_reason(no_llama: None) -> None:
    for spec in ("llamacpp:q4_k_m", "llamacpp:q4_0"):
        why = problem(Route.parse(spec))
        assert why is not None and why.startswith("llama-cpp-python is not installed: ")
        assert "requirements/llamacpp.txt" in why and "-mno-amx-tile" in why
    report = bench.run("pocket", "llamacpp:q4_k_m,llamacpp:q4_0", prompt_lengths=8, max_new_tokens=2, runs=1,
                       quality=False, isolate=False, log=lambda m: None)
    assert [(r.route, r.status) for r in report.routes] == [("llamacpp/llama-cpp:q4_k_m", "skipped"),
                                                            ("llamacpp/llama-cpp:q4_0", "skipped")]
    assert all("requirements/llamacpp.txt" in r.note for r in report.routes)


def test_load_fails_before_any_export(no_llama: None, tmp_path: Path) -> None:
    logs: list[str] = []
    with pytest.raises(kit.MissingDependencyError) as err:
        kit.load("pocket", "llamacpp", cache_dir=str(tmp_path), log=logs.append)
    assert err.value.package == "llama-cpp-python"
    assert "requirements/llamacpp.txt" in str(err.value)
    # Preparing files for another machine skips the device check: the export itself names the requirements.
    with pytest.raises(kit.MissingDependencyError, match=r"requirements/llamacpp\.txt"):
        prepare(kit.LoadConfig(model="pocket", backend="llamacpp", cache_dir=str(tmp_path)), logs.append,
                check_device=False)
    assert not list(tmp_path.rglob("*.gguf")) and not any("Convert" in m for m in logs)


def test_choices_are_checked_before_anything_loads(no_llama: None) -> None:
    with pytest.raises(kit.UnknownChoiceError, match="q4_k_m"):
        LlamaCppBackend.check(kit.LoadConfig(backend="llamacpp", precision="int4"), device=False)
    assert complete(kit.LoadConfig(backend="llamacpp")).precision == "q4_k_m"
    assert problem(Route.parse("llamacpp:int4")) == (
        "backend llamacpp has no precision 'int4' (it has: q4_k_m, q4_0, q8_0, f16, bf16)")


def test_an_amx_build_is_refused_for_quantized_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """A native build on an AMX Xeon compiles ggml's AMX kernels, whose batched prefill crashes the process."""
    info = "CPU : SSE3 = 1 | AVX512 = 1 | AVX512_VNNI = 1 | AMX_INT8 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 |"
    assert llamacpp.amx_compiled(info)
    assert not llamacpp.amx_compiled(info.replace("AMX_INT8 = 1", "AMX_INT8 = 0"))
    assert not llamacpp.amx_compiled("CPU : SSE3 = 1 | AVX512 = 1 | AVX512_BF16 = 1 | REPACK = 1 |")
    monkeypatch.setattr(LlamaCppBackend, "devices", classmethod(lambda cls, runtime: ["CPU"]))
    monkeypatch.setattr(llamacpp, "system_info", lambda: info)
    with pytest.raises(llamacpp.LlamaCppBuildError, match="-mno-amx-int8") as err:
        LlamaCppBackend.check(kit.LoadConfig(backend="llamacpp", precision="q4_k_m"))
    assert "allow_amx" in str(err.value)
    LlamaCppBackend.check(kit.LoadConfig(backend="llamacpp", precision="f16"))
    LlamaCppBackend.check(kit.LoadConfig(backend="llamacpp", precision="q4_0", runtime_config={"allow_amx": True}))
    LlamaCppBackend.check(kit.LoadConfig(backend="llamacpp", precision="q4_0"), device=False)  # another machine's


def test_context_is_where_llama_cpp_runs_the_model_as_it_is() -> None:
    """The windows the measured tests below rest on: sliding_window + 1 for mini-4k, the original window for
    LongRoPE, the whole window otherwise; never more than the memory holds (not below 4096 tokens)."""
    plenty = 64 * 2**30
    mini = variant_config("mini-4k").to_dict()
    assert llamacpp.exact_window(mini)[0] == 2048 and llamacpp.context_size(mini, plenty) == 2048
    for variant in ("mini-128k", "3.5-mini", "4-mini"):
        config = variant_config(variant).to_dict()
        assert llamacpp.exact_window(config)[0] == 4096 and llamacpp.context_size(config, plenty) == 4096
    whole = {**mini, "sliding_window": None}
    assert llamacpp.exact_window(whole) is None and llamacpp.context_size(whole, plenty) == 4096
    full = {**variant_config("mini-128k", "full").to_dict(), "rope_parameters": None, "sliding_window": None}
    kv = 2 * 32 * 32 * 96 * 2  # bytes per token: K and V, 32 layers of 3072 f16 values
    assert llamacpp.context_size(full, 4096 * kv * 4 * 3) == 12288  # a quarter of the memory, in steps of 1024
    assert llamacpp.context_size(full, 1) == 4096
    assert llamacpp.context_size({}, plenty) == 0  # no config: the GGUF's own


def fake_sdist(path: Path, version: str = "9.9.9") -> Path:
    """A source archive shaped like llama-cpp-python's: vendor/llama.cpp with a converter, and much else."""
    top = f"llama_cpp_python-{version}"
    files = {f"{top}/vendor/llama.cpp/convert_hf_to_gguf.py": b"print('converter')\n",
             f"{top}/vendor/llama.cpp/conversion/phi.py": b"",
             f"{top}/vendor/llama.cpp/gguf-py/gguf/__init__.py": b"",
             f"{top}/vendor/llama.cpp/LICENSE": b"MIT\n",
             f"{top}/vendor/llama.cpp/ggml/src/ggml.c": b"/* not needed */\n",
             f"{top}/llama_cpp/llama.py": b""}
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_converter_is_fetched_once_into_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No PHI3KIT_LLAMA_CPP: the installed version's sdist is downloaded (here: a stand-in copied by a child
    process in place of pip) and its converter kept as a cache entry; the next export finds it there."""
    monkeypatch.delenv(llamacpp.SOURCES_ENV, raising=False)
    monkeypatch.setattr(llamacpp.fetch, "installed_version", lambda: "9.9.9")  # where fetch looks it up
    archive = fake_sdist(tmp_path / "llama_cpp_python-9.9.9.tar.gz")
    commands: list[list[str]] = []

    def download(version: str, dest: Path) -> list[str]:
        cmd = [sys.executable, "-c", f"import shutil; shutil.copy({str(archive)!r}, {str(dest)!r})"]
        commands.append(cmd)
        return cmd

    monkeypatch.setattr(llamacpp.fetch, "sdist_command", download)
    cache = ExportCache(tmp_path / "cache")
    tree = llamacpp.converter_tree(cache, log=lambda m: None)
    assert (tree / "convert_hf_to_gguf.py").read_text() == "print('converter')\n"
    assert (tree / "gguf-py" / "gguf" / "__init__.py").is_file() and (tree / "LICENSE").is_file()
    assert not (tree / "ggml").exists() and llamacpp.llama_cpp_tree(tree) == tree
    assert llamacpp.converter_tree(cache, log=lambda m: None) == tree and len(commands) == 1
    assert [e["kind"] for e in cache.entries()] == ["converter"]


def test_real_download_command_is_pips() -> None:
    cmd = llamacpp.sdist_command("0.3.36", Path("/tmp/x"))
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in cmd and ":all:" in cmd and "llama-cpp-python==0.3.36" in cmd


def test_converter_sources_named_by_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with tarfile.open(fake_sdist(tmp_path / "s.tar.gz")) as tar:
        tar.extractall(tmp_path / "sdist", **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    sdist = tmp_path / "sdist" / "llama_cpp_python-9.9.9"
    cache = ExportCache(tmp_path / "cache")
    monkeypatch.setenv(llamacpp.SOURCES_ENV, str(sdist))  # an extracted sdist: its vendor/llama.cpp
    assert llamacpp.converter_tree(cache) == sdist / "vendor" / "llama.cpp"
    monkeypatch.setenv(llamacpp.SOURCES_ENV, str(sdist / "vendor" / "llama.cpp"))  # a llama.cpp checkout
    assert llamacpp.converter_tree(cache) == sdist / "vendor" / "llama.cpp"
    monkeypatch.setenv(llamacpp.SOURCES_ENV, str(tmp_path))
    with pytest.raises(kit.ExportError, match=r"PHI3KIT_LLAMA_CPP=.* holds no convert_hf_to_gguf\.py.*git clone"):
        llamacpp.converter_tree(cache)
    assert not cache.entries()


# --- with the package ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sources() -> Path:
    """llama.cpp's converter for this run: PHI3KIT_LLAMA_CPP's, or the installed version's sdist fetched once."""
    if not HAVE_LLAMA:
        pytest.skip("llama-cpp-python is not installed (requirements/llamacpp.txt builds it from source)")
    try:
        return llamacpp.converter_tree(ExportCache(), log=lambda m: None)
    except kit.ExportError as exc:
        pytest.skip(f"llama.cpp's converter is unavailable (set PHI3KIT_LLAMA_CPP to a llama.cpp checkout): {exc}")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, sources: Path) -> Callable[[str], Path]:
    """Tiny random Phi-3 checkpoints: "mini-4k" (the pocket tokenizer, byte-level BPE), "phi3-vocab" (mini-4k
    with Phi-3's own SentencePiece-style tokenizer, tokenizer.json only), "mini-128k" (LongRoPE)."""
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            out = tmp_path_factory.mktemp(name)
            tokenizer = {"tokenizer_dir": PHI3_TOKENIZER} if name == "phi3-vocab" else {}
            made[name] = make_random_phi3("mini-128k" if name == "mini-128k" else "mini-4k", out, **tokenizer)
        return made[name]

    return get


_sessions: dict[tuple[Any, ...], kit.Session] = {}


def session(model: Path, precision: str, **runtime_config: Any) -> kit.Session:
    """One loaded session per model, precision and runtime_config for the module (exports are cached too)."""
    key = (str(model), precision, *sorted(runtime_config.items()))
    if key not in _sessions:
        backend = "transformers" if precision == "ref" else "llamacpp"
        _sessions[key] = kit.load(str(model), backend, "fp32" if precision == "ref" else precision,
                                  log=lambda m: None, runtime_config=runtime_config)
    return _sessions[key]


@pytest.fixture(scope="module", autouse=True)
def _close_sessions() -> Iterator[None]:
    yield
    for s in _sessions.values():
        s.close()
    _sessions.clear()


def greedy(s: kit.Session, prompt: str = PROMPT, n: int = 16) -> list[int]:
    return s.generate(prompt, max_new_tokens=n, ignore_eos=True).consume().token_ids


@needs_llama
@pytest.mark.slow
@pytest.mark.parametrize("name", ["mini-4k", "phi3-vocab"])
def test_f16_greedy_ids_equal_pytorch_fp32(models: Callable[[str], Path], name: str) -> None:
    """Measured: 16 of 16 greedy ids equal for both tokenizers, and every position's argmax; logits within 0.05
    of PyTorch's (f16 weights and activations in llama.cpp's matmuls)."""
    model = models(name)
    ref, got = session(model, "ref"), session(model, "f16")
    for prompt in (PROMPT, "Hello"):
        expected = greedy(ref, prompt)
        assert len(set(expected)) > 3, "the random model should not be degenerate"
        assert greedy(got, prompt) == expected
    import torch

    ids = ref.encode([{"role": "user", "content": PROMPT}])
    with torch.inference_mode():
        expected_logits = ref.backend.model(torch.tensor([ids])).logits[0].float().numpy()
    logits = got.backend.logits(ids)
    assert logits.shape == expected_logits.shape
    assert (logits.argmax(-1) == expected_logits.argmax(-1)).all()
    assert float(np.abs(logits - expected_logits).max()) < 0.3  # logits span about +-10


def reference_cases() -> list[tuple[str, list[int]]]:
    """llama.cpp's Phi-3 tokenizer test vectors (tests/data/phi3-tokenizer/reference.*, its test-tokenizer-0 format)."""
    texts = (PHI3_TOKENIZER / "reference.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")[:-1]
    lines = (PHI3_TOKENIZER / "reference.out").read_text(encoding="utf-8").split("\n")[:-1]
    return [(t, [int(x) for x in line.split()]) for t, line in zip(texts, lines, strict=True)]


@needs_llama
@pytest.mark.slow
def test_phi3_vocabulary_tokenizes_like_phi3(models: Callable[[str], Path]) -> None:
    """A tokenizer.json-only folder with Phi-3's vocabulary: the GGUF's "llama" vocabulary, written from
    tokenizer.json, tokenizes llama.cpp's 46 Phi-3 reference strings as Phi-3's tokenizer does (the kit feeds
    ids, but the GGUF should be right for any other reader)."""
    llm = session(models("phi3-vocab"), "f16").backend.llm
    assert llm.metadata["tokenizer.ggml.model"] == "llama" and llm.n_vocab() == 32064
    cases = reference_cases()
    wrong = [(text, llm.tokenize(text.encode(), add_bos=False, special=False), ids) for text, ids in cases
             if llm.tokenize(text.encode(), add_bos=False, special=False) != ids]
    assert len(cases) == 46 and wrong == []
    assert llm.tokenize(b"<|user|>", add_bos=False, special=True) == [32010]


@needs_llama
@pytest.mark.slow
@pytest.mark.parametrize("precision", ["q4_k_m", "q4_0", "q8_0", "bf16"])
def test_every_precision_loads_and_generates_max_new_tokens(models: Callable[[str], Path], precision: str) -> None:
    import llama_cpp

    s = session(models("mini-4k"), precision)
    file_type = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{llamacpp.FTYPES[precision]}")
    assert s.backend.llm.metadata["general.file_type"] == str(file_type)
    assert s.recipe.startswith("the kit's export: llama.cpp's convert_hf_to_gguf.py")
    assert llamacpp.FTYPES[precision] in s.recipe
    export = s.export.path
    assert sorted(p.name for p in export.iterdir() if p.suffix in (".gguf", ".part")) == ["model.gguf"]
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json",
                 "config.json"):
        assert (export / name).is_file()
    r = s.generate(PROMPT, max_new_tokens=24, ignore_eos=True).consume()
    assert len(r.token_ids) == 24 and r.metrics.new_tokens == 24
    stop = r.token_ids[3]  # stops at a stop id (yielding it) without ignore_eos
    stream = s.backend.stream(r.prompt_ids, kit.GenerationConfig(max_new_tokens=24), [stop])
    assert [t for t, _ in stream] == r.token_ids[: r.token_ids.index(stop) + 1]


@needs_llama
@pytest.mark.slow
def test_stream_stops_when_closed_and_every_call_starts_fresh(models: Callable[[str], Path]) -> None:
    s = session(models("mini-4k"), "f16")
    expected = greedy(s, n=40)
    ids = s.encode([{"role": "user", "content": PROMPT}])
    stream = s.backend.stream(ids, kit.GenerationConfig(max_new_tokens=400, ignore_eos=True), [])
    first = [next(stream)[0] for _ in range(3)]
    stream.close()  # joins the generating thread: it saw emit() return False
    assert first == expected[:3]
    assert greedy(s, n=40) == expected  # the KV cache was cleared: nothing from the cut-off call leaks in
    stamps = [t for _, t in s.backend.stream(ids, kit.GenerationConfig(max_new_tokens=5), [])]
    assert stamps == sorted(stamps) and len(stamps) == 5


@needs_llama
@pytest.mark.slow
def test_sampling_is_seeded_and_top_k_1_is_greedy(models: Callable[[str], Path]) -> None:
    s = session(models("mini-4k"), "f16")

    def sample(**options: Any) -> list[int]:
        return s.generate(PROMPT, max_new_tokens=16, ignore_eos=True, do_sample=True, **options).consume().token_ids

    assert sample(seed=1, temperature=1.5) == sample(seed=1, temperature=1.5)
    assert len({tuple(sample(seed=k, temperature=1.5)) for k in range(4)}) > 1
    assert sample(seed=3, top_k=1) == greedy(s)


@needs_llama
@pytest.mark.slow
def test_runtime_config_reaches_llama(models: Callable[[str], Path]) -> None:
    model = models("mini-4k")
    default = session(model, "f16")
    assert default.backend.options["n_threads"] == llamacpp.physical_cores()
    assert default.backend.options["n_batch"] == default.backend.options["n_ubatch"] == 512
    small = session(model, "f16", n_threads=1, n_batch=4)  # the prompt is prefilled in chunks of 4
    assert small.backend.options["n_threads"] == small.backend.options["n_threads_batch"] == 1
    assert small.backend.n_batch == 4
    assert greedy(small) == greedy(default)
    ids = default.encode([{"role": "user", "content": PROMPT}])
    assert np.allclose(small.backend.logits(ids), default.backend.logits(ids), atol=1e-3)
    with pytest.raises(kit.UnknownChoiceError, match="n_thread"):
        kit.load(str(model), "llamacpp", "f16", log=lambda m: None, runtime_config={"n_thread": 2})
    with pytest.raises(kit.UnknownChoiceError, match="logits_all"):
        kit.load(str(model), "llamacpp", "f16", log=lambda m: None, runtime_config={"logits_all": True})


@needs_llama
@pytest.mark.slow
def test_limits_are_where_llama_cpp_agrees_with_the_model(models: Callable[[str], Path]) -> None:
    """Measured on the tiny models: llama.cpp runs Phi-3 with full attention and picks LongRoPE factors by its
    allocated context, so it agrees with PyTorch up to sliding_window + 1 (mini-4k: 2048 tokens) and within the
    original window when that is the context it allocates; beyond, the logits part."""
    import torch

    rng = np.random.default_rng(0)

    def last_logits_gap(model: Path, ids: list[int], **runtime_config: Any) -> float:
        ref = session(model, "ref").backend.model
        with torch.inference_mode():
            expected = ref(torch.tensor([ids])).logits[0, -1].float().numpy()
        return float(np.abs(session(model, "f16", **runtime_config).backend.logits(ids)[-1] - expected).max())

    mini = models("mini-4k")
    limits = session(mini, "f16").limits
    assert (limits.window, limits.max_prompt) == (2048, 2047) and "sliding window" in limits.why
    assert "n_ctx" in limits.fix
    assert last_logits_gap(mini, rng.integers(5, 1000, size=2048).tolist()) < 0.3  # measured 0.02
    assert last_logits_gap(mini, rng.integers(5, 1000, size=3000).tolist(), n_ctx=4096) > 3.0  # measured 8.9
    assert session(mini, "f16", n_ctx=4096).limits.window == 4096
    with pytest.raises(kit.ContextWindowError, match="sliding_window"):
        session(mini, "f16").check_fits(2040, 16)

    longrope = models("mini-128k")
    assert session(longrope, "f16").limits.window == 4096
    short = rng.integers(5, 1000, size=40).tolist()
    assert last_logits_gap(longrope, short) < 0.3  # measured 0.09
    assert last_logits_gap(longrope, short, n_ctx=8192) > 3.0  # long factors on a short prompt: measured 13


@needs_llama
@pytest.mark.slow
def test_export_children_start_through_procs(models: Callable[[str], Path], sources: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The converter and the quantizer are child processes started by phi3kit.procs (they die with the kit)."""
    started: list[list[str]] = []
    real_popen = procs.popen

    def popen(cmd: Any, **kwargs: Any) -> Any:
        started.append(list(cmd))
        return real_popen(cmd, **kwargs)

    monkeypatch.setattr(procs, "popen", popen)
    monkeypatch.setenv(llamacpp.SOURCES_ENV, str(sources))  # a fresh cache would fetch the sources again
    with kit.load(str(models("mini-4k")), "llamacpp", "q4_0", cache_dir=str(tmp_path), log=lambda m: None) as s:
        assert len(greedy(s, n=4)) == 4
    tools = [c[3] for c in started if "tool_main" in c[2]]  # [python, -c, code, convert|quantize, ...]
    assert tools == ["convert", "quantize"]
    assert all(c[0] == sys.executable for c in started)


@needs_llama
@pytest.mark.slow
def test_bench_measures_llamacpp_routes(sources: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`phi3kit bench --routes llamacpp:q4_k_m,llamacpp:q4_0` through the normal path: each route in a process
    of its own, perplexity from llama.cpp's logits, greedy agreement with PyTorch fp32 on the pocket model."""
    monkeypatch.setenv(llamacpp.SOURCES_ENV, str(sources))
    report = bench.run("pocket", "llamacpp:q4_k_m,llamacpp:q4_0", prompt_lengths=16, max_new_tokens=4, runs=1,
                       agreement_prompts=2, agreement_tokens=8, cache_dir=str(tmp_path), log=lambda m: None)
    routes = {r.route: r for r in report.routes}
    assert set(routes) == {"llamacpp/llama-cpp:q4_k_m", "llamacpp/llama-cpp:q4_0"}
    for r in routes.values():
        assert r.status == "ok", r.note
        assert [run.new_tokens for run in r.runs] == [4] and r.size_mb > 0
        assert r.perplexity is not None and r.perplexity > 1 and "llama.cpp" in r.quality_note
        assert r.agreement is not None and r.agreement > 0.5
