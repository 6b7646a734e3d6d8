"""Finding the tenant id in a request: header, subdomain, path parameter, a callable, or a
chain of them. Resolvers read plain values, never a framework's request object."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class TenantRequest:
    """What a resolver may read of a request."""

    headers: Mapping[str, str]
    """Request headers; lookups are case-insensitive when the web layer provides them so."""
    host: str | None = None
    """The host the request was sent to, without the port."""
    path_params: Mapping[str, Any] = field(default_factory=dict)
    """Parameters matched in the URL path."""
    state: Mapping[str, Any] = field(default_factory=dict)
    """Request state set by earlier middleware (an authenticated user, for example)."""


class TenantResolver(Protocol):
    """Reads the raw tenant id of a request, or None when the request names none.

    What it returns is validated afterwards; a resolver need not check it.
    """

    async def resolve(self, request: TenantRequest) -> str | None:
        """The raw tenant id carried by *request*, or None."""
        ...


class HeaderTenantResolver:
    """The tenant id is the value of a request header (``X-Tenant-ID`` by default)."""

    def __init__(self, header: str = "X-Tenant-ID") -> None:
        self.header = header.lower()

    async def resolve(self, request: TenantRequest) -> str | None:
        """The header's value, or None when the header is absent."""
        return request.headers.get(self.header)


class SubdomainTenantResolver:
    """The tenant id is the label left of *domain*: ``acme.example.com`` -> ``acme``."""

    def __init__(self, domain: str) -> None:
        self.suffix = "." + domain.lower().strip(".")

    async def resolve(self, request: TenantRequest) -> str | None:
        """The single label before the domain, or None for the bare domain or other hosts."""
        host = (request.host or "").lower()
        if not host.endswith(self.suffix):
            return None
        label = host[: -len(self.suffix)]
        return label if label and "." not in label else None


class PathTenantResolver:
    """The tenant id is a path parameter, such as ``/t/{tenant}/orders``."""

    def __init__(self, parameter: str = "tenant") -> None:
        self.parameter = parameter

    async def resolve(self, request: TenantRequest) -> str | None:
        """The path parameter as text, or None when the route has no such parameter."""
        value = request.path_params.get(self.parameter)
        return None if value is None else str(value)


class CallableTenantResolver:
    """The tenant id comes from your function, sync or async, given the `TenantRequest`:
    for example a claim of the user an authentication middleware put in the state."""

    def __init__(
        self, function: Callable[[TenantRequest], str | Awaitable[str | None] | None]
    ) -> None:
        self.function = function

    async def resolve(self, request: TenantRequest) -> str | None:
        """Whatever the function returns (awaited if it is awaitable)."""
        result = self.function(request)
        if inspect.isawaitable(result):
            return await result
        return result


class ChainTenantResolver:
    """Asks each resolver in turn; the first that finds a tenant id wins."""

    def __init__(self, *resolvers: TenantResolver) -> None:
        self.resolvers = resolvers

    async def resolve(self, request: TenantRequest) -> str | None:
        """The first non-None answer, or None."""
        for resolver in self.resolvers:
            tenant = await resolver.resolve(request)
            if tenant is not None:
                return tenant
        return None
