"""PyTorch reference: the model as transformers runs it, the yardstick for parity and speed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from ..cache import Export, ExportCache
from ..config import GenerationConfig, LoadConfig
from ..sources import ModelSource
from .base import Backend, Log, Token, threaded_stream

_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


class TransformersBackend(Backend):
    name = "transformers"
    runtimes: ClassVar[tuple[str, ...]] = ("pytorch",)
    precisions: ClassVar[tuple[str, ...]] = tuple(_DTYPES)

    @classmethod
    def devices(cls, runtime: str) -> list[str]:
        import torch

        devs = ["CPU"]
        if torch.cuda.is_available():
            devs.append("CUDA")
        return devs

    @classmethod
    def export(cls, source: ModelSource, cfg: LoadConfig, cache: ExportCache, log: Log = print) -> Export:
        return Export(source.path, True, 0.0)  # PyTorch reads the checkpoint as it is

    def __init__(self, model_dir: Path, cfg: LoadConfig) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.device = "cuda" if cfg.device == "CUDA" else "cpu"
        self.model = AutoModelForCausalLM.from_pretrained(
            model_dir,
            dtype=getattr(torch, _DTYPES[cfg.precision]),
            trust_remote_code=cfg.trust_remote_code,
        ).to(self.device)
        self.model.eval()

    def stream(self, prompt_ids: list[int], gen: GenerationConfig, stop_ids: list[int]) -> Iterator[Token]:
        return hf_stream(self.model, self.device, prompt_ids, gen, stop_ids)


def hf_stream(
    model: Any, device: str, prompt_ids: list[int], gen: GenerationConfig, stop_ids: list[int]
) -> Iterator[Token]:
    """Stream ids out of any `generate()` with transformers' interface (PyTorch, optimum-intel)."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList
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

    class Cancel(StoppingCriteria):
        def __init__(self, streamer: Emit) -> None:
            self.streamer = streamer

        def __call__(self, input_ids: Any, scores: Any, **kw: Any) -> Any:
            return torch.full((input_ids.shape[0],), not self.streamer.go, dtype=torch.bool)

    def run(emit: Any) -> None:
        streamer = Emit(emit)
        kwargs: dict[str, Any] = dict(
            max_new_tokens=gen.max_new_tokens,
            do_sample=gen.do_sample,
            eos_token_id=None if gen.ignore_eos else stop_ids,  # None: no stop, and no logits masked
            pad_token_id=stop_ids[-1],
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([Cancel(streamer)]),
        )
        if gen.do_sample:
            kwargs.update(temperature=gen.temperature, top_p=gen.top_p, top_k=gen.top_k)
            if gen.seed is not None:
                torch.manual_seed(gen.seed)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        ids = torch.tensor([prompt_ids], device=device)
        with torch.inference_mode():
            model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)

    return threaded_stream(run)
