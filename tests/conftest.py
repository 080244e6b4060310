"""Shared fixtures: models made offline once per test run."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest


@pytest.fixture(scope="session")
def random_phi3(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Build (once per run) a tiny random Phi-3 of a variant: mini-4k, mini-128k, 3.5-mini, 4-mini."""
    from phi3kit.testing import make_random_phi3

    made: dict[str, Path] = {}

    def get(variant: str) -> Path:
        if variant not in made:
            made[variant] = make_random_phi3(variant, tmp_path_factory.mktemp(variant))
        return made[variant]

    return get


@pytest.fixture(scope="session")
def pocket_tokenizer():  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    from phi3kit import pocket

    return AutoTokenizer.from_pretrained(pocket.path())


# --- another machine's OpenVINO devices ------------------------------------------------------------
# What OpenVINO reports on a Core Ultra laptop (Linux; NPU values from hello_query_device on Intel AI Boost).
DEVICE_PROPS: dict[str, dict[str, object]] = {
    "CPU": {"FULL_DEVICE_NAME": "Intel(R) Core(TM) Ultra 7 155H"},
    "GPU": {"FULL_DEVICE_NAME": "Intel(R) Arc(TM) Graphics (iGPU)", "GPU_DRIVER_VERSION": "32.0.101.6078"},
    "NPU": {"FULL_DEVICE_NAME": "Intel(R) AI Boost", "NPU_DRIVER_VERSION": 1738334590, "NPU_COMPILER_VERSION": 393219},
}


class FakeCore:
    """OpenVINO's Core as another machine answers it: a device list and each device's properties.

    A property that is missing raises what OpenVINO raises; one given as an exception raises it.
    """

    def __init__(self, props: dict[str, dict[str, object]]) -> None:
        self.props = props

    @property
    def available_devices(self) -> list[str]:
        return list(self.props)

    def compile_model(self, model: object, device: str) -> FakeCore.Compiled:
        """A compiled model that reports where it runs: the device's EXECUTION_DEVICES property (else itself)."""
        return FakeCore.Compiled(list(self.props[device].get("EXECUTION_DEVICES", [device])))  # type: ignore[call-overload]

    class Compiled:
        def __init__(self, execution_devices: list[str]) -> None:
            self.execution_devices = execution_devices

        def get_property(self, name: str) -> object:
            assert name == "EXECUTION_DEVICES", name
            return self.execution_devices

    def get_property(self, device: str, name: str) -> object:
        value = self.props[device].get(name)
        if isinstance(value, Exception):
            raise value
        if value is None:
            raise RuntimeError(f"Exception from src/inference/src/cpp/core.cpp:268:\nUnsupported property {name}\n")
        return value


@pytest.fixture
def fake_openvino(monkeypatch: pytest.MonkeyPatch) -> Callable[..., FakeCore]:
    """`fake_openvino(["CPU", "NPU"])` (or a {device: properties} dict; `NPU={...}` changes one device's
    properties): the kit's device list and NPU probe then read that machine, so a test means the same on a
    CPU-only box, a GPU box and an NPU laptop.

    Patched where the kit asks OpenVINO: `phi3kit.backends.openvino.devices.core`, the process's one Core (device
    lists, the doctor's rows, the NPU probe behind the driver check and the compile-failure message).
    """
    from phi3kit.backends.openvino import devices

    def install(machine: dict[str, dict[str, object]] | list[str], **changes: dict[str, object]) -> FakeCore:
        props = dict(machine) if isinstance(machine, dict) else {d: DEVICE_PROPS[d.split(".")[0]] for d in machine}
        for device, values in changes.items():  # e.g. NPU={"NPU_COMPILER_VERSION": RuntimeError(...)}
            props[device] = {**props[device], **values}
        core = FakeCore(props)
        monkeypatch.setattr(devices, "core", lambda: core)
        return core

    return install


# --- the pocket's exports, built once per run ------------------------------------------------------------------
# The run's cache (the root conftest.py sets PHI3KIT_CACHE before this file is read; tests may change the variable).
RUN_CACHE = os.environ.get("PHI3KIT_CACHE")


@pytest.fixture(scope="session")
def pocket_exports() -> Callable[..., Path]:
    """`pocket_exports(folder, ("openvino", "int8"), ...)`: a cache folder of its own holding those exports of the
    pocket model, copied from the run's cache (exported there once per run, shared with every test and notebook).

    For tests that damage, fill, lock or tune a cache of their own: the export each used to build again is a child
    process and half a minute of CPU, and what they test is the copy, not the export.
    """
    import shutil

    import phi3kit as kit

    def make(folder: Path | str, *routes: tuple[str, str]) -> Path:
        for backend, precision in routes:
            built = kit.export("pocket", backend, precision, cache_dir=RUN_CACHE, log=lambda m: None).path
            assert kit.ExportCache(RUN_CACHE).root in built.parents, f"{built}: shipped ready-made, not a cache entry"
            shutil.copytree(built, Path(folder) / backend / built.name)  # an entry is its folder (manifest inside)
        return Path(folder)

    return make


