"""The exporters on a real app: ``GET /metrics`` read back with prometheus-client's own
parser, OpenTelemetry instruments read back through an in-memory reader, both holding
every figure; missing extras named; no password anywhere."""

# No ``from __future__ import annotations``: FastAPI resolves the endpoint annotations.

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    HistogramDataPoint,
    InMemoryMetricReader,
    MetricsData,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from dbrouter import ConfigurationError, DatabaseRouter, RouterSettings, get_db, get_tenant_db
from dbrouter.metrics.catalog import INSTRUMENTS, POOL_NAME, STATE
from dbrouter.metrics.histograms import TIME_BUCKETS
from dbrouter.metrics.prometheus import RouterCollector
from dbrouter.otel import instrument
from dbrouter.replicas.consistency import TOKEN_HEADER
from tests.conftest import serve
from tests.support.postgres import free_port
from tests.test_secrets import assert_hidden, secret_url

__all__ = ["secret_url"]


def everything(url: str) -> DatabaseRouter:
    """A router with every kind of figure: a primary, a replica (the same server, so no
    standby: out of rotation), a database that is down, a tenant and a budget."""
    return DatabaseRouter(
        RouterSettings(
            databases={
                "primary": {"url": url, "pool_size": 3},
                "replica": {"url": url, "replica_of": "primary", "health_check_interval": 0.1},
                "down": {"url": f"postgresql://nobody@127.0.0.1:{free_port()}/x"},
            },
            max_connections=20,
            tenancy={"tenants": {"acme": {"url": url}}},
        )
    )


def one_row(dependency: Any) -> Callable[..., Awaitable[int]]:
    """An endpoint reading one row with the session *dependency* gives."""

    async def endpoint(db: AsyncSession = dependency) -> int:
        return int(await db.scalar(text("SELECT 1")) or 0)

    return endpoint


def app_for(router: DatabaseRouter) -> FastAPI:
    app = FastAPI(lifespan=router.lifespan)
    app.include_router(router.metrics_router())
    for method, path, dependency in [
        ("POST", "/write", Depends(get_db("primary", commit=True))),
        ("GET", "/read", Depends(get_db("replica"))),
        ("GET", "/down", Depends(get_db("down"))),
        ("GET", "/tenant", Depends(get_tenant_db())),
    ]:
        app.add_api_route(path, one_row(dependency), methods=[method])
    return app


async def traffic(client: httpx.AsyncClient) -> None:
    """Requests that move every counter once."""
    written = await client.post("/write")
    assert written.status_code == 200
    token = written.headers[TOKEN_HEADER]
    assert (await client.get("/read", headers={TOKEN_HEADER: token})).status_code == 200
    assert (await client.get("/down")).status_code == 503
    assert (await client.get("/tenant", headers={"X-Tenant-ID": "acme"})).status_code == 200


@asynccontextmanager
async def running(url: str) -> AsyncIterator[tuple[DatabaseRouter, httpx.AsyncClient]]:
    router = everything(url)
    async with serve(app_for(router)) as client:
        yield router, client


def sample_names(instrument_name: str) -> str:
    spec = next(spec for spec in INSTRUMENTS if spec.name == instrument_name)
    return spec.prometheus_name + ("_bucket" if spec.kind == "histogram" else "")


async def settled_metrics(client: httpx.AsyncClient) -> tuple[httpx.Response, list[Sample]]:
    """``GET /metrics`` at a moment the primary lends no connection. Requests have all
    given theirs back, but the replica's probe reads the primary's WAL position every
    0.1 s on a connection of its own; a leaked connection never settles."""
    none_used = Sample("db_client_connection_count", {"pool_name": "primary", "state": "used"}, 0)
    for _ in range(100):
        response = await client.get("/metrics")
        assert response.status_code == 200
        samples = [
            sample
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
        ]
        if none_used in samples:
            break
        await asyncio.sleep(0.01)
    return response, samples


