"""Sessions and streaming responses: one loop for every backend.

A backend turns prompt ids into new ids; this module templates chat messages, checks
the context window, stops at `<|end|>`, turns ids into text without splitting a
multi-byte character, and records the metrics.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from .backends.base import Backend, Log, Token
from .cache import Export, ExportCache
from .config import DEFAULT_MODEL, GenerationConfig, LoadConfig
from .context import ROLES, Message, Said, context_window, fit_history, kv_bytes_per_token, memory_window, to_messages  # noqa: F401
from .context import trim_notice as _trim_notice
from .errors import CachedEntryError, Phi3kitError, last_line
from .exporting import prepare
from .metrics import Metrics, PeakMemory
from .safefs import is_inside
from .sources import ModelSource
from .tokenizer import Tokenizer
from .tuned import describe, stored, stored_path

END_TOKENS = ("<|end|>", "<|endoftext|>")


class IncrementalDecoder:
    """Text deltas from a growing id list, holding back a split multi-byte character.

    Byte-level tokens can cut a UTF-8 character in two; decoding then ends in U+FFFD
    until the next token completes it, so nothing is emitted until it does.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tok = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # ids before this are already emitted and stable
        self.read = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def put(self, token_id: int) -> str:
        self.ids.append(token_id)
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        """The rest, minus a character the last token left incomplete (max_new_tokens can cut one)."""
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        self.prefix = self.read = len(self.ids)
        return after[len(before) :].rstrip("\ufffd")


MAX_CHAR_TOKENS = 4  # byte tokens one character can take (UTF-8: at most 4 bytes)


