"""The pure pieces of the comparison in ``benchmarks/``: its options, its arithmetic, the wrk
report it reads, the round trips it counts on the wire, and the report it prints from
fixed figures. Running the benchmarks themselves is not a test: their figures are only
meaningful on a quiet machine."""

from __future__ import annotations

import argparse
import struct
import sys
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
# The benchmark scripts import each other as top-level modules, as when run as scripts.
if str(BENCHMARKS) not in sys.path:
    sys.path.append(str(BENCHMARKS))

import compare  # noqa: E402
import envs  # noqa: E402
import load  # noqa: E402
import plot  # noqa: E402
import report  # noqa: E402
import stacks  # noqa: E402
import tenant_scale  # noqa: E402
import worker  # noqa: E402
from stats import Ratio, counts, percentile, ratio, rotation  # noqa: E402
from wire import FrontendCounter  # noqa: E402

# -- arithmetic ----------------------------------------------------------------------------


def test_ratio_is_the_quotient_of_medians_with_the_range_of_paired_rounds() -> None:
    found = ratio([110.0, 120.0, 90.0], [100.0, 100.0, 100.0])
    assert found == Ratio(value=1.1, low=0.9, high=1.2)
    assert str(found) == "1.10 (0.90-1.20)"
    assert found.span == pytest.approx(1.2 / 0.9)


def test_a_ratio_of_one_round_shows_no_range() -> None:
    assert str(ratio([50.0], [100.0])) == "0.50"


