"""Shared fixtures: models made offline once per test run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def random_phi3(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Build (once per run) a tiny random Phi-3 of a variant: mini-4k, mini-128k, 3.5-mini, 4-mini."""
    from phi3kit.testing import make_random_phi3

    made: dict[str, Path] = {}

    def get(variant: str) -> Path:
        if variant not in made:
            made[variant] = make_random_phi3(variant, tmp_path_factory.mktemp(variant))
        return made[variant]

    return get


@pytest.fixture(scope="session")
def pocket_tokenizer():  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    from phi3kit import pocket

    return AutoTokenizer.from_pretrained(pocket.path())
