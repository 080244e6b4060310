"""Build Phi-3's real tokenizer, offline, from the vocabulary llama.cpp ships for its tokenizer tests.

    python tools/make_phi3_tokenizer.py /path/to/llama_cpp_python-0.3.36 [--out tests/data/phi3-tokenizer]

The argument is the extracted sdist of llama-cpp-python 0.3.36 (from PyPI:
`pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36`, then `tar xzf`; nothing is
built) or the `ggml-vocab-phi-3.gguf` inside it (`vendor/llama.cpp/models/`). The GGUF holds
Phi-3's 32064 vocabulary entries (piece, SentencePiece score, token type) and no weights; the
`.inp`/`.out` files beside it are llama.cpp's reference tokenizations, made with the Hugging Face
tokenizer of microsoft/Phi-3-mini-4k-instruct, and are copied as they are.

The GGUF is read with the `gguf` package llama.cpp vendors beside it (`vendor/llama.cpp/gguf-py`,
put on sys.path: nothing is installed); when that folder is not there, an installed `gguf`
package (PyPI) is used instead. It needs numpy (and pyyaml, which gguf-py imports).

What it writes is deterministic: rerunning it gives byte-identical files. See
tests/data/phi3-tokenizer/PROVENANCE.md for the recipe and the licences.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import sys
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "tests" / "data" / "phi3-tokenizer"
GGUF_IN_SDIST = Path("vendor/llama.cpp/models/ggml-vocab-phi-3.gguf")
REFERENCE_SEPARATOR = "\n__ggml_vocab_test__\n"  # llama.cpp tests/test-tokenizer-0.cpp

# llama.cpp token types (gguf.TokenType / llama_token_type).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# The current Phi-3-mini-instruct chat template (with the system role); the GGUF holds Phi-3's first one,
# which drops system messages, so it is not used.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
# Added tokens that swallow the whitespace after them (rstrip=True) in Phi-3's tokenizer.json and
# tokenizer_config.json: the role tags, <|end|>, the placeholders and </s>. Not stored in the GGUF.
PHI3_RSTRIP: frozenset[str] = frozenset(
    {"</s>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>"} | {f"<|placeholder{i}|>" for i in range(1, 7)}
)
# Phi-3-mini-4k-instruct's tokenizer_config.json, the fields a fast tokenizer uses.
PHI3_CONFIG = {
    "bos_token": "<s>",
    "eos_token": "<|endoftext|>",
    "unk_token": "<unk>",
    "pad_token": "<|endoftext|>",
    "add_bos_token": False,
    "add_eos_token": False,
    "legacy": False,
    "model_max_length": 4096,
    "padding_side": "left",
    "clean_up_tokenization_spaces": False,
}
_PAD = re.compile(r"\[PAD\d+\]")


@dataclass(frozen=True)
class GGUFVocab:
    tokens: list[str]
    scores: list[float]
    types: list[int]
    chat_template: str | None


def find_gguf(path: Path) -> Path:
    """The GGUF itself, or the one inside an extracted llama-cpp-python sdist."""
    if path.is_file():
        return path
    for candidate in (path / GGUF_IN_SDIST, path / "models" / GGUF_IN_SDIST.name):
        if candidate.is_file():
            return candidate
    raise SystemExit(f"no {GGUF_IN_SDIST.name} in {path}: pass the extracted sdist or the .gguf file")


def import_gguf(gguf_file: Path):  # type: ignore[no-untyped-def]
    """llama.cpp's own gguf-py beside the GGUF (vendor/llama.cpp/gguf-py), else an installed `gguf`."""
    vendored = gguf_file.resolve().parents[1] / "gguf-py"
    if (vendored / "gguf" / "__init__.py").is_file():
        sys.path.insert(0, str(vendored))
    try:
        import gguf
    except ImportError as exc:
        raise SystemExit(
            f"cannot import gguf: no {vendored} and no installed `gguf` package ({exc}); "
            "pass the extracted sdist, or pip install gguf into a throwaway venv"
        ) from exc
    return gguf


def read_gguf(gguf_file: Path) -> GGUFVocab:
    gguf = import_gguf(gguf_file)
    fields = gguf.GGUFReader(str(gguf_file)).fields

    def get(name: str):  # type: ignore[no-untyped-def]
        return fields[name].contents() if name in fields else None

    return GGUFVocab(
        tokens=list(get("tokenizer.ggml.tokens")),
        scores=[float(s) for s in get("tokenizer.ggml.scores")],
        types=[int(t) for t in get("tokenizer.ggml.token_type")],
        chat_template=get("tokenizer.chat_template"),
    )


def real_vocab_size(tokens: Sequence[str]) -> int:
    """Entries before llama.cpp's padding: its converter fills the model's vocab_size (32064) with
    `[PAD<id>]` placeholders that the Hugging Face tokenizer does not have."""
    n = len(tokens)
    while n and _PAD.fullmatch(tokens[n - 1]) and tokens[n - 1] == f"[PAD{n - 1}]":
        n -= 1
    return n


def spm_merges(pieces: Sequence[str], scores: Sequence[float], types: Sequence[int]) -> list[tuple[str, str]]:
    """BPE merges of a SentencePiece BPE vocab: for every normal piece, each split of it into two
    pieces of the vocab; by the piece's score, highest first, then by the ids of the two halves."""
    vocab = {p: i for i, p in enumerate(pieces)}
    ranked = []
    for piece, score, kind in zip(pieces, scores, types, strict=True):
        if kind != NORMAL:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                ranked.append((-score, vocab[left], vocab[right]))
    ranked.sort()
    return [(pieces[left], pieces[right]) for _, left, right in ranked]


