"""The comparison's tables and targets, from the results ``compare.py`` collects.

Everything here is plain arithmetic on a results dictionary (the JSON ``compare.py``
writes), so a report can be made again from a saved run:
``python benchmarks/compare.py --report benchmarks/results/compare.json``.
"""

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stats import Ratio, ratio

__all__ = [
    "BASE",
    "GET_DB",
    "GROUPS",
    "Target",
    "home",
    "render",
    "table",
    "targets",
]

BASE = "hand-written"
GET_DB = "get_db"
GROUPS: dict[str, tuple[str, ...]] = {
    "dbrouter": (BASE, GET_DB, "no-pre-ping", "asyncpg", "tenant-database", "tenant-schema"),
    "advanced-alchemy": (BASE, GET_DB, "advanced-alchemy"),
    "fastapi-sqla": (BASE, GET_DB, "fastapi-sqla"),
    "fastapi-async-sqlalchemy": (BASE, GET_DB, "fastapi-async-sqlalchemy"),
    "fastapi-tenancy": (BASE, GET_DB, "tenant-schema", "fastapi-tenancy"),
}
"""Which stacks are measured side by side in one process, by environment."""
PEERS = ("advanced-alchemy", "fastapi-sqla", "fastapi-async-sqlalchemy", "fastapi-tenancy")
TENANT_STACKS = ("tenant-database", "tenant-schema")
TARGET_OVER_BASE = 1.15
TARGET_TENANT = 0.95
FLAT_MEMORY = 1.10
"""Resident memory at the most tenants may be at most this much of that at the fewest."""
NOISY_SPAN = 1.15
WORKLOADS = ("read", "commit")


def home(stack: str) -> str:
    """The environment a stack is measured in on its own: a peer's, else dbrouter's."""
    return stack if stack in PEERS else "dbrouter"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table, columns padded to line up in a terminal as well."""
    widths = [max(len(row[index]) for row in [headers, *rows]) for index in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        padded = (
            cell.ljust(width) if index == 0 else cell.rjust(width)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )
        return "| " + " | ".join(padded) + " |"

    rule = (
        "|"
        + "|".join(
            ("-" * (width + 1)) + (":" if index else "-") for index, width in enumerate(widths)
        )
        + "|"
    )
    return [line(headers), rule, *(line(row) for row in rows)]


def _figures(rounds: Sequence[Mapping[str, float]], key: str) -> list[float]:
    return [float(entry[key]) for entry in rounds]


def _ratio(
    side: Sequence[Mapping[str, float]] | None,
    base: Sequence[Mapping[str, float]] | None,
    key: str = "throughput",
) -> Ratio | None:
    if not side or not base or len(side) != len(base):
        return None
    return ratio(_figures(side, key), _figures(base, key))


def _show(value: Ratio | float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, Ratio):
        return str(value)
    return f"{value:.{digits}f}"


def label(results: Mapping[str, Any], stack: str) -> str:
    labels: Mapping[str, str] = results.get("labels", {})
    return labels.get(stack, stack)


def in_process_ratio(
    results: Mapping[str, Any],
    stack: str,
    workload: str,
    base: str = BASE,
    key: str = "throughput",
) -> Ratio | None:
    """*stack* against *base* in the process of *stack*'s own environment."""
    group = results.get("in_process", {}).get(home(stack))
    if group is None:
        return None
    stacks = group["stacks"]
    if stack not in stacks or base not in stacks:
        return None
    return _ratio(stacks[stack][workload], stacks[base][workload], key)


