"""`phi3kit` command line: the same API the notebooks use."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from . import backends
from .config import DEFAULT_MODEL, LoadConfig
from .errors import Phi3kitError


def _model_args(p: argparse.ArgumentParser, default_model: str = "pocket") -> None:
    p.add_argument("--model", default=default_model,
                   help=f"hub id, local folder, or 'pocket' (default: {default_model}; real model: {DEFAULT_MODEL})")
    p.add_argument("--backend", default="openvino", help=f"one of: {', '.join(backends.names())}")
    p.add_argument("--precision", default="int4", help="int4 | int8 | fp16 | fp32 (backend-dependent)")
    p.add_argument("--device", default="CPU", help="CPU, GPU, NPU, AUTO... (what the runtime reports)")
    p.add_argument("--runtime", default=None, help="openvino: genai (default) | optimum")
    p.add_argument("--cache-dir", default=None, help="export cache (default: PHI3KIT_CACHE or the user cache dir)")
    p.add_argument("--group-size", type=int, default=None, help="int4 group size (OpenVINO default 128)")
    p.add_argument("--ratio", type=float, default=None, help="share of int4 layers (OpenVINO default 0.6)")
    p.add_argument("--trust-remote-code", action="store_true", help="run the model repo's own code (off by default)")


def _config(a: argparse.Namespace) -> LoadConfig:
    return LoadConfig(model=a.model, backend=a.backend, precision=a.precision, device=a.device, runtime=a.runtime,
                      cache_dir=a.cache_dir, group_size=a.group_size, ratio=a.ratio,
                      trust_remote_code=a.trust_remote_code)


def cmd_export(a: argparse.Namespace) -> int:
    from .export import prepare

    _, exp = prepare(_config(a))
    print(f"{'reused' if exp.cached else 'built'} {exp.path} ({exp.seconds:.1f} s)")
    return 0


def cmd_generate(a: argparse.Namespace) -> int:
    from .config import GenerationConfig
    from .generate import Session

    gen = GenerationConfig(max_new_tokens=a.max_new_tokens, do_sample=a.sample, temperature=a.temperature,
                           seed=a.seed)  # checked before anything loads
    session = Session.load(_config(a), log=lambda m: print(m, file=sys.stderr))
    response = session.generate(a.prompt, system=a.system, config=gen)
    for chunk in response:
        print(chunk, end="", flush=True)
    print()
    if a.json:
        print(json.dumps(response.metrics.to_dict()), file=sys.stderr)
    else:
        print(response.metrics.summary(), file=sys.stderr)
    return 0


def cmd_devices(a: argparse.Namespace) -> int:
    for name in backends.names():
        b = backends.get(name)
        for runtime in b.runtimes:
            try:
                devs = ", ".join(b.devices(runtime))
            except Phi3kitError as exc:
                devs = f"unavailable ({exc})"
            print(f"{name:13} {runtime:9} {devs}")
    return 0


def cmd_cache(a: argparse.Namespace) -> int:
    from .cache import ExportCache

    cache = ExportCache(a.cache_dir)
    print(f"cache: {cache.root}")
    for e in cache.entries():
        what = f"{e.get('backend', '?'):12} {e.get('precision', '?'):5} {e['size_mb']:>8} MB"
        print(f"  {what}  {e['model']}  {e['path']}")
    return 0


def cmd_doctor(a: argparse.Namespace) -> int:
    from .doctor import doctor

    r = doctor()
    print(r.to_json() if a.json else r)
    return 0


def cmd_run(a: argparse.Namespace) -> int:
    from .runner import coerce, run_notebook

    raw = dict(a.parameter or [])
    result = run_notebook(a.notebook, a.output_dir, coerce(a.notebook, raw), html=not a.no_html,
                          overwrite=a.overwrite)
    print(f"executed notebook: {result.notebook}")
    if result.html:
        print(f"HTML handout:      {result.html}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="phi3kit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("export", help="export a model for a backend into the cache")
    _model_args(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("generate", help="stream one answer and print its metrics")
    _model_args(p)
    p.add_argument("prompt")
    p.add_argument("--system", default=None)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print metrics as JSON")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("devices", help="list the devices each backend sees")
    p.set_defaults(func=cmd_devices)

    p = sub.add_parser("run", help="execute a notebook headless (papermill) and write an HTML handout")
    p.add_argument("notebook")
    p.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="set a notebook parameter (unknown names are an error)")
    p.add_argument("-o", "--output-dir", default="out", help="where executed notebooks go (default: out/)")
    p.add_argument("--no-html", action="store_true", help="skip the HTML handout")
    p.add_argument("--overwrite", action="store_true", help="replace earlier results instead of numbering new ones")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("doctor", help="report this machine's hardware, drivers and libraries, and a route to take")
    p.add_argument("--json", action="store_true", help="print the facts and the recommendation as JSON")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("cache", help="list cached exports")
    p.add_argument("--cache-dir", default=None)
    p.set_defaults(func=cmd_cache)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Phi3kitError as exc:
        print(f"phi3kit: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
