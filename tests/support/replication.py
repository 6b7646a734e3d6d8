"""A primary with a streaming hot standby, for the replica tests.

The pair is started once per run (``primary_and_standby``) and shared; ``replication``
hands it to one test at a time, streaming and caught up, and makes it so again after the
test, which may pause replay or stop either server on purpose. A test module gets these
fixtures by importing ``primary_and_standby_fixture`` and ``replication_fixture`` (and
listing them in its ``__all__``, so that the import reads as used).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from dbrouter.registry import DatabaseRegistry
from dbrouter.settings import DatabaseSettings
from tests.support.postgres import PostgresServer, running_server, wait_for_replay

APP_DATABASE = "app"
"""The database created on the primary and replicated to the standby."""

EVENTS_TABLE = "CREATE TABLE events (id bigserial PRIMARY KEY, payload text NOT NULL)"

REPLICA_SETTINGS: Mapping[str, Any] = {
    "replica_of": "primary",
    "health_check_interval": 0.2,
    "max_lag": 1.0,
    "connect_timeout": 2.0,
    "pool_timeout": 2.0,
    "pool_size": 2,
}
"""Settings of every replica a test registers, unless it overrides them."""


@dataclass(frozen=True)
class Replication:
    """A primary and a standby that streams from it."""

    primary: PostgresServer
    standby: PostgresServer

    @property
    def primary_url(self) -> str:
        """The app database on the primary."""
        return self.primary.url(APP_DATABASE)

    @property
    def standby_url(self) -> str:
        """The app database on the standby."""
        return self.standby.url(APP_DATABASE)

    def heal(self) -> None:
        """Both servers running, replay not paused, and the standby caught up."""
        self.primary.start()
        self.standby.start()
        self.standby.execute("SELECT pg_wal_replay_resume()")
        wait_for_replay(self.primary, self.standby, timeout=30)

    async def pause_replay(self) -> None:
        """Stop the standby from applying WAL (it still receives it)."""
        await asyncio.to_thread(self.standby.execute, "SELECT pg_wal_replay_pause()")

    async def resume_replay(self) -> None:
        """Let the standby apply WAL again."""
        await asyncio.to_thread(self.standby.execute, "SELECT pg_wal_replay_resume()")


@pytest.fixture(scope="session", name="primary_and_standby")
def primary_and_standby_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replication]:
    """A primary with an ``app`` database (table ``events``) and a hot standby of it."""
    with running_server() as primary:
        primary.create_database(APP_DATABASE)
        primary.execute(EVENTS_TABLE, database=APP_DATABASE)
        standby = primary.make_standby(tmp_path_factory.mktemp("standby"))
        try:
            standby.start()
            wait_for_replay(primary, standby, timeout=30)
            yield Replication(primary, standby)
        finally:
            standby.cleanup()


@pytest.fixture(name="replication")
def replication_fixture(primary_and_standby: Replication) -> Iterator[Replication]:
    """The shared pair, healthy when the test starts and made healthy again after it."""
    primary_and_standby.heal()
    yield primary_and_standby
    primary_and_standby.heal()


@asynccontextmanager
async def replica_registry(
    pair: Replication,
    replicas: Mapping[str, Mapping[str, Any]] | None = None,
    **primary_settings: Any,
) -> AsyncIterator[DatabaseRegistry]:
    """A registry with ``primary`` and, on the standby, one database per name in
    *replicas* (default: ``replica``), each with `REPLICA_SETTINGS` and its overrides.

    Several names give several databases, each with its own engine, on the one standby.
    The registry is disposed when the block ends.
    """
    databases = {
        "primary": DatabaseSettings(
            url=pair.primary_url,
            **{"connect_timeout": 2.0, "pool_timeout": 2.0, "pool_size": 2, **primary_settings},
        )
    }
    for name, overrides in (replicas if replicas is not None else {"replica": {}}).items():
        databases[name] = DatabaseSettings(
            url=pair.standby_url, **{**REPLICA_SETTINGS, **overrides}
        )
    registry = DatabaseRegistry(databases)
    try:
        yield registry
    finally:
        await registry.dispose()


async def insert_events(engine: AsyncEngine, count: int, *, payload_size: int = 200) -> None:
    """Insert *count* rows into ``events`` in one transaction."""
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO events (payload) "
                "SELECT repeat('x', :size) FROM generate_series(1, :count)"
            ),
            {"size": payload_size, "count": count},
        )


async def eventually(
    condition: Callable[[], bool], what: str, *, timeout: float = 10.0, step: float = 0.02
) -> float:
    """Wait until *condition* holds and return the seconds it took; fail after *timeout*."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(step)
    return time.monotonic() - started
