"""`phi3kit tune` / `kit.tune(session)`: find the runtime settings this machine runs the loaded model fastest with.

A runtime's defaults are chosen for every machine at once: on CPUs with native bf16, OpenVINO computes
in bf16, the slow path for single-token decode. The tuner times a few candidates taken from the runtimes'
documented properties, with the benchmark's method (a fresh prompt every run, warm-up excluded, medians,
one compiled pipeline per candidate, the default measured first and last so drift shows), and keeps the
best only when it beats the default by more than the noise: the whole bootstrap interval of its ratio to
the default must lie below 1. The choice is stored per export, device identity and library versions,
applied on later loads of the same (`tuned=False` opts out), and never applied anywhere else.

Candidates that change numerics (inference precision, dynamic quantization) change greedy ids too: the
report puts each one's greedy agreement with the default beside its speed, and a tuned session says so.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .backends.base import Candidate, Log  # noqa: F401 - Candidate: tuning's public name
from .config import MAX_NEW_TOKENS, GenerationConfig
from .errors import CachedEntryError, StorageError, TuneError, UnknownChoiceError, last_line
from .tuned import TUNED_DIR, _shape_problem, describe, identity, require_storable, save_choice, stored, stored_path  # noqa: F401

# What is minimized: the time to a whole answer (a 256-token prompt, a 128-token answer), decode alone, or TTFT.
OBJECTIVES = ("answer", "decode", "ttft")


# --- the choice: a pure function of the measured samples --------------------------------------------------
@dataclass
class Choice:
    """Which candidate won, each candidate's median ratio to the default and its 95% interval, and why."""

    name: str
    ratios: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    reason: str


def ratio_interval(candidate: Sequence[float], default: Sequence[float], resamples: int = 2000,
                   seed: int = 0) -> tuple[float, float, float]:
    """(median ratio candidate/default, and its bootstrap 95% interval), resampling both sides."""
    import numpy as np

    rng = np.random.default_rng(seed)
    c, d = np.asarray(candidate, dtype=float), np.asarray(default, dtype=float)
    boot = (np.median(c[rng.integers(0, len(c), size=(resamples, len(c)))], axis=1)
            / np.median(d[rng.integers(0, len(d), size=(resamples, len(d)))], axis=1))
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return float(np.median(c) / np.median(d)), float(lo), float(hi)


def choose(samples: dict[str, Sequence[float]], default: str = "default", failed: Sequence[str] = ()) -> Choice:
    """The candidate to keep, from each candidate's objective samples (seconds: lower is better).

    A candidate wins only if the whole 95% interval of its ratio to the default lies below 1 (it beats the
    default by more than the noise); among those, the lowest median ratio; on a tie, the earlier listed.
    A candidate that failed, or has no samples, never wins. No winner keeps the default.
    """
    if not samples.get(default):
        raise TuneError(f"no samples of the default ({default!r}) to compare against")
    ratios, intervals, winners = {}, {}, []
    for name, values in samples.items():
        if name == default or name in failed or not values:
            continue
        ratio, lo, hi = ratio_interval(values, samples[default])
        ratios[name], intervals[name] = ratio, (lo, hi)
        if hi < 1.0:
            winners.append((ratio, name))
    if not winners:
        reason = "no candidate beat the default by more than the noise"
        return Choice(default, ratios, intervals, reason)
    ratio, name = min(winners, key=lambda w: w[0])  # min() keeps the first of equal ratios: the earlier listed
    lo, hi = intervals[name]
    return Choice(name, ratios, intervals, f"{1 / ratio:.2f}x the default's speed (95% interval of the time "
                                           f"ratio {lo:.3f}-{hi:.3f}, all below 1)")


# --- measuring -------------------------------------------------------------------------------------
@dataclass
class Measured:
    """One candidate's runs: the objective's samples, TTFT and decode medians, its greedy ids, or its error."""

    candidate: Candidate
    objective_s: list[float] = field(default_factory=list)
    ttft_s: list[float] = field(default_factory=list)
    tpot_s: list[float] = field(default_factory=list)
    greedy: list[list[int]] = field(default_factory=list)
    error: str = ""


@dataclass(repr=False)
class TuneResult:
    """What `tune()` measured and chose; shows as a table in notebooks."""

    objective: str
    measured: list[Measured]
    choice: Choice
    agreement: dict[str, float]
    identity: dict[str, Any]
    saved: Path | None = None
    command: str = ""
    save_error: str = ""  # why the choice was measured but not stored (the table is still all here)

    @property
    def chosen(self) -> Candidate:
        return next(m.candidate for m in self.measured if m.candidate.name == self.choice.name)

    def rows(self) -> list[dict[str, Any]]:
        from .bench.stats import median

        out = []
        for m in self.measured:
            name = m.candidate.name
            lo, hi = self.choice.intervals.get(name, (None, None))
            out.append({"candidate": name, "settings": describe(m.candidate.properties),
                        f"{self.objective} s": median(m.objective_s) if m.objective_s else None,
                        "ttft ms": median(m.ttft_s) * 1000 if m.ttft_s else None,
                        "decode tok/s": 1 / median(m.tpot_s) if m.tpot_s and median(m.tpot_s) else None,
                        "time vs default": self.choice.ratios.get(name, 1.0 if name == "default" else None),
                        "95% interval": f"{lo:.3f}-{hi:.3f}" if lo is not None else "",
                        "greedy agreement": self.agreement.get(name),
                        "changes numerics": m.candidate.numerics, "error": m.error,
                        "chosen": name == self.choice.name})
        return out

    def to_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame(self.rows())

    def __str__(self) -> str:
        head = f"objective: {self.objective}; chosen: {self.choice.name} ({self.choice.reason})"
        tail = f"\nNOT STORED: {self.save_error}" if self.save_error else ""
        return head + "\n" + self.to_frame().to_string(index=False) + tail

    __repr__ = __str__

    def _repr_html_(self) -> str:
        from html import escape

        return (f"<p><b>chosen: {escape(self.choice.name)}</b> ({escape(self.choice.reason)})</p>"
                + self.to_frame().to_html(index=False))

    def to_dict(self) -> dict[str, Any]:
        return {"objective": self.objective, "choice": asdict(self.choice), "agreement": self.agreement,
                "identity": self.identity, "rows": self.rows()}