class Response:
    """A streamed answer: iterate it for text chunks; `text` and `metrics` once it is done."""

    def __init__(self, session: Session, prompt_ids: list[int], gen: GenerationConfig, *, reuse: bool = False) -> None:
        """`reuse`: let a backend that keeps its KV cache read only what it does not hold of `prompt_ids` (chats);
        False (single prompts, benchmarks, tune) prefills the whole prompt."""
        self.session, self.prompt_ids, self.gen = session, prompt_ids, gen
        self.reuse = reuse and session.backend.reuses_cache
        self.token_ids: list[int] = []
        self.chunks: list[str] = []
        self.metrics = Metrics(prompt_tokens=len(prompt_ids), prefilled_tokens=len(prompt_ids), load_s=session.load_s,
                               source=session.origin, recipe=session.recipe, tuned=session.tuned)
        self._gen: Iterator[str] | None = None
        self._done = False
        self.error: BaseException | None = None  # what ended the answer when finish_reason is "error"
        self.trimmed_turns = 0  # set by Session.chat: oldest turns left out to fit the context window
        self.trimmed_now = 0  # of those, the ones this answer left out (an earlier answer's trim left out the rest)
        self.window = session.context_length  # the window this answer was fitted to
        self.window_why = ""  # what set that window, for the trim notice
        self.prompt_text: str | None = None  # set by Session.chat: the text prompt_ids stand for

    def __iter__(self) -> Iterator[str]:
        """Stream once; iterating again continues where a `break` left off, or replays when done."""
        if self._done:
            yield from list(self.chunks)
            return
        if self._gen is None:
            self._gen = self._run()
        yield from self._gen

    def _run(self) -> Iterator[str]:
        s, m = self.session, self.metrics
        decoder = IncrementalDecoder(s.tokenizer)
        stops = set(s.stop_ids)
        finish = "stop"
        stream: Iterator[Token] | None = None
        with PeakMemory() as mem:
            start = last = time.perf_counter()
            try:
                # The clock started before the backend rewinds or prefills: TTFT is what this answer really took.
                stream = (s.backend.stream(self.prompt_ids, self.gen, s.stop_ids, reuse=True) if self.reuse
                          else s.backend.stream(self.prompt_ids, self.gen, s.stop_ids))
                for tok, stamp in stream:
                    m.token_latencies_s.append(stamp - last)
                    last = stamp
                    if tok in stops and not self.gen.ignore_eos:
                        break
                    self.token_ids.append(tok)
                    if piece := decoder.put(tok):
                        self.chunks.append(piece)
                        yield piece
                else:
                    finish = "length" if len(m.token_latencies_s) >= self.gen.max_new_tokens else "stop"
            except GeneratorExit:
                finish = "cancelled"
                raise
            except Exception as exc:  # the runtime failed, before the first token or mid-stream: say so, re-raise
                finish, self.error = "error", exc
                raise
            finally:
                close = getattr(stream, "close", None)
                if close:
                    close()
                m.total_s = time.perf_counter() - start
                m.peak_rss_mb = mem.peak_mb
                m.new_tokens = len(m.token_latencies_s)
                m.ttft_s = m.token_latencies_s[0] if m.token_latencies_s else 0.0
                m.finish_reason = finish
                if self.reuse:
                    m.reused_tokens = s.backend.cached.reused
                    m.prefilled_tokens = m.prompt_tokens - m.reused_tokens
                self._done = True
        if tail := decoder.flush():
            self.chunks.append(tail)
            yield tail

    @property
    def failed(self) -> bool:
        return self.metrics.finish_reason == "error"

    @property
    def trim_notice(self) -> str:
        """What to tell the user when this answer left more older turns out ('' when it left none out: the answers
        after a trim start where it did, and saying it again at every answer would read as a new loss)."""
        if not self.trimmed_now:
            return ""
        return _trim_notice(self.trimmed_now, self.window, self.window_why, out=self.trimmed_turns)

    @property
    def said(self) -> Said | None:
        """This chat answer with its prompt, as the model read and wrote it: the next turn's prompt goes on from these
        ids. None for single prompts, a failed answer, or ids that do not decode to the answer's text.

        Special tokens the model wrote stay in the ids (the text leaves them out, as the stream did). The last few
        ids are left out where they only began a character (max_new_tokens or Stop cut it): the text has none of it,
        and the next prompt goes on from the text (the backend's cache is rewound over those few ids)."""
        if self.prompt_text is None or not self._done or self.failed:
            return None
        answer, ids = "".join(self.chunks), self.token_ids
        for keep in range(len(ids), max(len(ids) - MAX_CHAR_TOKENS, 0) - 1, -1):
            if self.session.tokenizer.decode(ids[:keep], skip_special_tokens=True) == answer:
                return Said(self.prompt_text + answer, tuple(self.prompt_ids) + tuple(ids[:keep]))
        return None

    def consume(self) -> Response:
        for _ in self:
            pass
        return self

    def cancel(self) -> None:
        """Stop generating; the text so far stays."""
        if self._gen is not None and not self._done:
            self._gen.close()
        self._done = True

    @property
    def text(self) -> str:
        self.consume()
        return "".join(self.chunks)

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        state = ("failed" if self.failed else "done") if self._done else "not consumed"
        return f"<Response {state}: {''.join(self.chunks)[:60]!r}>"


