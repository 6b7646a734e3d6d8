"""The application's own router, rebuilt for each test.

An application builds its `DatabaseRouter` once, at import (``router =
DatabaseRouter.from_env()``), and refers to that object everywhere: the lifespan of its
app, its endpoints' dependencies, the background tasks and services that call
``router.session()``. A copy would leave every one of those references on the real
databases, so the object itself is taken over: for each test it is built again in place,
from the test's settings and with an engine factory bound to the test's isolation, and
disposed when the test ends. Each test starts with a router in its first state: no
engine, no cached tenant, no replica out of rotation. The tenant resolver, the catalog
and the event subscriptions the application gave it are carried over (the subscriptions
hear what happens once the rebuilt router exists: not the building of its named
databases' engines).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import ConfigurationError
from ..events import EventBus
from ..lifecycle import State
from ..logs import log_events
from ..router import DatabaseRouter
from ..settings import RouterSettings
from ..tenancy.directory import TenantCatalog
from ..tenancy.resolvers import TenantResolver
from .factory import IsolatingEngineFactory
from .isolation import Isolation
from .prober import MirrorProber

__all__ = ["RouterTakeover"]


class RouterTakeover:
    """Rebuilds *router*, the application's own, for one test at a time (see the module).

    The router must be unused: not opened, no connection made. ``original`` is the
    configuration it was built with.
    """

    def __init__(self, router: DatabaseRouter) -> None:
        if not isinstance(router, DatabaseRouter):
            raise ConfigurationError(
                f"dbrouter_router: expected the application's DatabaseRouter, not "
                f"{type(router).__name__}"
            )
        if router.state is not State.NEW or _connected(router):
            raise ConfigurationError(
                "dbrouter_router: the application's router was used before the tests took it "
                f"over (it is {router.state.value}, with connections made); build it at "
                "import, but open it only in the app's lifespan or on first use"
            )
        self.router = router
        self.original = router.settings
        self._resolver: TenantResolver | None = None
        self._catalog: TenantCatalog | None = None
        if router.settings.tenancy is not None:
            tenancy = router.tenancy
            self._resolver = tenancy.resolver
            self._catalog = tenancy.directory._catalog
        self._handlers = _subscriptions(router.events)

    def rebuild(self, settings: RouterSettings, isolation: Isolation) -> DatabaseRouter:
        """The router, built again from *settings* with engines bound to *isolation*."""
        router = self.router
        if router.state not in (State.NEW, State.CLOSED):
            raise ConfigurationError(
                "dbrouter: the router of the previous test is still open; it is disposed "
                "when that test's dbrouter fixture ends"
            )
        DatabaseRouter.__init__(
            router,
            settings,
            tenant_resolver=self._resolver,
            tenant_catalog=self._catalog,
            engine_factory=IsolatingEngineFactory.bound(isolation),
        )
        for kind, handler in self._handlers:
            router.events.subscribe(kind, handler)
        prober = MirrorProber(mirror=isolation.mirror)
        for name in sorted(router.names):
            if router.database(name).is_replica and router.has_replicas:
                # The replica set was built with the prober of real servers: in a test the
                # primary's connection belongs to the test.
                router.replica_set(name)._prober = prober
        return router


def _connected(router: DatabaseRouter) -> bool:
    for name in router.names:
        pool: Any = router.engine(name).pool
        if hasattr(pool, "checkedin") and pool.checkedin() + pool.checkedout() > 0:
            return True
    return False


def _subscriptions(events: EventBus) -> list[tuple[Any, Callable[[Any], None]]]:
    """The handlers the application subscribed to *events*: not the logging ones, which a
    new router subscribes by itself."""
    builtin = EventBus()
    log_events(builtin)
    ours = {id(handler) for handlers in builtin._handlers.values() for handler in handlers}
    return [
        (kind, handler)
        for kind, handlers in events._handlers.items()
        for handler in handlers
        if id(handler) not in ours
    ]
