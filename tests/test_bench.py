"""`phi3kit bench` and the quality measures: exact prompts, fixed token counts, sane numbers, honest parity."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import pytest
from kit_checks import FIRST_TOKENS, MIN_IDENTICAL

import phi3kit as kit
from phi3kit import bench, pocket
from phi3kit.bench import BenchError, Prompts, Route
from phi3kit.bench.quality import agreement, eval_text, nll_sum, pocket_segments, text_segments
from phi3kit.cli import main
from phi3kit.diagnostics import RECOMMENDED_MODEL

ROUTES = "transformers:fp32,openvino:fp32,openvino:int4"


@pytest.mark.parametrize(
    ("spec", "route", "label"),
    [
        ("openvino:int4", Route("openvino", "int4"), "openvino/genai:int4"),
        ("openvino/optimum:int8", Route("openvino", "int8", "optimum"), "openvino/optimum:int8"),
        (" ortgenai:int4@CPU ", Route("ortgenai", "int4"), "ortgenai/genai:int4"),
        ("openvino:int4@GPU.0", Route("openvino", "int4", None, "GPU.0"), "openvino/genai:int4@GPU.0"),
        ("transformers:fp32", Route("transformers", "fp32"), "transformers/pytorch:fp32"),
        ("openvino:int4-cw", Route("openvino", "int4-cw"), "openvino/genai:int4-cw"),
        ("ortgenai:int4{accuracy_level=1}", Route("ortgenai", "int4", options=(("accuracy_level", "1"),)),
         "ortgenai/genai:int4{accuracy_level=1}"),
        ("openvino:int4@CPU{ INFERENCE_PRECISION_HINT = f32 ;tuned=true}",
         Route("openvino", "int4", options=(("INFERENCE_PRECISION_HINT", "f32"), ("tuned", "true"))),
         "openvino/genai:int4{INFERENCE_PRECISION_HINT=f32;tuned=true}"),
    ],
)
def test_routes_parse(spec: str, route: Route, label: str) -> None:
    assert Route.parse(spec) == route
    assert route.label == label
    assert Route.parse(route.label).label == route.label  # a label in a results table names its route again
    assert Route(**json.loads(json.dumps(asdict(route)))) == route  # as a route's own process receives it


def test_route_options_are_load_settings_or_runtime_properties() -> None:
    cfg = Route.parse("openvino:int4-cw{INFERENCE_PRECISION_HINT=f32;DYNAMIC_QUANTIZATION_GROUP_SIZE=64}").config("m")
    assert cfg.precision == "int4-cw" and cfg.tuned is False  # a benchmark never applies a stored tuning unasked
    assert cfg.runtime_config == {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "64"}
    cfg = Route.parse("ortgenai:int4{accuracy_level=1;tuned=true}").config("m")
    assert cfg.accuracy_level == 1 and cfg.tuned is True and cfg.runtime_config == {}
    for bad, why in [("ortgenai:int4{accuracy_level=x}", "not a valid accuracy_level"),
                     ("openvino:int4{tuned=maybe}", "not a valid tuned"),
                     ("openvino:int4{oops}", "write key=value")]:
        with pytest.raises(BenchError, match=why):
            Route.parse(bad)


@pytest.mark.parametrize("bad", ["openvino", "openvino:", ":int4", "openvino:int4:cpu", "open vino:int4"])
def test_bad_route_names_the_format(bad: str) -> None:
    with pytest.raises(BenchError, match=r"backend\[/runtime\]:precision"):
        Route.parse(bad)


def test_route_lists_and_lengths_parse() -> None:
    assert bench.parse_routes("openvino:int4, openvino:int4,transformers:fp32,") == [
        Route("openvino", "int4"), Route("transformers", "fp32")]
    assert bench.parse_lengths("16, 64") == [16, 64] and bench.parse_lengths(32) == [32]
    for bad in ("", "0,16", "sixteen"):
        with pytest.raises(BenchError, match="prompt lengths"):
            bench.parse_lengths(bad)
    with pytest.raises(BenchError, match="No routes"):
        bench.parse_routes(" , ")


def test_unavailable_routes_say_why(fake_openvino) -> None:  # type: ignore[no-untyped-def]
    fake_openvino(["CPU"])  # a machine without an NPU, whatever this one has
    found = dict(bench.available("openvino:int4,openvino:fp99,openvino/nope:int4,foo:int4,openvino:int4@NPU"))
    assert found[Route("openvino", "int4")] is None
    assert "no precision 'fp99'" in found[Route("openvino", "fp99")]
    assert "no runtime 'nope'" in found[Route("openvino", "int4", "nope")]
    assert "Unknown backend: 'foo'" in found[Route("foo", "int4")]
    assert "device NPU is not available to openvino here (available: CPU, AUTO)" in \
        found[Route("openvino", "int4", None, "NPU")]
    fake_openvino(["CPU", "NPU"])  # an NPU laptop: the same route is not skipped
    assert dict(bench.available("openvino:int4@NPU"))[Route("openvino", "int4", None, "NPU")] is None


def test_prompts_have_the_exact_length_and_are_all_fresh(pocket_tokenizer) -> None:  # type: ignore[no-untyped-def]
    prompts = Prompts(pocket_tokenizer)
    made = [prompts.make(n) for n in (16, 16, 128, 128, 1024) for _ in range(8)]
    assert [len(p) for p in made] == [n for n in (16, 16, 128, 128, 1024) for _ in range(8)]
    bodies = [tuple(p[len(prompts.head):len(prompts.head) + 8]) for p in made]
    assert len(set(bodies)) == len(made)  # every prompt starts differently: no prefix cache hit beyond the template
    text = pocket_tokenizer.decode(made[0])
    assert text.startswith("<|user|>") and text.rstrip().endswith("<|assistant|>")
    with pytest.raises(BenchError, match=f"at least {prompts.overhead + 1}"):
        prompts.make(prompts.overhead)


def test_eval_text_is_shipped_and_long_enough(pocket_tokenizer) -> None:  # type: ignore[no-untyped-def]
    assert len(pocket_tokenizer(eval_text())["input_ids"]) > 2048  # a 1024-token prompt fits twice over
    segments = text_segments(pocket_tokenizer, eval_text(), max_tokens=1000, window=300)
    assert [len(ids) for ids, _ in segments] == [300, 300, 300, 100] and all(first == 1 for _, first in segments)


def test_agreement_counts_identical_tokens_and_prefixes() -> None:
    a = agreement([[1, 2, 3, 4], [5, 6]], [[1, 2, 9, 4], [5, 6]])
    assert a.identical == pytest.approx(5 / 6) and a.prefix == pytest.approx((2 + 2) / 2) and a.prompts == 2
    early = agreement([[1, 2, 3, 4]], [[1, 2]])  # stopping early counts as different
    assert early.identical == 0.5 and early.prefix == 2
    assert agreement([[7, 8]], [[7, 8]]).identical == 1.0
    with pytest.raises(ValueError, match="2 reference outputs but 1"):
        agreement([[1], [2]], [[1]])


def test_nll_matches_a_hand_computed_softmax() -> None:
    logits = [[0.0, math.log(3.0)], [math.log(4.0), 0.0]]  # p(1) = 3/4 ; p(0) = 4/5
    assert nll_sum(logits, [1, 0]) == pytest.approx(-math.log(0.75) - math.log(0.8))


def test_pocket_quality_text_scores_answers_only(pocket_tokenizer) -> None:  # type: ignore[no-untyped-def]
    segments = pocket_segments(pocket_tokenizer)
    assert len(segments) == len(pocket.load_qa())
    ids, first = segments[0]
    scored = pocket_tokenizer.decode(ids[first:], skip_special_tokens=True)
    assert scored.strip() == pocket.load_qa()[0]["answer"]


def test_median_interval_covers_the_true_median_and_shrinks_with_more_samples() -> None:
    """The bootstrap interval kit_overhead reports: ~95% coverage of the true median, narrower with more data.

    Catches: the wrong percentiles (a 50% interval covers half the time), the mean's interval instead of the
    median's on skewed data, an interval that does not shrink (resampling the wrong axis), or an unseeded one.
    """
    import numpy as np

    rng = np.random.default_rng(1)
    true_median = math.log(2)  # of the exponential distribution with rate 1 (skewed: its mean is 1)
    hits = sum(lo <= true_median <= hi
               for lo, hi in (bench.median_interval(rng.exponential(size=40)) for _ in range(200)))
    assert 0.88 <= hits / 200 <= 0.99, hits  # measured: 187 of 200; a 50% interval or the mean's: 86-87
    small, large = rng.exponential(size=25), rng.exponential(size=400)
    width = [hi - lo for lo, hi in (bench.median_interval(small), bench.median_interval(large))]
    assert width[1] < 0.5 * width[0], width  # 1/sqrt(n): 16x the samples, 1/4 the width (measured 0.99, 0.22)
    assert bench.median_interval(small) == bench.median_interval(small)  # seeded: same samples, same interval


def test_rows_are_medians_and_the_share_of_the_bandwidth_limit() -> None:
    """A report built by hand: each row's numbers are the medians of its own runs, and share_of_limit is
    tokens/s over bandwidth / weights read per token. Catches: rows mixing prompt lengths, means for medians,
    MB vs MiB or GB vs GiB in the limit, or the share inverted."""
    def run(n: int, ttft: float, tok_s: float) -> bench.Run:
        return bench.Run(prompt_tokens=n, new_tokens=8, ttft_s=ttft, second_token_s=0.01, tpot_s=1 / tok_s,
                         tokens_per_s=tok_s, peak_rss_mb=100.0, prompt_key=f"{n}-{ttft}")

    ok = bench.RouteResult(route="openvino/genai:int4", backend="openvino", runtime="genai", precision="int4",
                           device="CPU", weights_read_mb=100.0,
                           runs=[run(16, 0.1, 10.0), run(16, 0.3, 30.0), run(16, 0.2, 20.0), run(48, 0.9, 5.0)])
    skipped = bench.RouteResult(route="openvino/genai:fp99", backend="openvino", runtime="genai", precision="fp99",
                                device="CPU", status="skipped", note="no precision 'fp99'")
    report = bench.BenchReport(model="pocket", settings=bench.Settings(), routes=[ok, skipped], reference="",
                               isolated=False, bandwidth_gbs=2.0)
    short, long, gone = report.rows()
    assert (short["prompt_tokens"], short["runs"], long["prompt_tokens"], long["runs"]) == (16, 3, 48, 1)
    assert short["ttft_ms"] == pytest.approx(200.0) and short["tokens_per_s"] == pytest.approx(20.0)
    limit = 2.0e9 / (100.0 * 2**20)  # bytes per second over bytes read per token: 19.07 tokens/s
    assert short["bandwidth_limit_tokens_per_s"] == pytest.approx(limit)
    assert short["share_of_limit"] == pytest.approx(20.0 / limit) and long["share_of_limit"] == pytest.approx(5 / limit)
    assert gone["status"] == "skipped" and gone["ttft_ms"] is None and gone["note"] == "no precision 'fp99'"
    assert "% limit" in report.table()


def test_memory_bandwidth_is_measured() -> None:
    gbs = bench.memory_bandwidth_gbs(workers=2, mb=64, repeats=2)
    assert 0.1 < gbs < 10_000


@pytest.mark.slow
@pytest.mark.parametrize(("backend", "precision"), [("transformers", "fp32"), ("openvino", "int8"),
                                                    ("ortgenai", "int8")])
def test_ignore_eos_generates_exactly_max_new_tokens(backend: str, precision: str) -> None:
    question = pocket.load_qa()[1]["question"]
    with kit.load("pocket", backend, precision, log=lambda m: None) as s:
        natural = s.generate(question, max_new_tokens=80).consume()
        forced = s.generate(question, max_new_tokens=80, ignore_eos=True).consume()
    assert natural.metrics.finish_reason == "stop" and natural.metrics.new_tokens < 80
    assert forced.metrics.new_tokens == 80 and forced.metrics.finish_reason == "length"
    assert forced.token_ids[: len(natural.token_ids)] == natural.token_ids  # no logits were masked to get there


@pytest.fixture(scope="module")
def pocket_report(tmp_path_factory: pytest.TempPathFactory) -> bench.BenchReport:
    """Three pocket routes in this process (one isolated run is tested separately: it costs a process each)."""
    # A route this machine cannot run (no NPU here) is a skip with its reason; a route that exists nowhere (a
    # typo such as openvino:fp99) is refused before anything runs (test_bad_input.py).
    return bench.run("pocket", ROUTES + ",openvino:int4@NPU", prompt_lengths="16,48", max_new_tokens=12, runs=2,
                     agreement_prompts=4, agreement_tokens=24, isolate=False, log=lambda m: None)


@pytest.mark.slow
def test_pocket_bench_numbers_are_sane(pocket_report: bench.BenchReport) -> None:
    ok = [r for r in pocket_report.routes if r.status == "ok"]
    assert [r.route for r in ok] == ["transformers/pytorch:fp32", "openvino/genai:fp32", "openvino/genai:int4"]
    skipped = pocket_report.route("openvino:int4@NPU")
    assert skipped.status == "skipped" and "NPU" in skipped.note
    for r in ok:
        # runs=2 per prompt length, in the order asked, each recorded with its own prompt's length
        assert [x.prompt_tokens for x in r.runs] == [16, 16, 48, 48]
        assert all(x.new_tokens == 12 and len(x.latencies_s) == 12 for x in r.runs)  # ignore_eos honoured
        assert len({x.prompt_key for x in r.runs}) == 4  # a fresh prompt for every timed run
        for x in r.runs:  # every figure is derived from the run's own per-token stamps, the way the docs say
            lat = x.latencies_s
            assert x.ttft_s == lat[0] > 0 and x.second_token_s == lat[1]
            assert x.tpot_s == pytest.approx(sum(lat[1:]) / 11) and x.tokens_per_s == pytest.approx(11 / sum(lat[1:]))
            assert x.peak_rss_mb > 50
        assert r.size_mb > 0 and r.load_s > 0 and r.warmup_s > 0
        rows = [row for row in pocket_report.rows() if row["route"] == r.route]
        assert [(row["prompt_tokens"], row["runs"], row["new_tokens"]) for row in rows] == [(16, 2, 12), (48, 2, 12)]
    assert pocket_report.route("openvino:int4").size_mb < pocket_report.route("openvino:fp32").size_mb / 2


@pytest.mark.slow
def test_pocket_quality_fp32_agrees_with_pytorch(pocket_report: bench.BenchReport) -> None:
    torch_fp32 = pocket_report.route("transformers:fp32")
    ov_fp32 = pocket_report.route("openvino:fp32")
    ov_int4 = pocket_report.route("openvino:int4")
    assert torch_fp32.agreement == 1.0 and ov_fp32.agreement == 1.0  # fp32 end to end: identical greedy tokens
    assert len(ov_fp32.greedy) == 4 and all(len(g) > 5 for g in ov_fp32.greedy)
    print(f"bench int4: agreement {ov_int4.agreement:.3f}, prefix {ov_int4.prefix_match:.1f} of 24, "
          f"perplexity {ov_int4.perplexity:.4f} (fp32 {torch_fp32.perplexity:.4f})")
    # int4 is held to the floors of tests/kit_checks.py (measured: agreement 1.000, prefix 24 of 24)
    assert ov_int4.agreement >= MIN_IDENTICAL and ov_int4.prefix_match >= FIRST_TOKENS
    assert ov_int4.perplexity < 1.2 * torch_fp32.perplexity  # measured: +0.1% (1.6668 vs 1.6648)
    # The pocket model knows its answers: perplexity near 1, and the fp32 routes compute the same number.
    assert 1.0 < torch_fp32.perplexity < 3.0
    assert ov_fp32.perplexity == pytest.approx(torch_fp32.perplexity, rel=1e-4)
    assert math.isfinite(ov_int4.perplexity) and ov_int4.perplexity > 1.0
    assert torch_fp32.perplexity_text == "pocket QA answers given their questions"


@pytest.mark.slow
def test_kit_overhead_compares_like_with_like() -> None:
    """The kit and LLMPipeline called directly, on one compiled pipeline: the same prompt ids, paired numbers."""
    rows = benchmark_module("kit_overhead").kit_overhead("pocket", "int4", "40", max_new_tokens=10, runs=3,
                                                         log=lambda m: None)
    assert len(rows) == 1
    o = rows[0]
    assert o["same_prompt_ids"] is True  # the pipeline's tokenizer makes the kit's ids of the direct call's text
    assert o["prompt_tokens"] == 40 and o["runs"] == 3 and o["new_tokens"] == 10
    for side in ("kit", "direct"):
        assert o[f"{side}_ttft_ms"] > 0 and o[f"{side}_tpot_ms"] > 0
        assert o[f"{side}_tokens_per_s"] == pytest.approx(1000 / o[f"{side}_tpot_ms"])
    assert math.isfinite(o["ttft_overhead_ms"]) and math.isfinite(o["tpot_overhead_ms"])
    for key in ("ttft_overhead", "decode_overhead"):  # the interval itself: test_median_interval_covers_...
        lo, hi = o[f"{key}_95"]
        assert math.isfinite(o[key]) and math.isfinite(lo) and math.isfinite(hi)


def benchmark_module(name: str):  # type: ignore[no-untyped-def]
    """A script of benchmarks/ (developer experiments, not part of the package), imported by path."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_overhead_verdict_needs_the_whole_interval() -> None:
    full_size = benchmark_module("full_size")

    def row(decode: tuple[float, float, float], ttft: tuple[float, float, float]) -> dict:
        return {"prompt_tokens": 128, "decode_overhead": decode[1], "decode_overhead_95": (decode[0], decode[2]),
                "ttft_overhead": ttft[1], "ttft_overhead_95": (ttft[0], ttft[2])}

    def verdict(o: dict) -> str:
        return full_size.overhead_verdicts([o])["kit overhead, 128-token prompt"]

    assert "met" in verdict(row((-0.01, 0.0, 0.01), (0.0, 0.005, 0.019)))
    assert "not resolved" in verdict(row((-0.01, 0.0, 0.03), (0.0, 0.005, 0.01)))  # median under 2%, interval not
    assert "missed" in verdict(row((0.025, 0.03, 0.04), (0.0, 0.005, 0.01)))
    assert "decode +0.00%" in verdict(row((-0.01, 0.0, 0.01), (0.0, 0.005, 0.019)))
    old = {"prompt_tokens": 128, "decode_overhead": 0.093, "ttft_overhead": 0.073}  # rows from before the intervals
    assert "missed" in verdict(old)
    assert "| 128 |" in "\n".join(full_size.overhead_table([{**old, "runs": 5, "direct_ttft_ms": 9161.0,
                                                               "kit_ttft_ms": 9830.0, "direct_tokens_per_s": 3.64,
                                                               "kit_tokens_per_s": 3.30}]))


