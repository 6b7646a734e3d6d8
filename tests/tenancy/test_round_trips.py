"""What a tenant session costs on the wire: the same round trips as a named session.

Counted by a proxy in front of PostgreSQL that sees every message the server answers
(``benchmarks/wire.py``). The schema pin and the clean-up of temporary objects travel in
the messages a session sends anyway; only a session that ends its own last transaction
pays one more, for the clean-up the pool then sends.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import make_url

from dbrouter import DatabaseRouter, DatabaseUnavailableError, RouterSettings

from ..support.tenants import tenant_schemas

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.append(str(BENCHMARKS))

from wire import counting_proxy  # noqa: E402

SELECT = text("SELECT owner FROM notes")
UPDATE = text("UPDATE notes SET body = 'seen'")


@asynccontextmanager
async def through_proxy(pg_url: str, pool_size: int) -> AsyncIterator[tuple[DatabaseRouter, Any]]:
    """A schema-strategy router whose ``primary`` is reached through the counting proxy,
    with a pool of *pool_size* connections, and the proxy."""
    url = make_url(pg_url)
    async with counting_proxy(url.host or "127.0.0.1", url.port or 5432) as (port, proxy):
        through = url.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
        router = DatabaseRouter(
            RouterSettings(
                databases={"primary": {"url": through, "pool_size": pool_size, "max_overflow": 0}},
                tenancy={"strategy": "schema"},
            )
        )
        async with router:
            yield router, proxy


@pytest.fixture
async def proxied(pg_url: str) -> AsyncIterator[tuple[DatabaseRouter, Callable[[], int]]]:
    """Schema tenants alpha and beta behind the proxy, and the round trips counted so far."""
    await tenant_schemas(pg_url, ["alpha", "beta"])
    async with through_proxy(pg_url, 2) as (router, proxy):
        yield router, lambda: proxy.round_trips


async def trips(count: Callable[[], int], work: Callable[[], Awaitable[None]]) -> int:
    """Round trips *work* costs, once warm: measured on its fourth run."""
    for _ in range(3):
        await work()
    before = count()
    await work()
    return count() - before


async def test_a_schema_tenant_session_costs_what_a_named_session_costs(
    proxied: tuple[DatabaseRouter, Callable[[], int]],
) -> None:
    router, count = proxied

    async def named_read() -> None:
        async with router.session() as session:
            await session.execute(SELECT)

    async def tenant_read() -> None:
        async with router.tenant_session("alpha") as session:
            assert list((await session.execute(SELECT)).scalars()) == ["alpha"]

    async def named_write() -> None:
        async with router.session(commit=True) as session:
            await session.execute(UPDATE)

    async def tenant_write() -> None:
        async with router.tenant_session("beta", commit=True) as session:
            await session.execute(UPDATE)

    assert await trips(count, named_read) == 3  # BEGIN, SELECT, ROLLBACK
    assert await trips(count, tenant_read) == 3
    assert await trips(count, named_write) == 3  # BEGIN, UPDATE, COMMIT
    assert await trips(count, tenant_write) == 3


async def test_a_session_that_ends_its_own_transaction_is_cleaned_up_by_the_pool(
    proxied: tuple[DatabaseRouter, Callable[[], int]],
) -> None:
    router, count = proxied

    async def commits_itself() -> None:
        async with router.tenant_session("alpha") as session:
            await session.execute(text("CREATE TEMP TABLE scratch AS SELECT * FROM notes"))
            await session.commit()

    async def reads() -> None:
        async with router.tenant_session("beta") as session:
            assert list((await session.execute(SELECT)).scalars()) == ["beta"]
            missing = await session.scalar(text("SELECT to_regclass('pg_temp.scratch')"))
            assert missing is None

    # BEGIN with the pin, CREATE, COMMIT; then DISCARD TEMP as the pool takes it back.
    assert await trips(count, commits_itself) == 4
    # BEGIN with the pin, two statements, ROLLBACK with the clean-up.
    assert await trips(count, reads) == 4


@pytest.mark.parametrize("isolation", ["SERIALIZABLE", "REPEATABLE READ", "READ COMMITTED"])
async def test_the_pin_travels_with_a_begin_of_any_isolation_level(
    proxied: tuple[DatabaseRouter, Callable[[], int]], isolation: str
) -> None:
    router, count = proxied

    async def read() -> None:
        async with router.tenant_session("alpha") as session:
            await session.connection(execution_options={"isolation_level": isolation})
            level = await session.scalar(text("SELECT current_setting('transaction_isolation')"))
            assert level == isolation.lower()
            assert list((await session.execute(SELECT)).scalars()) == ["alpha"]

    # BEGIN with the pin and the isolation level, two statements, ROLLBACK with the
    # clean-up: the level is a setting of asyncpg's BEGIN, resetting it costs nothing.
    assert await trips(count, read) == 4


async def test_a_connection_lost_as_the_pinned_transaction_begins(pg_url: str) -> None:
    # The BEGIN and the pin go to the driver directly: a lost connection must still be
    # thrown away and answered as an outage, as a failed statement is.
    await tenant_schemas(pg_url, ["alpha"])
    async with through_proxy(pg_url, 1) as (router, proxy):
        async with router.tenant_session("alpha") as session:
            first = await session.scalar(text("SELECT pg_backend_pid()"))
        proxy.cut = b"set_config('search_path'"
        with pytest.raises(DatabaseUnavailableError) as raised:
            async with router.tenant_session("alpha") as session:
                await session.execute(SELECT)
        # What SQLAlchemy raises for a statement on a lost connection.
        cause = raised.value.__cause__
        assert isinstance(cause, sa_exc.DBAPIError)
        assert cause.connection_invalidated
        proxy.cut = None
        async with router.tenant_session("alpha") as session:
            assert list((await session.execute(SELECT)).scalars()) == ["alpha"]
            assert await session.scalar(text("SELECT pg_backend_pid()")) != first
