"""Sliding-window attention in ONNX Runtime GenAI builds: staging a checkpoint so the builder builds the window in,
reading the window a build really has, and what a build without it answers correctly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ...context import sliding_window_of

# --- Sliding-window attention (Phi-3-mini: sliding_window 2047 in a 4096-token context) ---------------
# onnxruntime-genai 0.18's builder treats a layer as sliding-window only when config.json lists it as
# "sliding_attention" in `layer_types` (builders/base.py is_local, line 1525), which Phi-3 checkpoints never
# do: every GroupQueryAttention gets local_window_size=-1 (full attention), yet genai_config.json still
# gets decoder.sliding_window {window_size: W, layers: []}, which the runtime reads as "every layer keeps
# only W + 16 positions" on the CPU. The build then fails past W + 16 tokens and differs from PyTorch past
# W. Building from a copy whose config.json lists every layer as sliding_attention gives each GQA
# local_window_size=W with sliding_window_cache=1 and `layers` [0..L-1]: the kernel evicts, the cache stays
# W + 16 positions, and the ids equal PyTorch's over the whole context.
ATTENTION_FIX = 1  # bump to rebuild exports when this recipe changes


def needs_layer_types(model_config: dict[str, Any]) -> bool:
    return sliding_window_of(model_config) is not None and not model_config.get("layer_types")


def stage_with_layer_types(src: Path, staged: Path) -> Path:
    """`staged`: links to every file of `src`, and a config.json that lists every layer as sliding_attention."""
    import os

    config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    staged.mkdir(parents=True)
    for item in src.iterdir():
        if item.name == "config.json":
            continue
        target = staged / item.name
        try:
            os.symlink(item.resolve(), target, target_is_directory=item.is_dir())
        except OSError:  # no symlinks (Windows without developer mode): a hard link, else a copy
            if item.is_dir():
                shutil.copytree(item, target)
            else:
                try:
                    os.link(item.resolve(), target)
                except OSError:
                    shutil.copy2(item, target)
    config["layer_types"] = ["sliding_attention"] * int(config["num_hidden_layers"])
    (staged / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return staged


def built_window(model_dir: Path) -> dict[str, Any]:
    """The attention window a build really has: GQA attributes, and genai_config's decoder.sliding_window."""
    import onnx

    decoder = json.loads((model_dir / "genai_config.json").read_text(encoding="utf-8"))["model"]["decoder"]
    model = onnx.load(str(model_dir / decoder.get("filename", "model.onnx")), load_external_data=False)
    gqa = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
           for n in model.graph.node if n.op_type == "GroupQueryAttention"]
    return {"local_window_size": sorted({g.get("local_window_size", -1) for g in gqa}),
            "sliding_window_cache": sorted({g.get("sliding_window_cache", 0) for g in gqa}),
            "section": decoder.get("sliding_window") or {}}


def window_limits(model_dir: Path) -> tuple[int, int | None]:
    """(smallest max_length the build accepts, largest prompt + max_new_tokens it answers correctly or None).

    A windowed cache holds min(max_length, W + 16) positions and GQA refuses fewer than W, so max_length
    must reach W even for a short request. A build whose graph ignores the window (local_window_size -1,
    as onnxruntime-genai 0.18 builds Phi-3 unless told the layer types) is exact while every token is
    predicted from at most W tokens, prompt + max_new_tokens <= W + 1, and fails beyond W + 17.
    """
    got = built_window(model_dir)
    section, window = got["section"], int(got["section"].get("window_size") or 0)
    if not window:
        return 0, None
    if got["sliding_window_cache"] == [1]:
        return window, None
    if got["local_window_size"] == [-1] and not section.get("layers"):
        return 0, window + 1
    return 0, None


def known_window(model_dir: Path, model: str) -> tuple[int, str] | None:
    """(the model's sliding window, where that is known from) for a build: its folder's config.json when it has
    one (Microsoft's ONNX folders do), else the catalog's row for `model` (an alias or a hub id); None: no window."""
    config_file = model_dir / "config.json"
    if config_file.is_file():
        window = sliding_window_of(json.loads(config_file.read_text(encoding="utf-8")))
        return (window, f"its config.json says sliding_window={window}") if window else None
    from ... import catalog
    from ...hub import split_hub_id

    entry = catalog.catalog().get(model) or (found[0] if (found := catalog.for_repo(*split_hub_id(model))) else None)
    if entry is None or not entry.sliding_window:
        return None
    return entry.sliding_window, f"the catalog's {entry.alias} row ({entry.sliding_window_source})"


def missing_window_note(model_dir: Path, model: str) -> str:
    """What to tell a user whose build lacks the model's sliding window ('' when it has it, or the model has none).

    ONNX Runtime GenAI's builders of 2024 (0.3-0.5) wrote no sliding_window into genai_config.json and no window
    into the attention nodes, so Microsoft's 2024 Phi-3-mini-4k folders attend to the whole context where the
    model attends to its last 2047 tokens: identical up to the window, different past it (no failure, no warning).
    """
    known = known_window(model_dir, model)
    if known is None:
        return ""
    got = built_window(model_dir)
    if got["section"] or any(int(w) > 0 for w in got["local_window_size"]):
        return ""  # the window is built in (or the runtime keeps only it): window_limits covers the rest
    window, where = known
    return (f"this build has no sliding window, while the model attends to only its last {window} tokens ({where}): "
            f"genai_config.json has no sliding_window and the graph's attention has no window, so answers whose prompt "
            f"plus answer pass {window + 1} tokens differ from the model's. For the model's answers keep prompt + "
            "max_new_tokens within that, or export it with this phi3kit (prefer='export'), which builds the window in.")
