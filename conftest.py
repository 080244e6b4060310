"""Offline test setup and the notebook collector.

Notebooks are validated with nbval after small test values are appended to their
`parameters` cell (nbval itself cannot inject parameters). Only cells marked
`# NBVAL_CHECK_OUTPUT` are compared with their stored outputs; every cell must run. A translation's code
is its English notebook's (tests/test_translations.py checks that, and compiles every cell), so nbval runs
only the translations in RUN_TRANSLATIONS; test_translations.py replays the others' checked cells in one
process and compares what they print with their stored outputs (a translation whose parameter values are
the English ones stores the English outputs).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import tempfile
from pathlib import Path

import hypothesis  # noqa: F401 - imported before CI is set below: it picks its profile from the run's own environment
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # the tests never reach a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["PHI3KIT_HEADLESS"] = "1"  # notebook kernels (nbval) inherit it: nobody clicks a chat panel in a test
# A test run sends nothing anywhere: in every optimum-intel export, NNCF and OpenVINO's converter send usage telemetry
# unless the machine opted out or runs in CI, each event from a process forked off the exporter that waits up to 3 s
# for the network; on this suite that was ~60 forks per export and ~80 CPU-seconds a run. CI=true is the one switch
# both honour (children inherit it). Hypothesis reads CI too (a derandomized profile), which is why it is imported
# above, first: a working session's property tests keep drawing new examples; a real CI's are derandomized as before.
os.environ.setdefault("CI", "true")
# Ctrl-C as a terminal has it, however pytest was started: a shell's background job (`.ci/run &`, nohup) starts with
# SIGINT ignored, which Python then leaves alone and every child inherits, so the Ctrl-C tests (tests/test_chat.py,
# test_bad_input.py, test_streaming.py) would wait out their timeouts on a process that ignores them. A handler set
# here is reset to the default in each child at exec; an ignored signal would stay ignored.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
# One export cache for the whole run (kernels inherit it); set PHI3KIT_CACHE to reuse one across runs. One made here
# is removed when the run ends (pytest_unconfigure): each run's exports used to stay in the temporary folder.
RUN_CACHE_MADE = None if "PHI3KIT_CACHE" in os.environ else tempfile.mkdtemp(prefix="phi3kit-test-cache-")
if RUN_CACHE_MADE is not None:
    os.environ["PHI3KIT_CACHE"] = RUN_CACHE_MADE


def pytest_unconfigure(config: pytest.Config) -> None:
    if RUN_CACHE_MADE is not None:
        import shutil

        shutil.rmtree(RUN_CACHE_MADE, ignore_errors=True)

ROOT = Path(__file__).resolve().parent
NOTEBOOKS = ROOT / "notebooks"

# The values each notebook runs with under test, in every language: the pocket model, short answers.
NOTEBOOK_TEST_PARAMETERS: dict[str, dict[str, object]] = {
    "openvino.ipynb": {"model": "pocket", "precision": "int8", "max_new_tokens": 64},
    "directml.ipynb": {"model": "pocket", "precision": "int8", "device": "CPU", "max_new_tokens": 64},
    "npu.ipynb": {"model": "pocket", "device": "CPU", "precision": "int4", "max_new_tokens": 64},
    # isolate=False: the routes in the kernel, not a process each (tests/test_bench.py runs isolated routes)
    "compare.ipynb": {"model": "pocket", "routes": "transformers:fp32,openvino:int4", "prompt_lengths": "16,48",
                      "max_new_tokens": 8, "runs": 1, "isolate": False, "results_dir": ""},
}

# The lean environment (requirements/lean.txt, run by CI too) has no exporter: there the route notebooks run the
# pocket's shipped int4 folders, as a workshop laptop in that environment does.
LEAN = importlib.util.find_spec("torch") is None
if LEAN:
    for _name in ("openvino.ipynb", "directml.ipynb"):
        NOTEBOOK_TEST_PARAMETERS[_name] = {**NOTEBOOK_TEST_PARAMETERS[_name], "precision": "int4"}


def _ortgenai_builds_int8() -> bool:
    try:
        from phi3kit.backends.ortgenai import builder_dialect

        return "int8" in builder_dialect().precisions
    except ImportError:
        return False


# ONNX Runtime GenAI 0.13.1 (the DirectML build's version, CI's ort-0.13 job) has no int8 in its builder.
if not LEAN and not _ortgenai_builds_int8():
    NOTEBOOK_TEST_PARAMETERS["directml.ipynb"] = {**NOTEBOOK_TEST_PARAMETERS["directml.ipynb"], "precision": "int4"}


# The translations nbval runs in a kernel, so that each kit decoder streams multi-byte text against its library's own
# answer (the notebooks assert they agree) in a real kernel: right-to-left Persian through ONNX Runtime GenAI here;
# Chinese through OpenVINO GenAI and optimum-intel in tests/conftest.py's openvino_headless, which runs
# zh/openvino.ipynb headless under a CP1252 code page (test_codepage fails on any error output; test_notebooks checks
# what it wrote). Their checked cells are replayed like the others'.
RUN_TRANSLATIONS = frozenset({"fa/directml.ipynb"})

# English notebooks whose program already runs in a kernel elsewhere in the run, in another language (the same code,
# tests/test_translations.py checks it): nbval would run it a second time. Their checked cells are replayed by
# test_translations.py on nbval's test values. The lean environment's job runs no headless notebook, so there nbval
# runs them.
RUN_ELSEWHERE = {} if LEAN else {
    "openvino.ipynb": "runs in a kernel in Chinese (tests/conftest.py's openvino_headless: `phi3kit run --lang zh`, "
                      "read by test_notebooks, test_codepage and test_security); tests/test_translations.py replays "
                      "its checked cells"}


def translation_key(path: Path) -> str:
    """'zh/openvino.ipynb': how RUN_TRANSLATIONS names a translation."""
    return path.relative_to(NOTEBOOKS).as_posix()


def parameter_source(values: dict[str, object]) -> str:
    lines = [f"{k} = {v!r}" for k, v in values.items()]
    return "\n# injected by tests/conftest.py\n" + "\n".join(lines)


def is_kit_notebook(path: Path) -> bool:
    """notebooks/<name>.ipynb (English) or notebooks/<lang>/<name>.ipynb (its translations)."""
    return path.suffix == ".ipynb" and (path.parent == NOTEBOOKS or path.parent.parent == NOTEBOOKS)


def english_twin(path: Path) -> Path | None:
    """The English notebook a translation runs exactly, when its parameter values are the English ones too.

    A translation's code cells are the English ones but for comments (tests/test_translations.py), so with no
    translated question among its parameters it is the same program, and the English notebook's run covers it;
    test_translations.py checks that its cells compile and that its stored outputs are the English ones."""
    if path.parent.parent != NOTEBOOKS:
        return None
    from phi3kit.runner import notebook_parameters

    english = NOTEBOOKS / path.name
    defaults = {k: v["default"] for k, v in notebook_parameters(path).items()}
    return english if defaults == {k: v["default"] for k, v in notebook_parameters(english).items()} else None


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if is_kit_notebook(file_path) and not parent.config.option.nbval:
        from nbval.plugin import IPyNbFile

        class ParametrizedNotebook(IPyNbFile):
            def __init__(self, *args: object, **kwargs: object) -> None:
                super().__init__(*args, **kwargs)
                self.compare_outputs = False  # lax: only NBVAL_CHECK_OUTPUT cells are compared

            def collect(self):  # type: ignore[no-untyped-def]
                if twin := english_twin(self.path):
                    pytest.skip(f"the same program as {twin.relative_to(ROOT)}, which runs (only words differ)")
                if self.path.parent == NOTEBOOKS and self.path.name in RUN_ELSEWHERE:
                    pytest.skip(f"the same program {RUN_ELSEWHERE[self.path.name]}")
                if self.path.parent != NOTEBOOKS and translation_key(self.path) not in RUN_TRANSLATIONS:
                    pytest.skip("the English code with translated questions: tests/test_translations.py replays its "
                                "checked cells")
                values = NOTEBOOK_TEST_PARAMETERS.get(self.path.name)
                if values is None:
                    raise pytest.UsageError(f"{self.path.name}: add its test values to NOTEBOOK_TEST_PARAMETERS")
                found = False
                for item in super().collect():
                    item.add_marker(pytest.mark.slow)  # a kernel that exports and runs a model: not in the fast lane
                    if "parameters" in item.cell.metadata.get("tags", []):
                        item.cell.source += parameter_source(values)
                        found = True
                    yield item
                if not found:
                    raise pytest.UsageError(f"{self.path.name} has no cell tagged 'parameters'")

        return ParametrizedNotebook.from_parent(parent, path=file_path)
    return None
