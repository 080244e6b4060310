"""`phi3kit tune`: the choice as a pure function of samples, where it is kept, when it applies, and a real tune."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import phi3kit as kit
from phi3kit.tuning import Candidate, TuneError, choose, ratio_interval, stored

FAST = [1.00, 1.02, 0.98, 1.01, 0.99, 1.03]


def quiet(message: str) -> None:
    pass


def scaled(factor: float, values: list[float] = FAST) -> list[float]:
    return [v * factor for v in values]


def test_a_candidate_wins_only_beyond_the_noise() -> None:
    clear = choose({"default": FAST, "f32": scaled(0.6), "dq64": scaled(0.8)})
    assert clear.name == "f32" and clear.intervals["f32"][1] < 1.0 and "1.67x" in clear.reason
    # 2% faster on samples that vary by 5%: within the noise, the default stays
    noisy = choose({"default": FAST, "f32": [0.98, 1.05, 0.95, 1.0, 0.97, 1.01]})
    assert noisy.name == "default" and noisy.intervals["f32"][0] < 1.0 < noisy.intervals["f32"][1]
    assert "noise" in noisy.reason
    slower = choose({"default": FAST, "f32": scaled(1.5)})
    assert slower.name == "default" and slower.ratios["f32"] == pytest.approx(1.5, rel=0.02)


def test_ties_go_to_the_earlier_candidate_and_failures_never_win() -> None:
    tie = choose({"default": FAST, "a": scaled(0.5), "b": scaled(0.5)})
    assert tie.name == "a"
    failed = choose({"default": FAST, "broken": scaled(0.1), "ok": scaled(0.7)}, failed=["broken"])
    assert failed.name == "ok" and "broken" not in failed.ratios
    assert choose({"default": FAST, "empty": []}).name == "default"
    with pytest.raises(TuneError, match="no samples of the default"):
        choose({"default": [], "f32": FAST})


def test_the_interval_is_of_the_ratio_and_holds_one_for_the_same_distribution() -> None:
    ratio, lo, hi = ratio_interval(FAST, list(reversed(FAST)))
    assert ratio == pytest.approx(1.0) and lo < 1.0 < hi
    ratio, lo, hi = ratio_interval(scaled(0.5), FAST)
    assert ratio == pytest.approx(0.5) and hi < 1.0
    assert ratio_interval(FAST, scaled(2.0)) == ratio_interval(FAST, scaled(2.0))  # seeded


def test_numeric_candidates_say_so() -> None:
    assert Candidate("f32", {"INFERENCE_PRECISION_HINT": "f32"}).numerics
    assert not Candidate("threads", {"model": {"decoder": {"session_options": {"intra_op_num_threads": 2}}}}).numerics


def test_openvino_cpu_candidates_come_from_the_documented_properties(fake_openvino) -> None:  # type: ignore[no-untyped-def]
    backend = kit.backends.get("openvino")
    fake_openvino({"CPU": {"FULL_DEVICE_NAME": "Xeon", "OPTIMIZATION_CAPABILITIES": ["FP32", "BF16", "INT8"]}})
    names = [c.name for c in backend.tune_candidates(kit.LoadConfig(precision="int4"))]
    assert names[:2] == ["f32", "f32+dq64"] and "dq64" in names
    fake_openvino({"CPU": {"FULL_DEVICE_NAME": "Core i5", "OPTIMIZATION_CAPABILITIES": ["FP32", "INT8"]}})
    assert "f32" not in [c.name for c in backend.tune_candidates(kit.LoadConfig(precision="int4"))]  # f32 already
    assert backend.tune_candidates(kit.LoadConfig(precision="fp32")) == []  # fp32 fixes its precision on purpose
    npu = [c.properties for c in backend.tune_candidates(kit.LoadConfig(precision="int4-cw", device="NPU"))]
    assert {"GENERATE_HINT": "BEST_PERF"} in npu


@pytest.fixture(scope="module")
def tuned_cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, kit.tuning.TuneResult]:
    """A real tune of the pocket's int4 IR on this CPU: a few seconds (no timing is asserted)."""
    cache = tmp_path_factory.mktemp("tuned-cache")
    session = kit.load("pocket", "openvino", "int4", cache_dir=str(cache), log=quiet)
    result = kit.tune(session, runs=2, prompt_tokens=48, new_tokens=16, agreement_prompts=1, agreement_tokens=8,
                      log=quiet)
    return cache, result


