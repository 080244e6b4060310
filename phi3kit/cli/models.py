"""Commands about exported models: export one, list the catalog, list or check the export cache."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import Phi3kitError
from .common import load_config, model_args


def cmd_export(a: argparse.Namespace) -> int:
    from ..exporting import prepare

    exp = prepare(load_config(a)).export
    print(f"{'reused' if exp.cached else 'built'} {exp.path} ({exp.seconds:.1f} s)")
    return 0


def add_export(sub: Any) -> None:
    p = sub.add_parser("export", help="export a model for a backend into the cache")
    model_args(p)
    p.set_defaults(func=cmd_export)


def cmd_models(a: argparse.Namespace) -> int:
    from ..catalog import models

    frame = models()
    if a.model:
        from ..catalog import lookup

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


def add_models(sub: Any) -> None:
    p = sub.add_parser("models", help="the Phi catalog: aliases, and the ready-made folders per backend and precision")
    p.add_argument("model", nargs="?", default=None, help="one alias only")
    p.add_argument("--all", action="store_true", help="also show each row's recipe and source page")
    p.set_defaults(func=cmd_models)


def cmd_cache(a: argparse.Namespace) -> int:
    """List the entries; `--verify` checks every byte (exit 1 if any entry is damaged), `--remove-damaged` deletes
    those so the next load rebuilds them."""
    from ..cache import ExportCache

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


def add_cache(sub: Any) -> None:
    p = sub.add_parser("cache", help="list cached exports; --verify checks every byte")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--verify", action="store_true",
                   help="check every file of every entry against its manifest's SHA-256 (a load checks sizes only); "
                        "exit 1 if any entry is damaged")
    p.add_argument("--remove-damaged", action="store_true",
                   help="with --verify: delete the damaged entries, so the next load rebuilds them")
    p.set_defaults(func=cmd_cache)
