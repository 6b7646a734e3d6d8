"""An HTTP client for the application under test: its lifespan run, requests served
in-process, a tenant sent with each request of a tenant's client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
from asgi_lifespan import LifespanManager

__all__ = ["AppClients", "app_client"]

_BASE_URL = "http://testserver"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class AppClients:
    """The client of the app, and clients that send a tenant (see `for_tenant`)."""

    def __init__(self, transport: httpx.AsyncBaseTransport, stack: AsyncExitStack) -> None:
        self._transport = transport
        self._stack = stack
        self.client = httpx.AsyncClient(transport=transport, base_url=_BASE_URL)
        """Requests to the app, as they come."""

    def for_tenant(self, tenant: str, *, header: str = "X-Tenant-ID") -> httpx.AsyncClient:
        """A client whose every request carries *tenant* in *header*; closed with the app's."""
        client = httpx.AsyncClient(
            transport=self._transport, base_url=_BASE_URL, headers={header: tenant}
        )
        self._stack.push_async_callback(client.aclose)
        return client


@asynccontextmanager
async def app_client(app: Any) -> AsyncIterator[AppClients]:
    """Run *app*'s lifespan and serve it to clients in-process until the block ends; the
    app's ``dependency_overrides`` are as they were afterwards."""
    overrides = getattr(app, "dependency_overrides", None)
    kept = None if overrides is None else dict(overrides)
    try:
        async with AsyncExitStack() as stack:
            manager = await stack.enter_async_context(LifespanManager(app))
            transport = httpx.ASGITransport(app=_state_per_request(manager.app))
            clients = AppClients(transport, stack)
            await stack.enter_async_context(clients.client)
            yield clients
    finally:
        if overrides is not None and kept is not None:
            overrides.clear()
            overrides.update(kept)


def _state_per_request(app: ASGIApp) -> ASGIApp:
    """Give every request its own copy of the lifespan state, as ASGI servers do."""

    async def served(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and "state" in scope:
            scope = {**scope, "state": dict(scope["state"])}
        await app(scope, receive, send)

    return served
