"""TLS against a real server with TLS on (`tests.support.tls`), with asyncpg and psycopg:
every ``ssl`` mode, refused certificates, client certificates, tenants, and what an HTTP
client sees when the server's certificate is refused."""

# No ``from __future__ import annotations``: FastAPI resolves the endpoint annotations.

import asyncio
from collections.abc import Iterator
from typing import Annotated, Any

import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from dbrouter import DatabaseRouter, DatabaseUnavailableError, RouterSettings, get_db
from tests.conftest import serve
from tests.support.tls import CERT_USER, TLSServer, tls_server

DRIVERS = ["asyncpg", "psycopg"]
ENCRYPTED = text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSServer]:
    with tls_server(tmp_path_factory.mktemp("tls")) as server:
        yield server


def database(url: str, driver: str, **options: Any) -> dict[str, Any]:
    """The settings of a database at *url* through *driver*."""
    named = make_url(url).set(drivername=f"postgresql+{driver}")
    return {"url": named.render_as_string(hide_password=False), "connect_timeout": 5, **options}


async def encrypted(settings: dict[str, Any]) -> bool:
    """Whether a session on a database with *settings* runs over TLS."""
    router = DatabaseRouter(RouterSettings(databases={"primary": settings}))
    async with router, router.session() as session:
        return bool(await session.scalar(ENCRYPTED))


async def refusal(settings: dict[str, Any]) -> str:
    """The reason a session on a database with *settings* is unavailable."""
    router = DatabaseRouter(RouterSettings(databases={"primary": settings}))
    async with router:
        with pytest.raises(DatabaseUnavailableError) as caught:
            async with router.session() as session:
                await session.execute(text("SELECT 1"))
    return caught.value.reason


@pytest.mark.parametrize("driver", DRIVERS)
async def test_require_encrypts(tls: TLSServer, driver: str) -> None:
    assert await encrypted(database(tls.url(), driver, ssl="require"))


@pytest.mark.parametrize("driver", DRIVERS)
async def test_disable_connects_in_the_clear(tls: TLSServer, driver: str) -> None:
    assert not await encrypted(database(tls.url(), driver, ssl="disable"))


@pytest.mark.parametrize("driver", DRIVERS)
async def test_verify_full_accepts_the_address_the_certificate_holds(
    tls: TLSServer, driver: str
) -> None:
    assert await encrypted(database(tls.url(), driver, ssl="verify-full", ssl_ca=tls.ca))


@pytest.mark.parametrize("driver", DRIVERS)
async def test_verify_full_refuses_a_certificate_of_another_authority(
    tls: TLSServer, driver: str
) -> None:
    reason = await refusal(database(tls.url(), driver, ssl="verify-full", ssl_ca=tls.other_ca))
    assert reason.startswith("TLS: the server's certificate was not accepted"), reason


@pytest.mark.parametrize("driver", DRIVERS)
async def test_verify_full_refuses_a_host_name_the_certificate_does_not_hold(
    tls: TLSServer, driver: str
) -> None:
    settings = database(tls.url(host="localhost"), driver, ssl="verify-full", ssl_ca=tls.ca)
    reason = await refusal(settings)
    assert reason.startswith("TLS: the server's certificate"), reason
    assert "host name" in reason or "Hostname mismatch" in reason, reason


@pytest.mark.parametrize("driver", DRIVERS)
async def test_verify_full_without_ssl_ca_trusts_only_the_system_authorities(
    tls: TLSServer, driver: str
) -> None:
    reason = await refusal(database(tls.url(), driver, ssl="verify-full"))
    assert reason.startswith("TLS: the server's certificate was not accepted"), reason


@pytest.mark.parametrize("driver", DRIVERS)
async def test_verify_ca_accepts_a_host_name_the_certificate_does_not_hold(
    tls: TLSServer, driver: str
) -> None:
    settings = database(tls.url(host="localhost"), driver, ssl="verify-ca", ssl_ca=tls.ca)
    assert await encrypted(settings)
    reason = await refusal({**settings, "ssl_ca": tls.other_ca})
    assert reason.startswith("TLS: the server's certificate was not accepted"), reason


@pytest.mark.parametrize("driver", DRIVERS)
async def test_a_client_certificate_logs_in(tls: TLSServer, driver: str) -> None:
    url = tls.url(user=CERT_USER)
    certificate = {"ssl_cert": tls.client_cert, "ssl_key": tls.client_key}
    settings = database(url, driver, ssl="verify-full", ssl_ca=tls.ca, **certificate)
    router = DatabaseRouter(RouterSettings(databases={"primary": settings}))
    async with router, router.session() as session:
        assert await session.scalar(text("SELECT current_user")) == CERT_USER
        client = await session.scalar(
            text("SELECT client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        )
        assert client == f"/CN={CERT_USER}"
    # Without it, the server's `cert` rule turns the same role away.
    router = DatabaseRouter(
        RouterSettings(
            databases={"primary": database(url, driver, ssl="verify-full", ssl_ca=tls.ca)}
        )
    )
    async with router:
        with pytest.raises(Exception, match="certificate"):
            async with router.session() as session:
                await session.execute(text("SELECT 1"))


async def test_tenants_inherit_tls_unless_they_override_it(tls: TLSServer) -> None:
    tls.server.create_database("tenant_globex")
    tls.server.create_database("tenant_acme")
    template = tls.url("tenant_TENANT").replace("TENANT", "{tenant}")
    settings = RouterSettings(
        databases={"primary": database(tls.url(), "asyncpg")},
        tenancy={
            "url_template": template,
            "ssl": "verify-full",
            "ssl_ca": tls.ca,
            "tenants": {"acme": {"url": tls.url("tenant_acme"), "ssl": "disable"}},
        },
    )
    router = DatabaseRouter(settings)
    async with router:
        async with router.tenant_session("globex") as session:
            assert await session.scalar(ENCRYPTED) is True
        async with router.tenant_session("acme") as session:
            assert await session.scalar(ENCRYPTED) is False


Session = Annotated[AsyncSession, Depends(get_db("primary"))]


@pytest.mark.parametrize("driver", DRIVERS)
async def test_a_refused_certificate_is_a_503_that_tells_no_secret(
    tls: TLSServer, driver: str
) -> None:
    url = make_url(tls.url()).set(password="s3cret-pw").render_as_string(hide_password=False)
    certificate = {"ssl_cert": tls.client_cert, "ssl_key": tls.client_key}
    settings = database(url, driver, ssl="verify-full", ssl_ca=tls.other_ca, **certificate)
    router = DatabaseRouter(RouterSettings(databases={"primary": settings}))
    app = FastAPI(lifespan=router.lifespan)
    app.include_router(router.health_router())

    @app.get("/ping")
    async def ping(db: Session) -> int:
        return int(await db.scalar(text("SELECT 1")) or 0)

    key = await asyncio.to_thread(tls.client_key.read_text)
    async with serve(app) as client:
        response = await client.get("/ping")
        health = await client.get("/health/databases")
    assert response.status_code == 503
    assert response.headers["Retry-After"].isdigit()
    assert health.status_code == 503
    assert "TLS" in health.text
    for answer in (response.text, health.text):
        assert "s3cret-pw" not in answer
        assert key.splitlines()[1] not in answer