@pytest.mark.slow
def test_report_saves_csv_and_json(pocket_report: bench.BenchReport, tmp_path: Path) -> None:
    csv_path, json_path = pocket_report.save(tmp_path)
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 3 * 2 + 1  # three routes at two prompt lengths, and the skipped route
    assert {r["status"] for r in rows} == {"ok", "skipped"}
    assert all(float(r["tokens_per_s"]) > 0 and float(r["new_tokens"]) == 12 for r in rows if r["status"] == "ok")
    again = bench.BenchReport.load(json_path)
    assert again.rows() == pocket_report.rows()
    assert len(json.loads(json_path.read_text())["routes"][0]["runs"][0]["latencies_s"]) == 12
    assert pocket_report.save(tmp_path)[0].name == "bench-1.csv"  # nothing overwritten
    table = str(pocket_report)
    assert "openvino/genai:int4" in table and "skipped" in table


@pytest.mark.slow
def test_random_model_isolated_routes_and_ortgenai_logits(random_phi3: Callable[[str], Path]) -> None:
    """A tiny random model, each route in its own process: ORT GenAI fp32 logits give PyTorch's perplexity."""
    model = str(random_phi3("mini-4k"))
    for precision in ("fp32", "int4"):  # built here (the run's cache, shared): the route processes only load them
        kit.export(model, "ortgenai", precision, log=lambda m: None)
    report = bench.run(model, "ortgenai:fp32,ortgenai:int4", prompt_lengths=24, max_new_tokens=6, runs=1,
                       quality_tokens=256, agreement_prompts=2, agreement_tokens=8, log=lambda m: None)
    assert [r.route for r in report.routes] == ["ortgenai/genai:fp32", "ortgenai/genai:int4"]  # the reference
    assert report.reference == "transformers/pytorch:fp32" and report.isolated  # ran for agreement only: no row
    fp32, int4 = report.route("ortgenai:fp32"), report.route("ortgenai:int4")
    assert fp32.status == "ok" and int4.status == "ok", (fp32.note, int4.note)
    assert fp32.agreement == 1.0 and fp32.prefix_match == sum(map(len, fp32.greedy)) / 2  # identical throughout
    # Random weights have no margins int4 keeps (measured: agreement 0.000, the first token already differs), so
    # no floor here; what is checked is that int4 really is another model, and that its agreement is computed
    # against the reference's greedy ids (fp32's are those ids exactly: its agreement is 1.0 throughout).
    assert int4.size_mb < 0.7 * fp32.size_mb  # measured 1.80 vs 3.27 MB (the embedding and head stay fp32)
    assert int4.perplexity != fp32.perplexity  # measured 11918 vs 12567: int4's own logits, not fp32's export
    assert int4.agreement == agreement(fp32.greedy, int4.greedy).identical
    assert int4.prefix_match == agreement(fp32.greedy, int4.greedy).prefix
    assert fp32.perplexity_text == "phi3kit/data/eval.txt" and fp32.perplexity_tokens == 255
    assert math.isfinite(fp32.perplexity) and math.isfinite(int4.perplexity)
    assert fp32.peak_rss_mb > 0 and all(x.new_tokens == 6 for x in fp32.runs)