class Session:
    """A loaded model plus its tokenizer: `generate()` and `chat()` return Responses."""

    def __init__(self, cfg: LoadConfig, source: ModelSource, export: Export, backend: Backend,
                 tokenizer: Any, load_s: float, load_peak_rss_mb: float) -> None:
        self.config, self.source, self.export, self.backend = cfg, source, export, backend
        self.tokenizer, self.load_s, self.load_peak_rss_mb = tokenizer, load_s, load_peak_rss_mb
        self.stop_ids = stop_token_ids(tokenizer, export.path)
        self.tuning: dict[str, Any] | None = None  # set by load() when a tuned choice applies
        self.limits = backend.limits(source.context_length)  # what this route really serves
        self.context_length = self.limits.window
        self.chat_window, self.chat_window_why = self._chat_window()
        # Chats keep the backend's KV cache between answers where it can (False: every answer prefills it all).
        self.reuse_cache = cfg.reuse_cache

    def _chat_window(self) -> tuple[int, str]:
        """A chat's default window: the route's, capped where its KV cache would outgrow this machine's memory."""
        import psutil

        kv = kv_bytes_per_token(self.source.config, self.backend.kv_element_bytes)
        window = memory_window(self.limits, kv, psutil.virtual_memory().available)
        if window < self.limits.window:
            return window, (f"capped from {self.limits.why} so that its KV cache, {kv * window / 2**30:.1f} GB, fits "
                            "this machine's memory; context_length= raises it")
        return window, self.limits.why

    @classmethod
    def load(cls, cfg: LoadConfig, log: Log = print) -> Session:
        prepared = prepare(cfg, log)  # validates choices first: bad input fails in milliseconds
        source, export, cfg = prepared.source, prepared.export, prepared.config  # the precision settled there
        given = cfg.runtime_config
        tuning = None
        if cfg.tuned and (tuning := stored(cfg, export)) is not None and tuning["properties"]:
            # What `phi3kit tune` measured fastest here; settings given explicitly win.
            cfg = replace(cfg, runtime_config={**tuning["properties"], **cfg.runtime_config})
        try:
            with PeakMemory() as mem:
                start = time.perf_counter()
                backend = prepared.backend.open(export, cfg)
                tokenizer = Tokenizer(export.path)
                load_s = time.perf_counter() - start
            session = cls(cfg, source, export, backend, tokenizer, load_s, mem.peak_mb)  # reads generation_config
        except Exception as exc:
            if (failed := _cached_entry_error(exc, cfg, export, given, bool(tuning and tuning["properties"]))):
                raise failed from exc
            raise
        session.tuning = tuning if tuning and tuning["properties"] else None
        return session

    @property
    def tuned(self) -> str:
        """'' when the runtime runs its defaults; else the settings `phi3kit tune` chose, in words."""
        if not self.tuning:
            return ""
        numerics = " (changes numerics: greedy ids can differ from the untuned route)" \
            if self.tuning["numerics"] else ""
        return f"tuned: {describe(self.tuning['properties'])}{numerics}"

    @property
    def recipe(self) -> str:
        """How this model's weights were made (the kit's export recipe, or a ready-made folder's publisher's)."""
        return self.export.recipe

    @property
    def origin(self) -> str:
        """Where the loaded folder came from: a hub repo (and subfolder), a folder, or the kit's export of one."""
        return self.export.origin

    def render(self, messages: Sequence[Message]) -> str:
        """The prompt text the chat template makes of `messages`, ending where the model's answer starts."""
        return str(self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False))

    def encode(self, messages: Sequence[Message], after: Said | None = None) -> list[int]:
        """The prompt ids of `messages`. With `after` (a chat so far), a prompt whose text goes on from it keeps its
        ids (the answers' own) and tokenizes only the rest, so the backend's KV cache is extended, not rewound."""
        kept: list[int] = []
        text = self.render(messages)
        if after is not None and len(text) > len(after.text) and text.startswith(after.text):
            kept, text = list(after.ids), text[len(after.text):]
        return kept + list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def check_fits(self, n_prompt: int, max_new_tokens: int) -> None:
        """Refuse, before generating, what this route cannot serve (the error names the limit and the fix)."""
        self.limits.check(n_prompt, max_new_tokens)

    def generate(self, prompt: str | Sequence[Message], *, system: str | None = None,
                 config: GenerationConfig | None = None, **options: Any) -> Response:
        """Start an answer; nothing runs until the Response is iterated (or .text is read)."""
        gen = config or GenerationConfig(**options)
        ids = self.encode(to_messages(prompt, system))
        self.check_fits(len(ids), gen.max_new_tokens)
        return Response(self, ids, gen)

    def chat(self, history: Sequence[Message], *, system: str | None = None, config: GenerationConfig | None = None,
             context_length: int | None = None, kept_from: int = 0, after: Said | None = None,
             **options: Any) -> Response:
        """Answer the last user turn of `history`, dropping the oldest turns if it outgrows the context window.

        The system prompt and the last turn are always kept; `response.trimmed_turns` says how many
        turns were left out. `context_length` sets the window (None: `chat_window`, the route's own,
        capped on long-context models where its KV cache would not fit this machine's memory; never
        above the route's). Once the history outgrows the window, several oldest turns go at once (context.py,
        TRIM_TO_SHARE); `kept_from` is how many an earlier answer of the same chat left out, so the prompt keeps
        starting where that answer's did and the backend's KV cache (`reuse_cache`) serves it. `after` is that chat
        as the model read and wrote it (`Response.said`): a prompt that goes on from it keeps its ids.
        """
        gen = config or GenerationConfig(**options)
        if context_length is None:
            window, why = self.chat_window, self.chat_window_why
        else:
            window = context_window(self.context_length, context_length)
            why = "context_length" if window < self.context_length else self.limits.why
        fitted = fit_history(to_messages(history, system), lambda kept: self.encode(kept, after), window,
                             gen.max_new_tokens,
                             max_prompt=self.limits.max_prompt, kept_from=kept_from)
        self.check_fits(len(fitted.prompt_ids), gen.max_new_tokens)
        response = Response(self, fitted.prompt_ids, gen, reuse=self.reuse_cache)
        response.trimmed_turns, response.window, response.window_why = fitted.dropped_turns, window, why
        response.trimmed_now = fitted.trimmed_now
        response.prompt_text = self.render(fitted.messages)
        return response

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        c = self.config
        runtime = c.runtime or self.backend.default_runtime()
        route = f"{self.export.route}: {self.origin}" if self.origin else self.export.route
        tuned = f" | {self.tuned}" if self.tuned else ""
        from .catalog import for_origin

        known = for_origin(self.origin) if self.export.route == "ready-made" else None
        about = f" | {known[1].about}" if known else ""  # the weights' release, an unverified id: from the catalog
        return (f"<Session {c.model} {c.backend}/{runtime} {c.precision} on {c.device} | {route} | {self.recipe}"
                f"{about}{tuned}>")


