"""`router.check()`: status, latency and pool figures per database."""

from __future__ import annotations

import asyncio
import json
from contextlib import AsyncExitStack

import pytest
from sqlalchemy import text

from dbrouter import DatabaseHealth, DatabaseRouter, HealthReport, PoolStats, RouterSettings
from dbrouter.cli import main

DOWN = "postgresql://app:pw@127.0.0.1:1/x"


async def test_check_reports_every_database(pg_url: str) -> None:
    router = DatabaseRouter(
        RouterSettings(
            databases={
                "primary": {"url": pg_url, "pool_size": 3},
                "down": {"url": DOWN, "connect_timeout": 1},
            }
        )
    )
    try:
        async with router.session() as session:
            await session.execute(text("SELECT 1"))
            report = await router.check()
    finally:
        await router.dispose()
    assert isinstance(report, HealthReport)
    primary = report.databases["primary"]
    assert isinstance(primary, DatabaseHealth)
    assert primary.status == "up"
    assert primary.latency_ms is not None
    assert primary.latency_ms > 0
    assert primary.error is None
    # The session holds one connection; the check borrowed and returned another.
    assert primary.pool == PoolStats(size=3, in_use=1, idle=1, overflow_in_use=0, max=13)
    down = report.databases["down"]
    assert down.status == "down"
    assert down.latency_ms is None
    assert (down.error, down.error_kind, down.sqlstate) == ("unreachable", "unreachable", None)
    assert report.ok is False
    assert report.as_dict()["status"] == "unavailable"


async def test_check_is_ok_when_all_answer(pg_url: str) -> None:
    router = DatabaseRouter(RouterSettings(databases={"primary": {"url": pg_url}}))
    report = await router.check()
    await router.dispose()
    assert report.ok
    assert report.as_dict()["databases"]["primary"]["status"] == "up"


@pytest.mark.parametrize(("fallback", "required"), [("primary", False), ("error", True)])
async def test_a_replica_with_a_fallback_is_not_required(
    pg_url: str, fallback: str, required: bool
) -> None:
    router = DatabaseRouter(
        RouterSettings(
            databases={
                "primary": {"url": pg_url},
                "replica": {
                    "url": DOWN,
                    "replica_of": "primary",
                    "fallback": fallback,
                    "connect_timeout": 1,
                },
            }
        )
    )
    report = await router.check()
    await router.dispose()
    assert report.databases["replica"].required is required
    assert report.ok is not required


async def test_pool_figures_follow_sessions_holding_connections(pg_url: str) -> None:
    pool = {"pool_size": 3, "max_overflow": 2}
    router = DatabaseRouter(RouterSettings(databases={"primary": {"url": pg_url, **pool}}))

    async def figures_while_held(count: int) -> PoolStats:
        async with AsyncExitStack() as stack:
            sessions = [await stack.enter_async_context(router.session()) for _ in range(count)]
            await asyncio.gather(*(session.execute(text("SELECT 1")) for session in sessions))
            return (await router.check()).databases["primary"].pool

    async with router:
        # The check borrows one more connection and gives it back: it stays idle.
        one = await figures_while_held(1)
        assert one == PoolStats(size=3, in_use=1, idle=1, overflow_in_use=0, max=5)
        four = await figures_while_held(4)
        assert four == PoolStats(size=3, in_use=4, idle=1, overflow_in_use=2, max=5)
        # Returned, the connections beyond pool_size are closed.
        after = (await router.check()).databases["primary"].pool
        assert after == PoolStats(size=3, in_use=0, idle=3, overflow_in_use=0, max=5)


async def test_databases_are_reported_in_the_order_they_are_declared(
    pg_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    names = ["zeta", "alpha", "mid", "beta"]
    settings = RouterSettings(
        databases={name: {"url": pg_url} for name in names}, default_database="zeta"
    )
    async with DatabaseRouter(settings) as router:
        report = await router.check()
    assert list(report.databases) == names
    assert list(json.loads(json.dumps(report.as_dict()))["databases"]) == names

    for name in names:
        monkeypatch.setenv(f"DBROUTER_DATABASES__{name.upper()}__URL", pg_url)
    monkeypatch.setenv("DBROUTER_DEFAULT_DATABASE", "zeta")
    assert await asyncio.to_thread(main, ["check"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == names