def candidates(session: Any) -> list[Candidate]:
    """What to try for this session's backend and device: the backend's documented properties."""
    from .backends import get

    found = get(session.config.backend).tune_candidates(session.config)
    return [Candidate("default", {}, "the runtime's own choices"), *found]


def _objective(objective: str, ttft: float, tpot: float, total: float) -> float:
    return {"answer": total, "decode": tpot, "ttft": ttft}[objective]


def tune(session: Any, *, objective: str = "answer", runs: int = 3, prompt_tokens: int = 256,
         new_tokens: int = MAX_NEW_TOKENS, agreement_prompts: int = 2, agreement_tokens: int = 32,
         only: Sequence[str] | None = None, save: bool = True, log: Log = print) -> TuneResult:
    """Time the candidates for `session`'s export on this machine and keep the fastest that beats the default.

    Each candidate gets its own compiled pipeline, one warm-up run, then `runs` timed runs of a fresh
    `prompt_tokens` prompt and exactly `new_tokens` new tokens; the default runs first and last. `only`
    limits the candidates by name. `save` stores the choice for later loads of the same export here.
    """
    from .bench.prompts import Prompts
    from .bench.quality import agreement
    from .bench.quality import agreement_prompts as agreement_ids
    from .generate import Response, Session

    if objective not in OBJECTIVES:
        raise UnknownChoiceError("objective", objective, OBJECTIVES,
                                 hint="answer: a whole answer; decode: tokens/s; ttft: time to first token.")
    if runs < 2:
        raise TuneError(f"runs must be at least 2 (an interval needs samples), got {runs}.")
    GenerationConfig(max_new_tokens=new_tokens)
    session.check_fits(prompt_tokens, new_tokens)  # before any pipeline is compiled
    pool = candidates(session)
    if only is not None:
        unknown = [n for n in only if n not in {c.name for c in pool}]
        if unknown:
            raise UnknownChoiceError("candidate", unknown[0], [c.name for c in pool])
        pool = [c for c in pool if c.name in {"default", *only}]
    if save:
        require_storable(session.config.cache_dir)  # a read-only or full cache says so now, not after measuring
    base = replace(session.config, tuned=False)
    prompts = Prompts(session.tokenizer)
    gen = GenerationConfig(max_new_tokens=new_tokens, ignore_eos=True)
    greedy = GenerationConfig(max_new_tokens=agreement_tokens)
    probe_ids = agreement_ids(session.config.model, session, agreement_prompts)
    results = {c.name: Measured(c) for c in pool}
    order = [*pool, pool[0]]  # the default first and last: the drift between them is part of the noise
    for i, cand in enumerate(order):
        m = results[cand.name]
        log(f"--- {cand.name}: {describe(cand.properties)}")
        try:
            props = {**base.runtime_config, **cand.properties}
            s = Session.load(replace(base, runtime_config=props), log=lambda _: None)
        except Exception as exc:  # noqa: BLE001 - a property the device refuses: that candidate fails, not the tune
            cause = exc.__cause__ if isinstance(exc, CachedEntryError) and exc.__cause__ else exc  # the runtime's own
            m.error = f"{type(cause).__name__}: {last_line(cause)}"
            log(f"{cand.name} failed to load: {m.error}")
            continue
        try:
            Response(s, prompts.make(prompt_tokens), gen).consume()  # warm-up, excluded
            for _ in range(runs):
                start = time.perf_counter()
                r = Response(s, prompts.make(prompt_tokens), gen).consume()
                total = time.perf_counter() - start
                m.ttft_s.append(r.metrics.ttft_s)
                m.tpot_s.append(r.metrics.tpot_s)
                m.objective_s.append(_objective(objective, r.metrics.ttft_s, r.metrics.tpot_s, total))
            if i < len(pool):  # greedy ids once per candidate
                m.greedy = [Response(s, ids, greedy).consume().token_ids for ids in probe_ids]
        except Exception as exc:  # noqa: BLE001 - one failing candidate must not lose the others
            m.error = f"{type(exc).__name__}: {last_line(exc)}"
            log(f"{cand.name} failed: {m.error}")
        finally:
            s.close()
            del s
            gc.collect()
    failed = [n for n, m in results.items() if m.error or not m.objective_s]
    choice = choose({n: m.objective_s for n, m in results.items()}, "default", failed)
    ref = results["default"].greedy
    agree = {n: agreement(ref, m.greedy).identical for n, m in results.items() if m.greedy and ref}
    result = TuneResult(objective, list(results.values()), choice, agree, identity(session.config, session.export))
    if save:
        try:
            result.saved = save_choice(session, result)
        except StorageError as exc:  # the disk filled (or went read-only) while measuring: keep the measurements
            result.save_error = str(exc)
            log(f"The choice was measured but not stored: {exc}")
    return result
