"""Ready-made folders laid out as their publishers wrote them in 2024-2025, built from the pocket's real weights.

The kit's own builds (phi3kit/pocket/ready/) are what today's exporters write. Learners download folders that
older exporters wrote, in other shapes; these helpers turn a copy of a pocket build into each shape, so the
tests load them through the kit exactly as a learner's download would be loaded:

* `microsoft_onnx` - Microsoft's Phi-3 ONNX folders (e.g. microsoft/Phi-3-mini-4k-instruct-onnx,
  cpu_and_mobile/cpu-int4-rtn-block-32-acc-level-4): the decoder named after the build with its `.data`
  beside it (the external-data reference inside the graph renamed to match), a 2024 genai_config.json
  (no sliding_window, eos_token_id a list, a position_ids input), a config.json, the chat template inside
  tokenizer_config.json (no chat_template.jinja), special_tokens_map.json, added_tokens.json, and the 2024
  tokenizer class "LlamaTokenizer". No generation_config.json.
* `openvino_ir` - OpenVINO's IR folders (OpenVINO/Phi-3-mini-4k-instruct-int4-ov): a config.json written by
  transformers 4.4x (`rope_scaling`, `torch_dtype`), the template inside tokenizer_config.json, and optionally
  no openvino_tokenizer/detokenizer IRs (early uploads of some repos had none).
* `hub_cache` - a hub cache as huggingface_hub writes it: blobs/<hash> files, snapshots/<commit>/... relative
  symlinks into the blobs, refs/main.

The pocket's special tokens stay the pocket's (its tokenizer.json is byte-level BPE, not Phi-3's SentencePiece
vocabulary), so the folders answer with the pocket's known answers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from phi3kit import pocket

ONNX_BUILD = "phi3-mini-4k-instruct-cpu-int4-rtn-block-32-acc-level-4"
# The April 2024 Phi-3 chat template, from its known behaviour: the BOS token, then user and assistant turns
# only; a system message is not written at all, and every user turn opens the assistant's turn itself.
APRIL_2024_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') %}"
    "{{'<|user|>' + '\n' + message['content'] + '<|end|>' + '\n' + '<|assistant|>' + '\n'}}"
    "{% elif (message['role'] == 'assistant') %}{{message['content'] + '<|end|>' + '\n'}}{% endif %}{% endfor %}")
# The July 2024 template (and the pocket's): system, user and assistant turns, each ended by <|end|>.
JULY_2024_TEMPLATE = (pocket.ready_dir("ortgenai-int4-cpu") / "chat_template.jinja").read_text(encoding="utf-8")


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _write(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _special_ids(folder: Path) -> dict[str, int]:
    return {t["content"]: t["id"] for t in _read(folder / "tokenizer.json")["added_tokens"]}


def tokenizer_files_2024(folder: Path, template: str) -> None:
    """tokenizer_config.json with the template inside it (as transformers 4.4x saved it), special_tokens_map.json,
    added_tokens.json and the 2024 class name; no chat_template.jinja."""
    ids = _special_ids(folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    decoder = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": t != "<|endoftext|>",
                        "single_word": False, "special": True} for t, i in ids.items()}
    _write(folder / "tokenizer_config.json", {
        "add_bos_token": True, "add_eos_token": False, "added_tokens_decoder": decoder,
        "bos_token": "<|endoftext|>", "chat_template": template, "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>", "legacy": False, "model_max_length": 4096, "pad_token": "<|endoftext|>",
        "padding_side": "left", "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer",
        "unk_token": "<|endoftext|>", "use_default_system_prompt": False})
    _write(folder / "special_tokens_map.json", {
        t: {"content": "<|endoftext|>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
        for t in ("bos_token", "eos_token", "pad_token", "unk_token")})
    _write(folder / "added_tokens.json", {t: i for t, i in ids.items() if t != "<|endoftext|>"})


def config_2024(sliding_window: int | None) -> dict[str, Any]:
    """The pocket's config.json as transformers 4.4x wrote Phi-3's (rope_scaling, torch_dtype, sliding_window)."""
    config = _read(pocket.path() / "config.json")
    rope = config.pop("rope_parameters", {}) or {}
    config.pop("dtype", None)
    config.update({"rope_scaling": None, "rope_theta": rope.get("rope_theta", 10000.0), "torch_dtype": "bfloat16",
                   "sliding_window": sliding_window, "transformers_version": "4.40.2",
                   "auto_map": {"AutoConfig": "configuration_phi3.Phi3Config",
                                "AutoModelForCausalLM": "modeling_phi3.Phi3ForCausalLM"}})
    return dict(sorted(config.items()))


def microsoft_onnx(dst: Path, *, template: str = JULY_2024_TEMPLATE, sliding_window: int | None = None,
                   config_json: bool = True) -> Path:
    """`dst`: the pocket's CPU int4 build in the shape of Microsoft's 2024 Phi-3 ONNX folders."""
    import onnx

    src = pocket.ready_dir("ortgenai-int4-cpu")
    shutil.copytree(src, dst)
    model = onnx.load(str(dst / "model.onnx"), load_external_data=False)
    data = f"{ONNX_BUILD}.onnx.data"
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = data
    onnx.save_model(model, str(dst / f"{ONNX_BUILD}.onnx"))  # the graph alone: its weights stay external
    (dst / "model.onnx").unlink()
    (dst / "model.onnx.data").rename(dst / data)
    ids = _special_ids(dst)
    genai = _read(dst / "genai_config.json")
    decoder = genai["model"]["decoder"]
    decoder.pop("sliding_window", None)  # the 2024 builders wrote none
    decoder["filename"] = f"{ONNX_BUILD}.onnx"
    decoder["inputs"] = {"input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids",
                         "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"}
    genai["model"]["eos_token_id"] = [ids["<|endoftext|>"], ids["<|assistant|>"], ids["<|end|>"]]
    _write(dst / "genai_config.json", genai)
    (dst / "generation_config.json").unlink()
    tokenizer_files_2024(dst, template)
    if config_json:
        _write(dst / "config.json", config_2024(sliding_window))
    return dst


def openvino_ir(dst: Path, *, template: str = JULY_2024_TEMPLATE, tokenizer_irs: bool = True,
                sliding_window: int | None = None) -> Path:
    """`dst`: the pocket's int4 IR in the shape of OpenVINO's 2024 IR folders."""
    shutil.copytree(pocket.ready_dir("openvino-int4"), dst)
    tokenizer_files_2024(dst, template)
    _write(dst / "config.json", config_2024(sliding_window))
    if not tokenizer_irs:
        for f in dst.glob("openvino_*tokenizer.*"):
            f.unlink()
    return dst


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # noqa: S324 - git's object name


def hub_cache(home: Path, repo: str, files_from: Path, *, subfolder: str | None = None,
              commit: str = "0123456789abcdef0123456789abcdef01234567") -> Path:
    """Lay `files_from` out in HF_HOME `home` as huggingface_hub stores a download of `repo` at `commit`.

    Each file's content is one blob (named by its sha256 when large, as LFS files are, else by its git blob
    hash); the snapshot holds relative symlinks into blobs/ (copies where the system allows no symlinks, as
    huggingface_hub does) and refs/main names the commit. Returns the snapshot folder.
    """
    storage = home / "hub" / f"models--{repo.replace('/', '--')}"
    snapshot = storage / "snapshots" / commit
    blobs = storage / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    for f in sorted(p for p in files_from.rglob("*") if p.is_file()):
        data = f.read_bytes()
        name = hashlib.sha256(data).hexdigest() if len(data) > 10 * 2**10 else _git_blob_sha1(data)
        (blobs / name).write_bytes(data)
        rel = f.relative_to(files_from)
        link = snapshot / subfolder / rel if subfolder else snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.symlink(os.path.relpath(blobs / name, link.parent), link)
        except OSError:  # Windows without developer mode: huggingface_hub then copies the file into the snapshot
            shutil.copyfile(blobs / name, link)
    (storage / "refs").mkdir(exist_ok=True)
    (storage / "refs" / "main").write_text(commit, encoding="utf-8")
    return snapshot
