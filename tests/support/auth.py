"""Password authentication on a harness server.

A harness server trusts every connection from 127.0.0.1, as initdb's ``-A trust`` and the
harness's own rules say. `require_password` puts a rule ahead of those, so that one role
has to give its password, and waits until the server has reloaded its rules.
"""

from __future__ import annotations

import time

import psycopg

from tests.support.postgres import HOST, PostgresServer

__all__ = ["create_role", "require_password"]

_RELOAD_WAIT = 10.0


def create_role(server: PostgresServer, role: str, password: str, *options: str) -> None:
    """Create the login role *role* on *server* with *password*, stored as SCRAM-SHA-256."""
    literal = "'" + password.replace("'", "''") + "'"
    server.execute(
        "SET password_encryption = 'scram-sha-256';"
        f' CREATE ROLE "{role}" LOGIN PASSWORD {literal} {" ".join(options)}'
    )


def require_password(server: PostgresServer, role: str, *, method: str = "scram-sha-256") -> None:
    """Make *server* ask *role* for its password (*method*: ``scram-sha-256`` or ``md5``)
    on TCP connections from the harness host, then wait until the rule is in force."""
    hba = server.data_dir / "pg_hba.conf"
    rule = f"host all {role} {HOST}/32 {method}\n"
    rules = hba.read_text()
    if rule not in rules:
        # Rewritten in place: the file keeps its owner, the server's account.
        hba.write_text(rule + rules)
    server.execute("SELECT pg_reload_conf()")
    deadline = time.monotonic() + _RELOAD_WAIT
    while _trusted(server, role):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server on port {server.port} still trusts {role!r}")
        time.sleep(0.05)


def _trusted(server: PostgresServer, role: str) -> bool:
    """Whether *role* still gets in without its password."""
    try:
        connection = psycopg.connect(
            host=HOST,
            port=server.port,
            user=role,
            password="not the password",
            dbname="postgres",
            connect_timeout=5,
        )
    except psycopg.OperationalError as exc:
        if "password authentication failed" in str(exc):
            return False
        raise
    connection.close()
    return True
