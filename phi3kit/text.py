"""Text from outside the kit (the command line, a pipe): bytes that were not UTF-8, named and repaired.

Python keeps such bytes as lone surrogates (surrogateescape: argv on Linux and macOS, a pipe read that way); a
tokenizer, a JSON notebook or a terminal then fails on them with a TypeError or UnicodeEncodeError.
"""

from __future__ import annotations

from .errors import ParameterError


def undecodable(text: str) -> bool:
    """True when `text` holds bytes that were not UTF-8 (kept as lone surrogates)."""
    return any("\ud800" <= ch <= "\udfff" for ch in text)


def replace_undecodable(text: str) -> str:
    """`text` with each byte that was not UTF-8 (a lone surrogate) replaced by U+FFFD."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a surrogate that is no escaped byte
        return text.encode("utf-8", "replace").decode("utf-8")


def utf8_text(text: str, what: str) -> str:
    """`text` as given, or ParameterError naming `what` when it holds bytes that were not UTF-8."""
    if undecodable(text):
        raise ParameterError(
            f"{what} holds bytes that are not UTF-8 text ({replace_undecodable(text)!r}, the bad bytes shown as "
            "\ufffd). Fix: type it again, or save the text as UTF-8 and pass that; in PowerShell run "
            "[Console]::InputEncoding = [Text.Encoding]::UTF8 first.")
    return text
