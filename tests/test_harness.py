"""The suite's own account of itself: the top of every run says which PostgreSQL (and
which PgBouncer) it uses, with no password in sight."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import POSTGRES_URL_ENV, pytest_report_header
from tests.support.postgres import BINDIR_ENV, find_install


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
