"""The engine factory: every production-grade async engine and sessionmaker of a router
is built here, from settings."""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, Connection
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.pool import NullPool, StaticPool

from .budget import ConnectionBudget
from .databases import Availability, Database, GuardedSession, SessionFactory
from .events import EngineBuilt, EngineDisposed, EngineKind, EventBus
from .lifecycle import Lifecycle
from .liveness import ping_when_idle
from .metrics.pools import MeteredPool
from .parameters import (
    PER_TRANSACTION_PLUGIN,
    libpq_options,
    run_time_parameters,
    split_for_pgbouncer,
)
from .replicas.consistency import current_consistency, position_after_commit
from .replicas.readonly import (
    make_connections_read_only,
    read_only_by_connection,
    read_only_sessionmaker,
)
from .settings import DatabaseSettings
from .tls import libpq_parameters, ssl_context
from .urls import is_postgresql, is_sqlite

__all__ = [
    "DATABASE_KEY",
    "EngineFactory",
    "EngineTarget",
    "RoutedSession",
    "SessionFactory",
    "build_sessionmaker",
    "engine_options",
]

DATABASE_KEY = "dbrouter_database"
"""The key of the database name in ``session.info``."""

_CONNECTION_KEY = "dbrouter_connection"

logger = logging.getLogger("dbrouter")


def engine_options(settings: DatabaseSettings, *, name: str) -> dict[str, Any]:
    """Keyword arguments of `create_async_engine` for *settings*."""
    url = settings.url
    # pool_pre_ping "idle" is not SQLAlchemy's: the factory installs it (liveness.py).
    options: dict[str, Any] = {
        "echo": settings.echo,
        "pool_pre_ping": settings.pool_pre_ping is True,
    }
    connect_args: dict[str, Any] = {}
    if is_sqlite(url) and url.database in (None, "", ":memory:"):
        # One in-memory database lives and dies with its only connection.
        options["poolclass"] = StaticPool
    else:
        options.update(
            poolclass=MeteredPool,
            pool_size=settings.pool_size,
            max_overflow=settings.max_overflow,
            pool_recycle=settings.pool_recycle,
            pool_use_lifo=settings.pool_use_lifo,
            pool_timeout=settings.pool_timeout,
        )
    driver = url.get_driver_name()
    parameters = run_time_parameters(settings)
    if settings.pgbouncer:
        parameters, per_transaction = split_for_pgbouncer(parameters)
        if per_transaction:
            options["plugins"] = [PER_TRANSACTION_PLUGIN]
            options[PER_TRANSACTION_PLUGIN] = per_transaction
    if is_postgresql(url) and driver == "psycopg":
        # libpq counts whole seconds, and treats anything under 2 as 2.
        connect_args["connect_timeout"] = max(2, math.ceil(settings.connect_timeout))
        if "application_name" not in url.query:
            connect_args["application_name"] = f"dbrouter:{name}"[:63]
        if "application_name" in parameters:
            connect_args["application_name"] = parameters.pop("application_name")
        if parameters:
            given = url.query.get("options")
            connect_args["options"] = libpq_options(
                parameters, given if isinstance(given, str) else None
            )
        if settings.ssl is not None:
            connect_args.update(libpq_parameters(settings.ssl, **_tls_files(settings)))
        if settings.pgbouncer:
            connect_args["prepare_threshold"] = None  # no server-side prepared statements
    else:
        connect_args["timeout"] = settings.connect_timeout
    if is_postgresql(url) and driver == "asyncpg":
        server_settings: dict[str, str] = {}
        if "application_name" not in url.query:
            server_settings["application_name"] = f"dbrouter:{name}"[:63]
        server_settings.update(parameters)
        if read_only_by_connection(settings):
            # Sent when connecting: every transaction on a replica is read-only, for free.
            server_settings["default_transaction_read_only"] = "on"
        if server_settings:
            connect_args["server_settings"] = server_settings
        if settings.ssl == "disable":
            connect_args["ssl"] = "disable"
        elif settings.ssl is not None:
            connect_args["ssl"] = ssl_context(settings.ssl, **_tls_files(settings))
        if settings.pgbouncer:
            # PgBouncer in transaction mode may hand each transaction another server
            # connection: prepared statements must not be cached or share names.
            connect_args["statement_cache_size"] = 0
            connect_args["prepared_statement_name_func"] = _unique_statement_name
            url = url.update_query_dict({"prepared_statement_cache_size": "0"})
    options["connect_args"] = connect_args
    options["url"] = url
    return options


def _tls_files(settings: DatabaseSettings) -> dict[str, Path | None]:
    return {"ca": settings.ssl_ca, "cert": settings.ssl_cert, "key": settings.ssl_key}


@dataclass(frozen=True, slots=True)
class EngineTarget:
    """What an engine is built for: the database it serves."""

    name: str
    """The database's name: the configured one, ``replica#2``, ``tenant:<id>``..."""
    settings: DatabaseSettings
    kind: EngineKind


