"""Streaming from transformers' `generate()` (PyTorch, optimum-intel), and keeping its KV cache across a chat.

Shared by the backends that run a model through transformers' generation loop: the PyTorch reference keeps the
DynamicCache that generate() hands back; optimum-intel's stateful OpenVINO model keeps its own state (cut to the
common prefix where a new prompt diverges).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..config import GenerationConfig
from .base import CachedIds, Token, cancel_criterion, threaded_stream


def hf_stream(
    model: Any, device: str, prompt_ids: list[int], gen: GenerationConfig, stop_ids: list[int],
    cached: CachedIds | None = None, reuse: bool = False, cut_state: Any = None,
) -> Iterator[Token]:
    """Stream ids out of any `generate()` with transformers' interface (PyTorch, optimum-intel).

    With `cached`, the DynamicCache that generate() hands back (PyTorch), or a marker of the stateful model's state
    (optimum-intel), is kept in `cached.state` with the ids it holds; `reuse=True` crops it to the prompt's common
    prefix and lets generate() prefill the rest. `cut_state(model, keep)` cuts a stateful model's state (the
    runtime's own code, from its backend package); without it a state that would need cutting starts afresh.
    """
    import torch
    from transformers import StoppingCriteriaList
    from transformers.generation.streamers import BaseStreamer

    class Emit(BaseStreamer):
        def __init__(self, emit: Any) -> None:
            self.emit, self.prompt_seen, self.go = emit, False, True

        def put(self, value: Any) -> None:
            if not self.prompt_seen:  # the first call carries the prompt
                self.prompt_seen = True
                return
            self.go = self.emit(value.reshape(-1).tolist())

        def end(self) -> None:
            pass

    Cancel = cancel_criterion()

    def run(emit: Any) -> None:
        streamer = Emit(emit)
        kwargs: dict[str, Any] = dict(
            max_new_tokens=gen.max_new_tokens,
            do_sample=gen.do_sample,
            eos_token_id=None if gen.ignore_eos else stop_ids,  # None: no stop, and no logits masked
            pad_token_id=stop_ids[-1],
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([Cancel(lambda: not streamer.go)]),
        )
        if gen.do_sample:
            kwargs.update(temperature=gen.temperature, top_p=gen.top_p, top_k=gen.top_k)
            if gen.seed is not None:
                torch.manual_seed(gen.seed)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        ids = torch.tensor([prompt_ids], device=device)
        if cached is not None:
            kwargs.update(return_dict_in_generate=True, past_key_values=_hf_past(cached, prompt_ids, reuse))
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
        if cached is not None:  # the cache generate() ends with (a LongRoPE model may have replaced ours)
            past = out.past_key_values
            held = model._past_length if _stateful(model) else past.get_seq_length()
            kept = _KeptState(model, cut_state) if _stateful(model) else past
            cached.ids, cached.state = out.sequences[0].tolist()[:held], kept

    return threaded_stream(run)


def _stateful(model: Any) -> bool:
    """optimum-intel's stateful OVModelForCausalLM: its KV cache lives inside the compiled model's state."""
    return bool(getattr(model, "stateful", False)) and hasattr(model, "_past_length")


class _KeptState(tuple):  # type: ignore[type-arg]
    """What tells a stateful optimum-intel model's generate() to go on from its state instead of resetting it: a
    true value (optimum's own marker is `((),)`) that transformers 5 can ask for its length."""

    is_compileable = False

    def __new__(cls, model: Any, cut: Any = None) -> _KeptState:
        kept = super().__new__(cls, ((),))
        kept.model, kept.cut = model, cut
        return kept

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return int(self.model._past_length)

    def trim(self, keep: int) -> bool:
        """Cut the model's state to its first `keep` positions, with the runtime's own cutter (False: it cannot)."""
        if self.cut is None or not self.cut(self.model, keep):
            return False
        self.model._past_length = keep
        return True


def _hf_past(cached: CachedIds, prompt_ids: list[int], reuse: bool) -> Any:
    """The cache to hand generate(): the kept DynamicCache cropped to the common prefix, a stateful model's own
    state cut to it, or None (a fresh one).

    Until generate() returns, `cached` says the cache holds nothing: a failed or interrupted answer leaves no
    claim about a cache that generate() may have half-filled.
    """
    past = cached.state
    if isinstance(past, _KeptState):
        known = reuse and past.get_seq_length() == len(cached.ids)
        keep = cached.keep(prompt_ids) if known else 0
        if 0 < keep < len(cached.ids) and not past.trim(keep):
            keep = 0
        cached.ids, cached.state, cached.reused = [], None, keep
        return past if keep else None
    rewind = past is not None and hasattr(past, "crop") and _croppable(past)
    keep = cached.keep(prompt_ids, can_rewind=rewind) if reuse and past is not None else 0
    cached.ids, cached.state, cached.reused = [], None, keep
    if not keep:
        return None
    if keep < past.get_seq_length():
        past.crop(keep)
    return past


def _croppable(past: Any) -> bool:
    """Whether a DynamicCache can be cut back: a sliding-window layer can until it has seen a window's worth of
    tokens (then it has dropped the oldest, and transformers refuses the crop: the chat starts afresh)."""
    layers = getattr(past, "layers", None)
    if layers is None:
        return not any(getattr(past, "is_sliding", []))
    return all(not getattr(layer, "is_sliding", False) or layer.get_seq_length() < getattr(layer, "sliding_window", 0)
               for layer in layers)