def _cached_entry_error(exc: Exception, cfg: LoadConfig, export: Export, given: dict[str, Any],
                        tuned: bool) -> CachedEntryError | None:
    """The kit's message when a runtime fails to load a folder from the kit's cache, else None.

    The load checked the entry's file sizes only (hashing gigabytes on every load would take minutes), so bytes
    changed in place reach the runtime, which says only what it could not parse. One place for every backend.
    """
    if isinstance(exc, (Phi3kitError, MemoryError)):
        return None
    cache = ExportCache(cfg.cache_dir)
    entry = next((p for p in (export.path, export.tokenizer_dir) if p is not None and is_inside(p, cache.root)), None)
    if entry is None:
        return None
    settings = ""
    if tuned:
        settings += (f" It was loaded with the settings `phi3kit tune` stored in {stored_path(cfg, export)}: if it "
                     "loads with --untuned (tuned=False), delete that file, or run `phi3kit tune` again.")
    if given:
        settings += f" It was loaded with runtime_config={given!r}: try it without those settings too."
    return CachedEntryError(
        f"Loading {entry} from the kit's cache failed: {last_line(exc)}. Its files may be damaged (a load checks "
        f"their sizes, not their bytes). Fix: `phi3kit cache --verify --cache-dir \"{cache.root}\"` checks every "
        "byte; add --remove-damaged to delete the damaged entries, so the next load rebuilds them (in Python: "
        f"kit.ExportCache(cache_dir).verify_entries(remove_damaged=True)).{settings}", entry=entry)


def stop_token_ids(tokenizer: Any, model_dir: Path) -> list[int]:
    """`<|end|>` first (the end of a chat turn), then every other end-of-sequence id."""
    import json

    ids: list[int] = []
    lookup = getattr(tokenizer, "token_to_id", None)  # the kit's Tokenizer; transformers' has another name
    for t in END_TOKENS:
        i = lookup(t) if lookup else tokenizer.convert_tokens_to_ids(t)
        if isinstance(i, int) and i >= 0 and i != getattr(tokenizer, "unk_token_id", None):
            ids.append(i)
    gc = model_dir / "generation_config.json"
    if gc.is_file():
        eos = json.loads(gc.read_text(encoding="utf-8")).get("eos_token_id")
        ids += [e for e in ([eos] if isinstance(eos, int) else eos or []) if e not in ids]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def load(model: str = DEFAULT_MODEL, backend: str = "openvino", precision: str | None = None, device: str = "CPU",
         runtime: str | None = None, *, log: Log = print, **options: Any) -> Session:
    """Find the model (ready-made, cached or exported) and load it: the one call a notebook needs."""
    cfg = LoadConfig(model=model, backend=backend, precision=precision, device=device, runtime=runtime, **options)
    return Session.load(cfg, log)
