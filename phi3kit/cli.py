"""`phi3kit` command line: the same API the notebooks use."""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Sequence

from . import __version__, backends, bench
from .config import DEFAULT_MODEL, GenerationConfig, LoadConfig
from .errors import Phi3kitError
from .text import replace_undecodable, undecodable, utf8_text

DEBUG_ENV = "PHI3KIT_DEBUG"  # set to 1 (like --debug): errors the kit refuses keep their traceback


def eof_keys() -> str:
    """The keys that end input in this terminal (what quits `phi3kit chat`)."""
    return "Ctrl-Z then Enter" if os.name == "nt" else "Ctrl-D"


def safe_output() -> None:
    """Output that cannot fail on a character: a redirected stream in a legacy code page (cp1252...) is
    written as UTF-8 instead (Chinese or Persian answers would raise UnicodeEncodeError); a console that
    cannot show a character shows '?' instead of crashing."""
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "").replace("_", "")
        if encoding in ("utf8", "utf8sig") or not hasattr(stream, "reconfigure"):
            continue
        try:
            if stream.isatty():
                stream.reconfigure(errors="replace")
            else:
                stream.reconfigure(encoding="utf-8", errors="replace")
        except (OSError, ValueError):  # a closed or detached stream: nothing to change
            pass


def _model_args(p: argparse.ArgumentParser) -> None:
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

        from .safefs import storage_error

        raise storage_error(NotADirectoryError(errno.ENOTDIR, "not a folder", path), path,
                            f"{option} must name a folder (new or existing), not a file")
    return path


def _config(a: argparse.Namespace) -> LoadConfig:
    folder_arg(a.cache_dir, "--cache-dir")
    return LoadConfig(model=a.model, backend=a.backend, precision=a.precision, device=a.device, runtime=a.runtime,
                      cache_dir=a.cache_dir, group_size=a.group_size, ratio=a.ratio, prefer=a.prefer,
                      trust_remote_code=a.trust_remote_code, tuned=not a.untuned)


def cmd_export(a: argparse.Namespace) -> int:
    from .exporting import prepare

    _, exp = prepare(_config(a))
    print(f"{'reused' if exp.cached else 'built'} {exp.path} ({exp.seconds:.1f} s)")
    return 0


def cmd_generate(a: argparse.Namespace) -> int:
    from .generate import Session

    gen = _generation_config(a)  # checked before anything loads
    prompt = utf8_text(a.prompt, "The prompt")
    system = None if a.system is None else utf8_text(a.system, "--system")
    session = Session.load(_config(a), log=lambda m: print(m, file=sys.stderr))
    response = session.generate(prompt, system=system, config=gen)
    for chunk in response:
        print(chunk, end="", flush=True)
    print()
    if a.json:
        print(json.dumps(response.metrics.to_dict()), file=sys.stderr)
    else:
        print(response.metrics.summary(), file=sys.stderr)
    return 0


def cmd_models(a: argparse.Namespace) -> int:
    from .catalog import models

    frame = models()
    if a.model:
        from .catalog import lookup

        lookup(a.model)  # a name that is no alias: the error lists the aliases (an empty table said nothing)
        frame = frame[frame["alias"] == a.model]
    columns = ["alias", "backend", "precision", "devices", "ready_made", "context"] + (
        ["weights", "weights_date", "recipe", "source"] if a.all else [])
    print(frame[columns].to_string(index=False))
    if a.all and frame["note"].astype(bool).any():
        print("\n" + "\n".join(f"{w}: {n}" for w, n in zip(frame["ready_made"], frame["note"], strict=True) if n))
    print("\nRepo names come from the publishers' pages and were not checked against the hub when the catalog was "
          "written: a wrong one fails with 'not found on the hub'; prefer='export' builds it from the checkpoint.")
    return 0


def cmd_pack(a: argparse.Namespace) -> int:
    from .procs import env_command
    from .workshop import pack

    out = pack(a.model, a.routes, a.output_dir, revision=a.revision, log=lambda m: print(m, file=sys.stderr))
    print(f"pack: {out} (learners use it in place: {env_command('PHI3KIT_CACHE', str(out))}, then phi3kit ...; or "
          f"copy it into their cache: phi3kit unpack {out})")
    return 0


