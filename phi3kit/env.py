"""Every environment variable the kit reads, read here: their names, and one rule for a yes/no switch.

Other modules name a variable through these constants (in messages too) and read it with `text` or `switch`,
so a learner finds every PHI3KIT_* setting in one file. Libraries the kit drives read their own (HF_HOME,
HF_TOKEN...): the kit passes the environment on to its children unchanged (`environment`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

CACHE = "PHI3KIT_CACHE"  # the export cache folder (default: the platform's user cache folder)
DEBUG = "PHI3KIT_DEBUG"  # 1: errors the kit refuses keep their traceback (like --debug)
HEADLESS = "PHI3KIT_HEADLESS"  # set in the kernels the kit runs headless: no one can click a panel there
SKIP_PREFLIGHT = "PHI3KIT_SKIP_PREFLIGHT"  # 1: export even when the RAM and disk estimate says it will not fit
LLAMA_CPP = "PHI3KIT_LLAMA_CPP"  # a llama.cpp checkout, or an extracted llama-cpp-python sdist (the converter)
CPU_PROBE = "PHI3KIT_CPU_PROBE"  # set by the kit: the CPU probe's answer, handed down to its child processes
HF_HUB_OFFLINE = "HF_HUB_OFFLINE"  # huggingface_hub's own: set by `phi3kit check` so a model is never downloaded

_OFF = ("", "0", "false", "no", "off")


def text(name: str) -> str | None:
    """The variable's value, or None where it is unset or blank."""
    value = os.environ.get(name, "")
    return value if value.strip() else None


def switch(name: str) -> bool:
    """A yes/no setting: on unless unset, blank, 0, false, no or off (any case)."""
    return os.environ.get(name, "").strip().lower() not in _OFF


def environment() -> dict[str, str]:
    """A copy of this process's environment (what a child process starts from)."""
    return dict(os.environ)


def hand_down(name: str, value: str) -> None:
    """Set `name` for this process and every child it starts from now on."""
    os.environ[name] = value


@contextmanager
def set_within(name: str, value: str) -> Iterator[None]:
    """`name` is `value` inside the block, and as it was before after it."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before
