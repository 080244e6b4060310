"""Workshop packs: prepare one (`pack`), check it and copy it into a cache (`unpack`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def cmd_pack(a: argparse.Namespace) -> int:
    from ..procs import env_command
    from ..workshop import pack

    out = pack(a.model, a.routes, a.output_dir, revision=a.revision, log=lambda m: print(m, file=sys.stderr))
    print(f"pack: {out} (learners use it in place: {env_command('PHI3KIT_CACHE', str(out))}, then phi3kit ...; or "
          f"copy it into their cache: phi3kit unpack {out})")
    return 0


def add_pack(sub: Any) -> None:
    p = sub.add_parser("pack", help="prepare a workshop pack: every file a room needs, in one folder")
    p.add_argument("--model", required=True, help="a catalog alias, hub id or folder")
    p.add_argument("--routes", required=True, help="comma separated backend[/runtime]:precision[@device], "
                   "e.g. openvino:int4,openvino:int4-cw@NPU,ortgenai:int4")
    p.add_argument("--revision", default=None)
    p.add_argument("-o", "--output-dir", required=True, help="the pack folder (new or empty, or an earlier pack)")
    p.set_defaults(func=cmd_pack)


def cmd_unpack(a: argparse.Namespace) -> int:
    from ..workshop import check, unpack

    if a.check:
        problems = check(a.pack)
        print("\n".join(problems) if problems else f"{a.pack}: every file is intact")
        return 1 if problems else 0
    done = unpack(a.pack, a.cache_dir)
    print(f"{len(done.copied)} entries copied, {len(done.present)} already there, into {done.cache}")
    print("Next: `phi3kit check` proves this machine's routes (known answers, the device that ran, drivers).")
    return 0


def add_unpack(sub: Any) -> None:
    p = sub.add_parser("unpack", help="check a workshop pack and copy it into this machine's cache")
    p.add_argument("pack", help="the pack folder")
    p.add_argument("--cache-dir", default=None, help="where to (default: PHI3KIT_CACHE or the user cache dir)")
    p.add_argument("--check", action="store_true", help="only check every file against the pack, copy nothing")
    p.set_defaults(func=cmd_unpack)
