"""The Phi catalog: model aliases, their checkpoints, and the ready-made folders publishers put on the hub.

The rows live in data/catalog.yaml with the page each was taken from; this module reads them and
answers two questions: what does an alias mean, and is there a ready-made folder for this backend,
precision and device.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from .devices import device_family
from .errors import UnknownChoiceError

CATALOG_FILE = Path(__file__).resolve().parent / "data" / "catalog.yaml"
PREFER = ("ready-made", "export")


@dataclass(frozen=True)
class ReadyMade:
    """A folder someone already converted: a hub repo (and subfolder), or one shipped inside the kit."""

    backend: str
    precision: str
    devices: tuple[str, ...]
    recipe: str
    source: str
    repo: str | None = None
    subfolder: str | None = None
    shipped: str | None = None  # a folder of phi3kit/pocket/ready/
    weights: str = ""  # which release of the model's weights the folder holds ('' when its publisher does not say)
    weights_date: str = ""  # YYYY-MM of that release
    verified: bool = True  # False: the repo id was not found on any public page (`note` says so)
    note: str = ""
    not_for: str = ""  # a device the folder does not serve, and why

    @property
    def about(self) -> str:
        """What a user comparing routes should know beyond the recipe: the weights' release, an unverified id."""
        parts = [f"weights: {self.weights}" if self.weights else "weights: release not stated by its publisher"]
        if not self.verified:
            parts.append(f"unverified id: {self.note}" if self.note else "unverified id")
        return "; ".join(parts)

    @property
    def where(self) -> str:
        if self.shipped:
            return f"shipped with the kit (pocket/ready/{self.shipped})"
        return f"{self.repo}/{self.subfolder}" if self.subfolder else str(self.repo)

    def describe(self, alias: str) -> str:
        return (f"catalog row {alias} / {self.backend} {self.precision} for {', '.join(self.devices)}: {self.where} "
                f"(source: {self.source})")


@dataclass(frozen=True)
class CatalogModel:
    alias: str
    checkpoint: str
    context_length: int
    parameters: float
    download_gb: float
    source: str
    ready_made: tuple[ReadyMade, ...]
    sliding_window: int | None = None  # the checkpoint's attention window, where it binds inside the context
    sliding_window_source: str = ""

    def ready_made_for(self, backend: str, precision: str, device: str) -> ReadyMade | None:
        """The row for this backend, precision and device, or None when nobody publishes one."""
        family = device_family(device)
        return next((r for r in self.ready_made
                     if r.backend == backend and r.precision == precision and family in r.devices), None)

    def ready_made_choices(self, backend: str) -> list[str]:
        return [f"{r.precision} on {'/'.join(r.devices)}" for r in self.ready_made if r.backend == backend]


def _row(data: dict[str, Any]) -> ReadyMade:
    return ReadyMade(backend=data["backend"], precision=data["precision"], devices=tuple(data["devices"]),
                     recipe=data.get("recipe", ""), source=data.get("source", ""), repo=data.get("repo"),
                     subfolder=data.get("subfolder"), shipped=data.get("shipped"), weights=data.get("weights", ""),
                     weights_date=str(data.get("weights_date", "")), verified=bool(data.get("verified", True)),
                     note=data.get("note", ""), not_for=data.get("not_for", ""))


@lru_cache(maxsize=1)
def catalog() -> dict[str, CatalogModel]:
    """Every alias and its model, read once from data/catalog.yaml."""
    import yaml

    data = yaml.safe_load(CATALOG_FILE.read_text(encoding="utf-8"))
    return {alias: CatalogModel(alias=alias, checkpoint=m["checkpoint"], context_length=int(m["context_length"]),
                                parameters=float(m["parameters"]), download_gb=float(m["download_gb"]),
                                source=m["source"], ready_made=tuple(_row(r) for r in m.get("ready_made", [])),
                                sliding_window=int(m["sliding_window"]) if m.get("sliding_window") else None,
                                sliding_window_source=m.get("sliding_window_source", ""))
            for alias, m in data["models"].items()}


def aliases() -> list[str]:
    return list(catalog())


def lookup(alias: str) -> CatalogModel:
    """The model behind an alias; a name that is none is an error listing the aliases (never a hub download)."""
    models = catalog()
    if alias not in models:
        raise UnknownChoiceError(
            "model alias", alias, models,
            hint="A hub id is written organisation/name (e.g. microsoft/Phi-3-mini-4k-instruct); a folder must "
                 "exist. `phi3kit models` lists the catalog.")
    return models[alias]


def for_repo(repo: str, subfolder: str | None = None) -> tuple[CatalogModel, ReadyMade] | None:
    """The catalog row a hub repo (and subfolder) is, when it is one: a ready-made folder by its hub id."""
    for model in catalog().values():
        for row in model.ready_made:
            if row.repo == repo and (row.subfolder or None) == (subfolder or None):
                return model, row
    return None


def for_origin(origin: str) -> tuple[CatalogModel, ReadyMade] | None:
    """The catalog row a loaded ready-made folder came from, by its origin ('repo' or 'repo/subfolder'), or None."""
    from .hub import split_hub_id

    return for_repo(*split_hub_id(origin)) if origin else None


def for_checkpoint(repo: str) -> CatalogModel | None:
    return next((m for m in catalog().values() if m.checkpoint == repo), None)


def models() -> Any:
    """The catalog as a table: one row per alias and route (a ready-made folder, or an export from the checkpoint)."""
    import pandas as pd

    rows = []
    for m in catalog().values():
        for r in m.ready_made:
            # `phi3kit models` prints ready_made: an id nobody has seen on a public page says so there.
            where = r.where if r.verified else f"{r.where} (unverified id)"
            rows.append({"alias": m.alias, "backend": r.backend, "precision": r.precision,
                         "devices": ", ".join(r.devices), "ready_made": where, "recipe": r.recipe,
                         "context": m.context_length, "checkpoint": m.checkpoint, "source": r.source,
                         "weights": r.weights or "not stated", "weights_date": r.weights_date or "-",
                         "verified": r.verified, "note": r.note, "not_for": r.not_for})
        rows.append({"alias": m.alias, "backend": "any", "precision": "any", "devices": "any",
                     "ready_made": "- (export from the checkpoint: prefer='export')",
                     "recipe": "the kit's: the seed's int4, or the precision asked for", "context": m.context_length,
                     "checkpoint": m.checkpoint, "source": m.source, "weights": "the checkpoint's current ones",
                     "weights_date": "-", "verified": True, "note": "", "not_for": ""})
    return pd.DataFrame(rows)
