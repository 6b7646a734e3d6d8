"""A request that names its tenant more than once, or in two places that disagree, is
refused with 400 before any database I/O: never served as whichever came first."""

from __future__ import annotations

import json
from typing import Annotated, Any

import pytest
from fastapi import Depends, FastAPI

from dbrouter import (
    ChainTenantResolver,
    DatabaseRouter,
    HeaderTenantResolver,
    PathTenantResolver,
    RouterSettings,
    SubdomainTenantResolver,
    get_tenant,
)
from dbrouter.events import EngineBuilt
from tests.conftest import serve
from tests.tenancy.test_tenancy import trap_port


def tenant_echo_app(router: DatabaseRouter) -> FastAPI:
    app = FastAPI(lifespan=router.lifespan)

    @app.get("/t/{tenant}/whoami")
    async def whoami(tenant: Annotated[str, Depends(get_tenant())]) -> str:
        return tenant

    return app


async def call(app: Any, headers: list[tuple[bytes, bytes]], path: str) -> tuple[int, Any]:
    """One raw ASGI request, as a server would hand it over: headers exactly as given."""
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
        "state": {},
    }
    await app(scope, receive, send)
    start = next(message for message in messages if message["type"] == "http.response.start")
    body = b"".join(message.get("body", b"") for message in messages[1:])
    return start["status"], json.loads(body)


@pytest.mark.parametrize(
    "values",
    [
        [b"acme", b"globex"],
        [b"acme", b"acme"],
        [b"acme", b""],
        [b"globex", b"acme", b"acme"],
    ],
)
async def test_a_repeated_tenant_header_is_refused_before_any_io(values: list[bytes]) -> None:
    async with trap_port() as (template, accepted):
        router = DatabaseRouter(
            RouterSettings(
                databases={"primary": {"url": "sqlite://"}}, tenancy={"url_template": template}
            )
        )
        built: list[str] = []
        router.events.subscribe(EngineBuilt, lambda event: built.append(event.name))
        app = tenant_echo_app(router)
        async with serve(app):  # the lifespan runs; requests go straight to the app below
            # Servers hand header names over lowercased (ASGI), values as sent.
            headers = [(b"host", b"testserver"), *((b"x-tenant-id", value) for value in values)]
            status, body = await call(app, headers, "/t/acme/whoami")
            assert (status, body) == (400, {"detail": "invalid tenant id"})
        assert accepted == []
        assert built == []


def chained_router(template: str) -> DatabaseRouter:
    return DatabaseRouter(
        RouterSettings(
            databases={"primary": {"url": "sqlite://"}},
            tenancy={"url_template": template, "tenants": {"acme": {}, "globex": {}}},
        ),
        tenant_resolver=ChainTenantResolver(
            SubdomainTenantResolver("example.com"),
            HeaderTenantResolver(),
            PathTenantResolver(),
        ),
    )


@pytest.mark.parametrize(
    ("host", "header", "path", "expected"),
    [
        (b"acme.example.com", b"globex", "/t/acme/whoami", 400),
        (b"acme.example.com", None, "/t/globex/whoami", 400),
        (b"example.com", b"acme", "/t/globex/whoami", 400),
        (b"acme.example.com", b"acme", "/t/acme/whoami", 200),
        (b"example.com", None, "/t/globex/whoami", 200),
        (b"other.org", b"globex", "/t/globex/whoami", 200),
    ],
)
async def test_a_chain_whose_sources_disagree_is_refused(
    host: bytes, header: bytes | None, path: str, expected: int
) -> None:
    async with trap_port() as (template, accepted):
        router = chained_router(template)
        app = tenant_echo_app(router)
        async with serve(app):
            headers = [(b"host", host)]
            if header is not None:
                headers.append((b"x-tenant-id", header))
            status, body = await call(app, headers, path)
        assert status == expected, body
        if expected == 400:
            assert body == {"detail": "invalid tenant id"}
        else:
            assert body == path.split("/")[2]
        assert accepted == []


async def test_the_same_refusal_through_an_http_client() -> None:
    router = DatabaseRouter(
        RouterSettings(
            databases={"primary": {"url": "sqlite://"}}, tenancy={"tenants": {"acme": {}}}
        )
    )
    async with serve(tenant_echo_app(router)) as client:
        twice = [("X-Tenant-ID", "acme"), ("X-Tenant-ID", "globex")]
        response = await client.get("/t/acme/whoami", headers=twice)
        once = await client.get("/t/acme/whoami", headers={"X-Tenant-ID": "acme"})
    assert (response.status_code, response.json()) == (400, {"detail": "invalid tenant id"})
    assert (once.status_code, once.json()) == (200, "acme")
