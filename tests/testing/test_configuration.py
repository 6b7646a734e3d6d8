"""The plugin's configuration and the pieces that need no test server: options read from
the command line, the environment and the ini file; names that do not resolve; settings
placed on the test servers; the router taken over; replica probes in tests."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from sqlalchemy.engine import make_url

from dbrouter import ConfigurationError, DatabaseRouter, RouterSettings
from dbrouter.events import EngineBuilt
from dbrouter.testing.config import POSTGRES_URL_ENV, PluginOptions, find_router, load
from dbrouter.testing.factory import IsolatingEngineFactory
from dbrouter.testing.isolation import Binding, Declaration, Isolation
from dbrouter.testing.placement import place
from dbrouter.testing.prober import MirrorProber
from dbrouter.testing.sharing import SharedConnections
from dbrouter.testing.takeover import RouterTakeover
from tests.testing import app as application


def test_the_command_line_wins_then_the_environment_then_the_ini_file(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeini(
        "[pytest]\n"
        "dbrouter_app = ini.app:app\n"
        "dbrouter_postgres_url = postgresql://ini/db\n"
        "dbrouter_guard = true\n"
    )
    monkeypatch.setenv(POSTGRES_URL_ENV, "postgresql://env/db")
    options = PluginOptions.of(pytester.parseconfig("--dbrouter-app=cli.app:app"))
    assert options.app == "cli.app:app"
    assert options.postgres_url == "postgresql://env/db"
    assert options.guard is True
    assert options.router is None
    assert options.standby_url is None
    monkeypatch.delenv(POSTGRES_URL_ENV)
    assert PluginOptions.of(pytester.parseconfig()).postgres_url == "postgresql://ini/db"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("tests.testing.app", "is not module:attribute, as in myapp.main:app"),
        (":app", "is not module:attribute"),
        ("tests.testing.nowhere:app", "there is no module 'tests.testing.nowhere'"),
        ("tests.testing.app:nothing", "'tests.testing.app' has no attribute 'nothing'"),
        ("tests.testing.app:app.nothing", "has no attribute 'app.nothing'"),
    ],
)
def test_names_that_do_not_resolve(path: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as caught:
        load(path, "dbrouter_app")
    assert str(caught.value).startswith("dbrouter_app: ")


def test_a_module_that_fails_to_import_says_why(pytester: pytest.Pytester) -> None:
    pytester.syspathinsert()
    pytester.makepyfile(broken="import a_package_nobody_has\n")
    with pytest.raises(ModuleNotFoundError, match="a_package_nobody_has"):
        load("broken:app", "dbrouter_app")


def test_the_router_is_found_from_the_app() -> None:
    options = PluginOptions(None, None, None, None, guard=False, metadata=None)
    assert find_router(options, application.app) is application.router
    with pytest.raises(ConfigurationError, match="name the application's router or app"):
        find_router(options, None)
    with pytest.raises(ConfigurationError, match="the app's lifespan is not a router's"):
        find_router(options, FastAPI())
    named = PluginOptions(None, "tests.testing.app:router", None, None, False, None)
    assert find_router(named, None) is application.router


def test_databases_are_placed_on_the_test_servers() -> None:
    settings = RouterSettings(
        databases={
            "primary": {
                "url": "postgresql://app:secret@db.prod:6432/app?application_name=x",
                "ssl": "require",
                "pgbouncer": True,
            },
            "replica": {
                "url": "postgresql://app:secret@replica.prod/app",
                "replica_of": "primary",
                "hosts": [{"url": "postgresql://app:secret@replica2.prod/app"}],
            },
            "cache": {"url": "sqlite:///cache.db"},
        },
        tenancy={
            "url_template": "postgresql://app:secret@db.prod/tenant_{tenant}",
            "tenants": {"acme": {"url": "postgresql://app:secret@acme.prod/acme"}},
        },
    )
    placed = place(settings, make_url("postgresql://test@127.0.0.1:5555/postgres"), None)
    primary = placed.databases["primary"]
    assert primary.url.render_as_string(False) == "postgresql+asyncpg://test@127.0.0.1:5555/app"
    assert (primary.ssl, primary.pgbouncer) == (None, False)
    assert placed.databases["replica"].url.host == "127.0.0.1"
    assert placed.databases["cache"].url.get_backend_name() == "sqlite"
    assert placed.tenancy is not None
    assert placed.tenancy.url_template is not None
    assert placed.tenancy.url_template.database == "tenant_{tenant}"
    acme = placed.tenancy.tenants["acme"].url
    assert acme is not None
    assert (acme.host, acme.port, acme.database) == ("127.0.0.1", 5555, "acme")
    on_standby = place(settings, make_url("postgresql://t@p/x"), make_url("postgresql://t@s/x"))
    replica = on_standby.databases["replica"]
    assert replica.url.host == "s"
    assert [host.url.host for host in replica.hosts] == ["s"]
    assert on_standby.databases["primary"].url.host == "p"


def test_only_postgresql_over_asyncpg_is_isolated() -> None:
    isolation = Isolation(SharedConnections())
    settings = RouterSettings(databases={"primary": {"url": "sqlite:///x.db"}})
    with pytest.raises(ConfigurationError, match="tests isolate PostgreSQL databases"):
        DatabaseRouter(settings, engine_factory=IsolatingEngineFactory.bound(isolation))


def test_the_takeover_keeps_what_the_app_gave_its_router() -> None:
    router = DatabaseRouter(
        RouterSettings(
            databases={"primary": {"url": "postgresql://db.internal/app"}},
            tenancy={"url_template": "postgresql://db.internal/t_{tenant}"},
        )
    )
    built: list[str] = []
    router.events.subscribe(EngineBuilt, lambda event: built.append(event.name))
    resolver = router.tenancy.resolver
    takeover = RouterTakeover(router)
    rebuilt = takeover.rebuild(router.settings, Isolation(SharedConnections()))
    assert rebuilt is router
    router.events.emit(EngineBuilt("tenant:acme", "tenant"))
    assert built == ["tenant:acme"], "the app's subscription carried over, once"
    assert router.tenancy.resolver is resolver
    with pytest.raises(ConfigurationError, match="expected the application's DatabaseRouter"):
        RouterTakeover(object())  # type: ignore[arg-type]


async def test_the_previous_tests_router_must_be_disposed() -> None:
    router = DatabaseRouter(RouterSettings(databases={"primary": {"url": "postgresql://x/a"}}))
    takeover = RouterTakeover(router)
    isolation = Isolation(SharedConnections())
    takeover.rebuild(router.settings, isolation).open()
    with pytest.raises(ConfigurationError, match="the router of the previous test is still"):
        takeover.rebuild(router.settings, isolation)
    await router.dispose()


async def test_mirroring_replicas_are_caught_up_without_a_query() -> None:
    router = DatabaseRouter(RouterSettings(databases={"primary": {"url": "postgresql://x/a"}}))
    prober = MirrorProber(mirror=True)
    database = router.database()
    assert await prober.read_primary(database) == 0
    reading = await prober.read_replica(database)
    assert reading.in_recovery
    assert reading.replay_lsn == 2**64 - 1
    await router.dispose()


def test_what_a_declaration_allows() -> None:
    settings = RouterSettings(databases={"primary": {"url": "postgresql://x/a"}}).databases
    replica = Binding("replica#2", "replica", settings["primary"], {})
    tenant = Binding("tenant:acme", "tenant", settings["primary"], {})
    nothing = Declaration(databases=frozenset(), tenants=frozenset())
    assert not nothing.allows(replica)
    assert not nothing.allows(tenant)
    assert nothing.describe() == "databases [], tenants []"
    assert Declaration(databases=frozenset({"replica"})).allows(replica)
    assert Declaration().allows(tenant)
    assert Declaration().describe() == "nothing"
    assert replica.describe() == "database 'replica'"
    assert tenant.describe() == "tenant 'acme'"


def test_the_toolkit_declares_its_surface() -> None:
    import dbrouter.testing as toolkit

    assert list(toolkit.__all__) == sorted(toolkit.__all__)
    for name in toolkit.__all__:
        assert getattr(toolkit, name).__doc__, name
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        toolkit.nothing  # noqa: B018
