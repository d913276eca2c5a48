"""Proofs shared by the proof tests: each suite obligation is proved at most once per test session,
each in a process of its own (prove.proved_apart: in the pytest process Z3's verdict would depend
on the terms earlier tests built)."""
from __future__ import annotations

from typing import Callable

import pytest

from forkspec.specs.prove import ProofResult, proved_apart


@pytest.fixture(scope="session")
def proved() -> Callable[[list[str]], dict[str, ProofResult]]:
    """proved(names) -> {name: result} for suite obligations, proving only those not proved yet
    this session (several test modules check the same obligations)."""
    cache: dict[str, ProofResult] = {}

    def prove_names(names: list[str]) -> dict[str, ProofResult]:
        todo = [n for n in names if n not in cache]
        if todo:
            cache.update(proved_apart(todo))
        return {n: cache[n] for n in names}
    return prove_names
