"""The ``schema`` tenancy strategy: tenants share one engine, each session is pinned to
its tenant's schema.

The pin is ``set_config('search_path', ..., true)`` — the transaction-local form of
``SET LOCAL`` — issued at the start of every transaction of the session. It ends with the
transaction, so nothing is left on the pooled connection for the next borrower, and raw
``text()`` SQL resolves in the tenant's schema just like ORM statements. The search path
holds the tenant's schema alone: an unqualified name that is not there fails, it never
falls through to ``public`` or another tenant. Statements are the same text for every
tenant, so SQLAlchemy's compiled-statement cache does not grow per tenant.

Temporary tables outlive transactions and PostgreSQL searches them before the search
path, so a connection that served a tenant drops its temporary objects (``DISCARD TEMP``)
before it goes back to the pool. AUTOCOMMIT is refused: it has no transaction to pin.

Over asyncpg neither costs a round trip of its own: the pin travels in one message with
the ``BEGIN``, and the clean-up with the ``COMMIT`` or ``ROLLBACK`` that ends the
session's last transaction (`TenantSchemaSession.ending`). A session that ends otherwise
(its transaction ended earlier, or the end failed) is cleaned up as the pool takes its
connection back, one round trip then; so are other drivers' sessions, whose pin is a
statement of its own.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import asyncpg
from sqlalchemy import event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.pool import ConnectionPoolEntry, PoolResetState
from sqlalchemy.util import await_only

from ..databases import Database, GuardedSession
from ..errors import ConfigurationError, TenantError
from ..outages import as_unavailable
from ..settings import NO_OVERRIDES, TenantSettings
from ..urls import is_postgresql
from .storage import quoted, refused
from .strategy import StrategyContext, TenantRoute, TenantStorage

__all__ = ["SchemaTenancy", "TenantSchemaSession"]

logger = logging.getLogger("dbrouter")

_SEARCH_PATH = "dbrouter_search_path"
_SERVED_TENANT = "dbrouter_served_tenant"
_PIN = text("SELECT set_config('search_path', :path, true)")
_SCHEMAS = text("SELECT nspname FROM pg_namespace")
_LOCK_TIMEOUT = text("SELECT set_config('lock_timeout', :timeout, true)")
_EXISTS = text("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = :name)")


class TenantSchemaSession(GuardedSession):
    """A session that pins every transaction to the schema in ``info``."""

    last_transaction = False
    """Whether the transaction under way is the session's last: its end drops the
    connection's temporary objects too."""

    def ending(self) -> None:
        """The next end of a transaction ends the session's use: it cleans up as well."""
        self.last_transaction = True


# How asyncpg begins a transaction, by the adapter's isolation level, read-only and
# deferrable settings; the pin is appended to it.
_ISOLATION = {
    None: "",
    "read_committed": " ISOLATION LEVEL READ COMMITTED",
    "read_uncommitted": " ISOLATION LEVEL READ UNCOMMITTED",
    "repeatable_read": " ISOLATION LEVEL REPEATABLE READ",
    "serializable": " ISOLATION LEVEL SERIALIZABLE",
}


@event.listens_for(TenantSchemaSession, "after_begin")
def _pin_schema(session: Session, transaction: SessionTransaction, connection: Connection) -> None:
    pooled = connection.connection
    adapter = pooled.dbapi_connection
    if getattr(adapter, "autocommit", False):
        raise TenantError(
            "a tenant session cannot run with isolation_level='AUTOCOMMIT': the tenant's "
            "schema is pinned per transaction; use any other isolation level"
        )
    pooled.info[_SERVED_TENANT] = True
    path = session.info[_SEARCH_PATH]
    driver = pooled.driver_connection
    if not (
        isinstance(adapter, AsyncAdapt_asyncpg_connection)
        and isinstance(driver, asyncpg.Connection)  # not a stand-in
        and adapter._transaction is None
        and adapter.isolation_level in _ISOLATION
    ):
        connection.execute(_PIN, {"path": path})
        return
    assert isinstance(session, TenantSchemaSession)
    begin = "BEGIN" + _ISOLATION[adapter.isolation_level]
    if adapter.readonly:
        begin += " READ ONLY"
    if adapter.deferrable:
        begin += " DEFERRABLE"
    # A literal in the message: the schema template and tenant ids allow only lowercase
    # letters, digits, '_' and '-' (`search_path` quotes the name).
    statement = f"{begin}; SELECT set_config('search_path', '{path}', true)"
    try:
        pinned = _PinnedTransaction(driver, session, pooled.info)
        await_only(_begin_pinned(adapter, driver, statement, pinned))
    except BaseException as error:
        # As a failed statement is handled: a lost connection is invalidated, the error
        # wrapped as SQLAlchemy's.
        connection._handle_dbapi_exception(error, statement, None, None, None)