def cmd_unpack(a: argparse.Namespace) -> int:
    from .workshop import check, unpack

    if a.check:
        problems = check(a.pack)
        print("\n".join(problems) if problems else f"{a.pack}: every file is intact")
        return 1 if problems else 0
    done = unpack(a.pack, a.cache_dir)
    print(f"{len(done.copied)} entries copied, {len(done.present)} already there, into {done.cache}")
    print("Next: `phi3kit check` proves this machine's routes (known answers, the device that ran, drivers).")
    return 0


def cmd_tune(a: argparse.Namespace) -> int:
    from .generate import Session
    from .tuning import require_storable, tune

    if not a.dry_run:
        require_storable(a.cache_dir)  # before the load (an export can take minutes) and the measuring
    session = Session.load(_config(a), log=lambda m: print(m, file=sys.stderr))
    result = tune(session, objective=a.objective, runs=a.runs, prompt_tokens=a.prompt_tokens,
                  new_tokens=a.new_tokens, only=a.only.split(",") if a.only else None, save=not a.dry_run,
                  log=lambda m: print(m, file=sys.stderr, flush=True))
    print(result)
    if result.save_error:  # the table above is the measurement; it just could not be kept
        print(f"phi3kit: error: the choice above was measured but not stored: {result.save_error}", file=sys.stderr)
        return 1
    if result.saved:
        print(f"saved: {result.saved} (applied on the next load of this export on this device; tuned=False or "
              "--untuned runs the defaults)")
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
    """List the entries; `--verify` checks every byte (exit 1 if any entry is damaged), `--remove-damaged` deletes
    those so the next load rebuilds them."""
    from .cache import ExportCache

    if a.remove_damaged and not a.verify:
        raise Phi3kitError("--remove-damaged deletes what --verify finds damaged. Fix: phi3kit cache --verify "
                           "--remove-damaged")
    cache = ExportCache(a.cache_dir)
    print(f"cache: {cache.root}")
    for e in cache.entries():
        what = f"{e.get('backend', '?'):12} {e.get('precision', '?'):5} {e['size_mb']:>8} MB"
        flag = f"  CORRUPT, rebuilt on next use: {e['problem']}" if e["problem"] else ""
        print(f"  {what}  {e.get('model', '?')}  {e['path']}{flag}")
    if not a.verify:
        return 0
    print("checking every byte of every entry...", file=sys.stderr, flush=True)
    damaged = cache.verify_entries(remove_damaged=a.remove_damaged)
    for d in damaged:
        print(f"DAMAGED: {d.path}: {d.problem}" + ("  (deleted: the next load rebuilds it)" if d.removed else ""))
    if not damaged:
        print("every entry is intact")
    elif not a.remove_damaged:
        print(f"{len(damaged)} damaged entr{'y' if len(damaged) == 1 else 'ies'}: phi3kit cache --verify "
              "--remove-damaged deletes them so the next load rebuilds them")
    return 1 if damaged else 0


def cmd_doctor(a: argparse.Namespace) -> int:
    from .diagnostics import doctor

    r = doctor()
    print(r.to_json() if a.json else r)
    return 0


def cmd_run(a: argparse.Namespace) -> int:
    from .runner import coerce, find_notebook, localized, run_notebook

    target = a.notebook
    if target.endswith((".yaml", ".yml")) or a.grid:
        return _run_grid(a)
    find_notebook(target)
    if a.lang:
        target = str(localized(target, a.lang))
    raw = dict(a.parameter or [])
    result = run_notebook(target, a.output_dir, coerce(target, raw), html=not a.no_html,
                          overwrite=a.overwrite, timeout_s=a.timeout)
    print(f"executed notebook: {result.notebook}")
    if result.html:
        print(f"HTML handout:      {result.html}")
    return 0


