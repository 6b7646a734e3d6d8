"""The published side-by-side comparison: dbrouter, the hand-written dependency it replaces,
and the FastAPI database libraries it is chosen among, in one run.

1. In-process: each environment's worker runs its stacks over bare ASGI calls, rounds
   rotated, for a one-row read and a one-row committed update (``worker.py measure``).
   Peers run in environments of their own, next to the hand-written dependency and
   ``get_db``, so every ratio compares stacks measured in one process.
2. Round trips per request, counted on the wire in front of PostgreSQL, and the
   statements ``pg_stat_statements`` saw (``worker.py round-trips``).
3. Over HTTP: every stack under uvicorn (one worker) in its environment, load from wrk
   or, without it, an httpx client in another process; a concurrency sweep for the plot.
4. Tenant scale (``tenant_scale.py``): 10,000 tenant schemas, 200 tenant databases.

Then the tables and the targets are printed, the results saved as JSON and Markdown, and
the plot drawn. Runs on any Python 3.10+ (the environments it needs are made in
``benchmarks/.envs/`` on first use, from PyPI); PostgreSQL comes from ``--url`` (a role
allowed to create databases) or, without it, a throwaway server started with the test
suite's harness, which needs PostgreSQL's server programs on this machine.

    python benchmarks/compare.py                # the full run
    python benchmarks/compare.py --quick        # a smoke run, a few minutes
"""

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import envs
import report
from load import Load, load
from machine import describe, pin_cpus
from stats import counts, rotation

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

WORKER = Path(__file__).with_name("worker.py")
TENANT_SCALE = Path(__file__).with_name("tenant_scale.py")
PLOTTER = Path(__file__).with_name("plot.py")
RESULTS = REPO_ROOT / "benchmarks" / "results"
URL_ENV = "DBROUTER_BENCH_URL"
PHASES = ("in-process", "round-trips", "http", "tenants")
SERVER_SETTINGS = {"shared_preload_libraries": "pg_stat_statements", "max_connections": "500"}
"""The throwaway server: statement statistics, and room for every stack's pool at once."""
ROUTES = {"read": ("GET", "/items/{id}"), "commit": ("POST", "/items/{id}/hits")}
READY_TIMEOUT = 60.0
POOL_CONNECTIONS = 30
"""Connections a stack's pool may hold: 20 and 10 overflow."""

