"""Real Phi models the way learners get them: the catalog, ready-made folders used as they are, workshop packs.

The hub is never reached: a Hugging Face cache is built inside the test (huggingface_hub's layout under
a temporary HF_HOME, HF_HUB_OFFLINE=1) holding the pocket's ready-made folders under the catalog's repo
names, so the kit's real download code (snapshot_download with the route's patterns) runs against it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import phi3kit as kit
from phi3kit import backends, catalog, pocket
from phi3kit.backends import folder_format
from phi3kit.exporting import plan, prepare
from phi3kit.hub import PATTERNS, patterns, split_hub_id
from phi3kit.preflight import FreeSpace
from phi3kit.sources import is_hub_id
from phi3kit.workshop import PACK_FILE, PackError, check, unpack

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "What is an NPU?"
ANSWER = {q["question"]: q["answer"] for q in pocket.load_qa()}[QUESTION]
IR_REPO = "OpenVINO/Phi-3-mini-4k-instruct-int4-ov"
# CI also runs this file in the lean environment (requirements/lean.txt: no torch, no exporter).
needs_exporter = pytest.mark.skipif(backends.get("openvino").missing_exporter() is not None,
                                    reason="exports from a checkpoint, and this is the lean environment (no torch, "
                                           "optimum-intel, nncf); the dev run covers it")
ONNX_REPO, ONNX_CPU = "microsoft/Phi-3-mini-4k-instruct-onnx", "cpu_and_mobile/cpu-int4-rtn-block-32-acc-level-4"
DEVICES = {"openvino": {"CPU", "GPU", "NPU", "AUTO"}, "ortgenai": {"CPU", "DML", "CUDA"}}


def quiet(message: str) -> None:
    pass


# --- a hub cache made here ----------------------------------------------------------------------------
def hub_repo(home: Path, repo: str, files_from: Path, subfolder: str | None = None, commit: str = "a" * 40) -> Path:
    """Lay `files_from` out as huggingface_hub caches a download of `repo` (refs/main -> a snapshot)."""
    storage = home / "hub" / f"models--{repo.replace('/', '--')}"
    snapshot = storage / "snapshots" / commit
    shutil.copytree(files_from, snapshot / subfolder if subfolder else snapshot, dirs_exist_ok=True)
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HF_HOME with the pocket's IR under the catalog's OpenVINO repo and its ONNX build under Microsoft's."""
    home = tmp_path / "hf"
    hub_repo(home, IR_REPO, pocket.ready_dir("openvino-int4"))
    hub_repo(home, ONNX_REPO, pocket.ready_dir("ortgenai-int4-cpu"), ONNX_CPU)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hf  # read once at import: this process's downloads look here too

    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setenv("PHI3KIT_CACHE", str(tmp_path / "cache"))
    return home


def run_isolated(code: str, env: dict[str, str]) -> dict:
    """Run kit code in a fresh interpreter and return the JSON it prints last (what it imported included)."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


LOAD_AND_ANSWER = """
import json, sys
import phi3kit as kit
logs = []
s = kit.load({model!r}, {backend!r}, {precision!r}, {device!r}, log=logs.append)
text = s.generate({question!r}, max_new_tokens=64).text
print(json.dumps({{"text": text, "repr": repr(s), "route": s.export.route, "origin": s.origin, "recipe": s.recipe,
                   "logs": logs, "imported": sorted(m for m in ("torch", "optimum", "nncf", "transformers")
                                                    if m in sys.modules)}}))
