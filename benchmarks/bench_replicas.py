"""Per-request cost of replica routing: ``get_db("replica")`` against a plain named session
on the same server.

Both apps read one row from a real streaming standby. The plain side declares the standby
as an ordinary database; the replica side declares it with ``replica_of``. The replica side
runs twice: without a token, and with a consistency token the standby has already
replayed on every request, which pays for everything replica routing does: the token is
parsed, a replica is chosen from the probe's last results and its position checked against
the token, and the session is read-only. Rounds rotate A B C, C B A ... through a bare ASGI
call; each ratio is median replica throughput / median plain throughput (target: at least
0.98).

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
    raw_caller,
    run_round,
)
from fastapi import Depends, FastAPI
from machine import pin_cpus
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from dbrouter import DatabaseRouter, RouterSettings, get_db
from dbrouter.replicas import parse_lsn
from dbrouter.replicas.consistency import TOKEN_HEADER, format_token

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
        replica_set = replica.replica_set("replica")
        async with replica.session("primary") as session:
            position = parse_lsn(str(await session.scalar(SELECT_POSITION)))
        if await replica_set.wait_for(position, timeout=30) is None:
            raise SystemExit("the standby did not replay the items table")
        token = format_token({"primary": position}).encode()
        calls = {
            "plain": raw_caller(plain_manager.app),
            "replica": raw_caller(replica_manager.app),
            "replica+token": raw_caller(
                replica_manager.app, [(TOKEN_HEADER.lower().encode(), token)]
            ),
        }
        results: dict[str, list[Round]] = {side: [] for side in calls}
        for call in calls.values():
            await run_round(call, READ, args.requests, args.concurrency)
        sides = list(calls)
        for index in range(args.rounds):
            # A B C, C B A, ...: slow drift weighs on every side alike.
            for side in sides if index % 2 == 0 else reversed(sides):
                results[side].append(
                    await run_round(calls[side], READ, args.requests, args.concurrency)
                )
    report(results)


def report(results: dict[str, list[Round]]) -> None:
    print("reads of one row: get_db on the standby declared plainly ('plain'), and")
    print("get_db('replica') on it declared with replica_of, without and with a token")
    sides = list(results)
    print("  round  " + "  ".join(f"{side:>14}" for side in sides) + "   (requests/s)")
    for index in range(len(results[sides[0]])):
        figures = "  ".join(f"{results[side][index].throughput:>14.0f}" for side in sides)
        print(f"  {index + 1:>5}  {figures}")
    plain = results["plain"]
    plain_median = statistics.median(r.throughput for r in plain)
    plain_cpu = statistics.median(r.cpu_us for r in plain)
    for side in sides[1:]:
        rounds = results[side]
        median = statistics.median(r.throughput for r in rounds)
        cpu = statistics.median(r.cpu_us for r in rounds)
        ratio = median / plain_median
        ratios = [r.throughput / p.throughput for r, p in zip(rounds, plain, strict=True)]
        verdict = "ok" if ratio >= TARGET_RATIO else "BELOW"
        print(
            f"  {side}: ratio = {ratio:.3f} (target >= {TARGET_RATIO}: {verdict}); overhead "
            f"{1e6 / median - 1e6 / plain_median:+.1f} us wall, {cpu - plain_cpu:+.1f} us CPU "
            f"per request (CPU {plain_cpu:.1f} vs {cpu:.1f} us)"
        )
        if max(ratios) - min(ratios) > NOISY_SPAN:
            print(
                f"    noisy: per-round ratios span {min(ratios):.3f}-{max(ratios):.3f}; "
                "something else was using the CPU. Run again on a quiet machine."
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