def _in_process_rows(results: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for stack in results.get("order", []):
        cells = [label(results, stack)]
        for workload in WORKLOADS:
            cells.append(_show(in_process_ratio(results, stack, workload)))
        for workload in WORKLOADS:
            versus = (
                None if stack == GET_DB else in_process_ratio(results, stack, workload, GET_DB)
            )
            cells.append(_show(versus))
        for workload in WORKLOADS:
            cells.append(_show(in_process_ratio(results, stack, workload, key="cpu_us")))
        trips = results.get("round_trips", {}).get(stack, {})
        for workload in WORKLOADS:
            cells.append(_show(trips.get(workload, {}).get("round_trips"), 1))
        rows.append(cells)
    return rows


def _http_runs(results: Mapping[str, Any], level: int, stack: str, workload: str) -> list[Any]:
    runs: list[Any] = (
        results.get("http", {}).get("levels", {}).get(str(level), {}).get(stack, {}).get(workload)
        or []
    )
    return runs


def _median(runs: Sequence[Mapping[str, float]], key: str) -> float | None:
    return statistics.median(_figures(runs, key)) if runs else None


def _http_rows(results: Mapping[str, Any], level: int) -> list[list[str]]:
    rows = []
    for stack in results.get("order", []):
        cells = [label(results, stack)]
        for workload in WORKLOADS:
            runs = _http_runs(results, level, stack, workload)
            base = _http_runs(results, level, BASE, workload)
            cells += [
                _show(_ratio(runs, base)),
                _show(_median(runs, "p50_ms")),
                _show(_median(runs, "p99_ms")),
                _show(_ratio(runs, base, "cpu_us")),
            ]
        rows.append(cells)
    return rows


def _sweep_rows(results: Mapping[str, Any]) -> list[list[str]]:
    levels = results.get("settings", {}).get("sweep", [])
    rows = []
    for stack in results.get("order", []):
        rows.append(
            [label(results, stack)]
            + [
                _show(_median(_http_runs(results, level, stack, "read"), "throughput"), 0)
                for level in levels
            ]
        )
    return rows


def _statement_lines(results: Mapping[str, Any]) -> list[str]:
    lines = []
    for stack in results.get("order", []):
        for workload in WORKLOADS:
            seen = (
                results.get("round_trips", {}).get(stack, {}).get(workload, {}).get("statements")
            )
            if not seen:
                continue
            mix = ", ".join(
                f"{calls:.1f} x {' '.join(query.split())[:48]}"
                for query, calls in sorted(seen.items(), key=lambda item: -item[1])
                if calls >= 0.05
            )
            lines.append(f"- {label(results, stack)}, {workload}: {mix}")
    return lines


def _schema_rows(results: Mapping[str, Any]) -> list[list[str]]:
    return [
        [
            f"{row['tenants']:,}",
            _show(row["rss_mb"], 1),
            str(row["compiled_cache"]),
            _show(row["p50_ms"]),
            _show(row["p99_ms"]),
        ]
        for row in results.get("tenants", {}).get("schema", [])
    ]


def _database_rows(results: Mapping[str, Any]) -> list[list[str]]:
    run = results.get("tenants", {}).get("database")
    if not run:
        return []
    statuses = ", ".join(
        f"{count} x {status}" for status, count in sorted(run["statuses"].items())
    )
    return [
        ["tenant databases", str(run["databases"])],
        ["max_engines / max_connections", f"{run['max_engines']} / {run['max_connections']}"],
        ["most server connections seen (pg_stat_activity)", str(run["server_connections_max"])],
        ["most connections the router counted", str(run["router_connections_max"])],
        [
            "first request of a tenant, p50 / p99 ms",
            f"{run['cold_p50_ms']:.1f} / {run['cold_p99_ms']:.1f}",
        ],
        [
            "random tenants, p50 / p99 ms",
            f"{run['random_p50_ms']:.1f} / {run['random_p99_ms']:.1f}",
        ],
        ["tenant engines built / evicted", f"{run['engines_built']} / {run['engines_evicted']}"],
        ["answers", statuses],
    ]


@dataclass(frozen=True)
class Target:
    """One of the comparison's targets and whether this run met it."""

    name: str
    met: bool | None
    """None: not measured in this run."""
    detail: str

    def __str__(self) -> str:
        status = {True: "met", False: "NOT MET", None: "not measured"}[self.met]
        return f"- {self.name}: **{status}** ({self.detail})"


def _at_least(name: str, value: Ratio | None, floor: float, what: str) -> Target:
    if value is None:
        return Target(name, None, f"no {what} in this run")
    return Target(name, value.value >= floor, f"{what} {value}, target >= {floor}")


def targets(results: Mapping[str, Any]) -> list[Target]:
    """Every target of the comparison, judged on the in-process ratios of this run."""
    found = []
    for workload in WORKLOADS:
        found.append(
            _at_least(
                f"get_db {workload} >= {TARGET_OVER_BASE}x the hand-written dependency",
                in_process_ratio(results, GET_DB, workload),
                TARGET_OVER_BASE,
                "get_db / hand-written",
            )
        )
        for peer in PEERS:
            versus = in_process_ratio(results, peer, workload, GET_DB)
            inverted = (
                None
                if versus is None
                else Ratio(1 / versus.value, 1 / versus.high, 1 / versus.low)
            )
            found.append(
                _at_least(
                    f"get_db {workload} at least {peer}",
                    inverted,
                    1.0,
                    f"get_db / {peer} in one process",
                )
            )
        for stack in TENANT_STACKS:
            found.append(
                _at_least(
                    f"{label(results, stack)} {workload} >= {TARGET_TENANT}x get_db",
                    in_process_ratio(results, stack, workload, GET_DB),
                    TARGET_TENANT,
                    f"{stack} / get_db",
                )
            )
    schema = results.get("tenants", {}).get("schema", [])
    if len(schema) >= 2 and schema[0]["rss_mb"] and schema[-1]["rss_mb"]:
        first, last = schema[0], schema[-1]
        grown = last["rss_mb"] / first["rss_mb"]
        per_tenant = (
            1024 * (last["rss_mb"] - first["rss_mb"]) / (last["tenants"] - first["tenants"])
        )
        flat = grown <= FLAT_MEMORY and last["compiled_cache"] == first["compiled_cache"]
        found.append(
            Target(
                "memory flat in tenant count (schema strategy)",
                flat,
                f"{first['rss_mb']:.1f} MB at {first['tenants']:,} tenants, "
                f"{last['rss_mb']:.1f} MB at {last['tenants']:,} (x{grown:.2f}, at most "
                f"x{FLAT_MEMORY}; {per_tenant:+.2f} KB a tenant); compiled cache "
                f"{first['compiled_cache']} -> {last['compiled_cache']} entries",
            )
        )
    else:
        found.append(Target("memory flat in tenant count (schema strategy)", None, "not run"))
    database = results.get("tenants", {}).get("database")
    if database:
        budget = database["max_connections"]
        seen = database["server_connections_max"]
        found.append(
            Target(
                "server connections within max_connections (database strategy)",
                seen <= budget,
                f"at most {seen} seen, budget {budget}",
            )
        )
    else:
        found.append(
            Target(
                "server connections within max_connections (database strategy)", None, "not run"
            )
        )
    return found


def _noisy(results: Mapping[str, Any]) -> list[str]:
    spans = []
    for stack in results.get("order", []):
        for workload in WORKLOADS:
            value = in_process_ratio(results, stack, workload)
            if value is not None and value.span > NOISY_SPAN:
                spans.append(f"{stack} {workload} ({value.low:.2f}-{value.high:.2f})")
    if not spans:
        return []
    return [
        "",
        "Noisy: paired rounds of "
        + ", ".join(spans)
        + f" span more than {NOISY_SPAN - 1:.0%}; something else used the CPU. Run again on a"
        " quiet machine before reading those ratios.",
    ]


def render(results: Mapping[str, Any]) -> str:
    """The whole report, in Markdown."""
    settings = results.get("settings", {})
    machine = results.get("machine", {})
    lines = ["## Machine", ""]
    lines += [f"- {key}: {value}" for key, value in machine.items()]
    versions = {
        group: ", ".join(f"{name} {version}" for name, version in run["versions"].items())
        for group, run in results.get("in_process", {}).items()
    }
    lines += [f"- environment {group}: {text}" for group, text in versions.items()]
    concurrency = settings.get("concurrency")
    lines += [
        "",
        f"## In-process: bare ASGI calls, concurrency {concurrency}",
        "",
        f"{settings.get('rounds')} rounds of {settings.get('requests')} requests per stack and"
        " endpoint, rotated. Ratios of requests per second (median, and the range of paired"
        " rounds) to the hand-written dependency and to get_db in the same process; CPU time"
        " per request of that process as a ratio to the hand-written one's (lower is cheaper);"
        " round trips to PostgreSQL per request.",
        "",
    ]
    lines += table(
        [
            "stack",
            "read x hand",
            "commit x hand",
            "read x get_db",
            "commit x get_db",
            "CPU read",
            "CPU commit",
            "trips read",
            "trips commit",
        ],
        _in_process_rows(results),
    )
    lines += _noisy(results)
    if results.get("http"):
        http = results["http"]
        lines += [
            "",
            f"## Over HTTP: uvicorn, one worker per stack, load from {http.get('client')}",
            "",
            f"Concurrency {concurrency}; {settings.get('http_rounds')} runs of"
            f" {settings.get('http_seconds')} s per stack and endpoint, rotated. Ratios of"
            " requests per second and of the server process's CPU time per request to the"
            " hand-written app's; latencies in milliseconds (medians of the runs).",
            "",
        ]
        lines += table(
            [
                "stack",
                "read x hand",
                "p50",
                "p99",
                "CPU",
                "commit x hand",
                "p50",
                "p99",
                "CPU",
            ],
            _http_rows(results, concurrency),
        )
        lines += ["", "Reads per second against concurrency (the plot):", ""]
        lines += table(
            ["stack", *(f"c={level}" for level in settings.get("sweep", []))], _sweep_rows(results)
        )
    statements = _statement_lines(results)
    if statements:
        lines += ["", "## Statements per request (pg_stat_statements)", "", *statements]
    if _schema_rows(results):
        lines += ["", "## Tenant scale: schema strategy", ""]
        lines += table(
            ["tenants", "RSS MB", "compiled cache", "p50 ms", "p99 ms"], _schema_rows(results)
        )
    if _database_rows(results):
        lines += ["", "## Tenant scale: database strategy", ""]
        lines += table(["", "figure"], _database_rows(results))
    lines += ["", "## Targets", "", *(str(target) for target in targets(results))]
    return "\n".join(lines) + "\n"
