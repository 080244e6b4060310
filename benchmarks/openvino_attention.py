"""OpenVINO alone: how long one chunk of new tokens takes after a short and a long past, per KV-cache precision.

    python benchmarks/openvino_attention.py FOLDER [--past 176 2500] [--chunk 240] [--repeats 2]
                                            [--kv-precisions default f32 bf16] [--device CPU] [--out FILE.md]

FOLDER is an OpenVINO export (the kit's or optimum-cli's: `openvino_model.xml`, a stateful model). No kit code
runs: the model is compiled with `ov.Core`, its state reset, `past` random token ids prefilled in one request,
then `chunk` more timed in one request, as a chat turn that reuses the cache does (the kit's chats on the
optimum-intel route feed exactly this). If the chunk after the long past takes much longer than after the short
one, the growth of a chat's time to first token on this route is the runtime's attention over the past, not
tokens the kit read again. It also times the next single token (a decode step) at both lengths.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main() -> None:
    import numpy as np
    import openvino as ov

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--past", type=int, nargs="+", default=[176, 2500])
    ap.add_argument("--chunk", type=int, default=240)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--kv-precisions", nargs="+", default=["default", "f32", "bf16"],
                    help="KV_CACHE_PRECISION values to compile with ('default': the plugin's own choice)")
    ap.add_argument("--device", default="CPU")
    ap.add_argument("--out", type=Path, help="also write the table (Markdown) to this file")
    a = ap.parse_args()
    xml = a.folder / "openvino_model.xml"
    if not xml.is_file():
        raise SystemExit(f"{xml} does not exist: pass the folder of an OpenVINO export (openvino_model.xml)")
    core = ov.Core()
    model = core.read_model(xml)
    rng = np.random.default_rng(0)
    rows = []
    for precision in a.kv_precisions:
        config = {} if precision == "default" else {"KV_CACHE_PRECISION": precision}
        compiled = core.compile_model(model, a.device, config)
        kv = compiled.get_property("KV_CACHE_PRECISION").to_string()  # what the plugin chose: u8, f32, bf16...
        request = compiled.create_infer_request()

        def run(n: int, past: int, request: ov.InferRequest = request) -> float:
            """Feed n random ids after `past` cached ones; seconds taken."""
            ids = rng.integers(100, 30000, n)
            start = time.perf_counter()
            request.infer({"input_ids": ids[None].astype(np.int64),
                           "attention_mask": np.ones((1, past + n), np.int64),
                           "position_ids": np.arange(past, past + n, dtype=np.int64)[None],
                           "beam_idx": np.zeros(1, np.int32)})
            return time.perf_counter() - start

        for _ in range(a.repeats):
            for past in a.past:
                request.reset_state()
                run(past, 0)
                chunk_s = run(a.chunk, past)
                step_s = run(1, past + a.chunk)
                rows.append((precision, kv, past, chunk_s, step_s))
                print(f"KV {precision} ({kv}), past {past}: {a.chunk} tokens in {chunk_s:.2f} s "
                      f"({chunk_s / a.chunk * 1000:.1f} ms/token), next token {step_s * 1000:.0f} ms", flush=True)
    lines = [f"| KV_CACHE_PRECISION | past tokens | {a.chunk} new tokens s | ms per new token | next token ms |",
             "|---|---|---|---|---|"]
    lines += [f"| {p} ({kv}) | {past} | {c:.2f} | {c / a.chunk * 1000:.1f} | {s * 1000:.0f} |"
              for p, kv, past, c, s in rows]
    text = "\n".join(lines)
    print(text)
    if a.out:
        command = (f"python benchmarks/openvino_attention.py {a.folder} --past {' '.join(map(str, a.past))} "
                   f"--chunk {a.chunk} --repeats {a.repeats} --kv-precisions {' '.join(a.kv_precisions)} "
                   f"--device {a.device}")
        a.out.write_text(f"`{command}` (OpenVINO {ov.__version__})\n\n{text}\n", encoding="utf-8")


if __name__ == "__main__":
    main()
