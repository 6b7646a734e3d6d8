"""What observability costs per request, and what ``pool_pre_ping: idle`` saves.

Two comparisons on a one-row read (``GET /items/{id}`` through ``get_db``), each side a
router on the same PostgreSQL database, driven through a bare ASGI call:

1. metrics: ``stock pool`` (dbrouter with SQLAlchemy's own queue pool, the baseline),
   ``off`` (dbrouter as shipped: nobody asked for metrics), ``prometheus`` (metrics
   collected, ``GET /metrics`` mounted and scraped after each round), ``otel`` (the same,
   exported through an OpenTelemetry ``MeterProvider`` with an in-memory reader, read after
   each round). Ratios: off / stock pool (target >= 0.99: nothing measurable without an
   exporter) and prometheus, otel / off (target >= 0.99: within 1%).
2. liveness: ``pool_pre_ping: true`` against ``pool_pre_ping: idle``; ratio idle / true
   (target >= 1.2).

Requests per second on a shared or small machine move by more than the 1% the first
comparison looks for, so the benchmark also measures what the metrics add where they
run, without a server: CPU time per checkout and return of a pool whose connections are
stand-ins, for SQLAlchemy's pool, dbrouter's without a meter, with one, and with one
feeding OpenTelemetry histograms; the difference is then put against the CPU time of a
whole request measured above.

Rounds rotate the sides (A B C D, D C B A, ...) after a warm-up round each, so that drift
weighs on every side alike. Without ``--url`` a throwaway server is started with the test
suite's harness, and the benchmark is pinned to one CPU, the server to the others.

    python benchmarks/bench_metrics.py [--rounds 8] [--requests 2000] [--concurrency 16]
"""

import argparse
import asyncio
import contextlib
import functools
import statistics
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from asgi_lifespan import LifespanManager
from bench_get_db import (
    READ,
    SELECT_ITEM,
    Call,
    Round,
    Target,
    create_items,
    raw_caller,
    run_round,
    scratch_database,
    target,
)
from fastapi import Depends, FastAPI
from machine import pin_cpus
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, Pool
from sqlalchemy.util import greenlet_spawn

from dbrouter import DatabaseRouter, EngineFactory, RouterSettings, get_db
from dbrouter.metrics.pools import MeteredPool, PoolMeter, attach_meter
from dbrouter.otel import instrument

METRICS_TARGET = 0.99
PRE_PING_TARGET = 1.2
NOISY_SPAN = 0.15


class StockPoolFactory(EngineFactory):
    """dbrouter with SQLAlchemy's own asyncio queue pool instead of its metered one."""

    def create_engine(self, url: URL, **options: Any) -> AsyncEngine:
        if "pool_size" in options:
            options["poolclass"] = AsyncAdaptedQueuePool
        return create_async_engine(url, **options)


@dataclass
class Side:
    """One app of a comparison, and what is done after each of its rounds."""

    name: str
    router: DatabaseRouter
    app: FastAPI
    after_round: Any = None


def reading_app(router: DatabaseRouter, *, prometheus: bool = False) -> FastAPI:
    app = FastAPI(lifespan=router.lifespan)
    session = Annotated[AsyncSession, Depends(get_db())]
    if prometheus:
        app.include_router(router.metrics_router())

    @app.get("/items/{item_id}")
    async def item(item_id: int, db: session) -> dict[str, Any]:
        row = (await db.execute(SELECT_ITEM, {"id": item_id})).one()
        return {"id": row.id, "name": row.name}

    return app


def router_on(url: str, *, pool_size: int, **options: Any) -> DatabaseRouter:
    factory: type[EngineFactory] = options.pop("engine_factory", EngineFactory)
    return DatabaseRouter(
        RouterSettings(
            databases={
                "primary": {"url": url, "pool_size": pool_size, "max_overflow": 0, **options}
            }
        ),
        engine_factory=factory,
    )