@pytest.mark.slow
def test_a_real_tune_measures_every_candidate_and_keeps_its_choice(tuned_cache) -> None:  # type: ignore[no-untyped-def]
    cache, result = tuned_cache
    names = [m.candidate.name for m in result.measured]
    assert names[0] == "default" and len(names) >= 2
    default = result.measured[0]
    assert len(default.objective_s) == 4  # measured first and last: twice the runs
    for m in result.measured[1:]:
        assert m.error or len(m.objective_s) == 2
    assert result.choice.name in names and result.saved is not None and result.saved.is_file()
    saved = json.loads(result.saved.read_text())
    assert saved["candidate"] == result.choice.name and saved["identity"] == result.identity
    assert {"default", *result.agreement} <= set(names) and result.agreement["default"] == 1.0
    frame = result.to_frame()
    assert list(frame["candidate"]) == names and frame["chosen"].sum() == 1


@pytest.mark.slow
def test_the_choice_applies_on_the_next_load_and_only_where_measured(tuned_cache,  # type: ignore[no-untyped-def]
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    cache, result = tuned_cache
    chosen = result.chosen.properties
    s = kit.load("pocket", "openvino", "int4", cache_dir=str(cache), log=quiet)
    if chosen:
        assert s.tuning is not None and all(s.config.runtime_config[k] == v for k, v in chosen.items())
        assert "tuned:" in repr(s) and s.generate("What is an NPU?", max_new_tokens=4).consume().metrics.tuned
    else:  # the default won: nothing to apply, and the session says nothing
        assert s.tuning is None and "tuned" not in repr(s)
    untuned = kit.load("pocket", "openvino", "int4", cache_dir=str(cache), tuned=False, log=quiet)
    assert untuned.tuning is None and untuned.config.runtime_config == {}
    explicit = kit.load("pocket", "openvino", "int4", cache_dir=str(cache), log=quiet,
                        runtime_config={"INFERENCE_PRECISION_HINT": "bf16"})
    assert explicit.config.runtime_config["INFERENCE_PRECISION_HINT"] == "bf16"  # settings given win
    other_export = kit.load("pocket", "openvino", "int4-cw", cache_dir=str(cache), log=quiet)
    assert other_export.tuning is None  # never applied where it was not measured
    assert stored(s.config, s.export) is not None
    import phi3kit.tuned as tuned  # where the stored choice is looked up

    real = tuned.hardware

    def another_cpu() -> dict:
        return {**real(), "cpu": "another CPU"}

    monkeypatch.setattr(tuned, "hardware", another_cpu)
    assert stored(s.config, s.export) is None  # a changed CPU invalidates it
    monkeypatch.undo()
    versions = tuned.installed_version

    def newer(lib: str) -> str | None:
        return "2099.1" if lib == "openvino" else versions(lib)

    monkeypatch.setattr(tuned, "installed_version", newer)
    assert stored(s.config, s.export) is None  # so does another library version


def test_a_candidate_the_device_refuses_fails_alone(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    backend = kit.backends.get("openvino")
    monkeypatch.setattr(backend, "tune_candidates", classmethod(
        lambda cls, cfg: [Candidate("bogus", {"NOT_AN_OPENVINO_PROPERTY": 1})]))
    session = kit.load("pocket", "openvino", "int4", cache_dir=str(tmp_path), log=quiet)
    result = kit.tune(session, runs=2, prompt_tokens=32, new_tokens=8, agreement_prompts=1, agreement_tokens=4,
                      save=False, log=quiet)
    bogus = next(m for m in result.measured if m.candidate.name == "bogus")
    assert bogus.error and result.choice.name == "default" and result.saved is None


def test_bad_tune_requests_fail_before_any_pipeline(tmp_path: Path) -> None:
    session = kit.load("pocket", "openvino", "int4", cache_dir=str(tmp_path), log=quiet)
    with pytest.raises(kit.UnknownChoiceError, match="objective"):
        kit.tune(session, objective="fastest")
    with pytest.raises(TuneError, match="runs must be at least 2"):
        kit.tune(session, runs=1)
    with pytest.raises(kit.UnknownChoiceError, match="candidate.*f32x"):
        kit.tune(session, only=["f32x"])
    with pytest.raises(kit.ContextWindowError):
        kit.tune(session, prompt_tokens=5000)
    assert not (tmp_path / "tuned").exists()
