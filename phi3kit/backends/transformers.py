"""PyTorch reference: the model as transformers runs it, the yardstick for parity and speed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from ..config import GenerationConfig, LoadConfig
from .base import Backend, CachedIds, Token
from .hf import hf_stream
from .longrope import patch_hf_longrope

_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


class TransformersBackend(Backend):
    name = "transformers"
    runtimes: ClassVar[tuple[str, ...]] = ("pytorch",)
    precisions: ClassVar[tuple[str, ...]] = tuple(_DTYPES)
    default_precision: ClassVar[str] = "fp32"
    reads_checkpoint: ClassVar[bool] = True  # PyTorch reads the checkpoint as it is
    converts_on_load: ClassVar[bool] = True  # ...and holds it at the route's dtype
    reuses_cache: bool = True  # keeps generate()'s DynamicCache between answers

    @classmethod
    def devices(cls, runtime: str) -> list[str]:
        import torch

        devs = ["CPU"]
        if torch.cuda.is_available():
            devs.append("CUDA")
        return devs

    def __init__(self, model_dir: Path, cfg: LoadConfig) -> None:
        """Public attribute: `model`, the transformers model."""
        import torch
        from transformers import AutoModelForCausalLM

        self.device = "cuda" if cfg.device == "CUDA" else "cpu"
        self.model = AutoModelForCausalLM.from_pretrained(
            model_dir,
            dtype=getattr(torch, _DTYPES[cfg.precision]),
            trust_remote_code=cfg.trust_remote_code,
        ).to(self.device)
        self.model.eval()
        patch_hf_longrope(self.model)  # transformers 5.4/5.5: the LongRoPE cache reset would run one token alone
        self.kv_element_bytes = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0}[cfg.precision or "fp32"]
        self.cached = CachedIds()

    logits_source = "PyTorch forward"

    def logits(self, ids: list[int]) -> Any:
        import torch

        with torch.inference_mode():
            return self.model(torch.tensor([ids], device=self.device)).logits[0].float().cpu().numpy()

    ran_on_source: ClassVar[str] = "the device of the model's weights (torch)"

    def ran_on(self) -> list[str] | None:
        return [str(next(self.model.parameters()).device)]

    def stream(self, prompt_ids: list[int], gen: GenerationConfig, stop_ids: list[int], *,
               reuse: bool = False) -> Iterator[Token]:
        return hf_stream(self.model, self.device, prompt_ids, gen, stop_ids, self.cached, reuse)

    def close(self) -> None:
        self.cached.forget()