def metrics_sides(url: str, pool_size: int) -> list[Side]:
    stock = router_on(url, pool_size=pool_size, engine_factory=StockPoolFactory)
    off = router_on(url, pool_size=pool_size)
    scraped = router_on(url, pool_size=pool_size)
    exported = router_on(url, pool_size=pool_size)
    reader = InMemoryMetricReader()
    instrument(exported, meter_provider=MeterProvider(metric_readers=[reader]))
    return [
        Side("stock pool", stock, reading_app(stock)),
        Side("off", off, reading_app(off)),
        Side("prometheus", scraped, reading_app(scraped, prometheus=True), "scrape"),
        Side("otel", exported, reading_app(exported), reader.get_metrics_data),
    ]


def pre_ping_sides(url: str, pool_size: int) -> list[Side]:
    always = router_on(url, pool_size=pool_size, pool_pre_ping=True)
    idle = router_on(url, pool_size=pool_size, pool_pre_ping="idle")
    return [
        Side("pre_ping true", always, reading_app(always)),
        Side("pre_ping idle", idle, reading_app(idle)),
    ]


async def compare(sides: list[Side], args: argparse.Namespace) -> dict[str, list[Round]]:
    results: dict[str, list[Round]] = {side.name: [] for side in sides}
    async with contextlib.AsyncExitStack() as stack:
        calls: dict[str, Call] = {}
        scrapes: dict[str, Call] = {}
        for side in sides:
            manager = await stack.enter_async_context(LifespanManager(side.app))
            calls[side.name] = raw_caller(manager.app)
            scrapes[side.name] = raw_caller(manager.app)
        for side in sides:
            await run_round(calls[side.name], READ, args.requests, args.concurrency)
        for index in range(args.rounds):
            for side in sides if index % 2 == 0 else list(reversed(sides)):
                results[side.name].append(
                    await run_round(calls[side.name], READ, args.requests, args.concurrency)
                )
                if side.after_round == "scrape":
                    await scrapes[side.name]("GET", "/metrics")
                elif side.after_round is not None:
                    side.after_round()
    return results


Ratio = tuple[str, str, float]
"""A side, the side it is measured against, and the ratio aimed for."""


def report(title: str, results: dict[str, list[Round]], ratios: list[Ratio]) -> None:
    print(f"\n{title}")
    sides = list(results)
    print("  round  " + "  ".join(f"{side:>14}" for side in sides) + "   (requests/s)")
    for index in range(len(results[sides[0]])):
        figures = "  ".join(f"{results[side][index].throughput:>14.0f}" for side in sides)
        print(f"  {index + 1:>5}  {figures}")
    medians = "  ".join(
        f"{statistics.median(r.throughput for r in results[side]):>14.0f}" for side in sides
    )
    print(f"  {'median':>5}  {medians}")
    cpus = "  ".join(
        f"{statistics.median(r.cpu_us for r in results[side]):>14.1f}" for side in sides
    )
    print(f"  {'CPU':>5}  {cpus}   (us per request)")
    for side, base, goal in ratios:
        print(f"  {verdict(results[side], results[base], f'{side} / {base}', goal)}")


def verdict(rounds: list[Round], base: list[Round], label: str, goal: float) -> str:
    median = statistics.median(r.throughput for r in rounds)
    base_median = statistics.median(r.throughput for r in base)
    cpu = statistics.median(r.cpu_us for r in rounds) - statistics.median(r.cpu_us for r in base)
    ratio = median / base_median
    per_round = [r.throughput / b.throughput for r, b in zip(rounds, base, strict=True)]
    line = (
        f"ratio {label} = {ratio:.3f} (target >= {goal}: {'ok' if ratio >= goal else 'BELOW'}); "
        f"{1e6 / median - 1e6 / base_median:+.1f} us wall, {cpu:+.1f} us CPU per request"
    )
    if max(per_round) - min(per_round) > NOISY_SPAN:
        line += (
            f"\n    noisy: per-round ratios span {min(per_round):.3f}-{max(per_round):.3f}; "
            "run again on a quiet machine"
        )
    return line


@contextlib.asynccontextmanager
async def database(where: Target) -> AsyncIterator[URL]:
    if not where.scratch:
        yield where.url
        return
    async with scratch_database(where.url) as url:
        yield url


class StandInConnection:
    """What a pool needs of a DBAPI connection, and nothing more: no I/O."""

    def rollback(self) -> None:
        """Nothing to roll back."""

    def close(self) -> None:
        """Nothing to close."""


