"""Fixtures of the notes service's tests, on top of dbrouter's."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from dbrouter import DatabaseRouter


@pytest.fixture
async def seeded_note(dbrouter: DatabaseRouter) -> str:
    """A note written, and committed, before the test runs."""
    async with dbrouter.session(commit=True) as session:
        await session.execute(text("INSERT INTO notes (text) VALUES ('seeded')"))
    return "seeded"
