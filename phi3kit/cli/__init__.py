"""`phi3kit` command line: the same API the notebooks use."""

# The core: the parser, the error handling and the order of the commands. Each command lives with its group
# (models, talk, workshop, measure, machine, notebooks): a function `cmd_<name>` that runs it and `add_<name>`
# that adds its subparser. A new command is those two functions (in a group's module or a new one) and one line
# in COMMANDS below; an option of an existing command is one line in its `add_<name>`.

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from .. import __version__, env
from ..errors import Phi3kitError
from . import check, machine, measure, models, notebooks, talk, workshop
from .common import eof_keys

DEBUG_ENV = env.DEBUG  # set to 1 (like --debug): errors the kit refuses keep their traceback
DESCRIPTION = __doc__

# Every subcommand, in the order `phi3kit --help` lists them.
COMMANDS: list[Callable[[Any], None]] = [
    models.add_export, talk.add_generate, talk.add_chat, models.add_models, workshop.add_pack, workshop.add_unpack,
    measure.add_tune, machine.add_devices, notebooks.add_run, measure.add_bench, machine.add_doctor,
    check.add_check, models.add_cache,
]

__all__ = ["COMMANDS", "DEBUG_ENV", "INTERRUPTED", "build_parser", "debugging", "eof_keys", "main", "run",
           "safe_output"]


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="phi3kit", description=DESCRIPTION,
                                     epilog=f"Exit codes: 0 done; 1 a run that was tried and failed (or a pack "
                                            f"check that found damage); 2 input refused before anything ran. "
                                            f"--debug (or {DEBUG_ENV}=1) shows the traceback behind an error.")
    parser.add_argument("--version", action="version", version=f"phi3kit {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help=f"show the full traceback behind an error (also: {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    for command in sub.choices.values():  # `phi3kit run nb.ipynb --debug` works as well as `phi3kit --debug run ...`
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help=f"show the full traceback behind an error (also: {DEBUG_ENV}=1)")
    return parser


def debugging(args: argparse.Namespace | None = None) -> bool:
    """--debug, or PHI3KIT_DEBUG set to anything but '', 0, false or no."""
    flag = env.switch(DEBUG_ENV)
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
        return INTERRUPTED


INTERRUPTED = 130  # the exit code of a program stopped by Ctrl-C (128 + SIGINT)


def run() -> None:
    """The `phi3kit` program (and `python -m phi3kit`): main(), then exit with its code.

    After Ctrl-C the process leaves at once, once its output is flushed: an interrupt lands anywhere, and what it
    cut in half (an event loop being built, a coroutine never awaited, a worker thread waiting on a kernel that
    is gone) would otherwise print after the kit's last line or hold the exit. Files were settled before main()
    returned; a kernel or exporter it started is killed (runner/kernel.py, procs.py).
    """
    code = main()
    if code == INTERRUPTED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