async def _begin_pinned(
    adapter: AsyncAdapt_asyncpg_connection,
    driver: asyncpg.Connection[Any],
    statement: str,
    transaction: _PinnedTransaction,
) -> None:
    # No need for the adapter's lock: the connection was just checked out for this
    # session, which SQLAlchemy keeps from running two operations at once.
    try:
        await driver.execute(statement)
    except Exception as error:
        if driver.is_in_transaction():
            # Begun, then failed: the transaction needs its rollback.
            adapter._transaction = cast(Any, transaction)
        adapter._handle_exception(error)  # the adapter's own error, as a cursor raises it
    adapter._transaction = cast(Any, transaction)


class _PinnedTransaction:
    """The transaction of an asyncpg connection, begun by `_pin_schema` with its pin: what
    the SQLAlchemy adapter commits or rolls back in place of asyncpg's own."""

    __slots__ = ("_driver", "_record", "_session")

    def __init__(
        self,
        driver: asyncpg.Connection[Any],
        session: TenantSchemaSession,
        record: dict[Any, Any],
    ) -> None:
        self._driver = driver
        self._session = session
        self._record = record

    async def commit(self) -> None:
        await self._end("COMMIT")

    async def rollback(self) -> None:
        await self._end("ROLLBACK")

    async def _end(self, verb: str) -> None:
        if not self._session.last_transaction:
            await self._driver.execute(verb)
            return
        # After the COMMIT or ROLLBACK, outside any transaction: nothing can undo it.
        await self._driver.execute(f"{verb}; DISCARD TEMP")
        self._record.pop(_SERVED_TENANT, None)


def _discard_temporary_objects(
    dbapi_connection: Any, record: ConnectionPoolEntry, reset_state: PoolResetState
) -> None:
    """As the pool resets a connection that served a tenant: drop what the tenant left in
    ``pg_temp``. A failure here, a cancellation included, makes the pool close the
    connection, which drops them too."""
    if not record.info.pop(_SERVED_TENANT, False) or record.dbapi_connection is None:
        return
    if reset_state.terminate_only or not reset_state.asyncio_safe:
        return  # the connection is being closed: its temporary objects go with it
    if not reset_state.transaction_was_reset:
        dbapi_connection.rollback()  # DISCARD must not be undone by the pool's rollback
    driver = dbapi_connection.driver_connection
    if type(driver).__module__.partition(".")[0] == "asyncpg":
        # Straight to the driver: asyncpg runs it outside any transaction, one round trip.
        await_only(driver.execute("DISCARD TEMP"))
    else:
        # Other drivers open a transaction for it: commit it, or it is rolled back.
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("DISCARD TEMP")
        finally:
            cursor.close()
        dbapi_connection.commit()


