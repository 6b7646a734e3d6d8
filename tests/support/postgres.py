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