"""


# --- the catalog ------------------------------------------------------------------------------------------
def test_the_catalog_holds_the_phi_models_learners_use() -> None:
    assert {"phi-3-mini-4k", "phi-3-mini-128k", "phi-3.5-mini", "phi-4-mini", "pocket"} <= set(catalog.aliases())
    assert catalog.lookup("phi-3-mini-4k").context_length == 4096
    assert catalog.lookup("phi-3-mini-128k").context_length == catalog.lookup("phi-3.5-mini").context_length == 131072
    npu = catalog.lookup("phi-3-mini-4k").ready_made_for("openvino", "int4-cw", "NPU")
    assert npu is not None and "-cw-" in str(npu.repo)  # the NPU's channel-wise IR
    dml = catalog.lookup("phi-3-mini-4k").ready_made_for("ortgenai", "int4", "DML")
    assert dml is not None and dml.subfolder and dml.subfolder.startswith("directml/")


def test_every_catalog_row_is_a_route_the_kit_supports() -> None:
    """A row naming a backend, precision or device the kit lacks would fail only on a learner's laptop."""
    for model in catalog.catalog().values():
        assert model.source and model.parameters > 0
        assert model.checkpoint == "pocket" or is_hub_id(model.checkpoint)
        for row in model.ready_made:
            backend = backends.get(row.backend)
            assert backend.ready_made_format == row.backend, row
            assert row.precision in backend.precisions, row
            assert set(row.devices) <= DEVICES[row.backend], row
            assert row.source and row.recipe, row
            if row.shipped:  # shipped with the kit: the folder is there and is what the row says
                folder = pocket.ready_dir(row.shipped)
                assert folder_format(folder) == (row.backend, row.backend)
                assert backend.ready_made(folder, kit.LoadConfig(backend=row.backend, precision=row.precision),
                                          kit.ExportCache(), quiet).precision == row.precision
            else:
                assert is_hub_id(f"{row.repo}/{row.subfolder}" if row.subfolder else str(row.repo)), row


def test_the_catalog_table_and_command(capsys: pytest.CaptureFixture[str]) -> None:
    frame = kit.models()
    assert set(frame["alias"]) == set(catalog.aliases())
    assert IR_REPO in set(frame["ready_made"])
    from phi3kit.cli import main

    assert main(["models", "phi-3-mini-4k"]) == 0
    out = capsys.readouterr().out
    assert IR_REPO in out and "phi-4-mini" not in out and "not checked against the hub" in out


def test_a_mistyped_alias_lists_the_aliases_and_downloads_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    def no_hub(*args: object, **kwargs: object) -> None:
        raise AssertionError("a mistyped alias reached the hub")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_hub)
    with pytest.raises(kit.UnknownChoiceError, match=r"model alias: 'phi-3-mini-4kk'.*phi-3-mini-4k.*phi3kit models"):
        kit.load("phi-3-mini-4kk", "openvino")
    with pytest.raises(kit.UnknownChoiceError, match="prefer"):
        kit.load("pocket", "openvino", prefer="ready")


def test_prefer_picks_the_route_and_export_settings_imply_export() -> None:
    cfg = kit.LoadConfig(model="phi-3-mini-4k", backend="openvino", precision="int4")
    assert plan(cfg).route == "ready-made" and plan(cfg).repo == IR_REPO
    assert plan(kit.LoadConfig(model="phi-3-mini-4k", backend="openvino", precision="int4", prefer="export")).route \
        == "export"
    seed = plan(kit.LoadConfig(model="phi-3-mini-4k", backend="openvino", precision="int4", group_size=128, ratio=0.6))
    assert seed.route == "export" and seed.checkpoint == "microsoft/Phi-3-mini-4k-instruct"
    with pytest.raises(kit.UnknownChoiceError, match="ratio=0.6.*prefer='export'"):
        plan(kit.LoadConfig(model="phi-3-mini-4k", backend="openvino", precision="int4", ratio=0.6,
                            prefer="ready-made"))
    with pytest.raises(kit.UnknownChoiceError, match="int8 on CPU.*int4 on CPU.*prefer='export'"):
        plan(kit.LoadConfig(model="pocket", backend="openvino", precision="int8", prefer="ready-made"))
    assert plan(kit.LoadConfig(model="pocket", backend="openvino", precision="int8")).route == "export"
    assert plan(kit.LoadConfig(model="phi-3-mini-4k", backend="transformers", precision="fp32")).route == "checkpoint"
    npu = kit.backends.get("openvino").npu_preset(kit.LoadConfig(model="phi-3-mini-4k", backend="openvino",
                                                                 device="NPU", precision="int4"))
    assert npu.precision == "int4-cw" and "-cw-" in str(plan(npu).repo)


