"""Load over HTTP from a process of its own: wrk when it is installed, else the async httpx
client of ``http_client.py``.

wrk (``apt-get install wrk`` on Debian and Ubuntu) is written in C and costs the machine
far less per request than any Python client, which matters when the load, the server and
PostgreSQL share a few CPUs. The httpx client is the fallback: its figures are lower,
and the report says which one ran.
"""

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ROWS", "Load", "LoadResult", "load", "parse_wrk", "wrk_script"]

ROWS = 1000
"""Rows of the items table: requests go through ids 1..ROWS."""
CLIENT = Path(__file__).with_name("http_client.py")
TIME_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


@dataclass(frozen=True)
class Load:
    """What to send: *method* to *route* (``{id}`` going through rows 1..ROWS), with
    *concurrency* requests in flight for *seconds*."""

    method: str
    route: str
    concurrency: int
    seconds: float
    headers: Sequence[tuple[str, str]] = ()

    def path(self, index: int) -> str:
        return self.route.replace("{id}", str(index % ROWS + 1))

    @property
    def options(self) -> list[str]:
        """The load as options of ``http_client.py``."""
        return [
            f"--method={self.method}",
            f"--route={self.route}",
            f"--concurrency={self.concurrency}",
            f"--seconds={self.seconds}",
            *(f"--header={name}: {value}" for name, value in self.headers),
        ]


@dataclass(frozen=True)
class LoadResult:
    """What one load run measured."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    """Answers other than 2xx and 3xx, and socket errors."""

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds


def wrk_script(method: str, route: str) -> str:
    """A wrk Lua script sending *method* to *route*, ``{id}`` going through rows 1..ROWS."""
    head, _, tail = route.partition("{id}")
    return (
        "local counter = 0\n"
        "request = function()\n"
        "  counter = counter + 1\n"
        f'  return wrk.format("{method}", "{head}" .. (counter % {ROWS} + 1) .. "{tail}")\n'
        "end\n"
    )


def _milliseconds(figure: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", figure)
    if match is None:
        raise ValueError(f"not a wrk duration: {figure!r}")
    return float(match[1]) * TIME_UNITS[match[2]]


def parse_wrk(output: str) -> LoadResult:
    """The figures of a ``wrk --latency`` report."""
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", output)
    p50 = re.search(r"^\s*50(?:\.0+)?%\s+(\S+)", output, re.MULTILINE)
    p99 = re.search(r"^\s*99(?:\.0+)?%\s+(\S+)", output, re.MULTILINE)
    if done is None or p50 is None or p99 is None:
        raise ValueError(f"not a wrk --latency report:\n{output}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return LoadResult(
        requests=int(done[1]),
        seconds=_milliseconds(done[2] + done[3]) / 1e3,
        p50_ms=_milliseconds(p50[1]),
        p99_ms=_milliseconds(p99[1]),
        errors=(int(errors[1]) if errors else 0)
        + (sum(int(count) for count in sockets.groups()) if sockets else 0),
    )


def load(
    base_url: str, what: Load, *, python: Path, cpus: set[int] | None = None
) -> tuple[str, LoadResult]:
    """Sends *what* to *base_url* from another process (on *cpus*, if given): the client's
    name and what it measured. Without wrk, the httpx client runs in *python*."""
    wrk = shutil.which("wrk")
    with tempfile.TemporaryDirectory() as scratch:
        if wrk:
            script = Path(scratch) / "requests.lua"
            script.write_text(wrk_script(what.method, what.route))
            command = [
                wrk,
                "--latency",
                f"--threads={min(2, what.concurrency)}",
                f"--connections={what.concurrency}",
                f"--duration={max(1, round(what.seconds))}s",
                f"--script={script}",
                *(f"--header={name}: {value}" for name, value in what.headers),
                base_url,
            ]
        else:
            command = [str(python), str(CLIENT), base_url, *what.options]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        if cpus:
            os.sched_setaffinity(process.pid, cpus)
        output, _ = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{command[0]} failed (exit {process.returncode}):\n{output}")
    if wrk:
        return "wrk", parse_wrk(output)
    return "httpx", LoadResult(**json.loads(output))
