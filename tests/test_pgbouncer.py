"""Databases reached through a real PgBouncer in transaction mode (``pgbouncer: true``):
named sessions, replica sessions and schema tenants."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from dbrouter import DatabaseRouter, RouterSettings
from tests.support.pgbouncer import running_pgbouncer
from tests.support.tenants import owners_in, tenant_schemas


@pytest.fixture(scope="module")
def pgbouncer(postgres_admin_url: str) -> Iterator[str]:
    """PgBouncer in transaction mode, at most 3 server connections per database, in front
    of the suite's server; the URL of its admin database through PgBouncer. A machine
    where none can be had fails these tests with the reason (`Unavailable`)."""
    with running_pgbouncer(postgres_admin_url) as url:
        yield url


def through(pgbouncer: str, url: str) -> str:
    """*url*'s database, reached through *pgbouncer*."""
    bouncer = make_url(pgbouncer)
    return (
        make_url(url)
        .set(host=bouncer.host, port=bouncer.port)
        .render_as_string(hide_password=False)
    )


def bounced(
    pgbouncer: str, url: str, *, pgbouncer_flag: bool = True, **top: Any
) -> RouterSettings:
    """Settings with *url*'s database as ``primary``, reached through *pgbouncer* by a pool
    of ten connections (more than PgBouncer's three server connections)."""
    primary = {
        "url": through(pgbouncer, url),
        "pgbouncer": pgbouncer_flag,
        "pool_size": 10,
        "max_overflow": 0,
    }
    return RouterSettings(databases={"primary": primary}, **top)


async def concurrent_work(router: DatabaseRouter, count: int) -> list[str]:
    """*count* concurrent committed sessions, each with two statements; the errors."""
    errors: list[str] = []

    async def work(number: int) -> None:
        try:
            async with router.session(commit=True) as session:
                await session.execute(text("INSERT INTO items (n) VALUES (:n)"), {"n": number})
                await session.scalar(
                    text("SELECT count(*) FROM items WHERE n >= :n"), {"n": number % 7}
                )
        except Exception as exc:
            errors.append(str(exc))

    await asyncio.gather(*(work(number) for number in range(count)))
    return errors


@pytest.mark.parametrize("flag", [True, False])
async def test_sessions_through_pgbouncer(pgbouncer: str, pg_url: str, flag: bool) -> None:
    router = DatabaseRouter(bounced(pgbouncer, pg_url, pgbouncer_flag=flag))
    async with router:
        async with router.session(commit=True) as session:
            await session.execute(text("CREATE TABLE items (id serial PRIMARY KEY, n int)"))
        errors = await concurrent_work(router, 300)
        if flag:
            async with router.session() as session:
                assert await session.scalar(text("SELECT count(*) FROM items")) == 300
    if flag:
        assert errors == []
    else:
        # Ten client connections share three server connections: a statement prepared on
        # one is missing on the next. This is what the setting is for.
        assert errors
        assert all("prepared statement" in error for error in errors), errors[:3]


async def test_a_replica_through_pgbouncer(pgbouncer: str, pg_url: str) -> None:
    url = through(pgbouncer, pg_url)
    router = DatabaseRouter(
        RouterSettings(
            databases={
                "primary": {"url": url, "pgbouncer": True},
                # Not a standby: reads fall back to the primary, read-only all the same.
                "replica": {"url": url, "pgbouncer": True, "replica_of": "primary"},
            }
        )
    )
    async with router:
        async with router.engine("replica").connect() as connection:
            assert await connection.scalar(text("SELECT 1")) == 1
        async with router.session("replica") as session:
            assert await session.scalar(text("SHOW transaction_read_only")) == "on"
        with pytest.raises(Exception, match="read-only transaction"):
            async with router.session("replica") as session:
                await session.execute(text("CREATE TABLE written (id int)"))
        async with router.session("primary") as session:
            assert await session.scalar(text("SHOW transaction_read_only")) == "off"


async def test_schema_tenants_through_pgbouncer(pgbouncer: str, pg_url: str) -> None:
    tenants = [f"t{number}" for number in range(6)]
    await tenant_schemas(pg_url, tenants)
    router = DatabaseRouter(bounced(pgbouncer, pg_url, tenancy={"strategy": "schema"}))

    asked = [tenants[n % 6] for n in range(120)]
    async with router:
        answers = await asyncio.gather(*(owners_in(router, tenant) for tenant in asked))
    # Transaction-local pins hold whichever server connection PgBouncer hands out.
    assert all(
        sorted(set(found)) == [tenant] for tenant, found in zip(asked, answers, strict=True)
    )