def _run_grid(a: argparse.Namespace) -> int:
    """`phi3kit run grid.yaml` or `phi3kit run NOTEBOOK -g NAME V1,V2`: every combination, then one results table."""
    from .runner import Grid, coerce, find_notebook, load_grid, localized, run_grid

    if a.notebook.endswith((".yaml", ".yml")):
        base = load_grid(a.notebook)
        notebook, grid, fixed = base.notebook, dict(base.grid), dict(base.fixed)
    else:
        notebook, grid, fixed = find_notebook(a.notebook), {}, {}
    if a.lang:
        notebook = localized(notebook, a.lang)
    for name, value in a.parameter or []:  # the command line wins over the file
        grid.pop(name, None)
        fixed.update(coerce(notebook, {name: value}))
    for name, values in a.grid or []:
        fixed.pop(name, None)
        grid[name] = [coerce(notebook, {name: v.strip()})[name] for v in values.split(",")]
    result = run_grid(Grid(notebook, grid, fixed), a.output_dir, jobs=a.jobs, html=not a.no_html,
                      overwrite=a.overwrite, timeout_s=a.timeout)
    print(f"{len(result.runs) - len(result.failed)} of {len(result.runs)} runs succeeded")
    print(f"results table: {result.csv}")
    return 1 if result.failed else 0


def cmd_bench(a: argparse.Namespace) -> int:
    def log(message: str) -> None:
        if a.verbose or message.startswith("--- "):
            print(message, file=sys.stderr, flush=True)

    folder_arg(a.cache_dir, "--cache-dir")
    folder_arg(a.output_dir, "-o/--output-dir")
    report = bench.run(a.model, a.routes, a.prompt_lengths, a.max_new_tokens, a.runs, warmup=a.warmup,
                       quality=not a.no_quality, reference=a.reference, quality_tokens=a.quality_tokens,
                       agreement_prompts=a.agreement_prompts, agreement_tokens=a.agreement_tokens,
                       isolate=not a.in_process, bandwidth=a.bandwidth, cache_dir=a.cache_dir, log=log)
    print(report.table())
    csv_path, json_path = report.save(a.output_dir, a.name, overwrite=a.overwrite)
    print(f"CSV:  {csv_path}\nJSON: {json_path}")
    return 1 if any(r.status == "failed" for r in report.routes) else 0


def cmd_chat(a: argparse.Namespace) -> int:
    """A multi-turn chat in the terminal: Ctrl-C stops an answer, /reset clears, /exit or EOF quits."""
    from .conversation import Conversation
    from .generate import Session

    gen = _generation_config(a)  # checked before anything loads
    system = None if a.system is None else utf8_text(a.system, "--system")
    session = Session.load(_config(a), log=lambda m: print(m, file=sys.stderr))
    conv = Conversation(session, system, config=gen, context_length=a.context_length)
    print(f"Chatting with {session} (context window {conv.window} tokens). Ctrl-C stops an answer, "
          f"/reset clears the history, /exit or {eof_keys()} quits.", file=sys.stderr)
    if hasattr(sys.stdin, "reconfigure"):
        try:  # bytes that are not UTF-8 arrive as lone surrogates (replaced below), never as an exception
            sys.stdin.reconfigure(errors="surrogateescape")
        except (OSError, ValueError):
            pass
    while True:
        try:
            line = input("you> ")
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            print(f"\n(Ctrl-C stops an answer; /exit or {eof_keys()} quits.)", file=sys.stderr)
            continue
        except UnicodeDecodeError:  # a stream that cannot take surrogateescape: the line is lost, the chat is not
            print("(that message was not UTF-8 text and could not be read; please type it again)", file=sys.stderr)
            continue
        if undecodable(line):
            line = replace_undecodable(line)
            print("(your message held bytes that are not UTF-8; they are shown as \ufffd)", file=sys.stderr)
        if not line.strip():
            continue
        if line.strip() in ("/exit", "/quit"):
            return 0
        if line.strip() == "/reset":
            conv.reset()
            print("(history cleared)", flush=True)
            continue
        try:
            response = conv.say(line)
        except Phi3kitError as exc:  # e.g. one message longer than the context window: the chat goes on
            print(f"phi3kit: error: {exc}", file=sys.stderr)
            continue
        if response.trim_notice:
            print(f"({response.trim_notice} /reset starts afresh.)", file=sys.stderr, flush=True)
        print("model> ", end="", flush=True)
        try:
            for chunk in response:
                print(chunk, end="", flush=True)
        except KeyboardInterrupt:  # stop this answer, stay in the chat; the text so far stays in the history
            response.cancel()
            response.metrics.finish_reason = "cancelled"
            print(" [stopped]", end="")
        print(flush=True)
        print(response.metrics.summary(), file=sys.stderr, flush=True)


