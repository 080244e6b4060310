"""Commands that talk to a model: one answer (`generate`), or a chat in the terminal (`chat`)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..config import CHAT_MAX_NEW_TOKENS, MAX_NEW_TOKENS
from ..errors import Phi3kitError
from ..text import replace_undecodable, undecodable, utf8_text
from .common import eof_keys, generation_args, generation_config, load_config, model_args


def cmd_generate(a: argparse.Namespace) -> int:
    from ..generate import Session

    gen = generation_config(a)  # checked before anything loads
    prompt = utf8_text(a.prompt, "The prompt")
    system = None if a.system is None else utf8_text(a.system, "--system")
    session = Session.load(load_config(a), log=lambda m: print(m, file=sys.stderr))
    response = session.generate(prompt, system=system, config=gen)
    for chunk in response:
        print(chunk, end="", flush=True)
    print()
    if a.json:
        print(json.dumps(response.metrics.to_dict()), file=sys.stderr)
    else:
        print(response.metrics.summary(), file=sys.stderr)
    return 0


def add_generate(sub: Any) -> None:
    p = sub.add_parser("generate", help="stream one answer and print its metrics")
    model_args(p)
    p.add_argument("prompt")
    p.add_argument("--system", default=None)
    p.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS)
    generation_args(p)
    p.add_argument("--json", action="store_true", help="print metrics as JSON")
    p.set_defaults(func=cmd_generate)


def cmd_chat(a: argparse.Namespace) -> int:
    """A multi-turn chat in the terminal: Ctrl-C stops an answer, /reset clears, /exit or EOF quits."""
    from ..conversation import Conversation
    from ..generate import Session

    gen = generation_config(a)  # checked before anything loads
    system = None if a.system is None else utf8_text(a.system, "--system")
    session = Session.load(load_config(a), log=lambda m: print(m, file=sys.stderr))
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


def add_chat(sub: Any) -> None:
    p = sub.add_parser("chat", help="chat in the terminal (multi-turn, history trimmed to the context window)")
    model_args(p)
    p.add_argument("--system", default=None, help="system prompt, kept for the whole chat")
    p.add_argument("--max-new-tokens", type=int, default=CHAT_MAX_NEW_TOKENS)
    p.add_argument("--context-length", type=int, default=None,
                   help="trim the history to this many tokens (default: the model's context window)")
    generation_args(p)
    p.set_defaults(func=cmd_chat)
