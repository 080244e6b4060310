"""The kit's cost over calling OpenVINO GenAI directly: a developer experiment, not part of the kit.

Imported by benchmarks/full_size.py (`--overhead-only`) and tests/test_bench.py; measures the kit against
its own compiled LLMPipeline (`session.backend.pipeline`, the OpenVINO backend's public pipeline).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

from phi3kit.bench import Prompts, parse_lengths
from phi3kit.bench.stats import median as _median
from phi3kit.bench.stats import median_interval
from phi3kit.config import LoadConfig

Log = Any


def kit_overhead(model: str = "pocket", precision: str = "int4", prompt_lengths: str | Sequence[int] = (128,),
                 max_new_tokens: int = 64, runs: int = 3, device: str = "CPU", cache_dir: str | None = None,
                 log: Log = print) -> list[dict[str, Any]]:
    """The kit's cost over calling OpenVINO GenAI directly: the same compiled pipeline, so only the wrapper differs.

    Direct: `pipe.generate(templated_text, config, streamer)` on the kit's own `LLMPipeline`, with a
    StreamerBase that timestamps tokens. Kit: `session.generate(text)`, TTFT counted from the call
    (templating and tokenizing included). A second pipeline would be a second copy of the weights in
    other pages, which times memory placement too (an earlier run against one saw +6.5% to +9.3%).
    Every call gets a fresh prompt of the same length, so the prefix cache helps neither side; pairs
    alternate their order, so drift cancels. Decode speed is judged by the median per-token latency,
    with a bootstrap 95% interval over the pairs' ratios. The kit's cost in milliseconds (per call,
    per token) does not grow with the model, so a small model measures it precisely and bounds the
    share on a big one.
    """
    import numpy as np
    import openvino_genai

    from phi3kit.generate import Session

    session = Session.load(LoadConfig(model=model, backend="openvino", precision=precision, device=device,
                                      runtime="genai", cache_dir=cache_dir), log)
    pipe = session.backend.pipeline
    prompts = Prompts(session.tokenizer)
    Status = openvino_genai.StreamingStatus

    class Stamps(openvino_genai.StreamerBase):
        def __init__(self) -> None:
            super().__init__()
            self.times: list[float] = []

        def write(self, token: Any) -> Any:
            self.times.append(time.perf_counter())
            return Status.RUNNING

        def end(self) -> None:
            pass

    def content(n: int) -> str:
        ids = prompts.make(n)[len(prompts.head): n - len(prompts.tail)]
        return session.tokenizer.decode(ids)

    def templated(text: str) -> str:
        return session.tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                     add_generation_prompt=True, tokenize=False)

    def direct(text: str) -> tuple[float, list[float]]:
        config = pipe.get_generation_config()
        config.max_new_tokens, config.ignore_eos, config.apply_chat_template = max_new_tokens, True, False
        config.stop_token_ids = set()
        config.do_sample = False
        prompt = templated(text)
        streamer = Stamps()
        start = time.perf_counter()
        pipe.generate(prompt, config, streamer)
        t = streamer.times
        return t[0] - start, [b - a for a, b in zip(t, t[1:], strict=False)]

    def kit(text: str) -> tuple[float, list[float]]:
        start = time.perf_counter()
        response = session.generate(text, max_new_tokens=max_new_tokens, ignore_eos=True)
        encoded = time.perf_counter() - start
        response.consume()
        m = response.metrics
        return encoded + m.ttft_s, m.token_latencies_s[1:]

    def interval(ratios: list[float]) -> tuple[float, float]:
        lo, hi = median_interval(ratios)
        return lo - 1, hi - 1

    def same_input(text: str) -> bool:
        """The ids the pipeline's own tokenizer makes of the direct call's text are the ids the kit sends."""
        direct_ids = np.asarray(pipe.get_tokenizer().encode(templated(text)).input_ids.data).reshape(-1).tolist()
        return direct_ids == session.generate(text, max_new_tokens=1).prompt_ids

    rows = []
    for n in parse_lengths(prompt_lengths):
        same_prompt = same_input(content(n))
        # Greedy ids are not compared: OpenVINO's CPU runs are not bit-reproducible (bf16, thread scheduling), so
        # two direct calls on one prompt can part after 60 of 64 tokens, and on random weights at the first.
        for f in (direct, kit):
            f(content(n))  # warm-up, excluded
        ttft: dict[str, list[float]] = {"direct": [], "kit": []}
        tpot: dict[str, list[float]] = {"direct": [], "kit": []}
        for i in range(runs):
            order = (("kit", kit), ("direct", direct)) if i % 2 == 0 else (("direct", direct), ("kit", kit))
            for name, f in order:
                first, gaps = f(content(n))
                ttft[name].append(first)
                tpot[name].append(_median(gaps))
        row: dict[str, Any] = {"prompt_tokens": n, "runs": runs, "new_tokens": max_new_tokens,
                               "same_prompt_ids": same_prompt}
        for key, name, samples in (("ttft", "ttft", ttft), ("tpot", "decode", tpot)):
            pairs = list(zip(samples["kit"], samples["direct"], strict=True))
            ratios = [k / d for k, d in pairs if d]
            row[f"kit_{key}_ms"], row[f"direct_{key}_ms"] = (_median(samples[x]) * 1000 for x in ("kit", "direct"))
            # the kit's cost in time, per call and per token: what carries over to a bigger model
            row[f"{key}_overhead_ms"] = _median([(k - d) * 1000 for k, d in pairs])
            row[f"{name}_overhead"] = _median(ratios) - 1 if ratios else math.nan
            row[f"{name}_overhead_95"] = interval(ratios) if ratios else (math.nan, math.nan)
        for side in ("kit", "direct"):
            row[f"{side}_tokens_per_s"] = 1000 / row[f"{side}_tpot_ms"] if row[f"{side}_tpot_ms"] else 0.0
        rows.append(row)
    session.close()
    return rows
