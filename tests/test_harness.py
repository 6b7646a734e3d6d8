"""The suite's own account of itself: the top of every run says which PostgreSQL (and
which PgBouncer) it uses, with no password in sight."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import POSTGRES_URL_ENV, pytest_report_header
from tests.support.postgres import BINDIR_ENV, CLIENT_BACKENDS, find_install

ROOT = Path(__file__).parent.parent


def test_the_header_names_the_servers_the_suite_starts(
    monkeypatch: pytest.MonkeyPatch, pytestconfig: pytest.Config
) -> None:
    monkeypatch.delenv(POSTGRES_URL_ENV, raising=False)
    install = find_install()
    postgres, pgbouncer = pytest_report_header(pytestconfig)
    assert postgres.startswith("postgresql: throwaway servers of PostgreSQL ")
    assert f"from {install.bindir}, {install.source}" in postgres
    assert install.version().split()[1][0].isdigit(), install.version()
    assert pgbouncer.startswith("pgbouncer: ")


def test_the_header_names_a_configured_server_without_its_password(
    monkeypatch: pytest.MonkeyPatch, pytestconfig: pytest.Config
) -> None:
    url = "postgresql://app:s3cret@db.example:5433/app?password=s3cret&sslmode=require"
    monkeypatch.setenv(POSTGRES_URL_ENV, url)
    postgres, others, _ = pytest_report_header(pytestconfig)
    assert postgres == (
        "postgresql: postgresql://app:***@db.example:5433/app?sslmode=require"
        f" (from ${POSTGRES_URL_ENV})"
    )
    # Tests that stop or replicate a server still start their own.
    assert str(find_install().bindir) in others
    assert "s3cret" not in postgres + others


def test_the_header_says_when_there_is_no_postgresql(
    monkeypatch: pytest.MonkeyPatch, pytestconfig: pytest.Config, tmp_path: Path
) -> None:
    monkeypatch.delenv(POSTGRES_URL_ENV, raising=False)
    monkeypatch.setenv(BINDIR_ENV, str(tmp_path))
    postgres, _ = pytest_report_header(pytestconfig)
    assert postgres.startswith("postgresql: no server programs found, so every test that")
    assert f"{BINDIR_ENV}={str(tmp_path)!r} does not hold" in postgres


def test_every_count_of_server_sessions_leaves_the_servers_own_processes_out() -> None:
    # An autovacuum worker shows in pg_stat_activity under the database it visits; a
    # count of "connections open to this database" that includes it fails now and then.
    client_only = "backend_type = 'client backend'"
    assert client_only in CLIENT_BACKENDS
    unfiltered = []
    for folder in ("tests", "benchmarks", "examples", "src"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == Path(__file__):
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if (
                    isinstance(node, ast.Constant)
                    and isinstance(node.value, str)
                    and "FROM pg_stat_activity" in node.value
                    and client_only not in node.value
                ):
                    unfiltered.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert unfiltered == []
