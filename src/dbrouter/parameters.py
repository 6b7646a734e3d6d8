"""PostgreSQL run-time parameters set on every connection of a database: the timeouts and
``server_settings``.

Without PgBouncer they are sent when connecting (asyncpg's ``server_settings``, libpq's
``options``), so they cost nothing per transaction. PgBouncer refuses every startup
parameter it does not track itself (it tracks ``application_name`` and a few others), and
its ``ignore_startup_parameters`` only drops them unseen. Through PgBouncer they are set
at the start of each transaction instead, transaction-local
(``set_config(name, value, true)``, the function form of ``SET LOCAL``): one statement
more per transaction, and in force on whichever server connection the transaction gets.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.dialects import plugins
from sqlalchemy.engine import URL, Connection, CreateEnginePlugin, Engine

from .errors import ConfigurationError

__all__ = [
    "MAX_TIMEOUT",
    "PER_TRANSACTION_PLUGIN",
    "SEARCH_PATH",
    "PerTransactionParameters",
    "check_server_settings",
    "libpq_options",
    "milliseconds",
    "per_transaction_statement",
    "run_time_parameters",
    "split_for_pgbouncer",
]

if TYPE_CHECKING:
    from .settings import DatabaseSettings

MAX_TIMEOUT = 2_147_483.0
"""The longest timeout PostgreSQL takes, in seconds (its limit is 2^31 - 1 milliseconds)."""

_NAME = re.compile(r"[a-z_][a-z0-9_$]*(\.[a-z_][a-z0-9_$]*)*")
_NAME_LENGTH = 63

# Keys dbrouter sets itself, or whose change would break what it promises.
REFUSED: dict[str, str] = {
    "default_transaction_read_only": (
        "dbrouter decides which sessions are read-only: a replica's (replica_of) are, "
        "the others are not"
    ),
    "transaction_read_only": (
        "dbrouter decides which sessions are read-only: a replica's (replica_of) are, "
        "the others are not"
    ),
    "statement_timeout": "set it with the statement_timeout key (seconds)",
    "idle_in_transaction_session_timeout": (
        "set it with the idle_in_transaction_timeout key (seconds)"
    ),
    "client_encoding": "the drivers need UTF8 and ask for it themselves",
}

SEARCH_PATH = "search_path"
"""Pinned per transaction by the ``schema`` tenancy strategy: not settable on the database
that holds the tenants' schemas."""

# PgBouncer accepts this one as a startup parameter; every other one goes per transaction.
_STARTUP_THROUGH_PGBOUNCER = frozenset({"application_name"})


def check_server_settings(value: object) -> dict[str, str]:
    """``server_settings`` as a validated ``dict[str, str]`` with lowercase names.

    Names are PostgreSQL parameter names (``lock_timeout``, ``pg_trgm.similarity_threshold``);
    values are strings, and booleans and numbers are accepted as such (``True`` -> ``on``).
    """
    if not isinstance(value, Mapping):
        raise ConfigurationError("expected a mapping of parameter names to values")
    checked: dict[str, str] = {}
    problems: list[tuple[str, str]] = []
    for raw_name, raw_value in value.items():
        name = str(raw_name).lower()
        if not _NAME.fullmatch(name) or len(name) > _NAME_LENGTH:
            problems.append(
                ("", f"{raw_name!r} is not a PostgreSQL parameter name (such as lock_timeout)")
            )
            continue
        if name in REFUSED:
            problems.append((name, f"cannot be set here: {REFUSED[name]}"))
            continue
        if name in checked:
            problems.append((name, "given twice (parameter names ignore case)"))
            continue
        if isinstance(raw_value, bool):
            text = "on" if raw_value else "off"
        elif isinstance(raw_value, (int, float, str)):
            text = str(raw_value)
        else:
            problems.append((name, "the value must be a string, a number or a boolean"))
            continue
        if "\x00" in text:
            problems.append((name, "the value contains a NUL character"))
            continue
        checked[name] = text
    if problems:
        summary = "; ".join(
            f"{name}: {message}" if name else message for name, message in problems
        )
        raise ConfigurationError(summary, problems=problems)
    return checked


