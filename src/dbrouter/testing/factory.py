"""The engine factory of a router under test: every engine it builds connects through the
test's `Isolation` instead of opening server connections of its own."""

from __future__ import annotations

import functools
from typing import Any, ClassVar

from sqlalchemy import event
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import AsyncAdaptedQueuePool

from ..engines import EngineFactory, EngineTarget
from ..errors import ConfigurationError
from ..urls import is_postgresql, render
from .isolation import Binding, Isolation

__all__ = ["IsolatingEngineFactory"]

# Only these bypass the isolation: they create and drop databases, which no transaction
# can hold.
_REAL_KINDS = frozenset({"maintenance"})


class IsolatingEngineFactory(EngineFactory):
    """Builds the engines of a router under test, each bound to the test's isolation.

    An engine keeps everything `EngineFactory` gives it (pool accounting, read-only
    replicas, the ``max_connections`` budget, refusal after dispose) except its server
    connections: each connection its pool opens comes from `Isolation.connect`. The pool
    never makes a session wait for another (it has no overflow limit) and does not ping:
    every connection is the shared one. Use `bound` to get the class for one isolation.
    """

    isolation: ClassVar[Isolation | None] = None
    """The isolation the engines connect through (set by `bound`)."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._bindings: dict[str, Binding] = {}

    @classmethod
    def bound(cls, isolation: Isolation) -> type[IsolatingEngineFactory]:
        """The factory class whose engines connect through *isolation*."""
        return type(cls.__name__, (cls,), {"isolation": isolation, "__doc__": cls.__doc__})

    def create_engine(self, url: URL, *, target: EngineTarget, **options: Any) -> AsyncEngine:
        """An engine whose connections come from the test's isolation."""
        isolation = self.isolation
        if isolation is None or target.kind in _REAL_KINDS:
            return super().create_engine(url, target=target, **options)
        name, settings, kind = target.name, target.settings, target.kind
        if not (is_postgresql(url) and url.get_driver_name() == "asyncpg"):
            raise ConfigurationError(
                f"databases.{name}.url: tests isolate PostgreSQL databases reached with "
                f"asyncpg, and {name!r} is {render(url)}; use a postgresql:// URL in tests"
            )
        for key in ("pool_pre_ping", "max_overflow", "poolclass"):
            options.pop(key, None)
        options.update(poolclass=AsyncAdaptedQueuePool, max_overflow=-1, pool_pre_ping=False)
        connect_args = options.get("connect_args", {})
        server = f"{url.drivername}://{url.host}:{url.port}"
        learned = isolation.dialects.get(server)
        if learned is None:
            engine = super().create_engine(url, target=target, **options)
            _learn_dialect(engine, isolation.dialects, server)
        else:
            engine = super().create_engine(url, target=target, _initialize=False, **options)
            _initialized(engine, learned)
        _, params = engine.dialect.create_connect_args(engine.url)
        binding = Binding(name, kind, settings, {**params, **connect_args})
        self._bindings[name] = binding
        event.listen(
            engine.sync_engine, "do_connect", functools.partial(self._connect, isolation, binding)
        )
        return engine

    def _connect(
        self,
        isolation: Isolation,
        binding: Binding,
        dialect: Any,
        record: Any,
        cargs: Any,
        cparams: dict[str, Any],
    ) -> None:
        # Registered before any other do_connect hook of the engine (the budget's wraps
        # this opener in turn); the adapter calls it with the engine's connect arguments.
        cparams["async_creator_fn"] = functools.partial(
            isolation.connect, binding, self._primary_of(binding)
        )

    def _primary_of(self, binding: Binding) -> Binding | None:
        primary = binding.settings.replica_of
        if primary is None:
            return None
        found = self._bindings.get(primary)
        if found is None:
            raise ConfigurationError(
                f"{binding.describe()} replicates {primary!r}, which this router does not have"
            )
        return found


_SIMPLE = (bool, int, float, str, tuple, type(None))


def _learn_dialect(engine: AsyncEngine, learned: dict[str, dict[str, Any]], key: str) -> None:
    """Note what the dialect of *engine* learns from its first connection (server version,
    default schema, ...), for the engines of the next tests (see `_initialized`)."""
    dialect = engine.sync_engine.dialect
    before = dict(vars(dialect))

    def first_connected(dbapi_connection: Any, record: Any) -> None:
        # Listened to after SQLAlchemy's own first-connect hook, which has run by now.
        learned.setdefault(
            key,
            {
                name: value
                for name, value in vars(dialect).items()
                if isinstance(value, _SIMPLE) and (name not in before or before[name] != value)
            },
        )

    event.listen(engine.sync_engine.pool, "connect", first_connected, once=True)


def _initialized(engine: AsyncEngine, learned: dict[str, Any]) -> None:
    """Make *engine*, built without asking the server about itself, as if it had asked.

    Every test builds its engines anew, and the first connection of an engine otherwise
    spends several round trips finding out what the first engine of the session already
    knows. The hooks SQLAlchemy adds to every new connection are added as it adds them.
    """
    dialect = engine.sync_engine.dialect
    vars(dialect).update(learned)
    pool = engine.sync_engine.pool
    on_connect = dialect.on_connect_url(engine.url)
    if on_connect is not None:

        def connected(dbapi_connection: Any, record: Any) -> None:
            assert on_connect is not None
            on_connect(dbapi_connection)

        event.listen(pool, "connect", connected)
    builtin = getattr(dialect, "_builtin_onconnect", lambda: None)()
    if builtin is not None:
        event.listen(pool, "connect", builtin)