def test_route_patterns_fetch_only_what_the_route_reads() -> None:
    """The same filter snapshot_download applies to a repo's file list."""
    from huggingface_hub.utils import filter_repo_objects

    ir_repo = ["openvino_model.xml", "openvino_model.bin", "openvino_tokenizer.xml", "openvino_tokenizer.bin",
               "openvino_detokenizer.xml", "openvino_detokenizer.bin", "config.json", "tokenizer.json",
               "tokenizer_config.json", "generation_config.json", "README.md", ".gitattributes", "model.onnx"]
    got = set(filter_repo_objects(ir_repo, allow_patterns=patterns("openvino")))
    assert got == set(ir_repo) - {".gitattributes", "model.onnx"}
    onnx_repo = [f"{d}/{f}" for d in (ONNX_CPU, "directml/directml-int4-awq-block-128", "cuda/cuda-fp16")
                 for f in ("genai_config.json", "model.onnx", "model.onnx.data", "tokenizer.json")] + ["README.md"]
    got = set(filter_repo_objects(onnx_repo, allow_patterns=patterns("ortgenai", ONNX_CPU)))
    assert got == {f"{ONNX_CPU}/{f}" for f in ("genai_config.json", "model.onnx", "model.onnx.data", "tokenizer.json")}
    checkpoint = ["model-00001-of-00002.safetensors", "config.json", "modeling_phi3.py", "tokenizer.model"]
    assert "modeling_phi3.py" not in set(filter_repo_objects(checkpoint, allow_patterns=patterns("checkpoint")))
    assert "*.py" in patterns("checkpoint", trust_remote_code=True) and "*.py" not in PATTERNS["checkpoint"]
    assert split_hub_id(f"{ONNX_REPO}/{ONNX_CPU}") == (ONNX_REPO, ONNX_CPU)


# --- ready-made folders from the hub -----------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(("backend", "origin"), [("openvino", IR_REPO), ("ortgenai", f"{ONNX_REPO}/{ONNX_CPU}")])
def test_a_ready_made_hub_folder_answers_with_no_export_and_no_torch(hub: Path, backend: str, origin: str) -> None:
    """kit.load('phi-3-mini-4k', ...) takes the catalog's ready-made folder from the hub cache: nothing is
    exported, and neither PyTorch nor the exporters are imported."""
    got = run_isolated(LOAD_AND_ANSWER.format(model="phi-3-mini-4k", backend=backend, precision="int4", device="CPU",
                                              question=QUESTION), {})
    assert got["text"] == ANSWER  # the pocket's own answer: the files behind the catalog name are the pocket's
    assert got["route"] == "ready-made" and got["origin"] == origin and origin in got["repr"]
    assert "not the kit's recipe" in got["recipe"]
    assert got["imported"] == []
    assert not any(line.startswith(("Exporting with", "Building with")) for line in got["logs"])
    assert not list((hub.parent / "cache").glob("*/*/phi3kit-manifest.json"))  # nothing built into the cache


@pytest.mark.slow
def test_a_hub_id_of_one_onnx_build_is_read_as_it_is(hub: Path) -> None:
    session = kit.load(f"{ONNX_REPO}/{ONNX_CPU}", "ortgenai", log=quiet)
    assert session.config.precision == "int4" and session.export.route == "ready-made"
    assert session.generate(QUESTION, max_new_tokens=64).text == ANSWER


def test_a_wrong_catalog_name_says_which_row_and_the_way_out(hub: Path) -> None:
    with pytest.raises(kit.ModelSourceError, match=r"Phi-3-mini-4k-instruct-int8-ov.*hub cache.*prefer='export'"):
        kit.load("phi-3-mini-4k", "openvino", "int8", log=quiet)


