"""Fixtures of the fault suite: one private stack per scenario (see harness.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .harness import Stack, build_pg_template


@pytest.fixture(autouse=True)
def _isolated_queue() -> None:
    """Override the root conftest's autouse fixture of the same name.

    That one isolates tests sharing the app's Redis by key prefix; every
    scenario here has a Redis of its own, and must not touch the app's.
    """


@pytest.fixture(scope="session")
def pg_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated, stopped PostgreSQL cluster that each stack copies."""
    return build_pg_template(tmp_path_factory.mktemp("faults-pg"))


@pytest.fixture
def make_stack(tmp_path: Path, pg_template: Path) -> Iterator[Callable[..., Stack]]:
    """Factory for stacks; everything they started is killed at teardown, pass or fail."""
    stacks: list[Stack] = []

    def make(**kwargs: Any) -> Stack:
        stack = Stack(tmp_path / f"stack{len(stacks)}", pg_template, **kwargs)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.close()
