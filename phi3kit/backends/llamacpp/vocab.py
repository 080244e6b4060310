"""llama.cpp's converter with the kit's vocabulary step: folders with only a tokenizer.json (Phi-3's own
SentencePiece-style BPE, or the pocket's byte-level BPE) get the vocabulary the converter's Phi-3 class would
otherwise refuse (it reads a SentencePiece tokenizer.model)."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Any

_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def convert(tree: Path, model_dir: Path, out: Path, outtype: str) -> None:
    """Run llama.cpp's convert_hf_to_gguf.py on `model_dir`, with a vocabulary step for tokenizer.json-only folders.

    Phi-3's converter class reads a SentencePiece `tokenizer.model` (or, for Phi-4's GPT2Tokenizer, the
    byte-level BPE in tokenizer.json). Folders with only a tokenizer.json get the matching step instead:
    SentencePiece-style BPE with byte fallback (Phi-3's own vocabulary) is written as llama.cpp's "llama"
    vocabulary from the file itself; byte-level BPE (the pocket tokenizer) goes through the converter's own
    GPT-2 path.
    """
    import logging

    sys.path[:0] = [str(tree), str(tree / "gguf-py")]
    import convert_hf_to_gguf as converter

    phi3 = getattr(converter, "Phi3MiniModel", None)
    if phi3 is None:  # newer llama.cpp keeps the model classes in the conversion package
        from conversion import phi as phi_module

        phi3 = phi_module.Phi3MiniModel
    stock = phi3.set_vocab
    log = logging.getLogger("phi3kit")

    def set_vocab(self: Any) -> None:
        folder = Path(self.dir_model)
        spec = _json(folder / "tokenizer.json")
        model = spec.get("model") or {}
        tokenizer_class = _json(folder / "tokenizer_config.json").get("tokenizer_class")
        if tokenizer_class == "GPT2Tokenizer" or ((folder / "tokenizer.model").is_file()
                                                  and importlib.util.find_spec("sentencepiece") is not None):
            log.info("phi3kit: vocabulary through the converter's own Phi-3 step")
            return stock(self)
        if model.get("type") == "BPE" and model.get("byte_fallback"):
            log.info("phi3kit: SentencePiece-style vocabulary from tokenizer.json")
            return _spm_vocab(self, spec)
        pre = spec.get("pre_tokenizer") or {}
        if model.get("type") == "BPE" and pre.get("type") == "ByteLevel":
            log.info("phi3kit: byte-level BPE vocabulary from tokenizer.json")
            return _gpt2_vocab(self, gpt2_regex=bool(pre.get("use_regex", True)))
        return stock(self)  # raises the converter's own error (no tokenizer.model)

    phi3.set_vocab = set_vocab
    sys.argv = ["convert_hf_to_gguf.py", str(model_dir), "--outfile", str(out), "--outtype", outtype]
    converter.main()


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _spm_vocab(self: Any, spec: dict[str, Any]) -> None:
    """llama.cpp's SentencePiece vocabulary ("llama") from a tokenizer.json BPE with byte fallback.

    llama.cpp merges the adjacent pair whose joined piece scores highest; tokenizers applies the merge
    ranked first. A piece's score is therefore minus the rank of the first merge that makes it, which
    orders the merges the same way (tests/test_llamacpp.py checks llama.cpp's tokenization of Phi-3's
    reference strings).
    """
    import gguf

    n_vocab = int(self.hparams["vocab_size"])
    model = spec["model"]
    merges = model.get("merges") or []
    first_merge: dict[str, int] = {}
    for rank, merge in enumerate(merges):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        first_merge.setdefault(left + right, rank)
    types = gguf.TokenType
    tokens = [f"[PAD{i}]".encode() for i in range(n_vocab)]
    scores = [-10000.0] * n_vocab
    toktypes = [types.UNUSED] * n_vocab
    for piece, i in model["vocab"].items():
        if i >= n_vocab:
            raise ValueError(f"tokenizer.json has id {i} for {piece!r}, beyond the model's vocab_size {n_vocab}")
        tokens[i] = piece.encode("utf-8")
        if _BYTE_PIECE.fullmatch(piece):
            scores[i], toktypes[i] = 0.0, types.BYTE
        else:
            scores[i], toktypes[i] = -float(first_merge.get(piece, len(merges))), types.NORMAL
    if (unk := model.get("unk_token")) in model["vocab"]:
        toktypes[model["vocab"][unk]] = types.UNKNOWN
    for added in spec.get("added_tokens", []):
        i = int(added["id"])
        tokens[i], scores[i] = added["content"].encode("utf-8"), -1000.0
        toktypes[i] = types.CONTROL if added.get("special") else types.USER_DEFINED
    writer = self.gguf_writer
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(toktypes)
    gguf.SpecialVocab(self.dir_model, n_vocab=n_vocab).add_to_gguf(writer)


def _gpt2_vocab(self: Any, gpt2_regex: bool) -> None:
    """The converter's byte-level BPE step; a pre-tokenizer it does not know by hash counts as GPT-2's when
    tokenizer.json's pre-tokenizer is exactly ByteLevel(use_regex=true), GPT-2's own regex."""
    import logging

    known = type(self).get_vocab_base_pre

    def get_vocab_base_pre(tokenizer: Any) -> str:
        try:
            return known(self, tokenizer)
        except NotImplementedError:
            if not gpt2_regex:
                raise
            logging.getLogger("phi3kit").info("phi3kit: pre-tokenizer ByteLevel(use_regex=true): 'gpt-2'")
            return "gpt-2"

    self.get_vocab_base_pre = get_vocab_base_pre
    self._set_vocab_gpt2()

