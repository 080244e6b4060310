"""The kit's tokenizer: a model folder's `tokenizer.json` and chat template, read without transformers.

Ready-made models run in environments without PyTorch, and transformers' tokenizer module imports
torch whenever torch is installed (through its GGUF integration), so the kit reads the same files
with the `tokenizers` library and renders the chat template with jinja2 the way transformers does
(a sandboxed environment, trim_blocks and lstrip_blocks, `raise_exception`, a `tojson` that keeps
non-ASCII). tests/test_tokenizer.py checks that ids, text and templates equal transformers' own.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from .errors import ModelSourceError

SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")
# transformers' clean_up_tokenization: only applied when tokenizer_config.json asks for it.
_CLEANUP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
            (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


class SystemMessageIgnored(UserWarning):
    """The model's chat template wrote no system message: the model never reads it."""


_WARNED_SYSTEM: set[Path] = set()  # folders already warned about, once each per process


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json stores it: a string, or an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


class Tokenizer:
    """Encode, decode and template like a transformers fast tokenizer loaded from the same folder."""

    def __init__(self, folder: str | Path) -> None:
        from tokenizers import Tokenizer as RustTokenizer

        self.folder = Path(folder)
        path = self.folder / "tokenizer.json"
        if not path.is_file():
            raise ModelSourceError(f"{self.folder} has no tokenizer.json, which the kit reads the model's tokenizer "
                                   "from. Fix: point model= at the complete model folder (the hub repo or the "
                                   "export), with its tokenizer files.")
        self._tok = RustTokenizer.from_file(str(path))
        config_path = self.folder / "tokenizer_config.json"
        self.config: dict[str, Any] = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() \
            else {}
        self.special_tokens = {name: text for name in SPECIAL_NAMES
                               if (text := _token_text(self.config.get(name))) is not None}
        self.cleanup = bool(self.config.get("clean_up_tokenization_spaces", False))

    # --- what the kit uses ------------------------------------------------------------------------
    @cached_property
    def chat_template(self) -> str:
        """chat_template.jinja beside the tokenizer (transformers 5 writes it there), else tokenizer_config's."""
        jinja = self.folder / "chat_template.jinja"
        template = jinja.read_text(encoding="utf-8") if jinja.is_file() else self.config.get("chat_template")
        if isinstance(template, list):  # named templates: the default one
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        if not isinstance(template, str) or not template:
            raise ModelSourceError(f"{self.folder}: the tokenizer has no chat template (chat_template.jinja or "
                                   "tokenizer_config.json's chat_template). Phi-3 instruct models ship one: point "
                                   "model= at an instruct checkpoint or its export.")
        return template

    @cached_property
    def _template(self) -> Any:
        import jinja2
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise jinja2.exceptions.TemplateError(message)

        def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
                   sort_keys: bool = False) -> str:
            return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        return env.from_string(self.chat_template)

    def apply_chat_template(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = False,
                            tokenize: bool = True, **_: Any) -> str | list[int]:
        """The messages as the model's template writes them (text, or its ids with `tokenize`)."""
        text = self._template.render(messages=list(messages), tools=None, documents=None,
                                     add_generation_prompt=add_generation_prompt, **self.special_tokens)
        self._check_system(messages, text)
        return self.encode(text) if tokenize else text

    def _check_system(self, messages: Sequence[dict[str, str]], text: str) -> None:
        """Warn (once per folder) when the template left a system message out of the prompt it wrote.

        Phi-3's April 2024 template writes user and assistant turns only: a system prompt given to such a
        folder is silently dropped, and the answer reads as if it had been followed.
        """
        system = [m.get("content") or "" for m in messages if m.get("role") == "system"]
        if not any(s.strip() and s.strip() not in text for s in system) or self.folder in _WARNED_SYSTEM:
            return
        _WARNED_SYSTEM.add(self.folder)
        warnings.warn(
            f"{self.folder}: the system message is ignored by this model's chat template (it writes only user and "
            "assistant turns, as Phi-3's April 2024 template does), so the model never reads it. Fix: put the "
            "instruction in the first user turn, or use a folder with the July 2024 template (one that writes "
            "<|system|> turns).", SystemMessageIgnored, stacklevel=5)

    def encode(self, text: str) -> list[int]:
        """Ids of `text` as it stands: no BOS or EOS added (the chat template writes what the model needs)."""
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def __call__(self, text: str, add_special_tokens: bool = False, **_: Any) -> dict[str, list[int]]:
        """transformers' call shape, for code written against either tokenizer."""
        if add_special_tokens:
            return {"input_ids": list(self._tok.encode(text, add_special_tokens=True).ids)}
        return {"input_ids": self.encode(text)}

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        text = self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)
        if self.cleanup:
            for a, b in _CLEANUP:
                text = text.replace(a, b)
        return text

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    @property
    def eos_token_id(self) -> int | None:
        eos = self.special_tokens.get("eos_token")
        return self.token_to_id(eos) if eos else None

    def __len__(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def __repr__(self) -> str:
        return f"<phi3kit Tokenizer {self.folder.name}: {len(self)} tokens>"
