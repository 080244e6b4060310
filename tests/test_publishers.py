"""Publishers' folders as published: the shapes Microsoft, OpenVINO and huggingface_hub wrote in 2024-2025 load
through the kit offline, and the kit says what they are (their weights' release, a window they lack, a system
message their template drops, an id nobody has seen).

The folders are the pocket's real builds laid out in those shapes (tests/publishers.py); the hub is never
reached: a hub cache with blobs and symlinks is built here, under a temporary HF_HOME with HF_HUB_OFFLINE=1.
Runs in CI's lean environment too (no torch, no exporter).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import pytest
from publishers import (
    APRIL_2024_TEMPLATE,
    ONNX_BUILD,
    config_2024,
    hub_cache,
    microsoft_onnx,
    openvino_ir,
)

import phi3kit as kit
from phi3kit import catalog, pocket
from phi3kit.backends.ortgenai import built_window, known_window, missing_window_note
from phi3kit.tokenizer import SystemMessageIgnored, Tokenizer
from phi3kit.workshop import check

QUESTION = "What is an NPU?"
ANSWER = {q["question"]: q["answer"] for q in pocket.load_qa()}[QUESTION]
IR_REPO = "OpenVINO/Phi-3-mini-4k-instruct-int4-ov"
ONNX_REPO, ONNX_CPU = "microsoft/Phi-3-mini-4k-instruct-onnx", "cpu_and_mobile/cpu-int4-rtn-block-32-acc-level-4"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
UNVERIFIED = {"OpenVINO/Phi-3-mini-4k-instruct-int4-cw-ov", "OpenVINO/Phi-3.5-mini-instruct-int4-cw-ov",
              "OpenVINO/Phi-4-mini-instruct-int8-ov", "OpenVINO/Phi-4-mini-instruct-fp16-ov"}




def _can_symlink() -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            os.symlink("target", Path(tmp) / "link")
        except OSError:
            return False
    return True


# huggingface_hub links snapshots to blobs; Windows without developer mode allows no symlinks (it copies there).
LINKS = _can_symlink()


def quiet(message: str) -> None:
    pass


@pytest.fixture
def published(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HF_HOME holding Microsoft's 2024 ONNX folder and OpenVINO's IR folder (no tokenizer IRs, as early uploads
    had none) under the catalog's repo ids, as huggingface_hub stores downloads: blobs and relative symlinks."""
    home = tmp_path / "hf"
    hub_cache(home, ONNX_REPO, microsoft_onnx(tmp_path / "ms", sliding_window=2047), subfolder=ONNX_CPU, commit=COMMIT)
    hub_cache(home, IR_REPO, openvino_ir(tmp_path / "ov", tokenizer_irs=False), commit=COMMIT)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hf  # read once at import: this process's downloads look here too

    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setenv("PHI3KIT_CACHE", str(tmp_path / "cache"))
    return home


def snapshot_of(home: Path, repo: str) -> Path:
    return home / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots" / COMMIT


# --- the shapes load by alias, offline ------------------------------------------------------------------
def test_the_fixtures_are_the_publishers_shapes(published: Path) -> None:
    """The fixtures themselves: a regression here would make every test below test the kit's own shape."""
    onnx_dir = snapshot_of(published, ONNX_REPO) / ONNX_CPU
    names = {p.name for p in onnx_dir.iterdir()}
    assert {f"{ONNX_BUILD}.onnx", f"{ONNX_BUILD}.onnx.data", "config.json", "genai_config.json", "tokenizer.json",
            "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"} == names
    if LINKS:
        assert all(p.is_symlink() and not Path(os.readlink(p)).is_absolute() for p in onnx_dir.iterdir())
    assert built_window(onnx_dir)["section"] == {}  # the 2024 genai_config: no sliding_window
    import onnx

    graph = onnx.load(str(onnx_dir / f"{ONNX_BUILD}.onnx"), load_external_data=False)
    assert {e.value for t in graph.graph.initializer for e in t.external_data if e.key == "location"} \
        == {f"{ONNX_BUILD}.onnx.data"}
    assert Tokenizer(onnx_dir).config["tokenizer_class"] == "LlamaTokenizer"
    assert not (snapshot_of(published, IR_REPO) / "openvino_tokenizer.xml").exists()


@pytest.mark.slow
@pytest.mark.parametrize("revision", [None, COMMIT])
def test_microsofts_2024_onnx_folder_loads_by_alias_and_says_its_weights_are_april_2024(
        published: Path, revision: str | None) -> None:
    """Catches: a decoder named after the build (not model.onnx) or its renamed .data not read; the template inside
    tokenizer_config.json not found; a pinned revision not answered from the cache offline (huggingface_hub 1.33);
    repr(session) not saying that this repo holds the April 2024 weights."""
    with kit.load("phi-3-mini-4k", "ortgenai", "int4", revision=revision, log=quiet) as session:
        assert session.generate(QUESTION, max_new_tokens=64).text == ANSWER
        assert session.export.route == "ready-made" and session.origin == f"{ONNX_REPO}/{ONNX_CPU}"
        assert (session.export.path / "genai_config.json").is_symlink() or not LINKS  # read through the links
        assert "weights: Phi-3-mini-4k-instruct, April 2024 release (not the July 2024 update)" in repr(session)
        # its config.json declares the window its graph lacks: the limits say so (and do not shrink the context)
        assert "sliding_window=2047" in session.limits.note and session.limits.window == 4096