@pytest.mark.slow
def test_bench_command_writes_table_csv_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "--routes", "openvino:int8", "--prompt-lengths", "20", "--max-new-tokens", "5", "--runs", "1",
            "--no-quality", "--in-process", "-o", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "openvino/genai:int8" in out and "tok/s" in out
    rows = list(csv.DictReader((tmp_path / "bench.csv").open()))
    assert len(rows) == 1 and rows[0]["prompt_tokens"] == "20" and rows[0]["perplexity"] == ""
    assert (tmp_path / "bench.json").is_file()


def test_bench_command_refuses_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--routes", "openvino", "-o", "/nonexistent"]) == 2
    assert "backend[/runtime]:precision" in capsys.readouterr().err
    assert main(["bench", "--max-new-tokens", "0"]) == 2
    assert "max_new_tokens" in capsys.readouterr().err


def test_compare_notebook_parameters_are_typed_and_documented() -> None:
    from phi3kit.runner import notebook_parameters

    params = notebook_parameters(Path(__file__).resolve().parents[1] / "notebooks" / "compare.ipynb")
    assert set(params) == {"model", "routes", "prompt_lengths", "max_new_tokens", "runs", "isolate", "cache_dir",
                           "results_dir"}
    for p in params.values():
        assert p["inferred_type_name"] in {"str", "int", "bool"} and p["help"], p
    assert params["isolate"]["default"] == "True"  # a learner's numbers come from a process per route by default
    # the real Phi-3-mini by its catalog alias (ready-made where published); tests run them on the pocket model
    assert params["model"]["default"].strip("\"'") == RECOMMENDED_MODEL
    assert len(bench.parse_routes(params["routes"]["default"].strip("\"'"))) == 4
    assert bench.parse_lengths(params["prompt_lengths"]["default"].strip("\"'")) == [128, 512]