@pytest.mark.parametrize(
    ("sides", "bases", "message"),
    [
        ([], [], "same number of rounds"),
        ([1.0, 2.0], [1.0], "same number of rounds"),
        ([1.0], [0.0], "positive"),
    ],
)
def test_ratio_refuses_rounds_it_cannot_pair(
    sides: list[float], bases: list[float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ratio(sides, bases)


def test_percentile_is_nearest_rank() -> None:
    values = [float(value) for value in range(1, 101)]
    assert percentile(values, 0.50) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([7.0], 0.99) == 7.0
    with pytest.raises(ValueError, match="no values"):
        percentile([], 0.5)
    with pytest.raises(ValueError, match=r"within 0\.\.1"):
        percentile(values, 99)


def test_rotation_reverses_every_other_round() -> None:
    assert list(rotation(3, 3)) == [0, 1, 2, 2, 1, 0, 0, 1, 2]


# -- options -------------------------------------------------------------------------------


def test_quick_sizes_and_explicit_options() -> None:
    quick = compare.parse_args(["--quick", "--url", "postgresql://db/postgres"])
    assert (quick.rounds, quick.requests, quick.databases) == (2, 300, 20)
    assert quick.schemas == [10, 100]
    assert quick.peers == list(envs.PEERS)
    full = compare.parse_args(["--url", "postgresql://db/postgres", "--rounds", "3"])
    assert full.rounds == 3
    assert full.schemas == [10, 100, 1000, 10000]
    assert full.sweep == [1, 8, 32, 64]


def test_the_concurrency_of_the_tables_joins_the_sweep() -> None:
    args = compare.parse_args(["--sweep", "1,8", "--concurrency", "16", "--peers", "fastapi-sqla"])
    assert args.sweep == [1, 8, 16]
    assert args.peers == ["fastapi-sqla"]
    assert list(compare.groups(args)) == ["dbrouter", "fastapi-sqla"]
    assert compare.order(args)[-1] == "fastapi-sqla"


def test_the_connections_a_run_needs() -> None:
    full = compare.parse_args([])
    assert compare.connections_needed(full) == 30 * 10 + 10
    fewer = compare.parse_args(["--skip", "http", "--skip", "tenants", "--peers", "fastapi-sqla"])
    assert compare.connections_needed(fewer) == 30 * 6 + 10
    server = compare.Server("postgresql://bench:secret@db.internal:6432/postgres", None)
    with pytest.raises(SystemExit, match="has 90 connections left") as refused:
        compare.check_connections(90, server, full)
    assert "about 310 at once" in str(refused.value)
    assert "postgresql://bench@db.internal:6432" in str(refused.value)
    assert "secret" not in str(refused.value)
    compare.check_connections(310, server, full)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--peers", "sqlmodel"], "unknown peers ['sqlmodel']; choose from advanced-alchemy"),
        (["--rounds", "0"], "--rounds must be at least 1"),
        (["--http-seconds", "0"], "--http-seconds must be more than 0"),
        (["--sweep", "8,1"], "need increasing numbers of at least 1"),
        (["--sweep", "many"], "not a list of numbers"),
        (["--skip", "everything"], "invalid choice: 'everything'"),
    ],
)
def test_bad_options_are_named(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        compare.parse_args(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_the_scripts_need_a_server(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DBROUTER_BENCH_URL", raising=False)
    for parse, argv in (
        (worker.parse_args, ["measure", "--stacks", "get_db", "--json", "out.json"]),
        (tenant_scale.parse_args, []),
    ):
        with pytest.raises(SystemExit):
            parse(argv)
        assert "--url or $DBROUTER_BENCH_URL is required" in capsys.readouterr().err
    monkeypatch.setenv("DBROUTER_BENCH_URL", "postgresql://db/postgres")
    assert tenant_scale.parse_args([]).url == "postgresql://db/postgres"


def test_an_unknown_stack_lists_the_others() -> None:
    with pytest.raises(SystemExit, match="unknown stack 'nope'; choose from hand-written, get_db"):
        stacks.find("nope")


def test_counts_on_the_command_line() -> None:
    assert counts("10,100") == [10, 100]
    for bad in ("100,10", "0,1", "1,1", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            counts(bad)
    assert tenant_scale.parse_args(["--url", "postgresql://db", "--schemas", "5,50"]).schemas == [
        5,
        50,
    ]
    assert tenant_scale.tenant_id(7) == "t00007"


# -- what wrk prints ---------------------------------------------------------------------

WRK_OUTPUT = """\
Running 5s test @ http://127.0.0.1:41000
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    10.52ms    3.01ms  48.10ms   81.00%
    Req/Sec     1.52k   120.00     1.80k    70.00%
  Latency Distribution
     50%    9.87ms
     75%   11.20ms
     90%   13.90ms
     99%    1.02s
  15234 requests in 5.01s, 2.10MB read
  Socket errors: connect 0, read 1, write 0, timeout 2
  Non-2xx or 3xx responses: 4
Requests/sec:   3040.72
Transfer/sec:    429.11KB
"""


def test_a_wrk_report_is_read_with_its_units() -> None:
    found = load.parse_wrk(WRK_OUTPUT)
    assert found.requests == 15234
    assert found.seconds == pytest.approx(5.01)
    assert found.p50_ms == pytest.approx(9.87)
    assert found.p99_ms == pytest.approx(1020.0)
    assert found.errors == 7
    assert found.throughput == pytest.approx(15234 / 5.01)


def test_something_else_is_not_a_wrk_report() -> None:
    with pytest.raises(ValueError, match="not a wrk --latency report"):
        load.parse_wrk("Requests/sec: 100\n")


def test_the_wrk_script_goes_through_the_rows() -> None:
    script = load.wrk_script("POST", "/items/{id}/hits")
    assert 'wrk.format("POST", "/items/" .. (counter % 1000 + 1) .. "/hits")' in script


def test_a_load_as_the_fallback_client_takes_it() -> None:
    what = load.Load("GET", "/items/{id}", 8, 2.5, [("X-Tenant-ID", "acme")])
    assert what.path(0) == "/items/1"
    assert what.path(1000) == "/items/1"
    assert what.path(999) == "/items/1000"
    assert what.options == [
        "--method=GET",
        "--route=/items/{id}",
        "--concurrency=8",
        "--seconds=2.5",
        "--header=X-Tenant-ID: acme",
    ]


# -- round trips on the wire ---------------------------------------------------------------


def message(kind: bytes, payload: bytes = b"") -> bytes:
    return kind + struct.pack("!i", 4 + len(payload)) + payload


def test_the_counter_answers_encryption_requests_and_counts_round_trips() -> None:
    counter = FrontendCounter()
    assert counter.feed(struct.pack("!ii", 8, 80877103)) == b"N"
    assert not counter.started
    startup = struct.pack("!ii", 17, 196608) + b"user\0bob\0\0"[:9]
    assert counter.feed(startup) is None
    assert counter.started
    # An extended-protocol statement (Parse, Bind, Execute, Sync) and a simple query,
    # cut in the middle of a message.
    stream = (
        message(b"P", b"\0SELECT 1\0\0\0")
        + message(b"B", b"\0\0" + b"\0" * 6)
        + message(b"E", b"\0\0\0\0\0")
        + message(b"S")
        + message(b"Q", b"BEGIN\0")
    )
    counter.feed(stream[:7])
    assert counter.round_trips == 0
    counter.feed(stream[7:])
    assert counter.round_trips == 2
    counter.feed(message(b"X"))
    assert counter.round_trips == 2


# -- the report ----------------------------------------------------------------------------


def rounds(*throughputs: float, cpu: float = 100.0) -> list[dict[str, float]]:
    return [{"throughput": value, "cpu_us": cpu} for value in throughputs]


def fixed_results() -> dict[str, Any]:
    same = {"read": rounds(1000, 1000), "commit": rounds(500, 500)}
    return {
        "machine": {"cores": "2"},
        "settings": {"concurrency": 32, "rounds": 2, "requests": 100, "sweep": [1, 32]},
        "order": ["hand-written", "get_db", "tenant-schema", "fastapi-sqla"],
        "labels": {
            "get_db": "dbrouter get_db",
            "tenant-schema": "dbrouter get_tenant_db, schema",
        },
        "in_process": {
            "dbrouter": {
                "versions": {"python": "3.11"},
                "stacks": {
                    "hand-written": same,
                    "get_db": {
                        "read": rounds(1200, 1100, cpu=80.0),
                        "commit": rounds(600, 550),
                    },
                    "tenant-schema": {"read": rounds(1100, 1100), "commit": rounds(450, 450)},
                },
            },
            "fastapi-sqla": {
                "versions": {"fastapi-sqla": "4.0.1"},
                "stacks": {
                    "hand-written": same,
                    "get_db": {"read": rounds(1150, 1150), "commit": rounds(575, 575)},
                    "fastapi-sqla": {"read": rounds(800, 800), "commit": rounds(600, 600)},
                },
            },
        },
        "round_trips": {
            "get_db": {
                "read": {"round_trips": 6.0, "statements": {"BEGIN": 2.0, "ROLLBACK": 2.0}},
                "commit": {"round_trips": 6.0, "statements": None},
            }
        },
        "http": {
            "client": "wrk",
            "levels": {
                "32": {
                    "hand-written": {
                        "read": [{"throughput": 900, "p50_ms": 30, "p99_ms": 80, "cpu_us": 900}]
                    },
                    "get_db": {
                        "read": [{"throughput": 990, "p50_ms": 28, "p99_ms": 70, "cpu_us": 810}]
                    },
                },
                "1": {
                    "get_db": {
                        "read": [{"throughput": 300, "p50_ms": 3, "p99_ms": 5, "cpu_us": 800}]
                    }
                },
            },
        },
        "tenants": {
            "schema": [
                {"tenants": 10, "rss_mb": 80.0, "compiled_cache": 3, "p50_ms": 1, "p99_ms": 2},
                {"tenants": 10000, "rss_mb": 84.0, "compiled_cache": 3, "p50_ms": 1, "p99_ms": 3},
            ],
            "database": {
                "databases": 200,
                "max_engines": 50,
                "max_connections": 80,
                "server_connections_max": 81,
                "router_connections_max": 80,
                "cold_p50_ms": 10.0,
                "cold_p99_ms": 30.0,
                "random_p50_ms": 5.0,
                "random_p99_ms": 9.0,
                "engines_built": 300,
                "engines_evicted": 250,
                "statuses": {"200": 2200},
            },
        },
    }


def test_the_targets_are_judged_on_ratios_in_one_process() -> None:
    found = {target.name: target for target in report.targets(fixed_results())}
    read = found["get_db read >= 1.15x the hand-written dependency"]
    assert read.met is True
    assert "1.15 (1.10-1.20)" in read.detail
    assert found["get_db commit >= 1.15x the hand-written dependency"].met is True
    # fastapi-sqla against the get_db of its own process: 1150 / 800 reads, 575 / 600 commits.
    assert found["get_db read at least fastapi-sqla"].met is True
    assert "1.44" in found["get_db read at least fastapi-sqla"].detail
    assert found["get_db commit at least fastapi-sqla"].met is False
    assert found["get_db read at least advanced-alchemy"].met is None
    schema = found["dbrouter get_tenant_db, schema read >= 0.95x get_db"]
    assert schema.met is True
    assert found["dbrouter get_tenant_db, schema commit >= 0.95x get_db"].met is False
    assert found["memory flat in tenant count (schema strategy)"].met is True
    budget = found["server connections within max_connections (database strategy)"]
    assert budget.met is False
    assert "at most 81 seen, budget 80" in budget.detail
    assert str(budget).startswith("- server connections within max_connections")
    assert "**NOT MET**" in str(budget)


def test_the_report_shows_every_table() -> None:
    text = report.render(fixed_results())
    assert "| dbrouter get_db " in text
    assert "1.15 (1.10-1.20)" in text
    # CPU per request against the hand-written dependency: 80 / 100.
    assert "0.80" in text
    assert "load from wrk" in text
    assert "| c=1 | c=32 |" in text.replace("  ", " ")
    assert "2.0 x BEGIN, 2.0 x ROLLBACK" in text
    assert "| 10,000 " in text
    assert "most server connections seen (pg_stat_activity)" in text
    assert "**NOT MET**" in text
    for line in text.splitlines():
        if line.startswith("|"):
            assert line.endswith("|"), line


def test_a_noisy_run_says_so() -> None:
    results = fixed_results()
    results["in_process"]["dbrouter"]["stacks"]["get_db"]["read"] = rounds(1500, 900)
    assert "Noisy: paired rounds of get_db read (0.90-1.50)" in report.render(results)


def test_the_plot_has_a_line_per_stack_measured_over_http() -> None:
    assert plot.series(fixed_results()) == {
        "hand-written": [(32, 900.0)],
        "dbrouter get_db": [(1, 300.0), (32, 990.0)],
    }