@pytest.mark.slow
def test_openvinos_ir_folder_loads_by_alias_without_its_tokenizer_irs_and_as_a_folder_with_them(
        published: Path, tmp_path: Path) -> None:
    """Catches: a transformers 4.4x config.json (rope_scaling, torch_dtype) or the template inside
    tokenizer_config.json breaking the load; the missing tokenizer IRs not converted from a symlinked snapshot."""
    logs: list[str] = []
    with kit.load("phi-3-mini-4k", "openvino", "int4", revision=COMMIT, log=logs.append) as session:
        assert session.generate(QUESTION, max_new_tokens=64).text == ANSWER
        assert any("converting the tokenizer alone" in m for m in logs)
        assert "weights: release not stated by its publisher" in repr(session)
    with_irs = openvino_ir(tmp_path / "ov-with-tokenizer-irs")  # the later uploads: tokenizer IRs included
    logs.clear()
    with kit.load(str(with_irs), "openvino", cache_dir=str(tmp_path / "cache"), log=logs.append) as session:
        assert session.generate(QUESTION, max_new_tokens=64).text == ANSWER
        assert not any("converting" in m for m in logs)


@pytest.mark.slow
def test_a_pack_of_symlinked_hub_snapshots_holds_real_files(published: Path, tmp_path: Path) -> None:
    """Catches: a pack copying the snapshot's symlinks (dangling on a learner's FAT stick) instead of the blobs."""
    from phi3kit.cli import main

    out = tmp_path / "kit-pack"
    assert main(["pack", "--model", "phi-3-mini-4k", "--routes", "openvino:int4,ortgenai:int4", "-o", str(out)]) == 0
    files = [p for p in out.rglob("*") if not p.is_dir()]
    assert not [p for p in files if p.is_symlink()]
    data = next(p for p in files if p.name == f"{ONNX_BUILD}.onnx.data")
    blob = (snapshot_of(published, ONNX_REPO) / ONNX_CPU / data.name).resolve()
    assert data.read_bytes() == blob.read_bytes() and (blob.parent.name == "blobs" or not LINKS)
    assert check(out) == []


def test_a_2024_long_context_config_is_read_as_longrope() -> None:
    """Phi-3-mini-128k's config.json of April 2024 (transformers 4.4x) spells LongRoPE rope_scaling {"type": "su"},
    renamed "longrope" by the July 2024 update; transformers 5 writes rope_parameters {"rope_type": ...}. Catches a
    reader that knows only one spelling: OpenVINO GenAI's route would lose its limit at the original window."""
    from phi3kit.backends.longrope import longrope_window

    for kind in ("su", "longrope"):
        config = {**config_2024(None), "max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
                  "rope_scaling": {"type": kind, "long_factor": [1.0] * 32, "short_factor": [1.0] * 32}}
        assert longrope_window(config) == 4096, kind
    assert longrope_window(config_2024(None)) is None  # Phi-3-mini-4k: rope_scaling null