def build_tokenizer(tokens: Sequence[str], scores: Sequence[float], types: Sequence[int],
                    rstrip: Collection[str] = PHI3_RSTRIP, chat_template: str = CHAT_TEMPLATE,
                    config: dict | None = None):  # type: ignore[no-untyped-def]
    """A transformers fast tokenizer equal to Phi-3's, from the GGUF's three vocab arrays.

    The SentencePiece pieces are the entries up to the last normal or byte piece (Phi-3: 32000): the
    BPE model's vocab (id = index; byte fallback, `<unk>` fused). Control (3) and user-defined (4)
    entries are added tokens (control ones special), at their own ids; `[PAD<id>]` placeholders at
    the end are dropped, so `len(tokenizer)` is Phi-3's 32011, not the model's padded 32064.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    n = real_vocab_size(tokens)
    tokens, scores, types = list(tokens[:n]), list(scores[:n]), list(types[:n])
    n_pieces = max(i for i, t in enumerate(types) if t in (NORMAL, BYTE)) + 1
    pieces = tokens[:n_pieces]
    if len(set(pieces)) != n_pieces:
        raise ValueError("duplicate pieces in the vocab")
    stray = [(i, tokens[i], t) for i, t in enumerate(types) if i >= n_pieces and t not in (CONTROL, USER_DEFINED)]
    if stray:
        raise ValueError(f"entries after the SentencePiece pieces must be control or user-defined: {stray[:3]}")
    unk = next(p for p, t in zip(pieces, types, strict=False) if p == "<unk>" or t == UNKNOWN)
    tok = Tokenizer(models.BPE(
        vocab={p: i for i, p in enumerate(pieces)},
        merges=spm_merges(pieces, scores[:n_pieces], types[:n_pieces]),
        unk_token=unk,
        fuse_unk=True,
        byte_fallback=True,
    ))  # fmt: skip
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([
        decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0),
    ])  # fmt: skip
    # One by one, in id order: each added token takes the next free id (pieces already in the vocab keep theirs).
    for i, (t, kind) in enumerate(zip(tokens, types, strict=True)):
        if kind in (CONTROL, USER_DEFINED):
            added = AddedToken(t, special=kind == CONTROL, normalized=False, rstrip=t in rstrip, lstrip=False,
                               single_word=False)
            tok.add_tokens([added])
            if tok.token_to_id(t) != i:
                raise ValueError(f"added token {t!r} got id {tok.token_to_id(t)}, not {i}: the ids have a gap")
    return PreTrainedTokenizerFast(tokenizer_object=tok, chat_template=chat_template,
                                   **(PHI3_CONFIG if config is None else config))


def parse_reference(inp: str, out: str) -> list[tuple[str, list[int]]]:
    """llama.cpp's test-tokenizer-0 files: inputs each followed by the separator line; one line of
    space-separated ids per input (empty for the empty string)."""
    texts = inp.split(REFERENCE_SEPARATOR)
    if texts[-1] != "":
        raise ValueError("the .inp file should end with the separator")
    texts = texts[:-1]
    lines = out.split("\n")
    if lines[-1] != "":
        raise ValueError("the .out file should end with a newline")
    lines = lines[:-1]
    if len(texts) != len(lines):
        raise ValueError(f"{len(texts)} inputs but {len(lines)} outputs")
    return [(t, [int(x) for x in line.split()]) for t, line in zip(texts, lines, strict=True)]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="extracted llama-cpp-python sdist, or ggml-vocab-phi-3.gguf")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    gguf_file = find_gguf(args.source)
    print(f"reading {gguf_file} (sha256 {sha256(gguf_file)})")
    vocab = read_gguf(gguf_file)
    n = real_vocab_size(vocab.tokens)
    print(f"  {len(vocab.tokens)} entries; {len(vocab.tokens) - n} trailing [PAD<id>] placeholders dropped")
    if vocab.chat_template:
        print("  the GGUF's chat template (Phi-3's first, no system role) is not used")
    tok = build_tokenizer(vocab.tokens, vocab.scores, vocab.types)
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    print(f"  tokenizer: {len(tok)} tokens, {len(merges)} merges (the model pads its vocab to {len(vocab.tokens)})")

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        (out / name).unlink(missing_ok=True)  # save_pretrained decides which it writes
    written = tok.save_pretrained(out)
    print(f"wrote {', '.join(sorted(Path(w).name for w in written if Path(w).is_file()))} to {out}")

    cases = parse_reference(*(Path(f"{gguf_file}.{ext}").read_text(encoding="utf-8") for ext in ("inp", "out")))
    for ext in ("inp", "out"):
        shutil.copyfile(f"{gguf_file}.{ext}", out / f"reference.{ext}")
    from transformers import AutoTokenizer

    fresh = AutoTokenizer.from_pretrained(out)
    wrong = [text for text, ids in cases if fresh(text, add_special_tokens=False)["input_ids"] != ids]
    print(f"copied reference.inp/.out: {len(cases) - len(wrong)} of {len(cases)} reference tokenizations reproduced")
    for text in wrong:
        print(f"  MISMATCH {text!r}")
    return 1 if wrong else 0


if __name__ == "__main__":
    raise SystemExit(main())
