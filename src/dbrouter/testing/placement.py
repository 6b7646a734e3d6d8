"""Placing an application's databases on the test servers.

Every PostgreSQL URL of the configuration — named databases, replica hosts, the tenant
URL template and the tenants' own URLs — keeps its database name and takes the host,
port, user, password and query of the test server: a replica's those of the standby when
one is configured, the server's otherwise (it mirrors its primary anyway). TLS and
PgBouncer settings go with the production servers they were written for.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import URL

from ..settings import DatabaseSettings, RouterSettings, TenancySettings, TenantSettings
from ..urls import is_postgresql

__all__ = ["place", "placed_url"]

_TLS_OFF: dict[str, Any] = {"ssl": None, "ssl_ca": None, "ssl_cert": None, "ssl_key": None}


def placed_url(url: URL, server: URL) -> URL:
    """*url*'s database on *server*."""
    if not is_postgresql(url):
        return url
    # URL.create, not URL.set: set() leaves a part alone when the server's is None.
    return URL.create(
        url.drivername,
        username=server.username,
        password=server.password,
        host=server.host,
        port=server.port,
        database=url.database,
        query=server.query,
    )


def place(settings: RouterSettings, server: URL, standby: URL | None = None) -> RouterSettings:
    """*settings* with every PostgreSQL database on *server* (replicas on *standby*)."""
    databases = {
        name: _placed_database(database, standby if database.replica_of and standby else server)
        for name, database in settings.databases.items()
    }
    tenancy = None if settings.tenancy is None else _placed_tenancy(settings.tenancy, server)
    return settings.model_copy(update={"databases": databases, "tenancy": tenancy})


def _placed_database(database: DatabaseSettings, server: URL) -> DatabaseSettings:
    if not is_postgresql(database.url):
        return database
    hosts = [
        host.model_copy(update={"url": placed_url(host.url, server)}) for host in database.hosts
    ]
    return database.model_copy(
        update={
            "url": placed_url(database.url, server),
            "hosts": hosts,
            "pgbouncer": False,
            **_TLS_OFF,
        }
    )


def _placed_tenancy(tenancy: TenancySettings, server: URL) -> TenancySettings:
    template = tenancy.url_template
    tenants = {tenant: _placed_tenant(found, server) for tenant, found in tenancy.tenants.items()}
    return tenancy.model_copy(
        update={
            "url_template": None if template is None else placed_url(template, server),
            "tenants": tenants,
            **_TLS_OFF,
        }
    )


def _placed_tenant(tenant: TenantSettings, server: URL) -> TenantSettings:
    url = None if tenant.url is None else placed_url(tenant.url, server)
    return tenant.model_copy(update={"url": url, **_TLS_OFF})