def _generation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--ignore-eos", action="store_true",
                   help="keep going through end-of-turn tokens up to --max-new-tokens (for timing runs)")


def _generation_config(a: argparse.Namespace) -> GenerationConfig:
    return GenerationConfig(max_new_tokens=a.max_new_tokens, do_sample=a.sample, temperature=a.temperature,
                            seed=a.seed, ignore_eos=a.ignore_eos)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="phi3kit", description=__doc__,
                                     epilog=f"Exit codes: 0 done; 1 a run that was tried and failed (or a pack "
                                            f"check that found damage); 2 input refused before anything ran. "
                                            f"--debug (or {DEBUG_ENV}=1) shows the traceback behind an error.")
    parser.add_argument("--version", action="version", version=f"phi3kit {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help=f"show the full traceback behind an error (also: {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("export", help="export a model for a backend into the cache")
    _model_args(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("generate", help="stream one answer and print its metrics")
    _model_args(p)
    p.add_argument("prompt")
    p.add_argument("--system", default=None)
    p.add_argument("--max-new-tokens", type=int, default=128)
    _generation_args(p)
    p.add_argument("--json", action="store_true", help="print metrics as JSON")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="chat in the terminal (multi-turn, history trimmed to the context window)")
    _model_args(p)
    p.add_argument("--system", default=None, help="system prompt, kept for the whole chat")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--context-length", type=int, default=None,
                   help="trim the history to this many tokens (default: the model's context window)")
    _generation_args(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("models", help="the Phi catalog: aliases, and the ready-made folders per backend and precision")
    p.add_argument("model", nargs="?", default=None, help="one alias only")
    p.add_argument("--all", action="store_true", help="also show each row's recipe and source page")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("pack", help="prepare a workshop pack: every file a room needs, in one folder")
    p.add_argument("--model", required=True, help="a catalog alias, hub id or folder")
    p.add_argument("--routes", required=True, help="comma separated backend[/runtime]:precision[@device], "
                   "e.g. openvino:int4,openvino:int4-cw@NPU,ortgenai:int4")
    p.add_argument("--revision", default=None)
    p.add_argument("-o", "--output-dir", required=True, help="the pack folder (new or empty, or an earlier pack)")
    p.set_defaults(func=cmd_pack)

    p = sub.add_parser("unpack", help="check a workshop pack and copy it into this machine's cache")
    p.add_argument("pack", help="the pack folder")
    p.add_argument("--cache-dir", default=None, help="where to (default: PHI3KIT_CACHE or the user cache dir)")
    p.add_argument("--check", action="store_true", help="only check every file against the pack, copy nothing")
    p.set_defaults(func=cmd_unpack)

    p = sub.add_parser("tune", help="time runtime settings for an export on this machine and keep the fastest")
    _model_args(p)
    p.add_argument("--objective", default="answer", choices=("answer", "decode", "ttft"),
                   help="answer: time to a whole answer (default); decode: tokens/s; ttft: time to first token")
    p.add_argument("--runs", type=int, default=3, help="timed runs per candidate (the default runs twice as many)")
    p.add_argument("--prompt-tokens", type=int, default=256)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--only", default=None, help="comma separated candidate names (default: all for the device)")
    p.add_argument("--dry-run", action="store_true", help="measure and show, store nothing")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("devices", help="list the devices each backend sees")
    p.set_defaults(func=cmd_devices)

    p = sub.add_parser("run", help="execute a notebook headless (papermill), or a parameter grid, with HTML handouts")
    p.add_argument("notebook", help="a notebook, or a grid file (.yaml: notebook, grid, fixed)")
    p.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="set a notebook parameter (unknown names are an error)")
    p.add_argument("-g", "--grid", nargs=2, action="append", metavar=("NAME", "V1,V2"),
                   help="run once per value (comma separated); several -g run every combination")
    p.add_argument("-j", "--jobs", type=int, default=1, help="grid runs at a time, each in its own kernel (default 1)")
    p.add_argument("-o", "--output-dir", default="out", help="where executed notebooks go (default: out/)")
    p.add_argument("--no-html", action="store_true", help="skip the HTML handout")
    p.add_argument("--overwrite", action="store_true", help="replace earlier results instead of numbering new ones")
    p.add_argument("--timeout", type=int, default=None, help="seconds a cell may run (default: no limit)")
    p.add_argument("--lang", help="run the notebook's translation: fr, zh, fa, id, ro (en: the English one), "
                                   "i.e. notebooks/<lang>/<name>.ipynb")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("bench", help="benchmark routes side by side: TTFT, tokens/s, memory, size, quality")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"hub id, local folder, or 'pocket' (default: {DEFAULT_MODEL})")
    p.add_argument("--routes", default=bench.DEFAULT_ROUTES,
                   help="comma separated backend[/runtime]:precision[@device]")
    p.add_argument("--prompt-lengths", default="128", help="prompt sizes in tokens, comma separated (default 128)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens per timed run, always all of them")
    p.add_argument("--runs", type=int, default=3, help="timed runs per prompt length (medians are reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    p.add_argument("--no-quality", action="store_true", help="skip perplexity and greedy agreement")
    p.add_argument("--reference", default="transformers:fp32", help="route greedy agreement is measured against")
    p.add_argument("--quality-tokens", type=int, default=1024, help="eval-text tokens for perplexity")
    p.add_argument("--agreement-prompts", type=int, default=8)
    p.add_argument("--agreement-tokens", type=int, default=32)
    p.add_argument("--in-process", action="store_true",
                   help="run every route in this process (faster to start; memory figures then overlap)")
    p.add_argument("--bandwidth", action="store_true", help="measure memory bandwidth and show the share of its limit")
    p.add_argument("--cache-dir", default=None, help="export cache (default: PHI3KIT_CACHE or the user cache dir)")
    p.add_argument("-o", "--output-dir", default="bench-results", help="where the CSV and JSON go")
    p.add_argument("--name", default="bench", help="file name stem (default: bench.csv / bench.json)")
    p.add_argument("--overwrite", action="store_true", help="replace earlier results instead of numbering new ones")
    p.add_argument("-v", "--verbose", action="store_true", help="show export and runtime output")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("doctor", help="report this machine's hardware, drivers and libraries, and a route to take")
    p.add_argument("--json", action="store_true", help="print the facts and the recommendation as JSON")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("cache", help="list cached exports; --verify checks every byte")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--verify", action="store_true",
                   help="check every file of every entry against its manifest's SHA-256 (a load checks sizes only); "
                        "exit 1 if any entry is damaged")
    p.add_argument("--remove-damaged", action="store_true",
                   help="with --verify: delete the damaged entries, so the next load rebuilds them")
    p.set_defaults(func=cmd_cache)

    from .checking.command import add_parser as add_check

    add_check(sub)
    for command in sub.choices.values():  # `phi3kit run nb.ipynb --debug` works as well as `phi3kit --debug run ...`
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help=f"show the full traceback behind an error (also: {DEBUG_ENV}=1)")
    return parser


def debugging(args: argparse.Namespace | None = None) -> bool:
    """--debug, or PHI3KIT_DEBUG set to anything but '', 0, false or no."""
    flag = os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")
    return flag or bool(getattr(args, "debug", False))


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a kit error is one paragraph on stderr and its exit code (2 refused, 1 failed)."""
    safe_output()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Phi3kitError as exc:
        if debugging(args):
            traceback.print_exc()
        print(f"phi3kit: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:  # Ctrl-C: what was written before stays (outputs go through safefs), no traceback
        if debugging(args):
            raise
        print("\nphi3kit: interrupted (Ctrl-C); earlier results are as they were.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