def stand_in_pools() -> dict[str, Pool]:
    """Pools of stand-in connections: SQLAlchemy's, and dbrouter's three ways."""

    def connect() -> Any:
        return StandInConnection()

    def pool(kind: type[AsyncAdaptedQueuePool]) -> Pool:
        return kind(connect, pool_size=4, max_overflow=0, timeout=30)

    metered, exported = pool(MeteredPool), pool(MeteredPool)
    attach_meter(metered, PoolMeter("metered"))
    meter = PoolMeter("exported")
    attach_meter(exported, meter)
    histograms = MeterProvider(metric_readers=[InMemoryMetricReader()]).get_meter("bench")
    for name, histogram in (
        ("create", meter.create_time),
        ("wait", meter.wait_time),
        ("use", meter.use_time),
    ):
        otel = histograms.create_histogram(name, unit="s")
        histogram.sinks = (functools.partial(otel.record, attributes={"pool": "exported"}),)
    return {
        "stock pool": pool(AsyncAdaptedQueuePool),
        "off": pool(MeteredPool),
        "metered": metered,
        "otel": exported,
    }


def checkouts(pool: Pool, count: int) -> None:
    for _ in range(count):
        pool.connect().close()


async def checkout_costs(args: argparse.Namespace) -> dict[str, float]:
    """Median CPU microseconds per checkout and return, per pool."""
    pools = stand_in_pools()
    count = 20 * args.requests
    costs: dict[str, list[float]] = {name: [] for name in pools}
    names = list(pools)
    for index in range(args.rounds + 1):
        for name in names if index % 2 == 0 else list(reversed(names)):
            started = time.process_time()
            await greenlet_spawn(checkouts, pools[name], count)
            if index:  # the first round warms up
                costs[name].append(1e6 * (time.process_time() - started) / count)
    return {name: statistics.median(values) for name, values in costs.items()}


def report_checkouts(costs: dict[str, float], request_cpu_us: float) -> None:
    print()
    print("where the metrics run: one checkout and return of a pooled connection, no server")
    for name, cost in costs.items():
        added = cost - costs["stock pool"] if name == "off" else cost - costs["off"]
        base = "stock pool" if name == "off" else "off"
        share = (
            ""
            if name == "stock pool"
            else (
                f"  {added:+.2f} us against {base}: {100 * added / request_cpu_us:+.2f}% of the"
                f" {request_cpu_us:.0f} us CPU of a one-row request"
            )
        )
        print(f"  {name:>10}  {cost:6.2f} us CPU{share}")


async def run(where: Target, args: argparse.Namespace) -> None:
    async with database(where) as items_url:
        await create_items(items_url)
        url = items_url.render_as_string(hide_password=False)
        metrics = await compare(metrics_sides(url, args.concurrency), args)
        report(
            "metrics on the path of each request: one-row reads",
            metrics,
            [
                ("off", "stock pool", METRICS_TARGET),
                ("prometheus", "off", METRICS_TARGET),
                ("otel", "off", METRICS_TARGET),
            ],
        )
        request_cpu = statistics.median(r.cpu_us for r in metrics["off"])
        report_checkouts(await checkout_costs(args), request_cpu)
        liveness = await compare(pre_ping_sides(url, args.concurrency), args)
        report(
            "liveness: a ping on every checkout, or only after pre_ping_idle_after",
            liveness,
            [("pre_ping idle", "pre_ping true", PRE_PING_TARGET)],
        )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", help="a PostgreSQL server (default: a throwaway one)")
    parser.add_argument("--rounds", type=int, default=8, help="measured rounds per side")
    parser.add_argument("--requests", type=int, default=2000, help="requests per round")
    parser.add_argument(
        "--concurrency", type=int, default=16, help="requests in flight (and pool_size)"
    )
    parser.add_argument(
        "--no-pin", dest="pin", action="store_false", help="leave CPU placement to the system"
    )
    args = parser.parse_args(argv)
    for name in ("rounds", "requests", "concurrency"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    with target(args.url) as where:
        pinned = None
        if args.pin and where.postmaster_pid is not None:
            pinned = pin_cpus(where.postmaster_pid)
        print(f"CPUs: {pinned or 'not pinned'}")
        asyncio.run(run(where, args))
    print(f"\ntotal time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
