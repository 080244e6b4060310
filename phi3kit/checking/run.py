"""`phi3kit check`: every installed route on every device this machine has, asked questions with known answers.

The plan comes from the backend interface only (`backends.get(name)`: its devices, precisions, `check`, the
device it really ran on), so a new backend is checked without a line here.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform as platform_module
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from .. import backends, drivers, hub
from ..config import LoadConfig
from ..devices import device_family
from ..errors import MissingDependencyError, Phi3kitError, UnknownChoiceError
from ..generate import Session
from ..machine import cpu_info, library_version
from . import canaries
from .results import MachineReport, RouteResult

Log = Callable[[str], None]
CHOOSERS = ("AUTO", "HETERO", "MULTI")  # devices that pick others: what they chose is reported, not judged


@dataclass(frozen=True)
class Target:
    """One route to check: a backend, its runtime, a device it sees, a precision."""

    backend: str
    runtime: str
    device: str
    precision: str
    cfg: LoadConfig = field(default_factory=LoadConfig, compare=False)  # as the backend loads it on that device


def plan(only: Sequence[str] = (), devices: Sequence[str] = (),
         runtimes: Sequence[str] = ()) -> tuple[list[Target], list[RouteResult]]:
    """Every installed route x device x pocket precision (only the backends, devices and runtimes named, if any);
    routes that cannot run here come back SKIPPED with why."""
    targets: list[Target] = []
    skipped: list[RouteResult] = []
    for name in only:  # a mistyped backend is refused, not reported as missing
        if name not in backends.names():
            raise UnknownChoiceError("backend to check", name, backends.names())
    for name in only or backends.names():
        try:
            cls = backends.get(name)
            cls.devices(cls.default_runtime())
        except (ImportError, Phi3kitError) as exc:  # not installed here: say how to install it
            fix = "" if isinstance(exc, Phi3kitError) else \
                f" (pip install -r requirements/{backends.get(name).requirements})"
            skipped.append(RouteResult(name, "-", status="SKIPPED", reason=f"not installed: {_first_line(exc)}{fix}"))
            continue
        for runtime in cls.runtimes:  # OpenVINO: its GenAI pipeline and optimum-intel
            if not runtimes or runtime in runtimes:
                _plan_runtime(cls, runtime, devices, targets, skipped)
    return targets, skipped


def _plan_runtime(cls: type[backends.Backend], runtime: str, devices: Sequence[str], targets: list[Target],
                  skipped: list[RouteResult]) -> None:
    name = cls.name
    try:
        seen = cls.devices(runtime)
    except (ImportError, Phi3kitError) as exc:
        skipped.append(RouteResult(name, "-", runtime=runtime, status="SKIPPED", reason=_first_line(exc)))
        return
    for device in devices:  # asked for by name but not seen: say so rather than check nothing
        if not any(device in (d, device_family(d)) for d in seen):
            skipped.append(RouteResult(name, device, runtime=runtime, status="SKIPPED",
                                       reason=_first_line(Exception(cls.device_help(device, seen)))))
    for device in seen:
        if devices and device not in devices and device_family(device) not in devices:
            continue
        precisions = canaries.pocket_precisions(name, device, cls.default_precision)
        if not precisions:
            skipped.append(RouteResult(name, device, runtime=runtime, status="SKIPPED",
                                       reason="no pocket canary for this device (data/canaries.yaml)"))
        for precision in precisions:
            try:  # the settings the kit recommends on that device (OpenVINO's NPU preset), validated
                cfg = cls.for_device(LoadConfig(model="pocket", backend=name, precision=precision, device=device,
                                                runtime=runtime, tuned=False))
                cls.check(cfg)
            except Phi3kitError as exc:
                skipped.append(RouteResult(name, device, precision, runtime, status="SKIPPED", reason=_first_line(exc)))
                continue
            targets.append(Target(name, runtime, device, cfg.precision or precision, cfg))


def driver_table(platform: str = sys.platform,
                 only: Sequence[str] = ()) -> tuple[list[dict[str, str]], list[drivers.Verdict]]:
    """Each backend's devices (as its doctor rows say; `only` those backends) and every driver version read, judged
    by data/drivers.yaml."""
    rows: list[dict[str, str]] = []
    for name in only or backends.names():
        try:
            found = backends.get(name).device_rows()
        except Exception:  # noqa: BLE001 - a runtime missing or failing to list devices has nothing to report
            continue
        rows += [{"backend": name, **{k: str(v) for k, v in row.items()}} for row in found]
    return rows, drivers.verdicts(rows, platform)


def proof(requested: str, ran: list[str] | None, source: str = "") -> tuple[bool, str]:
    """(no silent fallback, what to report) from the devices the runtime says really ran (`source`: how it knows)."""
    if ran is None:
        return True, "cannot be read: the runtime does not report where it ran"
    family = device_family(requested)
    names = ", ".join(ran) or "nothing"
    how = f" ({source})" if source else ""
    if family in CHOOSERS:
        return True, f"{requested} chose {names}{how}"
    if family in {device_family(d) for d in ran}:
        return True, f"ran on {names}{how}"
    rule = drivers.rule_for(family)
    fix = (f"install or update the {family} driver ({rule.get}) and the runtime's {family} support" if rule else
           f"install the {family} driver and the runtime's {family} build")
    return False, (f"asked for {requested}, ran on {names}{how}: a silent fallback. Fix: {fix}, or choose "
                   "device='CPU' knowingly.")


def check_route(target: Target, problems: dict[str, drivers.Verdict], log: Log) -> RouteResult:
    """Load one route as the kit recommends on its device, prove where it ran, and run the pocket canary."""
    result = RouteResult(target.backend, target.device, target.precision, target.runtime)
    if (bad := problems.get(device_family(target.device))) is not None:
        result.status, result.reason = "FAIL", bad.message
        return result
    log(f"check: {result.route}")
    try:
        start = time.perf_counter()
        session = Session.load(target.cfg, log=lambda m: None)
        result.load_s = time.perf_counter() - start
    except MissingDependencyError as exc:  # a package this route needs here (an exporter) is not installed
        result.status, result.reason = "SKIPPED", _first_line(exc)
        return result
    except Exception as exc:  # noqa: BLE001 - a runtime failing to load on a device it lists is the finding
        result.status, result.reason = "FAIL", f"failed to load: {type(exc).__name__}: {_first_line(exc)}"
        return result
    with session:
        try:
            ran = session.backend.ran_on()
        except Exception as exc:  # noqa: BLE001 - no proof is not a failure of the route: the report says why
            ran, result.proof = None, f"cannot be read: {type(exc).__name__}: {_first_line(exc)}"
        ok, proof_text = proof(target.device, ran, session.backend.ran_on_source)
        result.proof = result.proof or proof_text
        # AUTO is judged by the rule of the device it chose (exact on the CPU), where the runtime says which.
        judged_as = ran[0] if ran and device_family(target.device) in CHOOSERS else target.device
        try:
            outcome = canaries.run_pocket(session, judged_as)
        except Exception as exc:  # noqa: BLE001 - an answer that fails is a FAIL with the runtime's words
            result.status, result.reason = "FAIL", f"failed to answer: {type(exc).__name__}: {_first_line(exc)}"
            return result
    result.answer_s = outcome.seconds
    result.tokens_per_s = outcome.tokens / outcome.seconds if outcome.seconds else None
    result.status, result.reason, result.details = outcome.status, outcome.reason, outcome.details
    if not ok:  # a right answer from the wrong device is still a fallback the learner did not ask for
        result.status, result.reason = "FAIL", result.proof
    if device_family(target.device) == "NPU" and result.status == "PASS":  # the compiled-blob cache at work
        again = time.perf_counter()
        Session.load(target.cfg, log=lambda m: None).close()
        result.details.append(f"load {result.load_s:.1f} s (compiles, unless an earlier run cached the blob), "
                              f"reload {time.perf_counter() - again:.1f} s (reads the blob from CACHE_DIR)")
    return result


def check_machine(output: str | os.PathLike[str] | None = None, *, routes: Sequence[str] = (),
                  devices: Sequence[str] = (), runtimes: Sequence[str] = (), models: Sequence[str] = (),
                  long: bool = False, download: bool = False, log: Log = print,
                  platform: str = sys.platform) -> MachineReport:
    """Check every installed route on every device here; with `output`, write <machine>.json and .html there.

    `routes`, `devices`, `runtimes`: check only those (backend names, devices, runtimes); all by default.
    `models`: real Phi-3 models to check too (from the cache or a pack; `download=True` allows fetching them);
    `long`: add the long-prompt canary to them. The same function runs `phi3kit check`.
    """
    from .report import write_report

    folder = None if output is None else _output_folder(output)
    targets, skipped = plan(routes, devices, runtimes)
    device_rows, verdicts = driver_table(platform, routes)
    problems = {device_family(v.device): v for v in verdicts if v.problem}
    report = MachineReport(machine=_machine_name(), os=f"{platform_module.system()} {platform_module.release()}",
                           python=platform_module.python_version(), kit=library_version("phi3kit"),
                           cpu=cpu_info()[0], devices=device_rows,
                           drivers=[{"device": v.device, "version": v.version or "", "status": v.status,
                                     "message": v.message, "get": v.get} for v in verdicts],
                           started=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    report.routes.extend(check_route(target, problems, log) for target in targets)
    report.routes.extend(skipped)
    for model in models:
        report.routes.extend(check_model(model, targets, problems, long, download, log))
    if folder is not None:
        write_report(report, folder)
    return report


def check_model(model: str, targets: Sequence[Target], problems: dict[str, drivers.Verdict], long: bool,
                download: bool, log: Log) -> list[RouteResult]:
    """A real model's canaries on each route (the plan's precision for its device), with greedy agreement to the
    CPU route."""
    from ..bench.quality import agreement

    out: list[RouteResult] = []
    reference: dict[str, list[list[int]]] = {}
    seen: set[tuple[str, str]] = set()
    for t in sorted(targets, key=lambda t: device_family(t.device) != "CPU"):  # CPU first: the reference
        if (t.backend, t.device) in seen:
            continue
        seen.add((t.backend, t.device))
        result = RouteResult(t.backend, t.device, t.precision, t.runtime, canary=f"real:{model}")
        if (bad := problems.get(device_family(t.device))) is not None:
            result.status, result.reason = "FAIL", bad.message
            out.append(result)
            continue
        try:
            with contextlib.nullcontext() if download else hub.offline():
                session = Session.load(replace(t.cfg, model=model), log=lambda m: None)
        except Exception as exc:  # noqa: BLE001 - not in the cache, or failing to load: said in the row
            result.status = "SKIPPED" if not download else "FAIL"
            result.reason = _first_line(exc) + ("" if download else " (not in the cache or a pack: --download "
                                                                   "fetches it)")
            out.append(result)
            continue
        with session:
            outcome, greedy = canaries.run_real(session)
            result.status, result.reason, result.details = outcome.status, outcome.reason, outcome.details
            result.answer_s = outcome.seconds
            if device_family(t.device) == "CPU":
                reference[t.backend] = greedy
            elif t.backend in reference:
                a = agreement(reference[t.backend], greedy)
                result.details.append(f"greedy agreement with {t.backend}@CPU: {a.identical:.2f}")
            out.append(result)
            if long:
                res = RouteResult(t.backend, t.device, t.precision, t.runtime, canary="long")
                lo = canaries.run_long(session)
                res.status, res.reason, res.answer_s = lo.status, lo.reason, lo.seconds
                out.append(res)
    return out


def _machine_name() -> str:
    """This machine's name, safe as a file name on every OS."""
    import re

    name = re.sub(r"[^A-Za-z0-9._-]+", "-", platform_module.node() or "machine").strip(".-")
    return name[:60] or "machine"


def _output_folder(output: str | os.PathLike[str]) -> Path:
    """The report folder, made and proved writable before any route runs."""
    from ..safefs import writable_dir

    return writable_dir(output, "choose another report folder (-o)")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
