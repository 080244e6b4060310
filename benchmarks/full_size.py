"""Full-size Phi-3-mini (3.8B parameters, random weights) through every CPU route, in one run.

    nohup python benchmarks/full_size.py > /tmp/fullsize.log 2>&1 &

Builds `make_random_phi3("mini-4k", size="full")` (bf16, 7.6 GB) unless it exists, measures the read
bandwidth, then runs each route in its own process (so memory is returned between routes): PyTorch
fp32/bf16, OpenVINO GenAI and optimum-intel int4/int8/fp16, ONNX Runtime GenAI int4/int8. Last, the
kit's overhead over calling OpenVINO GenAI's LLMPipeline directly (the kit's own int4 pipeline);
`--overhead-only` measures just that, on this model or on the pocket model (`--model-dir pocket`).

Random weights make the speed and memory real and the text meaningless: perplexity and agreement
here only show how far each precision's numbers drift from PyTorch fp32, not language quality.
Results go to benchmarks/results/full_size.{csv,json,md}, rewritten after every route, so an
interrupted run keeps what finished.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import psutil

from phi3kit import bench

ROUTES = ("transformers:fp32", "transformers:bf16", "openvino:int4", "openvino:int8", "openvino:fp16",
          "openvino/optimum:int4", "openvino/optimum:int8", "openvino/optimum:fp16", "ortgenai:int4", "ortgenai:int8")
FP32_MIN_AVAILABLE_GB = 20.0  # PyTorch fp32 peaks near 23 GB RSS (15.3 GB of weights plus mapped checkpoint pages)
KIT_ROUTE = "openvino/genai:int4"  # the kit's default route
# PyTorch bf16 on a CPU without native bf16 (AVX2 only) prefills far slower than fp32 (emulated): time it on the
# short prompt once only, or the run takes most of an hour longer. Decode speed, the headline number, is unaffected.
REDUCED = {"transformers/pytorch:bf16": {"prompt_lengths": [128], "runs": 1}}
NATIVE_BF16 = ("AVX-512 BF16", "AMX-BF16")


def reduced(hw: dict) -> dict[str, dict]:
    """REDUCED where bf16 is emulated; nothing where the CPU computes bf16 itself (or the ISA is unknown)."""
    isa = hw.get("isa")
    return REDUCED if isa and not any(x in isa for x in NATIVE_BF16) else {}
TARGETS = {"speedup_vs_pytorch_fp32": 5.0, "share_of_bandwidth_limit": 0.6, "kit_overhead": 0.02}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def heavy_processes(min_gb: float = 2.0) -> list[str]:
    """Other processes holding a lot of memory (other people's tests), to explain a wait."""
    me = os.getpid()
    out = []
    for p in psutil.process_iter(["pid", "memory_info", "cmdline"]):
        try:
            rss = p.info["memory_info"].rss / 1e9
        except (psutil.Error, AttributeError):
            continue
        if rss >= min_gb and p.info["pid"] != me:
            out.append(f"{p.info['pid']} {rss:.1f} GB {' '.join(p.info['cmdline'] or [])[:100]}")
    return out


def wait_for_memory(need_gb: float, tries: int = 10, pause_s: int = 60) -> float:
    """Wait (a few times) until `need_gb` is available; return what is available in the end."""
    for i in range(tries):
        free = psutil.virtual_memory().available / 1e9
        if free >= need_gb:
            return free
        log(f"{free:.1f} GB available, {need_gb:.1f} GB wanted; waiting ({i + 1}/{tries}). Heavy processes: "
            + ("; ".join(heavy_processes()) or "none"))
        time.sleep(pause_s)
    return psutil.virtual_memory().available / 1e9


def wait_for_quiet(budget: list[float], max_load: float = 1.5, pause_s: int = 30) -> None:
    """Other people's tests share these cores: wait (within the run's waiting budget) until the load drops."""
    while os.getloadavg()[0] > max_load and budget[0] > 0:
        log(f"load average {os.getloadavg()[0]:.2f} > {max_load}: waiting ({budget[0]:.0f} s of waiting left)")
        time.sleep(pause_s)
        budget[0] -= pause_s


def build_model(model_dir: Path, tokenizer_dir: str = "") -> float:
    """Build the random full-size checkpoint in its own process (peak 8.5 GB, returned afterwards).

    `tokenizer_dir`: a folder with Phi-3's real tokenizer (tests/data/phi3-tokenizer), so prompts are
    tokenized as a learner's are; empty: the pocket tokenizer.
    """
    if (model_dir / "model.safetensors").is_file() or (model_dir / "model.safetensors.index.json").is_file():
        log(f"reusing {model_dir}")
        return 0.0
    wait_for_memory(10)
    start = time.perf_counter()
    code = ("import sys; from phi3kit.testing import make_random_phi3; "
            "make_random_phi3('mini-4k', sys.argv[1], 'full', tokenizer_dir=sys.argv[2] or None)")
    subprocess.run([sys.executable, "-c", code, str(model_dir), tokenizer_dir], check=True)
    return time.perf_counter() - start


def run_tunes(model_dir: Path, routes: str, a: argparse.Namespace) -> list[dict]:
    """`phi3kit tune` for each route's export, each in its own process; the choices land in the benchmark's cache,
    where routes marked {tuned=true} then find them."""
    out = []
    for spec in bench.parse_routes(routes):
        log(f"--- tune {spec.label}")
        cmd = [sys.executable, "-m", "phi3kit", "tune", "--model", str(model_dir), "--backend", spec.backend,
               "--precision", spec.precision, "--device", spec.device, "--cache-dir", a.cache_dir,
               "--runs", str(a.tune_runs), "--prompt-tokens", str(a.tune_prompt_tokens),
               "--new-tokens", str(a.tune_new_tokens)]
        if spec.runtime:
            cmd += ["--runtime", spec.runtime]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        log(proc.stdout[-4000:] or proc.stderr[-2000:])
        out.append({"route": spec.label, "returncode": proc.returncode, "seconds": round(time.perf_counter() - start),
                    "command": " ".join(cmd[1:]), "result": proc.stdout.strip()})
    return out


def machine(hw: dict) -> str:
    return f"{hw.get('cpu')} ({', '.join(hw.get('isa') or ['ISA unknown'])}), {hw.get('cores_physical')} cores"


def markdown(report: bench.BenchReport, overhead: list[dict], ratios: dict, command: str) -> str:
    """The table docs/benchmarks.md publishes."""
    hw = report.hardware
    lines = [f"Machine: {machine(hw)}, {hw.get('ram_total_gb')} GB RAM; "
             f"read bandwidth {report.bandwidth_gbs:.1f} GB/s ({hw.get('cores_physical')} processes). "
             f"Settings: prompts of {', '.join(map(str, report.settings.prompt_lengths))} tokens, "
             f"{report.settings.max_new_tokens} new tokens (ignore_eos), {report.settings.runs} timed runs each "
             f"after {report.settings.warmup} warm-up, medians. Reproduce: `{command}`", "",
             "| route | prompt | TTFT ms | 2nd token ms | TPOT ms | tokens/s | bandwidth limit tok/s | % of limit "
             "| peak RSS MB | weights MB | load s | export s | ppl (drift) | agreement |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def f(v: object, fmt: str) -> str:
        return "-" if v is None else fmt.format(v)

    for r in report.rows():
        export = "cached" if r["export_cached"] and r["backend"] != "transformers" else f(r["export_s"], "{:.0f}")
        if r["status"] != "ok":
            lines.append(f"| {r['route']} | {r['status']}: {r['note']} |" + " |" * 12)
            continue
        lines.append(
            f"| {r['route']} | {r['prompt_tokens']} | {f(r['ttft_ms'], '{:.0f}')} "
            f"| {f(r['second_token_ms'], '{:.0f}')} "
            f"| {f(r['tpot_ms'], '{:.0f}')} | {f(r['tokens_per_s'], '{:.2f}')} "
            f"| {f(r['bandwidth_limit_tokens_per_s'], '{:.1f}')} | {f(r['share_of_limit'], '{:.0%}')} "
            f"| {f(r['peak_rss_mb'], '{:.0f}')} | {f(r['size_mb'], '{:.0f}')} | {f(r['load_s'], '{:.1f}')} "
            f"| {export} | {f(r['perplexity'], '{:.1f}')} | {f(r['agreement'], '{:.2f}')} |")
    for label, change in reduced(hw).items():
        if any(r.route == label and r.status == "ok" for r in report.routes):
            lines += ["", f"{label} ran with {change} only: without native bf16 (AVX2) its prefill is emulated "
                          "and takes minutes per prompt; its decode speed is measured like the others'."]
    if overhead:
        lines += ["", *overhead_table(overhead)]
    lines += ["", "Targets:", ""]
    for k, v in ratios.items():
        lines.append(f"- {k}: {v}")
    return "\n".join(lines) + "\n"


def overhead_table(overhead: list[dict]) -> list[str]:
    """The kit against the same LLMPipeline called directly: medians, and 95% intervals over the pairs."""
    def pct(o: dict, key: str) -> str:
        lo, hi = o.get(f"{key}_95") or (float("nan"), float("nan"))
        return f"{o[key]:+.2%} [{lo:+.2%}, {hi:+.2%}]"

    def cost(o: dict, key: str) -> str:
        ms = o.get(f"{key}_overhead_ms")
        return "-" if ms is None else f"{ms:+.2f}"

    lines = ["Kit overhead over OpenVINO GenAI's LLMPipeline called directly (the kit's own compiled pipeline, "
             "a fresh prompt per call, alternating kit/direct pairs; medians, 95% bootstrap interval over the pairs):",
             "", "| prompt | pairs | same prompt ids | direct TTFT ms | kit TTFT ms | direct TPOT ms "
             "| kit TPOT ms | kit cost per call ms | kit cost per token ms | TTFT overhead | decode overhead |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for o in overhead:
        tpot = (f"| {o['direct_tpot_ms']:.2f} | {o['kit_tpot_ms']:.2f} " if "kit_tpot_ms" in o else
                f"| {1000 / o['direct_tokens_per_s']:.2f} | {1000 / o['kit_tokens_per_s']:.2f} ")
        same = o.get("same_prompt_ids", "-")
        lines.append(f"| {o['prompt_tokens']} | {o['runs']} | {same} | {o['direct_ttft_ms']:.1f} "
                     f"| {o['kit_ttft_ms']:.1f} {tpot}| {cost(o, 'ttft')} | {cost(o, 'tpot')} "
                     f"| {pct(o, 'ttft_overhead')} | {pct(o, 'decode_overhead')} |")
    return lines


def ratios_vs_targets(report: bench.BenchReport, overhead: list[dict]) -> dict[str, str]:
    rows = [r for r in report.rows() if r["status"] == "ok"]
    short = min((r["prompt_tokens"] for r in rows), default=0)

    def speed(route: str) -> float | None:
        return next((r["tokens_per_s"] for r in rows if r["route"] == route and r["prompt_tokens"] == short), None)

    out: dict[str, str] = {}
    kit, ref = speed(KIT_ROUTE), speed("transformers/pytorch:fp32")
    if kit and ref:
        x, t = kit / ref, TARGETS["speedup_vs_pytorch_fp32"]
        verdict = "met" if x >= t else "missed"
        out["kit default route vs PyTorch fp32 decode"] = f"{x:.1f}x (target >= {t:g}x: {verdict})"
    else:
        out["kit default route vs PyTorch fp32 decode"] = "not measured (a route is missing)"
    share = next((r["share_of_limit"] for r in rows if r["route"] == KIT_ROUTE and r["prompt_tokens"] == short), None)
    if share is not None:
        t = TARGETS["share_of_bandwidth_limit"]
        out["kit default route vs bandwidth limit"] = f"{share:.0%} of the limit (target >= {t:.0%}: " \
                                                      f"{'met' if share >= t else 'missed'})"
    out.update(overhead_verdicts(overhead))
    return out


def overhead_verdicts(overhead: list[dict]) -> dict[str, str]:
    """Met only when the whole 95% interval lies under the target; missed when all of it lies above."""
    t = TARGETS["kit_overhead"]
    out = {}
    for o in overhead:
        bounds = [o.get(f"{k}_95") or (o[k], o[k]) for k in ("decode_overhead", "ttft_overhead")]
        high, low = max(hi for _, hi in bounds), max(lo for lo, _ in bounds)
        verdict = "met" if high < t else "missed" if low >= t else "not resolved"
        out[f"kit overhead, {o['prompt_tokens']}-token prompt"] = (
            f"decode {o['decode_overhead']:+.2%}, TTFT {o['ttft_overhead']:+.2%} (target < {t:.0%}: {verdict})")
    return out


def measure_overhead(model_dir: Path, a: argparse.Namespace) -> list[dict]:
    """kit_overhead.py's experiment in a process of its own (the int4 export is built into the cache if absent)."""
    log("--- kit overhead vs LLMPipeline (int4)")
    code = ("import json, sys; sys.path.insert(0, sys.argv[6]); from kit_overhead import kit_overhead; "
            "print('RESULT', json.dumps(kit_overhead(sys.argv[1], 'int4', sys.argv[2], int(sys.argv[3]), "
            "int(sys.argv[4]), cache_dir=sys.argv[5], log=lambda m: None)))")
    proc = subprocess.run([sys.executable, "-c", code, str(model_dir), a.overhead_prompt_lengths,
                           str(a.max_new_tokens), str(a.overhead_runs), a.cache_dir, str(Path(__file__).parent)],
                          capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        log(f"overhead run failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
        return []
    return json.loads(line[len("RESULT "):])


def overhead_only(model_dir: Path, out: Path, a: argparse.Namespace, command: str) -> None:
    wait_for_memory(12, tries=5)
    wait_for_quiet([float(a.max_wait)])
    start = time.strftime("%Y-%m-%dT%H:%M:%S")
    overhead = measure_overhead(model_dir, a)
    if not overhead:
        sys.exit(1)
    hw = bench.hardware()
    verdicts = overhead_verdicts(overhead)
    name = "kit_overhead_pocket" if str(model_dir) == "pocket" else "kit_overhead"
    model = "the pocket model" if name.endswith("pocket") else f"random Phi-3-mini-4k, full size ({model_dir})"
    (out / f"{name}.json").write_text(json.dumps(
        {"created": start, "model": model, "hardware": hw,
         "max_new_tokens": a.max_new_tokens, "kit_overhead": overhead, "ratios": verdicts, "command": command},
        indent=1, default=str))
    text = "\n".join([f"Model: {model}. Machine: {machine(hw)}. Started {start}. "
                      f"{a.max_new_tokens} new tokens per call. Reproduce: `{command}`", "", *overhead_table(overhead),
                      "", "Targets:", "", *(f"- {k}: {v}" for k, v in verdicts.items())]) + "\n"
    (out / f"{name}.md").write_text(text)
    log("\n" + text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default="/tmp/fullsize/model",
                    help="the random checkpoint (built if absent); 'pocket' with --overhead-only")
    ap.add_argument("--cache-dir", default="/tmp/fullsize/cache", help="export cache for this benchmark")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"), help="results folder")
    ap.add_argument("--routes", default=",".join(ROUTES))
    ap.add_argument("--prompt-lengths", default="128,512")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--name", default="full_size", help="results file stem: <out>/<name>.{csv,json,md}")
    ap.add_argument("--tokenizer-dir", default="", help="Phi-3's real tokenizer for the built model (default: the "
                                                        "pocket's; tests/data/phi3-tokenizer is Phi-3's)")
    ap.add_argument("--no-quality", action="store_true", help="skip perplexity and agreement (speed only)")
    ap.add_argument("--tune", default="", help="routes to `phi3kit tune` first (comma separated); measure the tuned "
                                               "choice with a route option {tuned=true}")
    ap.add_argument("--tune-runs", type=int, default=2)
    ap.add_argument("--tune-prompt-tokens", type=int, default=128)
    ap.add_argument("--tune-new-tokens", type=int, default=64)
    ap.add_argument("--max-wait", type=int, default=1200, help="seconds, in all, to wait for a quieter CPU")
    ap.add_argument("--resume", action="store_true",
                    help="keep the routes that finished in an earlier full_size.json and run only the others")
    ap.add_argument("--rerun", default="", help="with --resume: routes to measure again (comma separated labels)")
    ap.add_argument("--nice", type=int, default=-10,
                    help="priority change for this run and its processes (negative needs root): on a shared "
                         "machine other work then takes CPU time from the benchmark less often")
    ap.add_argument("--overhead-prompt-lengths", default="128",
                    help="prompts for the kit-vs-LLMPipeline comparison (its cost is per call, not per prompt token)")
    ap.add_argument("--overhead-runs", type=int, default=8, help="alternating kit/direct pairs per prompt length")
    ap.add_argument("--no-overhead", action="store_true", help="skip the kit-vs-LLMPipeline comparison")
    ap.add_argument("--overhead-only", action="store_true",
                    help="measure only the kit-vs-LLMPipeline comparison; results go to kit_overhead.{json,md} "
                         "(kit_overhead_pocket.* with --model-dir pocket) and full_size.* is left as it is")
    a = ap.parse_args()
    command = "python benchmarks/full_size.py " + " ".join(sys.argv[1:])
    try:
        os.nice(a.nice)
    except PermissionError:
        log(f"cannot change the priority by {a.nice} (needs root); running at the default priority")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model_dir = Path(a.model_dir)
    if not (a.overhead_only and a.model_dir == "pocket"):  # the pocket model ships with the kit: nothing to build
        log(f"model build: {build_model(model_dir, a.tokenizer_dir):.0f} s")
    if a.overhead_only:
        overhead_only(model_dir, out, a, command)
        return

    settings = bench.Settings(prompt_lengths=bench.parse_lengths(a.prompt_lengths), max_new_tokens=a.max_new_tokens,
                              runs=a.runs, warmup=1, quality=not a.no_quality, quality_tokens=256, quality_window=256,
                              agreement_prompts=2, agreement_tokens=16, cache_dir=a.cache_dir)
    report = bench.BenchReport(model=f"random Phi-3-mini-4k, full size ({model_dir})", settings=settings, routes=[],
                               reference=bench.REFERENCE, isolated=True, hardware=bench.hardware(),
                               created=time.strftime("%Y-%m-%dT%H:%M:%S"))
    budget = [float(a.max_wait)]
    wait_for_quiet(budget)
    bandwidths = [bench.memory_bandwidth_gbs(mb=1024) for _ in range(2)]
    report.bandwidth_gbs = max(bandwidths)
    log(f"read bandwidth {report.bandwidth_gbs:.1f} GB/s")
    overhead: list[dict] = []
    done: dict[str, bench.RouteResult] = {}
    if a.resume and (out / f"{a.name}.json").is_file():
        earlier = json.loads((out / f"{a.name}.json").read_text())
        again = {bench.Route.parse(x).label for x in a.rerun.split(",") if x.strip()}
        done = {r["route"]: bench.RouteResult.from_dict(r) for r in earlier["routes"]
                if r["status"] == "ok" and r["route"] not in again}
        bandwidths.append(float(earlier.get("bandwidth_gbs") or 0.0))
        report.bandwidth_gbs = max(bandwidths)
        overhead = [] if KIT_ROUTE in again else earlier.get("kit_overhead") or []
        log(f"resuming: keeping {', '.join(done) or 'nothing'}")

    def save() -> None:
        ref = next((r for r in report.routes if r.route == "transformers/pytorch:fp32" and r.status == "ok"),
                   next((r for r in report.routes if r.backend == "transformers" and r.status == "ok"), None))
        if ref is not None:
            bench.fill_agreement(report, ref)
        ratios = ratios_vs_targets(report, overhead)
        report.save(out, a.name, overwrite=True)
        data = {**asdict(report), "kit_overhead": overhead, "tunes": tunes, "ratios": ratios, "command": command}
        (out / f"{a.name}.json").write_text(json.dumps(data, indent=1, default=str))
        tuned = ["", "Tuning (`phi3kit tune`, before the routes; a route marked {tuned=true} runs its choice):", ""]
        tuned += [f"- {t['route']} ({t['seconds']} s, exit {t['returncode']}):\n\n```\n{t['result']}\n```"
                  for t in tunes]
        (out / f"{a.name}.md").write_text(markdown(report, overhead, ratios, command) + ("\n".join(tuned) + "\n"
                                                                                          if tunes else ""))

    tunes: list[dict] = earlier.get("tunes", []) if a.resume and done else []
    if a.tune and not tunes:
        wait_for_quiet(budget)
        tunes = run_tunes(model_dir, a.tune, a)
        save()

    for spec in bench.parse_routes(a.routes):
        if spec.label in done:
            report.routes.append(done[spec.label])
            continue
        wait_for_quiet(budget)
        log(f"--- {spec.label}: {psutil.virtual_memory().available / 1e9:.1f} GB available")
        if spec.backend == "transformers" and spec.precision == "fp32":
            free = wait_for_memory(FP32_MIN_AVAILABLE_GB, tries=5)
            if free < FP32_MIN_AVAILABLE_GB:
                report.routes.append(bench.RouteResult(
                    route=spec.label, backend=spec.backend, runtime=spec.resolved_runtime, precision=spec.precision,
                    device=spec.device, status="skipped",
                    note=f"{free:.1f} GB available, PyTorch fp32 needs about 23 GB RSS; run it on an idle machine"))
                save()
                continue
        else:
            wait_for_memory(12, tries=5)
        start = time.perf_counter()
        route_settings = bench.Settings(**{**asdict(settings), **reduced(report.hardware).get(spec.label, {})})
        result = bench.measure_isolated(spec, str(model_dir), route_settings,
                                        log=lambda m: None if "it/s]" in m else log(m))
        log(f"{spec.label}: {result.status} in {time.perf_counter() - start:.0f} s {result.note}")
        report.routes.append(result)
        save()
        log("\n" + report.table())

    if not a.no_overhead and not overhead:
        wait_for_memory(10, tries=5)
        wait_for_quiet(budget)
        overhead = measure_overhead(model_dir, a)
        save()
    wait_for_quiet(budget)
    bandwidths += [bench.memory_bandwidth_gbs(mb=1024) for _ in range(2)]  # the best of start and end: a busy
    report.bandwidth_gbs = max(bandwidths)  # machine reads slower, which would flatter the share of the limit
    log(f"read bandwidth, all measurements: {', '.join(f'{b:.1f}' for b in bandwidths)} GB/s")
    save()
    log("\n" + (out / f"{a.name}.md").read_text())


if __name__ == "__main__":
    from phi3kit.errors import Phi3kitError

    try:
        main()
    except Phi3kitError as exc:  # one paragraph naming the problem and the fix, no traceback
        sys.exit(f"benchmarks/full_size.py: error: {exc}")