def _chat_rows(out: str) -> dict[str, list[dict[str, float]]]:
    """Per route, the chat table's rows: turn, prompt and prefilled tokens, TTFT in ms, reuse off and on."""
    rows: dict[str, list[dict[str, float]]] = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 7 and cells[1].isdigit():
            route, turn, prompts, off, on, t_off, t_on = cells
            p_off, p_on = prompts.split(" / ")
            rows.setdefault(route, []).append({"turn": int(turn), "prompt_off": int(p_off), "prompt_on": int(p_on),
                                               "off": int(off), "on": int(on), "ttft_off": float(t_off),
                                               "ttft_on": float(t_on)})
    return rows


@pytest.mark.slow
def test_bench_chat_prints_ttft_and_prefilled_tokens_per_turn_reuse_off_and_on(
        capsys: pytest.CaptureFixture[str]) -> None:
    """`phi3kit bench --chat 3` on the pocket model: per route and turn, the TTFT and the prompt tokens read with
    reuse off and on. From turn 2 a chat with reuse reads fewer tokens than one without (only the new turn); turn 1
    reads its whole prompt either way. Catches --chat not reaching the package's chat benchmark, an "off" side that
    keeps the cache (same counts), an "on" side that never reuses, and a table missing a route's turns. Timings are
    printed, not asserted."""
    routes = "transformers:fp32,openvino/optimum:fp32"
    assert main(["bench", "--chat", "3", "--model", "pocket", "--routes", routes, "--turn-tokens", "40",
                 "--max-new-tokens", "16"]) == 0
    rows = _chat_rows(capsys.readouterr().out)
    assert sorted(rows) == ["openvino/optimum:fp32", "transformers/pytorch:fp32"], rows
    for route, turns in rows.items():
        assert [t["turn"] for t in turns] == [1, 2, 3], route
        assert all(t["off"] == t["prompt_off"] for t in turns), (route, turns)  # off: the whole history each turn
        assert turns[0]["on"] == turns[0]["prompt_on"] > 40, route  # turn 1: nothing cached yet
        assert all(t["on"] < t["off"] and t["on"] < t["prompt_on"] for t in turns[1:]), (route, turns)
        assert all(t["ttft_off"] >= 0 and t["ttft_on"] >= 0 for t in turns), route


def test_bench_chat_refuses_a_chat_of_one_turn(capsys: pytest.CaptureFixture[str]) -> None:
    """Catches --chat 1 (the summary compares the last turn with turn 2) failing after the loads, or with an
    IndexError rather than the fix."""
    assert main(["bench", "--chat", "1", "--model", "pocket", "--routes", "transformers:fp32"]) == 2
    assert "2 turns or more" in capsys.readouterr().err
