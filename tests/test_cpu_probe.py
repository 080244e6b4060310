"""The CPU probe (py-cpuinfo, about a second and a child process) runs once per process tree: a process the kit
starts (a notebook kernel, an export, a benchmark worker) inherits the answer instead of probing again."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from phi3kit import machine
from phi3kit.procs import child_env

# Another machine's answer: what a child prints proves it read the inherited answer, not this machine's CPU.
CANNED = {"brand_raw": "Canned CPU for the probe test", "flags": ["avx2", "avx512f"]}
SHOW = "from phi3kit.machine import cpu_info; print(cpu_info()[0]); print(cpu_info()[1])"


@pytest.fixture
def fresh_probe(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """This process as if it had not probed yet; its own cached answer is put back afterwards."""
    monkeypatch.setenv(machine.CPU_PROBE_ENV, "")  # so that the value the probe sets is undone too
    monkeypatch.delenv(machine.CPU_PROBE_ENV)
    machine._pycpuinfo.cache_clear()
    yield
    machine._pycpuinfo.cache_clear()


def child(env: dict[str, str]) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", SHOW], capture_output=True, text=True, encoding="utf-8", env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.splitlines()


def test_the_first_probe_is_handed_to_child_processes(fresh_probe: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Catches: every kernel and child process probing the CPU again (the answer not handed down)."""
    calls: list[int] = []
    import cpuinfo

    monkeypatch.setattr(cpuinfo, "get_cpu_info", lambda: calls.append(1) or dict(CANNED))
    assert machine.cpu_info()[:2] == ("Canned CPU for the probe test", ["AVX2", "AVX-512"])
    assert machine.cpu_info()[0] == "Canned CPU for the probe test" and calls == [1]  # once per process
    assert json.loads(os.environ[machine.CPU_PROBE_ENV]) == CANNED
    # A child started the kit's way (and one given os.environ as it is) answers from the inherited probe.
    assert child(child_env()) == ["Canned CPU for the probe test", "['AVX2', 'AVX-512']"]


def test_a_mangled_inherited_answer_is_probed_again(fresh_probe: None) -> None:
    """Catches: a broken or foreign PHI3KIT_CPU_PROBE value crashing the doctor or a load instead of probing."""
    import os

    here = machine.cpu_info()  # this machine, probed
    for value in ("not json", "[1, 2]"):
        assert child({**os.environ, machine.CPU_PROBE_ENV: value}) == [here[0], str(here[1])]


def test_a_test_that_probes_leaves_no_canned_answer_behind() -> None:
    """The fixture above undoes what the probe put in the environment (later kernels must see this machine)."""
    assert "Canned" not in os.environ.get(machine.CPU_PROBE_ENV, "")
