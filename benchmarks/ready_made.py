"""A ready-made folder against the kit's own export, on the full-size Phi-3-mini: the time and memory
a learner's laptop pays before its first answer on each path.

No hub here, so the ready-made folder is stood in for by the kit's export with the kit's manifest
left out: a plain folder that optimum-cli (or ONNX Runtime GenAI's builder) wrote, which the kit
loads as it is. Every step runs in its own process under GNU time; "peak RSS" is the largest single
process of that step (the exporter child included).

    python benchmarks/ready_made.py --model-dir /tmp/fullsize/model --work /tmp/ready_made
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIME = "/usr/bin/time"

EXPORT = """
import json, sys, phi3kit as kit
e = kit.export(sys.argv[1], sys.argv[2], "int4", log=lambda *a: None, cache_dir=sys.argv[3])
print("RESULT " + json.dumps({"path": str(e.path)}))
"""

LOAD = """
import json, sys, phi3kit as kit
s = kit.load(sys.argv[1], sys.argv[2], log=lambda *a: None, cache_dir=sys.argv[3], tuned=False,
             **json.loads(sys.argv[4]))
r = s.generate("What is an NPU?", max_new_tokens=8, ignore_eos=True)
r.text
print("RESULT " + json.dumps({"load_s": s.load_s, "load_peak_rss_mb": s.load_peak_rss_mb, "origin": s.origin,
                              "ttft_ms": r.metrics.ttft_s * 1000, "torch_imported": "torch" in sys.modules,
                              "repr": repr(s)}))
"""


def timed(code: str, *args: str) -> dict:
    """Run `code` in a fresh interpreter under GNU time: its RESULT line, wall seconds and peak RSS.

    The pre-flight is skipped: its estimate for the ORT GenAI build is this 25 GB machine's whole memory,
    and the point here is to measure what the export really takes."""
    cmd = [TIME, "-f", "TIME %e %M", sys.executable, "-c", code, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PHI3KIT_SKIP_PREFLIGHT": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"step failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    result = next(json.loads(x[7:]) for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    _, secs, kb = next(x for x in proc.stderr.splitlines() if x.startswith("TIME ")).split()
    return {**result, "time_s": float(secs), "peak_rss_mb": int(kb) / 1024}


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, required=True, help="the full-size checkpoint (built here if absent)")
    ap.add_argument("--tokenizer-dir", type=Path, default=ROOT / "tests" / "data" / "phi3-tokenizer")
    ap.add_argument("--work", type=Path, required=True, help="scratch folder: caches and the ready-made copies")
    ap.add_argument("--backends", default="openvino,ortgenai")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ready_made")
    a = ap.parse_args()
    if not (a.model_dir / "config.json").exists():
        from phi3kit.testing import make_random_phi3

        make_random_phi3("mini-4k", a.model_dir, size="full", tokenizer_dir=a.tokenizer_dir)
    rows = []
    for backend in a.backends.split(","):
        cache = a.work / f"cache-{backend}"
        exported = timed(EXPORT, str(a.model_dir), backend, str(cache))
        ready = a.work / f"ready-made-{backend}"
        if ready.exists():
            shutil.rmtree(ready)
        shutil.copytree(exported["path"], ready, ignore=shutil.ignore_patterns("phi3kit-manifest.json"))
        empty = a.work / f"empty-cache-{backend}"
        shutil.rmtree(empty, ignore_errors=True)
        from_ready = timed(LOAD, str(ready), backend, str(empty), "{}")
        from_cache = timed(LOAD, str(a.model_dir), backend, str(cache), json.dumps({"precision": "int4"}))
        written = sorted(str(p.relative_to(empty)) for p in empty.rglob("*") if p.is_file()) if empty.exists() else []
        rows.append({"backend": backend, "export": exported, "ready_made_load": from_ready,
                     "cached_export_load": from_cache, "folder_mb": folder_mb(ready),
                     "ready_made_cache_files": written})
        print(json.dumps(rows[-1], indent=1), flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    lines = ["| route | step | wall s | peak RSS MB (largest process) | kit load s | torch imported |",
             "|---|---|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['backend']} int4 | export from the checkpoint | {r['export']['time_s']:.0f} | "
                     f"{r['export']['peak_rss_mb']:.0f} | | |")
        for step, key in (("load + 8 tokens, ready-made folder", "ready_made_load"),
                          ("load + 8 tokens, the cached export", "cached_export_load")):
            x = r[key]
            lines.append(f"| {r['backend']} int4 | {step} | {x['time_s']:.1f} | {x['peak_rss_mb']:.0f} | "
                         f"{x['load_s']:.1f} | {x['torch_imported']} |")
    a.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    from phi3kit.errors import Phi3kitError

    try:
        main()
    except Phi3kitError as exc:  # one paragraph naming the problem and the fix, no traceback
        sys.exit(f"benchmarks/ready_made.py: error: {exc}")