def milliseconds(seconds: float) -> str:
    """*seconds* as PostgreSQL's milliseconds, never 0 (which would mean "no timeout")."""
    return str(max(1, round(seconds * 1000)))


def run_time_parameters(settings: DatabaseSettings) -> dict[str, str]:
    """The PostgreSQL parameters every connection of *settings*' database gets."""
    parameters = dict(settings.server_settings)
    if settings.statement_timeout is not None:
        parameters["statement_timeout"] = milliseconds(settings.statement_timeout)
    if settings.idle_in_transaction_timeout is not None:
        parameters["idle_in_transaction_session_timeout"] = milliseconds(
            settings.idle_in_transaction_timeout
        )
    return parameters


def split_for_pgbouncer(parameters: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """*parameters* as (sent when connecting, set per transaction) behind PgBouncer."""
    startup = {k: v for k, v in parameters.items() if k in _STARTUP_THROUGH_PGBOUNCER}
    later = {k: v for k, v in parameters.items() if k not in _STARTUP_THROUGH_PGBOUNCER}
    return startup, later


def libpq_options(parameters: Mapping[str, str], given: str | None = None) -> str:
    """libpq's ``options`` connection parameter setting *parameters*, after the *given*
    options of the URL."""
    # libpq splits options at whitespace; a backslash keeps the next character.
    escaped = (
        "-c " + re.sub(r"([\s\\])", r"\\\1", f"{name}={value}")
        for name, value in parameters.items()
    )
    return " ".join([*([given] if given else []), *escaped])


# -- through PgBouncer: per transaction ---------------------------------------------------

PER_TRANSACTION_PLUGIN = "dbrouter_per_transaction_parameters"
"""The SQLAlchemy engine plugin that sets parameters at the start of each transaction; its
engine option of the same name holds them."""

_PENDING = "dbrouter_parameters_pending"


def per_transaction_statement(parameters: Mapping[str, str]) -> str:
    """One statement setting *parameters* until the end of the current transaction."""
    # Names are checked identifiers; values are E'' literals, the same whatever
    # standard_conforming_strings says.
    calls = (
        f"set_config('{name}', E'{_escaped(value)}', true)" for name, value in parameters.items()
    )
    return "SELECT " + ", ".join(calls)


def _escaped(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


class PerTransactionParameters(CreateEnginePlugin):
    """Sets the parameters of its engine option at the start of each transaction.

    The statement runs just before the transaction's first statement, not when it begins:
    by then a replica session has marked the transaction read-only, which asyncpg applies
    as the transaction actually starts. AUTOCOMMIT opens no transaction to set them in.
    """

    def __init__(self, url: URL, kwargs: dict[str, Any]) -> None:
        super().__init__(url, kwargs)
        self.statement = per_transaction_statement(kwargs.pop(PER_TRANSACTION_PLUGIN))

    def update_url(self, url: URL) -> URL:
        """*url* unchanged: the parameters come as an engine option, not in the URL."""
        return url

    def engine_created(self, engine: Engine) -> None:
        """Listen to *engine*'s transactions."""
        event.listen(engine, "begin", _mark_pending)
        event.listen(engine, "before_cursor_execute", self._before_cursor_execute)

    def _before_cursor_execute(
        self,
        connection: Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        if not connection.info.pop(_PENDING, False):
            return
        dbapi_connection = connection.connection.dbapi_connection
        if dbapi_connection is None or getattr(dbapi_connection, "autocommit", False):
            return
        own = dbapi_connection.cursor()
        try:
            own.execute(self.statement)
        finally:
            own.close()


def _mark_pending(connection: Connection) -> None:
    connection.info[_PENDING] = True


plugins.register(PER_TRANSACTION_PLUGIN, __name__, PerTransactionParameters.__name__)