class EngineFactory:
    """Builds every engine of a router — named databases, replica servers, tenant and
    maintenance engines — and disposes them: the one place `create_async_engine` is
    called.

    Each engine gets the pool settings, the production options, PgBouncer mode, read-only
    connections on a replica, a slot of ``max_connections`` per server connection, the
    idle pre-ping, and a hook that reports a server coming back. Subclass and override
    `create_engine` to bind engines elsewhere (a test harness, an instrumented driver).

    The factory knows every database it built and has not disposed (`live`), and tells
    the functions given to `watch` about each new one (metrics attach to them so).
    """

    def __init__(
        self,
        *,
        events: EventBus,
        budget: ConnectionBudget | None = None,
        lifecycle: Lifecycle | None = None,
    ) -> None:
        self.events = events
        self.budget = budget
        self.lifecycle = lifecycle
        self._live: dict[int, Database] = {}
        self._watchers: list[Callable[[Database], None]] = []

    def live(self) -> list[Database]:
        """Every database built and not disposed yet, in the order they were built."""
        return list(self._live.values())

    def watch(self, watcher: Callable[[Database], None]) -> None:
        """Call *watcher* with every database built from now on, once it is ready."""
        self._watchers.append(watcher)

    def create_engine(self, url: URL, *, target: EngineTarget, **options: Any) -> AsyncEngine:
        """The engine for *url* with *options* (`create_async_engine`'s keywords), built
        for *target*."""
        return create_async_engine(url, **options)

    def build(
        self,
        name: str,
        settings: DatabaseSettings,
        *,
        kind: EngineKind = "database",
        note_commits: bool = False,
        **overrides: Any,
    ) -> Database:
        """A new `Database` named *name* for *settings*; *overrides* replace single
        engine options. With *note_commits* (a primary with replicas) its commits are
        noted for read-your-writes; a ``replica`` engine lends read-only sessions."""
        options = engine_options(settings, name=name)
        if overrides.get("poolclass") is NullPool:
            for key in ("pool_size", "max_overflow", "pool_timeout", "pool_use_lifo"):
                options.pop(key, None)
        options.update(overrides)
        engine = self.create_engine(
            options.pop("url"), target=EngineTarget(name, settings, kind), **options
        )
        if read_only_by_connection(settings):
            make_connections_read_only(engine, settings)
        if self.budget is not None:
            self.budget.instrument(engine, name=name, timeout=settings.pool_timeout)
        if settings.pool_pre_ping == "idle":
            ping_when_idle(engine.sync_engine, settings.pre_ping_idle_after)
        if kind == "replica":
            sessions = read_only_sessionmaker(engine)
        else:
            sessions = build_sessionmaker(engine, name, note_commits=note_commits)
        availability = Availability(name, self.events)

        def connected(dbapi_connection: Any, record: Any) -> None:
            availability.regained()

        event.listen(engine.sync_engine, "connect", connected)
        database = Database(
            name, settings, engine, sessions, kind, availability=availability, events=self.events
        )
        self._live[id(database)] = database
        for watcher in self._watchers:
            watcher(database)
        self.events.emit(EngineBuilt(name, kind))
        return database

    async def dispose(self, database: Database, timeout: float | None = None) -> None:
        """Stop *database* taking sessions, wait for the open ones (at most *timeout*
        seconds; None: as long as they take), then close every connection of its engine."""
        database.leases.retire()
        lifecycle = self.lifecycle
        if lifecycle is not None and not event.contains(
            database.engine.sync_engine, "do_connect", lifecycle.refuse_once_closed
        ):
            # Only from here on: a dialect event is a cost on every statement.
            event.listen(database.engine.sync_engine, "do_connect", lifecycle.refuse_once_closed)
        if not await database.leases.drained(timeout):
            logger.warning(
                "dbrouter: disposing database %r while %d session(s) still use it",
                database.name,
                database.leases.count,
            )
        await database.engine.dispose()
        self._live.pop(id(database), None)
        self.events.emit(EngineDisposed(database.name, database.kind))


class RoutedSession(GuardedSession):
    """Sessions on a primary with replicas: each commit is noted for read-your-writes."""


@event.listens_for(RoutedSession, "after_begin")
def _remember_connection(
    session: Session, transaction: SessionTransaction, connection: Connection
) -> None:
    if current_consistency() is not None:
        session.info[_CONNECTION_KEY] = connection


@event.listens_for(RoutedSession, "after_commit")
def _note_commit(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a savepoint released: nothing is committed yet
    connection = session.info.pop(_CONNECTION_KEY, None)
    record = current_consistency()
    if record is None or connection is None:
        return  # outside a request, or a commit that never touched the database
    name = session.info[DATABASE_KEY]
    try:
        # The session still holds the connection here: no second one is taken from a pool
        # that the request itself may have exhausted.
        record.note_write(name, position_after_commit(connection))
    except Exception:
        # The commit stands; only this response's read-your-writes is lost.
        logger.warning(
            "dbrouter: no consistency token: the position after a commit on %r could not be read",
            name,
            exc_info=True,
        )


@event.listens_for(RoutedSession, "after_transaction_end")
def _forget_connection(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        session.info.pop(_CONNECTION_KEY, None)


def build_sessionmaker(
    engine: AsyncEngine, name: str, *, note_commits: bool = False
) -> SessionFactory:
    """The one session configuration dbrouter hands out, for the database *name*.

    ``expire_on_commit=False`` keeps ORM objects readable after commit, so a response
    model can read them without a lazy load (which would raise ``MissingGreenlet``).
    With *note_commits* (a primary with replicas) each commit is noted for
    read-your-writes.
    """
    if not note_commits:
        return async_sessionmaker(
            engine,
            class_=AsyncSession,
            sync_session_class=GuardedSession,
            autoflush=False,
            expire_on_commit=False,
        )
    return async_sessionmaker(
        engine,
        class_=AsyncSession,
        sync_session_class=RoutedSession,
        autoflush=False,
        expire_on_commit=False,
        info={DATABASE_KEY: name},
    )


def _unique_statement_name() -> str:
    return f"__dbrouter_{uuid.uuid4().hex}__"