async def test_the_prometheus_text_parses_and_holds_every_figure(pg_url: str) -> None:
    async with running(pg_url) as (_, client):
        await traffic(client)
        response, samples = await settled_metrics(client)
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    names = {sample.name for sample in samples}
    missing = [spec.name for spec in INSTRUMENTS if sample_names(spec.name) not in names]
    # No standby here, so no lag was measured: the lag series are tested with a real one.
    assert missing == ["dbrouter.replica.lag", "dbrouter.replica.wal_lag"]

    def value(name: str, **labels: str) -> float:
        found = [s.value for s in samples if s.name == name and s.labels == labels]
        assert len(found) == 1, (name, labels, found)
        return found[0]

    assert value("db_client_connection_max", pool_name="primary") == 3 + 10
    assert value("db_client_connection_count", pool_name="primary", state="used") == 0
    assert value("db_client_connection_count", pool_name="tenant:acme", state="idle") == 1
    assert value("dbrouter_unavailable_total", database="down", reason="unreachable") == 1
    assert value("dbrouter_consistency_reads_total", database="replica", served_by="primary") == 1
    assert value("dbrouter_tenant_engines") == 1
    assert value("dbrouter_tenant_engines_built_total") == 1
    assert value("dbrouter_connection_budget_limit") == 20
    replica_pool = next(s.labels["pool_name"] for s in samples if s.name.startswith("dbrouter_r"))
    assert replica_pool.startswith("replica@127.0.0.1:")
    assert value("dbrouter_replica_in_rotation", database="replica", pool_name=replica_pool) == 0
    waits = value("db_client_connection_wait_time_seconds_count", pool_name="primary")
    assert waits >= 2
    assert value("db_client_connection_wait_time_seconds_bucket", pool_name="primary", le="+Inf")
    pools = {s.labels["pool_name"] for s in samples if s.name == "db_client_connection_max"}
    assert pools == {"primary", replica_pool, "down", "tenant:acme"}


async def test_a_collector_goes_into_any_registry(pg_url: str) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    router = DatabaseRouter(RouterSettings(databases={"primary": {"url": pg_url}}))
    registry = CollectorRegistry()
    registry.register(RouterCollector(router))
    async with router:
        async with router.session() as session:
            await session.execute(text("SELECT 1"))
        families = list(text_string_to_metric_families(generate_latest(registry).decode()))
    assert {family.name for family in families} >= {
        "db_client_connection_count",
        "db_client_connection_use_time_seconds",
    }
    # A disposed router has no pools left to show.
    assert list(text_string_to_metric_families(generate_latest(registry).decode())) == []


def otel_metrics(data: MetricsData | None) -> dict[str, Any]:
    assert data is not None
    return {
        metric.name: metric
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }


