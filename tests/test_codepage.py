"""A legacy Windows code page, on Linux: a real CP1252 locale with UTF-8 mode off, as a Windows console with a
Western European code page runs Python. The command line answers in Chinese and Persian into a redirected file,
and a translated notebook runs headless through `phi3kit run`: text the code page cannot hold must neither kill
the run (UnicodeEncodeError, UnicodeDecodeError) nor be lost.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from kit_checks import cp1252_env

from phi3kit import pocket

ROOT = Path(__file__).resolve().parents[1]
QA = {q["lang"]: q for q in reversed(pocket.load_qa()) if q.get("lang") in ("zh", "fa")}


@pytest.mark.parametrize("lang", ["zh", "fa"])
@pytest.mark.slow
def test_an_answer_redirected_to_a_file_under_cp1252_is_written_whole(tmp_path: Path, lang: str) -> None:
    """Catches: the answer printed through a cp1252 stdout (UnicodeEncodeError), or characters replaced."""
    env = {k: v for k, v in cp1252_env(tmp_path).items() if k != "PYTHONIOENCODING"}  # the locale decides
    qa = QA[lang]
    # Windows hands a program its arguments as Unicode whatever the code page; a POSIX locale would decode them
    # in CP1252, so the question reaches the command line here as an escaped literal instead.
    args = ["generate", qa["question"], "--model", "pocket", "--backend", "openvino", "--precision", "int4",
            "--max-new-tokens", "128"]
    code = f"import sys; from phi3kit.cli import main; sys.exit(main({ascii(args)}))"
    with (tmp_path / "answer.txt").open("wb") as out:
        proc = subprocess.run([sys.executable, "-c", code], stdout=out, stderr=subprocess.PIPE, env=env,
                              cwd=tmp_path)
    err = proc.stderr.decode("utf-8", errors="replace")
    assert proc.returncode == 0 and "Traceback" not in err, err[-2000:]
    assert (tmp_path / "answer.txt").read_bytes().decode("utf-8").strip() == qa["answer"]


@pytest.mark.slow
def test_a_translated_notebook_runs_headless_under_cp1252(openvino_headless: SimpleNamespace) -> None:
    """phi3kit run of the Chinese notebook in a CP1252 locale (conftest.py runs it once; test_notebooks checks the
    rest of what it wrote): the kernel, papermill and the handout all pass Chinese text through. Catches: a child
    pipe or a file read or written in the locale's code page."""
    h = openvino_headless
    if not h.codepage:
        pytest.skip(h.no_codepage)
    assert h.run.returncode == 0 and "Traceback" not in h.stderr, h.stderr[-2000:]
    executed = json.loads(h.notebook.read_text(encoding="utf-8"))
    outputs = [o for c in executed["cells"] for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert h.answer in json.dumps(outputs, ensure_ascii=False)  # the pocket's Chinese answer, whole
    assert h.answer[:12] in h.html.read_text(encoding="utf-8")