class SchemaTenancy:
    """The ``schema`` strategy: sessions of the shared *database*, each pinned to the
    schema named by *template*."""

    @classmethod
    def build(cls, context: StrategyContext) -> SchemaTenancy:
        """The strategy for *context*'s settings: its database must be PostgreSQL."""
        settings = context.settings
        holder = context.registry[settings.schema_database or context.default_database]
        if not is_postgresql(holder.settings.url):
            raise ConfigurationError(
                f"tenancy.strategy: 'schema' needs a PostgreSQL database, and "
                f"{holder.name!r} is {holder.settings.url.get_backend_name()}; "
                "use the 'database' strategy"
            )
        return cls(holder, settings.schema_template)

    def __init__(self, database: Database, template: str) -> None:
        self.database = database
        self._template = template
        pool = database.engine.sync_engine.pool
        if not event.contains(pool, "reset", _discard_temporary_objects):
            event.listen(pool, "reset", _discard_temporary_objects)
        self._factory: async_sessionmaker[AsyncSession] = async_sessionmaker(
            database.engine,
            class_=AsyncSession,
            sync_session_class=TenantSchemaSession,
            autoflush=False,
            expire_on_commit=False,
        )

    def schema(self, tenant: str) -> str:
        """The schema name of the (validated) *tenant*."""
        return self._template.replace("{tenant}", tenant)

    def search_path(self, tenant: str) -> str:
        """The ``search_path`` *tenant*'s transactions are pinned to: its schema alone."""
        # Tenant ids and the template allow no double quote, so quoting is enough.
        return f'"{self.schema(tenant)}"'

    def session(self, tenant: str) -> AsyncSession:
        """A new session whose every transaction runs in *tenant*'s schema."""
        info: dict[str, Any] = {_SEARCH_PATH: self.search_path(tenant)}
        return self._factory(info=info)

    @asynccontextmanager
    async def storage(self, tenant: str, settings: TenantSettings) -> AsyncIterator[TenantStorage]:
        """The shared database, with its own engine, and *tenant*'s schema in it."""
        yield TenantStorage(self.database, self.schema(tenant), self.search_path(tenant))

    async def route(self, tenant: str, settings: TenantSettings) -> TenantRoute:
        """The shared database, and sessions pinned to *tenant*'s schema."""
        return self.database, functools.partial(self.session, tenant)

    async def list_tenants(self) -> list[str]:
        """The ids whose schema, named by the schema template, exists."""
        prefix, _, suffix = self._template.partition("{tenant}")
        async with self.database.engine.connect() as connection:
            names = (await connection.scalars(_SCHEMAS)).all()
        found = (
            name[len(prefix) : len(name) - len(suffix)]
            for name in names
            if len(name) > len(prefix) + len(suffix)
            and name.startswith(prefix)
            and name.endswith(suffix)
        )
        return sorted(found)

    def forget(self, tenant: str) -> bool:
        """Nothing is cached per tenant: the engine is shared."""
        return False

    def where(self, tenant: str, settings: TenantSettings) -> str:
        """*tenant*'s schema, and the database that holds it."""
        return f"schema {self.schema(tenant)} in database {self.database.name!r}"

    async def create(self, tenant: str) -> None:
        """``CREATE SCHEMA`` of *tenant*'s schema in the shared database."""
        await self._change(tenant, "create", "CREATE SCHEMA {}")

    async def drop(self, tenant: str, timeout: float) -> None:
        """``DROP SCHEMA ... CASCADE`` of *tenant*'s schema; it waits for the locks that
        sessions still working in the schema hold (at most *timeout* seconds)."""
        milliseconds = max(1, round(timeout * 1000))
        await self._change(
            tenant, "drop", "DROP SCHEMA {} CASCADE", lock_timeout=f"{milliseconds}ms"
        )

    async def _change(
        self, tenant: str, action: str, statement: str, *, lock_timeout: str | None = None
    ) -> None:
        schema = self.schema(tenant)
        try:
            async with self.database.engine.begin() as connection:
                if lock_timeout is not None:
                    await connection.execute(_LOCK_TIMEOUT, {"timeout": lock_timeout})
                await connection.execute(text(statement.format(quoted(connection, schema))))
        except Exception as exc:  # the driver's own errors too: a refused connection
            unavailable = as_unavailable(exc, self.database.name)
            if unavailable is not None:
                raise unavailable from exc
            if not isinstance(exc, sa_exc.DBAPIError):
                raise
            raise refused(exc, tenant, f"schema {schema!r}", action) from exc

    def cached(self) -> dict[str, Database]:
        """No tenant has an engine of its own."""
        return {}

    @property
    def draining(self) -> int:
        """No tenant engine is ever evicted."""
        return 0

    def reclaim_idle(self) -> bool:
        """The shared engine is a named database's: it keeps its connections."""
        return False

    async def close(self, timeout: float) -> None:
        """The shared engine is disposed with the named databases."""

    async def find(self, tenant: str) -> TenantSettings | None:
        """Tenant settings when *tenant*'s schema exists, else None."""
        async with self.database.engine.connect() as connection:
            found = await connection.scalar(_EXISTS, {"name": self.schema(tenant)})
        return NO_OVERRIDES if found else None
