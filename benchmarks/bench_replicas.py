"""Per-request cost of replica routing: ``get_db("replica")`` against a plain named session
on the same server.

Both apps read one row from a real streaming standby. The plain side declares the standby
as an ordinary database; the replica side declares it with ``replica_of`` and every request
carries a consistency token the standby has already replayed, so each request pays for
everything replica routing does: the token is parsed, a replica is chosen from the probe's
last results and its position checked against the token, and the session is read-only.
Rounds alternate A B B A ... through a bare ASGI call; the reported ratio is median replica
throughput / median plain throughput (target: at least 0.98).

    python benchmarks/bench_replicas.py [--rounds 8] [--requests 2000] [--concurrency 32]
"""

import argparse
import asyncio
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

from asgi_lifespan import LifespanManager
from bench_get_db import (
    READ,
    SELECT_ITEM,
    Round,
    asyncpg_url,
    create_items,
    interleaved,
    pin_cpus,
    raw_caller,
    run_round,
)
from fastapi import Depends, FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from dbrouter import DatabaseRouter, RouterSettings, get_db
from dbrouter.consistency import TOKEN_HEADER, format_token
from dbrouter.replicas import parse_lsn

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

TARGET_RATIO = 0.98
NOISY_SPAN = 0.15
SELECT_POSITION = text("SELECT pg_current_wal_insert_lsn()::text")


def reading_app(router: DatabaseRouter, name: str) -> FastAPI:
    app = FastAPI(lifespan=router.lifespan)
    session = Annotated[AsyncSession, Depends(get_db(name))]

    @app.get("/items/{item_id}")
    async def item(item_id: int, db: session) -> dict[str, Any]:
        row = (await db.execute(SELECT_ITEM, {"id": item_id})).one()
        return {"id": row.id, "name": row.name}

    return app


async def run(primary_url: str, standby_url: str, args: argparse.Namespace) -> None:
    await create_items(asyncpg_url(primary_url))

    plain = DatabaseRouter(
        RouterSettings(
            databases={"primary": {"url": primary_url}, "standby": {"url": standby_url}}
        )
    )
    replica = DatabaseRouter(
        RouterSettings(
            databases={
                "primary": {"url": primary_url},
                "replica": {"url": standby_url, "replica_of": "primary"},
            }
        )
    )
    plain_app, replica_app = reading_app(plain, "standby"), reading_app(replica, "replica")
    async with (
        LifespanManager(plain_app) as plain_manager,
        LifespanManager(replica_app) as replica_manager,
    ):
        replication = replica.replication
        assert replication is not None
        replica_set = replication.groups["replica"].replica_set
        assert replica_set is not None
        async with replica.session("primary") as session:
            position = parse_lsn(str(await session.scalar(SELECT_POSITION)))
        if await replica_set.wait_for(position, timeout=30) is None:
            raise SystemExit("the standby did not replay the items table")
        token = format_token({"primary": position}).encode()
        plain_call = raw_caller(plain_manager.app)
        replica_call = raw_caller(replica_manager.app, [(TOKEN_HEADER.lower().encode(), token)])
        results: dict[bool, list[Round]] = {False: [], True: []}
        for call in (plain_call, replica_call):
            await run_round(call, READ, args.requests, args.concurrency)
        for is_replica in interleaved(args.rounds):
            call = replica_call if is_replica else plain_call
            results[is_replica].append(
                await run_round(call, READ, args.requests, args.concurrency)
            )
    report(results)


def report(results: dict[bool, list[Round]]) -> None:
    print("read through get_db('replica') with a token vs get_db on the same standby")
    print(f"  {'round':>6}  {'plain':>8}  {'replica':>8}  ratio  {'CPU us/request':>18}")
    ratios = []
    for index, (plain, replica) in enumerate(zip(results[False], results[True], strict=True)):
        ratio = replica.throughput / plain.throughput
        ratios.append(ratio)
        print(
            f"  {index + 1:>6}  {plain.throughput:>8.0f}  {replica.throughput:>8.0f}  "
            f"{ratio:.3f}  {plain.cpu_us:>8.1f} {replica.cpu_us:>8.1f}"
        )
    plain_median = statistics.median(r.throughput for r in results[False])
    replica_median = statistics.median(r.throughput for r in results[True])
    plain_cpu = statistics.median(r.cpu_us for r in results[False])
    replica_cpu = statistics.median(r.cpu_us for r in results[True])
    ratio = replica_median / plain_median
    overhead = 1e6 / replica_median - 1e6 / plain_median
    verdict = "ok" if ratio >= TARGET_RATIO else "BELOW"
    print(
        f"  median {plain_median:.0f} vs {replica_median:.0f} requests/s: ratio = {ratio:.3f} "
        f"(target >= {TARGET_RATIO}: {verdict})"
    )
    print(
        f"  overhead {overhead:+.1f} us wall, {replica_cpu - plain_cpu:+.1f} us CPU per request "
        f"(CPU {plain_cpu:.1f} vs {replica_cpu:.1f} us; CPU ratio "
        f"{plain_cpu / replica_cpu:.3f})"
    )
    if max(ratios) - min(ratios) > NOISY_SPAN:
        print(
            f"  noisy: per-round ratios span {min(ratios):.3f}-{max(ratios):.3f}; something "
            "else was using the CPU. Run again on a quiet machine before reading the ratio."
        )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--no-pin", dest="pin", action="store_false", help="leave CPU placement to the system"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from tests.support.postgres import running_server, wait_for_replay

    with running_server() as primary:
        primary_url = primary.create_database("dbrouter_bench")
        standby = primary.make_standby(Path(tempfile.mkdtemp(prefix="dbr-bench-")))
        try:
            standby.start()
            wait_for_replay(primary, standby)
            pinned = None
            if args.pin:
                pinned = pin_cpus(
                    *(
                        int((server.data_dir / "postmaster.pid").read_text().split()[0])
                        for server in (primary, standby)
                    )
                )
            print(f"CPUs: {pinned or 'not pinned'}")
            asyncio.run(run(primary_url, standby.url("dbrouter_bench"), args))
        finally:
            standby.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
