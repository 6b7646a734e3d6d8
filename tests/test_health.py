"""`router.check()`: status, latency and pool figures per database."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from dbrouter import DatabaseHealth, DatabaseRouter, HealthReport, PoolStats, RouterSettings

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