# --- a template that drops the system message ---------------------------------------------------------
def test_a_template_that_drops_the_system_message_warns_once_per_folder(tmp_path: Path) -> None:
    """Catches: a system prompt silently dropped by the April 2024 template (the answer reads as if it had been
    followed), and a warning repeated on every turn."""
    april = Tokenizer(microsoft_onnx(tmp_path / "april", template=APRIL_2024_TEMPLATE))
    july = Tokenizer(microsoft_onnx(tmp_path / "july"))
    chat = [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": QUESTION}]
    with pytest.warns(SystemMessageIgnored) as caught:
        text = april.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert "Answer in French." not in text and QUESTION in text  # the template's own behaviour
    message = str(caught[0].message)
    assert str(tmp_path / "april") in message and "system message is ignored" in message
    assert "first user turn" in message and "July 2024 template" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per folder; a template that writes the system turn: never
        april.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        assert "Answer in French." in july.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        april.apply_chat_template(chat[1:], add_generation_prompt=True, tokenize=False)  # no system message


@pytest.mark.slow
def test_a_session_on_such_a_folder_warns_when_given_a_system_prompt(tmp_path: Path) -> None:
    folder = microsoft_onnx(tmp_path / "april-session", template=APRIL_2024_TEMPLATE)
    with kit.load(str(folder), "ortgenai", cache_dir=str(tmp_path / "cache"), log=quiet) as session:
        with pytest.warns(SystemMessageIgnored, match="april-session"):
            session.generate(QUESTION, system="Answer in French.", max_new_tokens=4).consume()


# --- a build without the model's sliding window ---------------------------------------------------------
def test_a_build_without_the_models_window_is_told_from_one_with_it(tmp_path: Path) -> None:
    """Catches: Microsoft's 2024 Phi-3-mini-4k builds (no sliding_window anywhere) read as exact over the whole
    context; and the note given to a build that has the window, or to a model without one."""
    declared = microsoft_onnx(tmp_path / "declared", sliding_window=2047)
    assert known_window(declared, str(declared)) == (2047, "its config.json says sliding_window=2047")
    note = missing_window_note(declared, str(declared))
    assert "2047" in note and "differ from the model's" in note and "prefer='export'" in note
    bare = microsoft_onnx(tmp_path / "bare", config_json=False)  # no config.json: the catalog knows the model
    assert known_window(bare, "phi-3-mini-4k")[0] == 2047
    assert known_window(bare, f"{ONNX_REPO}/{ONNX_CPU}")[0] == 2047
    assert "the catalog's phi-3-mini-4k row" in missing_window_note(bare, "phi-3-mini-4k")
    assert missing_window_note(bare, str(bare)) == ""  # a folder of unknown provenance: nothing is claimed
    assert missing_window_note(microsoft_onnx(tmp_path / "none", sliding_window=None), "phi-3-mini-4k") == ""
    assert missing_window_note(pocket.ready_dir("ortgenai-int4-cpu"), "pocket") == ""
    import onnx  # the window built into the graph: no note

    graph_file = declared / f"{ONNX_BUILD}.onnx"
    graph = onnx.load(str(graph_file), load_external_data=False)
    for node in graph.graph.node:
        if node.op_type == "GroupQueryAttention":
            node.attribute.append(onnx.helper.make_attribute("local_window_size", 2047))
    onnx.save_model(graph, str(graph_file))
    assert built_window(declared)["local_window_size"] == [2047]
    assert missing_window_note(declared, str(declared)) == ""


@pytest.mark.slow
def test_the_note_is_in_session_limits_and_the_load_log(tmp_path: Path) -> None:
    logs: list[str] = []
    folder = microsoft_onnx(tmp_path / "declared", sliding_window=2047)
    with kit.load(str(folder), "ortgenai", cache_dir=str(tmp_path / "cache"), log=logs.append) as session:
        assert "past 2048 tokens" in session.limits.note or "pass 2048 tokens" in session.limits.note
        assert any(m.startswith("Note: this build has no sliding window") for m in logs)
    with kit.load("pocket", "ortgenai", "int4", cache_dir=str(tmp_path / "cache"), log=quiet) as session:
        assert session.limits.note == ""


# --- the catalog against its publishers' own words ------------------------------------------------------
def test_npu_rows_are_4bit_symmetric_as_openvinos_npu_guide_asks() -> None:
    """Catches: an fp16 (or int8, or asymmetric int4) row listing NPU again."""
    for model in catalog.catalog().values():
        for row in model.ready_made:
            if "NPU" in row.devices:
                assert row.precision == "int4-cw" and "symmetric" in row.recipe, (model.alias, row)
            if row.backend == "openvino" and row.precision == "fp16":
                assert "NPU" in row.not_for, row


def test_each_ready_made_row_records_its_weights_and_unverified_ids_say_so(capsys: pytest.CaptureFixture[str]) -> None:
    """Catches: the April 2024 weights of Microsoft's Phi-3-mini-4k ONNX repo presented as the current checkpoint;
    an id never seen on a public page listed as if it were."""
    rows = [(m, r) for m in catalog.catalog().values() for r in m.ready_made]
    for _, row in rows:
        assert (row.weights_date == "") == (row.weights == "" or row.shipped is not None), row
        assert row.verified or "not found on any public page" in row.note, row
    assert {r.weights_date for _, r in rows if r.repo == ONNX_REPO} == {"2024-04"}
    assert {str(r.repo) for _, r in rows if not r.verified} == UNVERIFIED
    assert catalog.lookup("phi-3-mini-4k").sliding_window == 2047
    assert catalog.lookup("phi-3-mini-4k").sliding_window_source.endswith("config.json")
    frame = kit.models()
    assert {"weights", "weights_date", "verified", "note"} <= set(frame.columns)
    from phi3kit.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    marked = [line for line in out.splitlines() if "(unverified id)" in line]
    assert len(marked) == len(UNVERIFIED) and all(any(f"{r} (unverified id)" in m for m in marked) for r in UNVERIFIED)
    from phi3kit.diagnostics import Facts, recommend  # phi3kit doctor's NPU advice names the unverified id as such

    npu = recommend(Facts(ram_total_gb=16, openvino_devices=[{"device": "CPU", "name": "x"},
                                                             {"device": "NPU", "name": "AI Boost"}]))
    assert any(n.startswith(f"{npu.ready_made}: this repo id was not found") for n in npu.notes)