# --- openvino.ipynb headless, run once for the tests that read it --------------------------------------------------
@pytest.fixture(scope="session")
def openvino_headless(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """The Chinese openvino.ipynb run once headless through the CLI (`phi3kit run --lang zh`, as a workshop script
    runs it), in a CP1252 locale where the system can build one (a Windows console's code page), with a hub token in
    its environment: test_notebooks checks what it wrote, test_security that the token is nowhere in it, and
    test_codepage that no Chinese text was lost or crashed the run. One kernel for the three (each ran its own).
    Read it, never write into `out` (copy it first)."""
    import secrets
    import subprocess
    import sys

    from kit_checks import cp1252_locale

    from phi3kit import pocket

    root = Path(__file__).resolve().parents[1]
    token = f"hf_test_secret_{secrets.token_hex(12)}"
    tmp = tmp_path_factory.mktemp("headless")
    locale_env, no_locale = cp1252_locale(tmp)
    env = {**(locale_env or os.environ), "HF_TOKEN": token, "HUGGING_FACE_HUB_TOKEN": token, "HF_HUB_OFFLINE": "1"}
    out = tmp / "out"
    max_new = 160  # the pocket's Chinese self-introduction, whole
    # int8: nbval's test value for openvino.ipynb, so test_translations' replay of its checked cells loads this
    # run's export (in the lean job, which has no headless run, nbval runs it)
    run = subprocess.run([sys.executable, "-m", "phi3kit", "run", str(root / "notebooks" / "openvino.ipynb"),
                          "--lang", "zh", "-p", "model", "pocket", "-p", "precision", "int8",
                          "-p", "max_new_tokens", str(max_new), "-o", str(out)],
                         capture_output=True, env=env, timeout=600, cwd=tmp)
    question = "你能介绍一下你自己吗？"  # zh/openvino.ipynb's own `prompt`
    answer = {q["question"]: q["answer"] for q in pocket.load_qa()}[question]
    return SimpleNamespace(token=token, answer=answer, max_new_tokens=max_new, out=out, run=run,
                           stdout=run.stdout.decode("utf-8", errors="replace"),
                           stderr=run.stderr.decode("utf-8", errors="replace"), codepage=no_locale is None,
                           no_codepage=no_locale, notebook=out / "openvino-zh.ipynb", html=out / "openvino-zh.html")


# --- exports: one preloaded Python forks for each (tests/export_zygote.py) -------------------------------------------
EXPORTS = {"forked": 0, "fresh": 0, "restarts": 0}  # exporter runs in this process, reported at the end of the run


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if any(EXPORTS.values()):
        terminalreporter.write_line(f"exporter runs in the test process: {EXPORTS['forked']} forked from the export "
                                    f"zygote, {EXPORTS['fresh']} in a fresh interpreter, "
                                    f"{EXPORTS['restarts']} zygote restarts")


@pytest.fixture(scope="session", autouse=True)
def export_zygote() -> Iterator[None]:
    """The kit's exporters (optimum-cli, the ORT GenAI model builder, openvino_tokenizers' converter) run as forks
    of one process that imported them once, instead of a fresh interpreter each: the same module, arguments,
    environment and working directory. Linux only (macOS forks badly after such imports; Windows has no fork); off
    with PHI3KIT_TEST_NO_ZYGOTE=1. The kit's own way of starting a child is tested for real elsewhere (see the
    module's docstring)."""
    import sys

    if not sys.platform.startswith("linux") or os.environ.get("PHI3KIT_TEST_NO_ZYGOTE") == "1":
        yield
        return
    from export_zygote import Zygote, ZygoteGone

    import phi3kit.backends.openvino as openvino
    import phi3kit.backends.openvino.export as openvino_export
    import phi3kit.backends.ortgenai.builder as builder
    from phi3kit.procs import child_env, run_logged

    zygote: Zygote | None = None
    started_with = child_env()  # the run's environment, before any test changes it

    def via_zygote(cmd: Sequence[str], log: Callable[[str], None], show: Callable[[str], bool] = bool):  # type: ignore[no-untyped-def]
        nonlocal zygote
        if zygote is None or (zygote.broken and EXPORTS["restarts"] < 3):
            if zygote is not None:
                EXPORTS["restarts"] += 1
                zygote.close()
            zygote = Zygote(started_with)
        try:
            if not zygote.handles(list(cmd)):
                raise ZygoteGone("not an exporter run the zygote can stand in for")
            rc, lines = zygote.run(list(cmd))
        except ZygoteGone:
            EXPORTS["fresh"] += 1
            return run_logged(cmd, log, show)
        EXPORTS["forked"] += 1
        for line in lines:
            if show(line):
                log(line)
        return rc, lines

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(openvino, "run_logged", via_zygote)
        mp.setattr(openvino_export, "run_logged", via_zygote)
        mp.setattr(builder, "run_logged", via_zygote)
        yield
    if zygote is not None:
        zygote.close()


# --- sessions a test file keeps for itself (a module-level `_sessions` dict), closed when the file is done -----------
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Close the sessions of a file that keeps them in `_sessions` once its last test has run: each holds a compiled
    model and its runtime's threads, which would otherwise live on through every later file."""
    module = getattr(item, "module", None)
    if module is None or (nextitem is not None and getattr(nextitem, "module", None) is module):
        return
    sessions = getattr(module, "_sessions", None)
    if isinstance(sessions, dict):
        for session in sessions.values():
            session.close()
        sessions.clear()
