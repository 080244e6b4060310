"""What several commands share: the model options, the generation options, folders given on the command line."""

from __future__ import annotations

import argparse
import os

from .. import backends
from ..config import DEFAULT_MODEL, GenerationConfig, LoadConfig


def eof_keys() -> str:
    """The keys that end input in this terminal (what quits `phi3kit chat`)."""
    return "Ctrl-Z then Enter" if os.name == "nt" else "Ctrl-D"


def model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"hub id, local folder, or 'pocket' (default: {DEFAULT_MODEL})")
    p.add_argument("--backend", default="openvino", help=f"one of: {', '.join(backends.names())}")
    p.add_argument("--precision", default=None,
                   help="int4 | int8 | fp16 | fp32 (default: the backend's own, int4 where it quantizes, fp32 for "
                        "transformers)")
    p.add_argument("--device", default="CPU", help="CPU, GPU, NPU, AUTO... (what the runtime reports)")
    p.add_argument("--runtime", default=None, help="openvino: genai (default) | optimum")
    p.add_argument("--cache-dir", default=None, help="export cache (default: PHI3KIT_CACHE or the user cache dir)")
    p.add_argument("--group-size", type=int, default=None, help="int4 group size (OpenVINO default 128)")
    p.add_argument("--ratio", type=float, default=None, help="share of int4 layers (OpenVINO default 0.6)")
    p.add_argument("--prefer", default=None, choices=("ready-made", "export"),
                   help="ready-made: a folder its publisher converted, used as it is; export: the kit's own export "
                        "from the checkpoint (default: ready-made where the catalog has one)")
    p.add_argument("--trust-remote-code", action="store_true", help="run the model repo's own code (off by default)")
    p.add_argument("--untuned", action="store_true", help="ignore what `phi3kit tune` stored: the runtime defaults")


def folder_arg(path: str | None, option: str) -> str | None:
    """A folder given on the command line: a file in its place is refused before anything runs."""
    if path is not None and os.path.exists(path) and not os.path.isdir(path):
        import errno

        from ..safefs import storage_error

        raise storage_error(NotADirectoryError(errno.ENOTDIR, "not a folder", path), path,
                            f"{option} must name a folder (new or existing), not a file")
    return path


def load_config(a: argparse.Namespace) -> LoadConfig:
    folder_arg(a.cache_dir, "--cache-dir")
    return LoadConfig(model=a.model, backend=a.backend, precision=a.precision, device=a.device, runtime=a.runtime,
                      cache_dir=a.cache_dir, group_size=a.group_size, ratio=a.ratio, prefer=a.prefer,
                      trust_remote_code=a.trust_remote_code, tuned=not a.untuned)


def generation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--ignore-eos", action="store_true",
                   help="keep going through end-of-turn tokens up to --max-new-tokens (for timing runs)")


def generation_config(a: argparse.Namespace) -> GenerationConfig:
    return GenerationConfig(max_new_tokens=a.max_new_tokens, do_sample=a.sample, temperature=a.temperature,
                            seed=a.seed, ignore_eos=a.ignore_eos)
