"""The fallback load client: *concurrency* httpx requests in flight for some seconds, from
a process of its own; prints what it measured as JSON. ``load.py`` runs it when wrk is
not installed.

    python benchmarks/http_client.py http://127.0.0.1:8000 --route /items/{id} --seconds 5
"""

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict

import httpx
from load import Load, LoadResult
from stats import percentile

__all__ = ["load_client", "main"]


async def load_client(base_url: str, what: Load) -> LoadResult:
    """The fallback load: *what*, sent with httpx."""
    latencies: list[float] = []
    errors = 0
    counter = iter(range(sys.maxsize))
    limits = httpx.Limits(
        max_connections=what.concurrency, max_keepalive_connections=what.concurrency
    )
    async with httpx.AsyncClient(
        base_url=base_url, headers=list(what.headers), limits=limits
    ) as client:
        deadline = time.perf_counter() + what.seconds

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                path = what.path(next(counter))
                sent = time.perf_counter()
                try:
                    response = await client.request(what.method, path)
                    failed = response.status_code >= 400
                except httpx.HTTPError:
                    failed = True
                latencies.append(time.perf_counter() - sent)
                errors += failed

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(what.concurrency)))
        elapsed = time.perf_counter() - start
    return LoadResult(
        requests=len(latencies),
        seconds=elapsed,
        p50_ms=1e3 * percentile(latencies, 0.50),
        p99_ms=1e3 * percentile(latencies, 0.99),
        errors=errors,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("url")
    parser.add_argument("--method", default="GET")
    parser.add_argument("--route", default="/items/{id}")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--header", action="append", default=[], help="'Name: value'")
    args = parser.parse_args(argv)
    headers = [tuple(part.strip() for part in header.split(":", 1)) for header in args.header]
    what = Load(
        args.method,
        args.route,
        args.concurrency,
        args.seconds,
        [(name, value) for name, value in headers],
    )
    result = asyncio.run(load_client(args.url, what))
    print(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