FULL = {
    "rounds": 6,
    "requests": 1500,
    "sweep": [1, 8, 32, 64],
    "http_seconds": 5.0,
    "http_rounds": 3,
    "trip_requests": 200,
    "schemas": [10, 100, 1000, 10000],
    "databases": 200,
    "tenant_requests": 2000,
}
QUICK = {
    "rounds": 2,
    "requests": 300,
    "sweep": [1, 32],
    "http_seconds": 1.0,
    "http_rounds": 1,
    "trip_requests": 50,
    "schemas": [10, 100],
    "databases": 20,
    "tenant_requests": 300,
}
"""``--quick``: every phase, small enough for a smoke run."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--url",
        default=os.environ.get(URL_ENV),
        help=f"PostgreSQL server to use (default: ${URL_ENV}, else a throwaway server); "
        "the role must be allowed to create databases",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--peers", help=f"comma-separated subset of: {', '.join(envs.PEERS)}")
    parser.add_argument(
        "--skip", action="append", default=[], choices=PHASES, help="leave a phase out"
    )
    parser.add_argument("--rounds", type=int, help="in-process rounds per stack and endpoint")
    parser.add_argument("--requests", type=int, help="requests per in-process round")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    parser.add_argument("--sweep", type=counts, help="HTTP concurrency levels for the plot")
    parser.add_argument("--http-seconds", type=float, help="seconds of each HTTP run")
    parser.add_argument("--http-rounds", type=int, help="HTTP runs per stack at --concurrency")
    parser.add_argument("--schemas", type=counts, help="tenant schema counts")
    parser.add_argument("--databases", type=int, help="tenant databases")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="no CPU pinning")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where results go")
    parser.add_argument("--report", type=Path, help="print the report of a saved results file")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    for key, value in sizes.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    for name in ("rounds", "requests", "concurrency", "http_rounds", "databases"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.http_seconds <= 0:
        parser.error("--http-seconds must be more than 0")
    if args.concurrency not in args.sweep:
        args.sweep = sorted({*args.sweep, args.concurrency})
    chosen = list(envs.PEERS) if args.peers is None else args.peers.split(",")
    unknown = [peer for peer in chosen if peer not in envs.PEERS]
    if unknown:
        parser.error(f"unknown peers {unknown}; choose from {', '.join(envs.PEERS)}")
    args.peers = chosen
    return args


# --------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    url: str
    """The server: a database to connect to for creating others (``postgres``)."""
    postmaster_pid: int | None
    """Its main process when it is ours to pin."""

    def database(self, name: str) -> str:
        return urlsplit(self.url)._replace(path=f"/{name}").geturl()

    @property
    def shown(self) -> str:
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        user = f"{parts.username}@" if parts.username else ""
        return f"postgresql://{user}{host}:{parts.port or 5432}"


@contextlib.contextmanager
def postgres(url: str | None) -> Iterator[Server]:
    if url:
        yield Server(url, None)
        return
    # Imported only here: the harness needs PostgreSQL's server programs on this machine.
    from tests.support.postgres import running_server

    with running_server(settings=SERVER_SETTINGS) as server:
        pid = int((server.data_dir / "postmaster.pid").read_text().split()[0])
        yield Server(server.url("postgres"), pid)


# --------------------------------------------------------------------------------------
# Workers
# --------------------------------------------------------------------------------------


def run_json(command: Sequence[str | Path], url: str) -> Any:
    """Runs a script on PostgreSQL at *url* that writes its results to ``--json PATH``;
    returns them. The URL goes in the environment: a password stays off command lines."""
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "results.json"
        # Peers may log to standard output: it goes with the progress, to standard error.
        subprocess.run(
            [str(part) for part in command] + ["--json", str(path)],
            check=True,
            cwd=REPO_ROOT,
            stdout=sys.stderr,
            env={**os.environ, URL_ENV: url},
        )
        return json.loads(path.read_text())


def groups(args: argparse.Namespace) -> dict[str, tuple[str, ...]]:
    return {
        group: stacks
        for group, stacks in report.GROUPS.items()
        if group in ("dbrouter", *args.peers)
    }


def order(args: argparse.Namespace) -> list[str]:
    """Every stack of the run, each once, in the report's order."""
    seen: list[str] = []
    for stacks in groups(args).values():
        seen += [stack for stack in stacks if stack not in seen]
    return seen


def connections_needed(args: argparse.Namespace) -> int:
    """Server connections the run may hold at once: every pool of the stacks that are open
    together (all of them over HTTP, one environment's in-process), and the tenant runs."""
    together = [len(stacks) for stacks in groups(args).values()]
    if "http" not in args.skip:
        together.append(len(order(args)))
    needed = POOL_CONNECTIONS * max(together) + 10
    if "tenants" not in args.skip:
        needed = max(needed, 80 + 10)
    return needed


def check_connections(free: int, server: Server, args: argparse.Namespace) -> None:
    needed = connections_needed(args)
    if free < needed:
        raise SystemExit(
            f"PostgreSQL at {server.shown} has {free} connections left of its max_connections;"
            f" this run needs about {needed} at once ({POOL_CONNECTIONS} for each stack's"
            " pool, every stack served at once over HTTP). Raise max_connections, or need"
            " fewer with --skip http or --peers; the throwaway server (no --url) allows 500."
        )


def in_process(pythons: dict[str, Path], url: str, args: argparse.Namespace) -> dict[str, Any]:
    results = {}
    for group, stacks in groups(args).items():
        print(f"in-process: {group} ({', '.join(stacks)})", file=sys.stderr, flush=True)
        results[group] = run_json(
            [
                pythons[group],
                WORKER,
                "measure",
                f"--stacks={','.join(stacks)}",
                f"--rounds={args.rounds}",
                f"--requests={args.requests}",
                f"--concurrency={args.concurrency}",
            ],
            url,
        )
    return results