@pytest.fixture
def otel() -> Iterator[tuple[InMemoryMetricReader, MeterProvider]]:
    """A meter provider reading into memory, shut down after the test."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    yield reader, provider
    provider.shutdown()


async def test_opentelemetry_instruments_have_the_conventions_names_units_and_attributes(
    pg_url: str, otel: tuple[InMemoryMetricReader, MeterProvider]
) -> None:
    reader, provider = otel
    async with running(pg_url) as (router, client):
        instrument(router, meter_provider=provider)
        await traffic(client)
        metrics = otel_metrics(reader.get_metrics_data())
    missing = [spec.name for spec in INSTRUMENTS if spec.name not in metrics]
    assert missing == ["dbrouter.replica.lag", "dbrouter.replica.wal_lag"]
    for spec in INSTRUMENTS:
        if spec.name in metrics:
            assert metrics[spec.name].unit == spec.unit, spec.name
            assert metrics[spec.name].description == spec.description
    count = metrics["db.client.connection.count"].data.data_points
    assert {tuple(sorted(point.attributes)) for point in count} == {(POOL_NAME, STATE)}
    assert {
        (point.attributes[POOL_NAME], point.attributes[STATE]): point.value
        for point in count
        if point.attributes[POOL_NAME] == "tenant:acme"
    } == {("tenant:acme", "idle"): 1, ("tenant:acme", "used"): 0}
    waits = metrics["db.client.connection.wait_time"].data.data_points
    primary_waits = [point for point in waits if point.attributes == {POOL_NAME: "primary"}]
    assert len(primary_waits) == 1
    point = primary_waits[0]
    assert isinstance(point, HistogramDataPoint)
    assert point.count >= 1
    assert tuple(point.explicit_bounds) == TIME_BUCKETS
    unavailable = metrics["dbrouter.unavailable"].data.data_points
    assert [(dict(p.attributes), p.value) for p in unavailable] == [
        ({"database": "down", "reason": "unreachable"}, 1)
    ]


def pool_names(data: MetricsData | None, name: str) -> set[str]:
    metric = otel_metrics(data).get(name)
    points = [] if metric is None else metric.data.data_points
    return {str(point.attributes[POOL_NAME]) for point in points}


async def test_opentelemetry_drops_an_evicted_tenants_series(tmp_path: Path) -> None:
    reader = InMemoryMetricReader(preferred_temporality={Histogram: AggregationTemporality.DELTA})
    provider = MeterProvider(metric_readers=[reader])
    tenants = {tenant: {"url": f"sqlite:///{tmp_path / tenant}.db"} for tenant in ("a", "b")}
    router = DatabaseRouter(
        RouterSettings(
            databases={"primary": {"url": f"sqlite:///{tmp_path / 'primary'}.db"}},
            tenancy={"tenants": tenants, "max_engines": 1},
        )
    )
    instrument(router, meter_provider=provider)
    try:
        async with router:
            for tenant in ("a", "b"):
                async with router.tenant_session(tenant) as session:
                    await session.execute(text("SELECT 1"))
                data = reader.get_metrics_data()
                pool = f"tenant:{tenant}"  # b evicts a: a's series are gone
                assert pool_names(data, "db.client.connection.count") == {"primary", pool}
                assert pool_names(data, "db.client.connection.use_time") == {pool}
    finally:
        provider.shutdown()


async def test_opentelemetry_without_histograms_records_nothing_per_request(
    tmp_path: Path,
) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    router = DatabaseRouter(
        RouterSettings(databases={"primary": {"url": f"sqlite:///{tmp_path / 'app'}.db"}})
    )
    instrument(router, meter_provider=provider, histograms=False)
    try:
        async with router:
            async with router.session() as session:
                await session.execute(text("SELECT 1"))
            metrics = otel_metrics(reader.get_metrics_data())
            (meter,) = router.metrics_collector().meters()
    finally:
        provider.shutdown()
    assert "db.client.connection.count" in metrics
    assert not {spec.name for spec in INSTRUMENTS if spec.kind == "histogram"} & set(metrics)
    assert meter.use_time.sinks == ()
    assert router.metrics().pools == {}  # disposed


@pytest.mark.parametrize(
    ("module", "extra"), [("prometheus_client", "prometheus"), ("opentelemetry", "otel")]
)
def test_a_missing_extra_is_named(
    monkeypatch: pytest.MonkeyPatch, module: str, extra: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)
    router = DatabaseRouter(RouterSettings(databases={"primary": {"url": "sqlite://"}}))
    with pytest.raises(ConfigurationError, match=rf"the '{extra}' extra") as raised:
        if extra == "prometheus":
            router.metrics_router()
        else:
            instrument(router)
    assert f"fastapi-dbrouter[{extra}]" in str(raised.value)


async def test_no_password_in_any_metric_or_log_line(
    secret_url: str,
    caplog: pytest.LogCaptureFixture,
    otel: tuple[InMemoryMetricReader, MeterProvider],
) -> None:
    caplog.set_level(logging.DEBUG, logger="dbrouter")
    reader, provider = otel
    async with running(secret_url) as (router, client):
        instrument(router, meter_provider=provider)
        await traffic(client)
        text_format = (await client.get("/metrics")).text
        data = reader.get_metrics_data()
        snapshot = router.metrics()
    assert data is not None
    assert "tenant:acme" in text_format
    assert_hidden(text_format, data.to_json(), snapshot, snapshot.as_dict())
    assert_hidden(*(record.getMessage() for record in caplog.records))
