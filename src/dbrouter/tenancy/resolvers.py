"""Finding the tenant id in a request: header, subdomain, path parameter, a callable, or a
chain of them. Resolvers read plain values, never a framework's request object."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import TenantResolutionError

__all__ = [
    "CallableTenantResolver",
    "ChainTenantResolver",
    "HeaderTenantResolver",
    "PathTenantResolver",
    "SubdomainTenantResolver",
    "TenantRequest",
    "TenantResolver",
]


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

    def header_values(self, name: str) -> list[str]:
        """Every value of the header *name*, in the order sent (a repeated header has
        several); ``headers`` may be any mapping, or a multi-mapping with ``getlist``."""
        getlist = getattr(self.headers, "getlist", None)
        if getlist is not None:
            return list(getlist(name))
        value = self.headers.get(name)
        return [] if value is None else [value]


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
        """The header's value, or None when the header is absent.

        A header sent more than once is `TenantResolutionError`, whatever its values:
        which of them counts would otherwise depend on the proxy in front.
        """
        values = request.header_values(self.header)
        if len(values) > 1:
            raise TenantResolutionError(f"the tenant header {self.header!r} is repeated")
        return values[0] if values else None


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
    """Asks every resolver; those that find a tenant id must agree on it.

    A request that names its tenant in two places (a subdomain and a header, say) is
    served only when both name the same tenant: different answers are
    `TenantResolutionError` (HTTP 400), never a silent pick of the first.
    """

    def __init__(self, *resolvers: TenantResolver) -> None:
        self.resolvers = resolvers

    async def resolve(self, request: TenantRequest) -> str | None:
        """The one id the resolvers that found one agree on, or None when none did."""
        found: str | None = None
        for resolver in self.resolvers:
            tenant = await resolver.resolve(request)
            if tenant is None:
                continue
            if found is not None and tenant != found:
                raise TenantResolutionError("the request names more than one tenant")
            found = tenant
        return found