def round_trips(pythons: dict[str, Path], url: str, args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for group in groups(args):
        stacks = [stack for stack in order(args) if report.home(stack) == group]
        print(f"round trips: {group}", file=sys.stderr, flush=True)
        found = run_json(
            [
                pythons[group],
                WORKER,
                "round-trips",
                f"--stacks={','.join(stacks)}",
                f"--requests={args.trip_requests}",
            ],
            url,
        )
        results.update(found["stacks"])
    return results


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Served:
    stack: str
    process: subprocess.Popen[bytes]
    port: int
    headers: list[tuple[str, str]]
    log: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def wait_ready(served: Served) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    request = urllib.request.Request(served.base_url + "/items/1", headers=dict(served.headers))
    while True:
        if served.process.poll() is not None:
            raise RuntimeError(f"{served.stack} did not start:\n{served.log.read_text()[-3000:]}")
        with (
            contextlib.suppress(urllib.error.URLError, ConnectionError),
            urllib.request.urlopen(request, timeout=5) as answer,
        ):
            if answer.status == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{served.stack} did not answer within {READY_TIMEOUT:.0f} s")
        time.sleep(0.2)


@contextlib.contextmanager
def serving(
    pythons: dict[str, Path], url: str, stacks: Sequence[str], tenants: set[str]
) -> Iterator[list[Served]]:
    """Every stack under uvicorn in its environment, stopped when the block ends."""
    started: list[Served] = []
    with tempfile.TemporaryDirectory() as logs:
        try:
            for stack in stacks:
                port = free_port()
                log = Path(logs) / f"{stack}.log"
                with log.open("wb") as output:
                    process = subprocess.Popen(
                        [
                            str(pythons[report.home(stack)]),
                            str(WORKER),
                            "serve",
                            f"--stack={stack}",
                            f"--port={port}",
                        ],
                        cwd=REPO_ROOT,
                        env={**os.environ, URL_ENV: url},
                        stdout=output,
                        stderr=subprocess.STDOUT,
                    )
                headers = [("X-Tenant-ID", "acme")] if stack in tenants else []
                started.append(Served(stack, process, port, headers, log))
            for served in started:
                wait_ready(served)
            yield started
        finally:
            for served in started:
                served.process.terminate()
            for served in started:
                try:
                    served.process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    served.process.kill()
                    served.process.wait()


def http(
    pythons: dict[str, Path],
    url: str,
    args: argparse.Namespace,
    tenants: set[str],
    load_cpus: set[int] | None,
) -> dict[str, Any]:
    from machine import cpu_seconds

    stacks = order(args)
    levels_run: dict[str, dict[str, dict[str, list[dict[str, float]]]]] = {}
    client = ""
    with serving(pythons, url, stacks, tenants) as served:

        def run(server: Served, workload: str, level: int, seconds: float) -> dict[str, float]:
            nonlocal client
            method, route = ROUTES[workload]
            before = cpu_seconds(server.process.pid)
            client, measured = load(
                server.base_url,
                Load(method, route, level, seconds, server.headers),
                python=pythons["dbrouter"],
                cpus=load_cpus,
            )
            cpu = cpu_seconds(server.process.pid) - before
            if measured.errors:
                raise RuntimeError(f"{server.stack}: {measured.errors} failed {workload} requests")
            return {
                "throughput": measured.throughput,
                "p50_ms": measured.p50_ms,
                "p99_ms": measured.p99_ms,
                "cpu_us": 1e6 * cpu / max(1, measured.requests),
            }

        for workload in ROUTES:
            for server in served:
                run(server, workload, max(args.sweep), 1.0)
        for level in reversed(args.sweep):
            main = level == args.concurrency
            for workload in ROUTES if main else ("read",):
                rounds = args.http_rounds if main else 1
                print(f"http: {workload}, concurrency {level}", file=sys.stderr, flush=True)
                for index in rotation(len(served), rounds):
                    server = served[index]
                    runs = levels_run.setdefault(str(level), {}).setdefault(server.stack, {})
                    runs.setdefault(workload, []).append(
                        run(server, workload, level, args.http_seconds)
                    )
    return {"client": client, "levels": levels_run}


def tenant_scale(python: Path, server: Server, args: argparse.Namespace) -> dict[str, Any]:
    print("tenant scale", file=sys.stderr, flush=True)
    results: dict[str, Any] = run_json(
        [
            python,
            TENANT_SCALE,
            f"--schemas={','.join(map(str, args.schemas))}",
            f"--databases={args.databases}",
            f"--requests={args.tenant_requests}",
            f"--concurrency={args.concurrency}",
        ],
        server.url,
    )
    return results


def plot(results_path: Path, png: Path) -> str | None:
    """Draws the plot with the plot environment's matplotlib; why not, if it could not."""
    try:
        python = envs.ready(envs.PLOT)
        subprocess.run(
            [str(python), str(PLOTTER), str(results_path), str(png)], check=True, cwd=REPO_ROOT
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"no plot: {exc}"
    return None


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    pythons = {"dbrouter": envs.ready(envs.DBROUTER)}
    results: dict[str, Any] = {
        "machine": describe(),
        "settings": {
            key: getattr(args, key) for key in (*FULL, "concurrency", "peers", "skip", "quick")
        },
        "order": order(args),
    }
    with postgres(args.url) as server:
        results["machine"]["postgresql server"] = server.shown
        name = f"dbrouter_bench_{os.getpid()}"
        database = server.database(name)
        prepared = run_json(
            [pythons["dbrouter"], WORKER, "prepare", f"--database={name}"], server.url
        )
        try:
            check_connections(prepared["connections_free"], server, args)
            for peer in args.peers:
                pythons[peer] = envs.ready(envs.PEERS[peer])
            results["machine"]["postgresql"] = prepared["postgresql"]
            results["labels"] = {
                stack: about["label"] for stack, about in prepared["stacks"].items()
            }
            tenants = {stack for stack, about in prepared["stacks"].items() if about["tenant"]}
            load_cpus = None
            if args.pin and server.postmaster_pid is not None:
                everywhere = os.sched_getaffinity(0)
                results["machine"]["pinning"] = pin_cpus(server.postmaster_pid) or "none"
                load_cpus = everywhere - os.sched_getaffinity(0) or None
            if not prepared["pg_stat_statements"]:
                print(
                    "  (no pg_stat_statements on this server: no statement mix)", file=sys.stderr
                )
            phases: dict[str, Callable[[], Any]] = {
                "in_process": lambda: in_process(pythons, database, args),
                "round_trips": lambda: round_trips(pythons, database, args),
                "http": lambda: http(pythons, database, args, tenants, load_cpus),
                "tenants": lambda: tenant_scale(pythons["dbrouter"], server, args),
            }
            results["phase_seconds"] = {}
            for phase, measure in phases.items():
                if phase.replace("_", "-") in args.skip:
                    continue
                started = time.monotonic()
                results[phase] = measure()
                results["phase_seconds"][phase] = round(time.monotonic() - started)
        finally:
            run_json([pythons["dbrouter"], WORKER, "drop", f"--database={name}"], server.url)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        print(report.render(json.loads(args.report.read_text())), end="")
        return 0
    python = envs.ready(envs.DBROUTER)
    if Path(sys.prefix).resolve() != envs.DBROUTER.path.resolve():
        # The throwaway server's harness is the project's: go on in its environment.
        os.execv(python, [str(python), __file__, *(sys.argv[1:] if argv is None else argv)])
    started = time.monotonic()
    results = run(args)
    results["seconds"] = round(time.monotonic() - started)
    args.output.mkdir(parents=True, exist_ok=True)
    results_path = args.output / "compare.json"
    results_path.write_text(json.dumps(results, indent=2))
    text = report.render(results)
    (args.output / "compare.md").write_text(text)
    print(text, end="")
    trouble = None if "http" in args.skip else plot(results_path, args.output / "throughput.png")
    print(f"\n{trouble or 'plot: ' + str(args.output / 'throughput.png')}")
    print(f"results: {results_path}; total time {results['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
