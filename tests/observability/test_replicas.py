"""Replica figures on a real primary and streaming standby: lag in seconds and bytes, and
a standby stopped under load, whose in-rotation series goes to 0 and back to 1, with one
WARNING and one INFO logged."""

# No ``from __future__ import annotations``: FastAPI resolves the endpoint annotations.

import asyncio
import logging
import re
from collections import Counter
from typing import Annotated

import httpx
import pytest
from fastapi import Depends, FastAPI
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from dbrouter import DatabaseRouter, RouterSettings, get_db
from tests.conftest import serve
from tests.support.replication import (
    REPLICA_SETTINGS,
    Replication,
    eventually,
    primary_and_standby_fixture,
    replication_fixture,
)

__all__ = ["primary_and_standby_fixture", "replication_fixture"]

Replica = Annotated[AsyncSession, Depends(get_db("replica"))]
STARTUP = re.compile(r"dbrouter: database '\w+' at ")  # the lifespan's line per database


def router_for(pair: Replication) -> DatabaseRouter:
    return DatabaseRouter(
        RouterSettings(
            databases={
                "primary": {"url": pair.primary_url, "pool_size": 4},
                "replica": {"url": pair.standby_url, **REPLICA_SETTINGS, "pool_size": 4},
            }
        )
    )


def app_for(router: DatabaseRouter) -> FastAPI:
    app = FastAPI(lifespan=router.lifespan)
    app.include_router(router.metrics_router())

    @app.get("/read")
    async def read(db: Replica) -> int:
        return int(await db.scalar(text("SELECT count(*) FROM events")) or 0)

    return app


def rotation(body: str) -> dict[str, float]:
    return {
        sample.labels["pool_name"]: sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
        if sample.name == "dbrouter_replica_in_rotation"
    }


async def load(client: httpx.AsyncClient, stop: asyncio.Event, statuses: Counter[int]) -> None:
    while not stop.is_set():
        statuses[(await client.get("/read")).status_code] += 1
        await asyncio.sleep(0.005)


async def test_the_lag_of_a_caught_up_standby_is_zero(replication: Replication) -> None:
    router = router_for(replication)
    async with router:
        replicas = router.replica_set("replica")
        await eventually(
            lambda: replicas.members[0].lag_bytes == 0, "the probe measures the standby"
        )
        (server,) = router.metrics().replicas.values()
    standby = make_url(replication.standby_url)
    assert server.pool == f"replica@{standby.host}:{standby.port}"
    assert (server.database, server.in_rotation, server.reason) == ("replica", True, None)
    assert (server.lag_seconds, server.lag_bytes) == (0.0, 0)


@pytest.mark.faults
async def test_a_standby_stopped_under_load_leaves_and_rejoins_rotation(
    replication: Replication, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="dbrouter")
    router = router_for(replication)
    standby = make_url(replication.standby_url)
    pool = f"replica@{standby.host}:{standby.port}"
    async with serve(app_for(router)) as client:
        await router.replica_set("replica").measured()
        assert rotation((await client.get("/metrics")).text) == {pool: 1}
        stop = asyncio.Event()
        statuses: Counter[int] = Counter()
        workers = [asyncio.create_task(load(client, stop, statuses)) for _ in range(4)]
        try:
            await asyncio.sleep(0.3)
            await asyncio.to_thread(replication.standby.stop, "fast")
            await eventually(lambda: not router.metrics().replicas[pool].in_rotation, "out")
            assert rotation((await client.get("/metrics")).text) == {pool: 0}
            await asyncio.sleep(0.3)  # reads go on, on the primary
            await asyncio.to_thread(replication.standby.start)
            await eventually(
                lambda: router.metrics().replicas[pool].in_rotation, "back", timeout=15
            )
            assert rotation((await client.get("/metrics")).text) == {pool: 1}
            await asyncio.sleep(0.3)
        finally:
            stop.set()
            await asyncio.gather(*workers)
    # Reads fell back to the primary; only one cut off by the stop may have failed.
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[503] <= 4, statuses
    assert statuses[200] > 20
    notable = [
        (record.levelname, record.getMessage())
        for record in caplog.records
        if record.levelno >= logging.INFO and not STARTUP.match(record.getMessage())
    ]
    # The reason is what was met first: a refused probe, or a read cut off by the stop.
    assert [level for level, _ in notable] == ["WARNING", "INFO"], notable
    (_, left), (_, back) = notable
    assert re.fullmatch(
        r"dbrouter: replica 'replica' leaves rotation: "
        r"(unreachable|server shutting down \(SQLSTATE 57P01\))",
        left,
    )
    assert back == "dbrouter: replica 'replica' is back in rotation"
