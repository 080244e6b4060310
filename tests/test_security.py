"""Security: no remote code unless asked (and said out loud), the hub token never leaks, and model ids
or labels cannot escape the cache directory."""

from __future__ import annotations

import ast
import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import phi3kit as kit
from phi3kit import pocket
from phi3kit.backends.openvino import export_command
from phi3kit.cache import ExportCache
from phi3kit.cli import main
from phi3kit.hub import PATTERNS
from phi3kit.sources import resolve

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "phi3kit"
WARNING = "trust_remote_code=True: this runs Python code from the model repository"

# --- trust_remote_code ---------------------------------------------------------------------------


def test_no_code_passes_trust_remote_code_true() -> None:
    """Read the kit's source: every trust_remote_code= argument comes from the user's setting."""
    found = []
    for f in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                if isinstance(node.value, ast.Constant) and node.value.value is not False:
                    found.append(f"{f.relative_to(ROOT)}:{node.value.lineno}")
    assert found == []
    assert kit.LoadConfig().trust_remote_code is False
    assert all("*.py" not in p for p in PATTERNS.values())  # downloads skip a repo's code unless trusted


def test_remote_code_is_off_by_default_and_announced_when_on(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    cfg = {"hidden_size": 128, "intermediate_size": 256}
    assert "--trust-remote-code" not in export_command(tmp_path, tmp_path / "o", kit.LoadConfig(), cfg, print)
    assert "--trust-remote-code" in export_command(tmp_path, tmp_path / "o", kit.LoadConfig(trust_remote_code=True),
                                                   cfg, print)
    logs: list[str] = []
    kit.load("pocket", "transformers", "fp32", log=logs.append)
    assert not any("trust_remote_code" in m for m in logs)
    kit.load("pocket", "transformers", "fp32", trust_remote_code=True, log=logs.append)
    assert any(m.startswith(WARNING) for m in logs)
    assert main(["generate", "What is an NPU?", "--backend", "transformers", "--precision", "fp32",
                 "--trust-remote-code", "--max-new-tokens", "4"]) == 0
    assert WARNING in capsys.readouterr().err


def test_code_in_a_model_folder_does_not_run_unless_trusted(tmp_path: Path) -> None:
    """A folder whose config points at its own modeling code: without trust_remote_code, it is never imported."""
    evil = tmp_path / "evil-model"
    shutil.copytree(pocket.path(), evil)
    marker = tmp_path / "code-ran"
    (evil / "modeling_evil.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from transformers import Phi3ForCausalLM as EvilForCausalLM\n")
    config = json.loads((evil / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (evil / "config.json").write_text(json.dumps(config))
    try:
        with kit.load(str(evil), "transformers", "fp32", log=lambda m: None) as s:
            assert s.generate("What is an NPU?", max_new_tokens=4).consume().metrics.new_tokens == 4
    except kit.Phi3kitError:
        pass  # refusing is as good as loading the native class
    except ValueError as exc:  # transformers asking for trust_remote_code is a refusal too
        assert "trust_remote_code" in str(exc)
    assert not marker.exists(), "the model folder's Python code ran without trust_remote_code"


# --- the hub token -------------------------------------------------------------------------------


def secret_env(tmp_path: Path) -> tuple[str, dict[str, str]]:
    token = f"hf_test_secret_{secrets.token_hex(12)}"
    env = {**os.environ, "HF_TOKEN": token, "HUGGING_FACE_HUB_TOKEN": token, "HF_HUB_OFFLINE": "1"}
    return token, env


def leaks(token: str, texts: list[str], folder: Path | None = None) -> list[str]:
    found = [f"stream {i}" for i, t in enumerate(texts) if token in t]
    if folder is not None:
        found += [str(f) for f in folder.rglob("*") if f.is_file() and token.encode() in f.read_bytes()]
    return found


@pytest.mark.slow
def test_hub_token_never_reaches_notebooks_or_handouts(openvino_headless: SimpleNamespace) -> None:
    """openvino.ipynb run by `phi3kit run` with HF_TOKEN set (conftest.py runs it once; test_notebooks checks its
    content): the token is in no output stream and no file it wrote."""
    h = openvino_headless
    assert h.run.returncode == 0, h.stderr[-2000:]
    files = sorted(p.name for p in h.out.iterdir())
    assert files == [h.html.name, h.notebook.name]
    assert h.answer[:40] in h.notebook.read_text(encoding="utf-8")  # it really ran: the check below means something
    assert leaks(h.token, [h.stdout, h.stderr], h.out) == []


def test_hub_token_never_reaches_cli_output(tmp_path: Path) -> None:
    token, env = secret_env(tmp_path)
    runs = [
        # an error path: a hub id that cannot be fetched offline
        ["generate", "hi", "--model", "someorg/some-gated-model", "--backend", "transformers", "--precision", "fp32"],
        ["doctor", "--json"],
        ["export", "--model", "pocket", "--backend", "openvino", "--precision", "int8"],
    ]
    outputs = []
    for argv in runs:
        r = subprocess.run([sys.executable, "-m", "phi3kit.cli", *argv], capture_output=True, text=True, env=env,
                           timeout=120, cwd=ROOT)
        outputs += [r.stdout, r.stderr]
        assert r.returncode == (2 if argv[0] == "generate" else 0), r.stderr[-1500:]
    assert "Cannot download 'someorg/some-gated-model'" in outputs[1]
    assert leaks(token, outputs) == []


# --- paths: ids and labels cannot escape the cache -----------------------------------------------

HOSTILE = ["../../x", "a/../../b", "/abs/path/nowhere", "org/..", "../", "a/b/../../../etc", "..\\..\\x",
           "org/model/../../../tmp", "~/../../x", "./../x", "org/model/extra", "org\\model", " org/model", ""]


@pytest.mark.parametrize("model", HOSTILE)
def test_hostile_model_ids_are_refused_before_any_download(model: str) -> None:
    with pytest.raises(kit.ModelSourceError):  # an existing folder ('../') is read, and refused: no config.json
        resolve(model)


@pytest.mark.parametrize("model", ["org/model.", "org/mo--del", "org/model.git", "org/model\n"])
def test_hub_ids_huggingface_rejects_get_our_error(model: str) -> None:
    with pytest.raises(kit.ModelSourceError):
        resolve(model)


@pytest.mark.parametrize("label", ["../../etc/passwd", "/abs/path", "a/../../b", "..", "~", "C:\\Users\\x", ".",
                                   "a\x00b", "\n", "../" * 40 + "x", "org/model"])
def test_cache_entries_stay_inside_the_root(tmp_path: Path, label: str) -> None:
    sandbox = tmp_path / "sandbox"
    root = sandbox / "cache"
    root.mkdir(parents=True)
    cache = ExportCache(root)

    def build(out: Path) -> None:
        (out / "model.bin").write_bytes(b"x")

    exp = cache.get_or_build(label, label, {"model": label}, build, log=lambda m: None)
    assert root.resolve() in exp.path.parents and exp.path.parent.parent == root.resolve()
    outside = [p for p in sandbox.rglob("*") if root not in (p, *p.parents)]
    assert outside == []
