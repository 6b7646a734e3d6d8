"""Throwaway PostgreSQL servers for the test suite: the harness the package ships in
`dbrouter.testing.postgres`, under the names the suite has always used."""

from __future__ import annotations

from dbrouter.testing.postgres import (
    BINDIR_ENV,
    HOST,
    SUPERUSER,
    USER_ENV,
    PostgresInstall,
    PostgresServer,
    find_bindir,
    find_install,
    free_port,
    running_server,
    wait_for_replay,
)

__all__ = [
    "BINDIR_ENV",
    "CLIENT_BACKENDS",
    "HOST",
    "SUPERUSER",
    "USER_ENV",
    "PostgresInstall",
    "PostgresServer",
    "find_bindir",
    "find_install",
    "free_port",
    "running_server",
    "wait_for_replay",
]

CLIENT_BACKENDS = (
    "pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
)
"""The sessions clients have open, the asking one left out. The server's own processes
show in ``pg_stat_activity`` too, under the database they work on: an autovacuum worker
visiting a test's database is not a connection anybody opened."""
