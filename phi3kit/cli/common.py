"""What several commands share: the model options, the generation options, folders given on the command line."""

from __future__ import annotations

import argparse
import os

from .. import backends
from ..config import DEFAULT_MODEL, LOAD_OPTIONS, GenerationConfig, LoadConfig


def eof_keys() -> str:
    """The keys that end input in this terminal (what quits `phi3kit chat`)."""
    return "Ctrl-Z then Enter" if os.name == "nt" else "Ctrl-D"


def model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"hub id, local folder, or 'pocket' (default: {DEFAULT_MODEL})")
    p.add_argument("--backend", default=LoadConfig().backend, help=f"one of: {', '.join(backends.names())}")
    p.add_argument("--precision", default=None,
                   help="int4 | int8 | fp16 | fp32 (default: the backend's own, int4 where it quantizes, fp32 for "
                        "transformers)")
    p.add_argument("--device", default=LoadConfig().device, help="CPU, GPU, NPU, AUTO... (what the runtime reports)")
    for name, option in LOAD_OPTIONS.items():
        if not option.flag:
            continue
        default = getattr(LoadConfig(), name)
        if isinstance(default, bool):  # a switch: the flag sets the opposite of LoadConfig's default
            p.add_argument(option.flag, dest=name, action="store_const", const=not default, default=default,
                           help=option.help)
        else:
            p.add_argument(option.flag, dest=name, type=option.parse, default=default, help=option.help,
                           choices=option.choices or None)


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
    given = {name: getattr(a, name) for name, option in LOAD_OPTIONS.items() if option.flag}
    return LoadConfig(model=a.model, backend=a.backend, precision=a.precision, device=a.device, **given)


def generation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--ignore-eos", action="store_true",
                   help="keep going through end-of-turn tokens up to --max-new-tokens (for timing runs)")


def generation_config(a: argparse.Namespace) -> GenerationConfig:
    return GenerationConfig(max_new_tokens=a.max_new_tokens, do_sample=a.sample, temperature=a.temperature,
                            seed=a.seed, ignore_eos=a.ignore_eos)
