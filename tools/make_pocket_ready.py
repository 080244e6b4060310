"""Rebuild the pocket's ready-made folders: `python tools/make_pocket_ready.py` (needs the full environment).

The pocket ships converted for OpenVINO (int4, int4-cw) and ONNX Runtime GenAI (int4 for the CPU and
for DirectML), so it runs in the lean environment, which has no PyTorch to export with. Each folder
is exactly what the kit's own export writes (prefer="export"), minus the cache's manifest; rerun this
after retraining the pocket (`python tools/train_pocket.py`), or the ready-made folders describe
the old weights (tests/test_ready_made.py checks they answer like a fresh export).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from importlib.metadata import version
from pathlib import Path

import phi3kit as kit
from phi3kit.pocket import READY_DIR
from phi3kit.safefs import remove_tree

# name -> (backend, precision, options): the shipped folders, the catalog's `shipped:` rows.
FOLDERS = {
    "openvino-int4": ("openvino", "int4", {}),
    "openvino-int4-cw": ("openvino", "int4-cw", {}),
    "ortgenai-int4-cpu": ("ortgenai", "int4", {"build_target": "cpu"}),
    "ortgenai-int4-dml": ("ortgenai", "int4", {"build_target": "dml"}),
}
README = """# The pocket model, ready-made

The kit's own exports of the pocket model (`../model`), shipped so that `model="pocket"` runs with
OpenVINO GenAI and ONNX Runtime GenAI where no PyTorch is installed (requirements/lean.txt).
Rebuild them with `python tools/make_pocket_ready.py` after retraining the pocket.

| folder | backend | precision | made with |
|---|---|---|---|
{rows}

The DirectML build (`ortgenai-int4-dml`) runs on the CPU here; on Windows it is for the DirectML
build of ONNX Runtime GenAI, which is not available on the machine that made it: unverified there.
"""


def _scrub(folder: Path) -> None:
    """optimum-intel records the tokenizer's absolute path of the building machine: say which one it was instead."""
    cfg = folder / "openvino_config.json"
    if cfg.is_file():
        data = json.loads(cfg.read_text(encoding="utf-8"))
        if isinstance(data.get("quantization_config"), dict) and "tokenizer" in data["quantization_config"]:
            data["quantization_config"]["tokenizer"] = "phi3kit/pocket/model"
        cfg.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def build(dest: Path = READY_DIR, log=print) -> None:  # type: ignore[no-untyped-def]
    dest.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="phi3kit-pocket-ready-") as cache:
        for name, (backend, precision, options) in FOLDERS.items():
            export = kit.export("pocket", backend, precision, prefer="export", cache_dir=cache, log=log, **options)
            target = dest / name
            remove_tree(target, dest)  # the kit deletes only inside the folder it builds
            shutil.copytree(export.path, target, ignore=shutil.ignore_patterns("phi3kit-manifest.json"))
            _scrub(target)
            made = {"openvino": ("optimum-intel", "nncf", "openvino"),
                    "ortgenai": ("onnxruntime-genai",)}[backend]
            rows.append(f"| `{name}` | {backend} | {precision} | {', '.join(f'{m} {version(m)}' for m in made)} |")
            log(f"wrote {target}")
    (dest / "README.md").write_text(README.format(rows="\n".join(rows)), encoding="utf-8")


if __name__ == "__main__":
    build()