# --- ready-made folders on disk -----------------------------------------------------------------------------
def files_of(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_an_ir_without_tokenizer_models_gets_them_converted_and_only_them(tmp_path: Path) -> None:
    """Older IR repos lack openvino_tokenizer.xml: the kit converts the tokenizer alone, never the model, and
    leaves the user's folder as it was."""
    folder = tmp_path / "old-ir"
    shutil.copytree(pocket.ready_dir("openvino-int4"), folder)
    for f in folder.glob("openvino_*tokenizer.*"):
        f.unlink()
    before = files_of(folder)
    logs: list[str] = []
    session = kit.load(str(folder), "openvino", cache_dir=str(tmp_path / "cache"), log=logs.append)
    assert session.generate(QUESTION, max_new_tokens=64).text == ANSWER
    assert files_of(folder) == before  # nothing written into the user's folder
    converted = session.export.tokenizer_dir
    assert converted is not None and converted.parent.parent == tmp_path / "cache"
    assert set(files_of(converted)) == {"openvino_tokenizer.xml", "openvino_tokenizer.bin",
                                        "openvino_detokenizer.xml", "openvino_detokenizer.bin", "phi3kit-manifest.json"}
    assert any("converting the tokenizer alone" in m for m in logs)
    assert not any(m.startswith("Exporting with") for m in logs)
    again: list[str] = []
    kit.load(str(folder), "openvino", cache_dir=str(tmp_path / "cache"), log=again.append)
    assert not any("converting" in m for m in again)  # converted once, then reused


def test_a_ready_made_folder_is_checked_before_it_loads(tmp_path: Path) -> None:
    ir, onnx_dir = tmp_path / "ir", tmp_path / "onnx"
    shutil.copytree(pocket.ready_dir("openvino-int4"), ir)
    shutil.copytree(pocket.ready_dir("ortgenai-int4-cpu"), onnx_dir)
    cache = str(tmp_path / "cache")
    with pytest.raises(kit.ModelSourceError, match=r"holds int4 weights \(NNCF int4_sym, group size 128.*not int8"):
        prepare(kit.LoadConfig(model=str(ir), backend="openvino", precision="int8", cache_dir=cache), quiet)
    with pytest.raises(kit.ModelSourceError, match="ready-made openvino model.*backend='openvino'"):
        prepare(kit.LoadConfig(model=str(ir), backend="ortgenai", cache_dir=cache), quiet)
    with pytest.raises(kit.ModelSourceError, match="already an exported ortgenai model.*checkpoint"):
        prepare(kit.LoadConfig(model=str(onnx_dir), backend="ortgenai", prefer="export", cache_dir=cache), quiet)
    assert not (onnx_dir / "config.json").exists()  # the builder writes none: genai_config.json said Phi-3
    (onnx_dir / "model.onnx.data").unlink()
    with pytest.raises(kit.ModelSourceError, match=r"model.onnx.data, which is missing"):
        prepare(kit.LoadConfig(model=str(onnx_dir), backend="ortgenai", cache_dir=cache), quiet)
    (ir / "openvino_model.bin").unlink()
    with pytest.raises(kit.ModelSourceError, match="openvino_model.bin missing"):
        prepare(kit.LoadConfig(model=str(ir), backend="openvino", cache_dir=cache), quiet)
    genai = json.loads((pocket.ready_dir("ortgenai-int4-cpu") / "genai_config.json").read_text())
    genai["model"]["type"] = "llama"
    (onnx_dir / "genai_config.json").write_text(json.dumps(genai))
    with pytest.raises(kit.ModelSourceError, match="genai_config.json model.type 'llama', not a Phi-3"):
        prepare(kit.LoadConfig(model=str(onnx_dir), backend="ortgenai", cache_dir=cache), quiet)


def test_precision_is_read_from_the_files() -> None:
    from phi3kit.backends.openvino import ir_weights
    from phi3kit.backends.ortgenai import onnx_weights

    assert ir_weights(pocket.ready_dir("openvino-int4") / "openvino_model.xml")[0] == "int4"
    precision, recipe = ir_weights(pocket.ready_dir("openvino-int4-cw") / "openvino_model.xml")
    assert precision == "int4-cw" and "group size -1, ratio 1" in recipe
    precision, recipe, data = onnx_weights(pocket.ready_dir("ortgenai-int4-cpu") / "model.onnx")
    assert precision == "int4" and "block 32" in recipe and data == ["model.onnx.data"]


# --- memory before work ----------------------------------------------------------------------------------
@needs_exporter
def test_an_export_that_would_not_fit_names_the_ready_made_folder_before_downloading(
        hub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The preflight runs from the catalog's size, before the 7.6 GB checkpoint is fetched."""
    import huggingface_hub

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("downloaded before the preflight refused")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_download)
    laptop = FreeSpace(disk_bytes=200 * 10**9, ram_bytes=6 * 10**9)
    cfg = kit.LoadConfig(model="phi-3-mini-4k", backend="openvino", precision="int4", prefer="export")
    with pytest.raises(kit.ResourceError, match=rf"RAM.*Or skip the export: the ready-made {IR_REPO}"):
        prepare(cfg, quiet, free=laptop)
    cfg = kit.LoadConfig(model="phi-3-mini-4k", backend="ortgenai", precision="int4", prefer="export")
    with pytest.raises(kit.ResourceError, match=r"2[45]\.\d GB of RAM.*cpu-int4-rtn-block-32"):
        prepare(cfg, quiet, free=FreeSpace(disk_bytes=200 * 10**9, ram_bytes=16 * 10**9))
    tiny_disk = FreeSpace(disk_bytes=5 * 10**9, ram_bytes=64 * 10**9)
    with pytest.raises(kit.ResourceError, match=r"7.6 GB checkpoint download included"):
        prepare(kit.LoadConfig(model="phi-3-mini-4k", backend="openvino", precision="int8", prefer="export"), quiet,
                free=tiny_disk)


def test_doctor_recommends_the_ready_made_variant_for_its_device() -> None:
    from phi3kit.diagnostics import Facts, recommend

    cpu = recommend(Facts(ram_total_gb=16, openvino_devices=[{"device": "CPU", "name": "x"}]))
    assert cpu.ready_made == IR_REPO and '"phi-3-mini-4k"' in cpu.call
    npu = recommend(Facts(ram_total_gb=16, openvino_devices=[{"device": "CPU", "name": "x"},
                                                             {"device": "NPU", "name": "AI Boost"}]))
    assert npu.precision == "int4-cw" and npu.ready_made == "OpenVINO/Phi-3-mini-4k-instruct-int4-cw-ov"
    cuda = recommend(Facts(ram_total_gb=16, nvidia_gpus=["GPU 0: x"], ort_flavour="onnxruntime-genai-cuda 0.18.0"))
    assert cuda.ready_made.endswith("cuda/cuda-int4-rtn-block-32")


# --- workshop packs ---------------------------------------------------------------------------------------
@pytest.mark.slow
@needs_exporter
def test_a_pack_made_from_one_cache_runs_elsewhere_with_no_export_and_no_hub(
        hub: Path, tmp_path: Path, pocket_exports: Callable[..., Path]) -> None:
    """An instructor packs a ready-made route and an exported one; a laptop with no hub cache runs both."""
    from phi3kit.cli import main

    out = tmp_path / "kit-pack"
    assert main(["pack", "--model", "phi-3-mini-4k", "--routes", "openvino:int4,ortgenai:int4", "-o", str(out)]) == 0
    # A pack is its own cache: the pocket's int8 export, made once in the run's cache, is copied in as an entry (as
    # an instructor's earlier pack would hold it), so the pack finds it instead of exporting the pocket again. What
    # is tested here is what the pack carries and that a laptop runs it; exporting into a cache of one's own is
    # tested in test_reliability.py (killed, raced, corrupted) and the run cache's export by every test that reads it.
    pocket_exports(out, ("openvino", "int8"))
    assert main(["pack", "--model", "pocket", "--routes", "openvino:int8,openvino:int4", "-o", str(out)]) == 0
    index = json.loads((out / PACK_FILE).read_text())
    routes = {(e["model"], e["route"]) for e in index["entries"]}
    # openvino:int4 of the pocket ships with the kit: nothing to pack for it
    assert routes == {("phi-3-mini-4k", "openvino/genai:int4"), ("phi-3-mini-4k", "ortgenai/genai:int4"),
                      ("pocket", "openvino/genai:int8")}
    assert not [p for p in out.rglob("*") if p.is_symlink()]  # materialized: FAT sticks hold no links
    assert check(out) == []
    laptop = tmp_path / "laptop-cache"
    done = unpack(out, laptop, log=quiet)
    assert len(done.copied) == 3
    env = {"HF_HOME": str(tmp_path / "empty-hf"), "HF_HUB_OFFLINE": "1", "PHI3KIT_CACHE": str(laptop)}
    for model, backend, precision in (("phi-3-mini-4k", "openvino", "int4"), ("phi-3-mini-4k", "ortgenai", "int4"),
                                      ("pocket", "openvino", "int8")):
        got = run_isolated(LOAD_AND_ANSWER.format(model=model, backend=backend, precision=precision, device="CPU",
                                                  question=QUESTION), env)
        assert got["text"] == ANSWER, (model, backend, precision)
        assert not any(m.startswith(("Exporting with", "Building with")) for m in got["logs"])
        assert got["imported"] == []
    assert unpack(out, laptop, log=quiet).present and not unpack(out, laptop, log=quiet).copied


@pytest.mark.slow
def test_a_truncated_pack_is_detected_and_named(hub: Path, tmp_path: Path) -> None:
    out = tmp_path / "kit-pack"
    kit.pack("phi-3-mini-4k", "openvino:int4", out, log=quiet)
    weights = next(out.rglob("openvino_model.bin"))
    rel = weights.relative_to(out).as_posix()
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a copy cut short
    assert any(rel in p and "truncated" in p for p in check(out))
    with pytest.raises(PackError, match=rf"{rel} is \d+ bytes, the pack says \d+: a truncated copy"):
        unpack(out, tmp_path / "laptop", log=quiet)
    assert not (tmp_path / "laptop").exists() or not any((tmp_path / "laptop").rglob("openvino_model.bin"))
    logs: list[str] = []  # used in place (PHI3KIT_CACHE=<pack>): the damaged entry is named, and not used
    session = kit.load("phi-3-mini-4k", "openvino", "int4", cache_dir=str(out), log=logs.append)
    assert any("truncated" in m and "openvino_model.bin" in m for m in logs)
    assert out not in session.export.path.parents  # the hub cache's copy instead (offline: an error naming it)


def test_a_pack_never_overwrites_a_folder_of_yours(tmp_path: Path) -> None:
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.txt").write_text("mine")
    with pytest.raises(PackError, match="not a pack: nothing of yours is overwritten"):
        kit.pack("pocket", "openvino:int8", mine, log=quiet)
    assert (mine / "chapter1.txt").read_text() == "mine"
    with pytest.raises(PackError, match="not a workshop pack"):
        unpack(mine, tmp_path / "cache", log=quiet)


@pytest.mark.parametrize("offline", ["HF_HUB_OFFLINE", "no network"])
def test_a_pinned_revision_loads_from_the_hub_cache_without_the_hub(hub: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    offline: str) -> None:
    """huggingface_hub 1.33 (the lean environment's) raised OfflineModeIsEnabled for a pinned revision with
    HF_HUB_OFFLINE=1, and a connection error with no network, where the hub cache held the snapshot."""
    if offline == "no network":
        import huggingface_hub.constants as hf

        monkeypatch.delenv("HF_HUB_OFFLINE")
        monkeypatch.setattr(hf, "HF_HUB_OFFLINE", False)
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing answers
        monkeypatch.setattr(hf, "ENDPOINT", "http://127.0.0.1:9")
    from phi3kit.hub import download

    folder = download(IR_REPO, route="openvino", revision="a" * 40)
    assert folder.name == "a" * 40 and (folder / "openvino_model.xml").is_file()
    with kit.load("phi-3-mini-4k", "openvino", "int4", revision="a" * 40, log=quiet) as s:
        assert s.generate(QUESTION, max_new_tokens=64).text == ANSWER


def test_the_optimum_runtime_without_optimum_is_the_kits_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lean environment has no optimum-intel: runtime='optimum' raised a raw ModuleNotFoundError at load."""
    for name in ("optimum", "optimum.intel"):  # how Python marks a module unimportable (even if imported before)
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(kit.MissingDependencyError, match="optimum-intel.*requirements/openvino.txt"):
        kit.load("pocket", "openvino", "int4", runtime="optimum", log=quiet)


@pytest.mark.parametrize(("folder", "asked", "loader"), [("ortgenai-int4-cpu", "openvino", "ortgenai"),
                                                          ("openvino-int4", "ortgenai", "openvino"),
                                                          ("openvino-int4", "transformers", "openvino")])
def test_a_ready_made_folder_on_the_wrong_backend_names_the_one_that_loads_it(folder: str, asked: str,
                                                                              loader: str) -> None:
    """The folder's format comes from the backends' own markers (backends.folder_format), not from a table of
    backend names in sources.py. Catches: a folder taken for a checkpoint, or the wrong backend suggested."""
    with pytest.raises(kit.ModelSourceError, match=rf"ready-made {loader} model.*Fix: backend='{loader}'"):
        kit.load(str(pocket.ready_dir(folder)), asked, log=quiet)
