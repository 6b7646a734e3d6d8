"""Which targets a command runs on, how each is reached, and how a failure is told: SQLite
databases, declared and catalog tenants, tenants that do not exist or cannot be reached."""

from __future__ import annotations

import asyncio
import sqlite3
import warnings
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from dbrouter import (
    ConfigurationError,
    DatabaseRouter,
    RouterSettings,
    TenantResolutionError,
    TenantSettings,
    UnknownDatabaseError,
    migrations,
)
from tests.support.scripts import (
    PRIMARY_REVISIONS,
    SQLITE_TENANT_REVISIONS,
    Revision,
    add_revision,
    script_directory,
)


def sqlite_version(path: Path) -> list[str]:
    with sqlite3.connect(path) as connection:
        return sorted(
            row[0] for row in connection.execute("SELECT version_num FROM alembic_version")
        )


def sqlite_tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as connection:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {row[0] for row in rows}


class Catalog:
    """A tenant catalog that lists: each tenant an SQLite file."""

    def __init__(self, directory: Path, tenants: Iterable[str]) -> None:
        self.files = {tenant: directory / f"{tenant}.db" for tenant in tenants}

    async def __call__(self, tenant: str) -> TenantSettings | None:
        path = self.files.get(tenant)
        return None if path is None else TenantSettings(url=f"sqlite:///{path}")

    async def list_tenants(self) -> list[str]:
        return list(self.files)


async def test_sqlite_databases_and_catalog_tenants_migrate(tmp_path: Path) -> None:
    primary = script_directory(tmp_path / "primary", PRIMARY_REVISIONS)
    tenants = script_directory(tmp_path / "tenants", SQLITE_TENANT_REVISIONS)
    catalog = Catalog(tmp_path, ["acme", "globex"])
    settings = RouterSettings(
        databases={"primary": {"url": f"sqlite:///{tmp_path}/app.db", "migrations": primary}},
        tenancy={"migrations": tenants},
    )
    async with DatabaseRouter(settings, tenant_catalog=catalog) as router:
        report = await migrations.upgrade(router)
        assert report.ok, report.as_dict()
        assert [result.target for result in report.targets] == [
            "database:primary",
            "tenant:acme",
            "tenant:globex",
        ]
        assert router.tenant_engines() == {}  # migrating builds no engine that stays
    assert sqlite_version(tmp_path / "app.db") == ["p2"]
    for path in catalog.files.values():
        assert sqlite_version(path) == ["t2"]
        assert sqlite_tables(path) == {"alembic_version", "notes", "raw_marks"}


async def test_declared_tenants_and_a_tenant_named_on_purpose(tmp_path: Path) -> None:
    tenants = script_directory(tmp_path / "tenants", SQLITE_TENANT_REVISIONS)
    settings = RouterSettings(
        databases={"primary": {"url": "sqlite://"}},
        tenancy={
            "migrations": tenants,
            "tenants": {
                "acme": {"url": f"sqlite:///{tmp_path}/acme.db"},
                "globex": {"url": f"sqlite:///{tmp_path}/globex.db"},
            },
        },
    )
    async with DatabaseRouter(settings) as router:
        only = await migrations.upgrade(router, tenants=["globex", "globex"])
        assert [result.target for result in only.targets] == ["tenant:globex"]
        unknown = await migrations.upgrade(router, tenants=["initech"])
        assert unknown["tenant:initech"].status == "failed"
        assert unknown["tenant:initech"].error == "unknown tenant 'initech'"
        with pytest.raises(TenantResolutionError, match="malformed tenant id"):
            await migrations.upgrade(router, tenants=["Not Valid"])
        with pytest.raises(ConfigurationError, match="tenants: expected a list of names"):
            await migrations.upgrade(router, tenants="acme")
        with pytest.raises(ConfigurationError, match="concurrency: must be a whole number"):
            await migrations.upgrade(router, concurrency=0)
        with pytest.raises(ConfigurationError, match="downgrade: a revision is required"):
            await migrations.downgrade(router, "")
        everything = await migrations.status(router)
    assert [result.target for result in everything.targets] == ["tenant:acme", "tenant:globex"]
    assert [result.behind for result in everything.targets] == [True, False]


async def test_database_selection_errors_name_the_choices(tmp_path: Path) -> None:
    primary = script_directory(tmp_path / "primary", PRIMARY_REVISIONS)
    url = f"sqlite:///{tmp_path}/app.db"
    settings = RouterSettings(
        databases={
            "primary": {"url": url, "migrations": primary},
            "replica": {"url": url, "replica_of": "primary"},
            "cache": {"url": "sqlite://"},
        }
    )
    async with DatabaseRouter(settings) as router:
        with pytest.raises(ConfigurationError, match=r"replica of 'primary'.*migrate 'primary'"):
            await migrations.upgrade(router, databases=["replica"])
        with pytest.raises(
            ConfigurationError, match=r"'cache' has no migrations.*with migrations: 'primary'"
        ):
            await migrations.status(router, databases=["cache"])
        with pytest.raises(UnknownDatabaseError):
            await migrations.current(router, databases=["nope"])
        with pytest.raises(ConfigurationError, match="tenancy is not configured"):
            await migrations.upgrade(router, all_tenants=True)
        assert (await migrations.upgrade(router)).ok


def test_migrations_takes_a_path_and_never_shows_a_url_given_instead() -> None:
    with pytest.raises(ConfigurationError) as raised:
        RouterSettings(
            databases={"primary": {"url": "sqlite://", "migrations": "postgresql://a:secret@h/d"}}
        )
    assert raised.value.problems == (
        (
            "databases.primary.migrations",
            "expected the path of an Alembic script directory, not a URL",
        ),
    )
    assert "secret" not in str(raised.value)


def test_a_replica_with_migrations_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"databases\.replica\.migrations: a replica"):
        RouterSettings(
            databases={
                "primary": {"url": "sqlite://"},
                "replica": {"url": "sqlite://", "replica_of": "primary", "migrations": tmp_path},
            }
        )


async def test_failures_are_told_without_secrets(tmp_path: Path) -> None:
    tenants = script_directory(tmp_path / "tenants", SQLITE_TENANT_REVISIONS)
    add_revision(tenants, Revision("t3", "t2", "1 / 0"))
    settings = RouterSettings(
        databases={"primary": {"url": "sqlite://"}},
        tenancy={
            "migrations": tenants,
            "connect_timeout": 1,
            "tenants": {
                "down": {"url": "postgresql://app:secret@127.0.0.1:1/app"},
                "broken": {"url": f"sqlite:///{tmp_path}/broken.db"},
                "ahead": {"url": f"sqlite:///{tmp_path}/ahead.db"},
            },
        },
    )
    with sqlite3.connect(tmp_path / "ahead.db") as connection:
        connection.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
        connection.execute("INSERT INTO alembic_version VALUES ('zz9')")
    async with DatabaseRouter(settings) as router:
        report = await migrations.upgrade(router)
        status = await migrations.status(router, tenants=["ahead"])
    assert report.failed == 3
    assert report["tenant:down"].error is not None
    assert report["tenant:down"].error.startswith("database unavailable: ")
    assert report["tenant:broken"].error == "ZeroDivisionError: division by zero"
    assert report["tenant:broken"].after == ()  # rolled back as a whole
    assert sqlite_tables(tmp_path / "broken.db") == set()
    assert report["tenant:ahead"].error is not None
    assert "zz9" in report["tenant:ahead"].error
    assert status["tenant:ahead"].status == "failed"
    assert status["tenant:ahead"].behind is True
    assert "does not have" in (status["tenant:ahead"].error or "")
    assert "secret" not in str(report.as_dict())


async def test_a_script_directory_runs_only_under_dbrouter(tmp_path: Path) -> None:
    from alembic import command

    from dbrouter.migrations.scripts import alembic_config

    directory = script_directory(tmp_path / "primary", PRIMARY_REVISIONS)
    with pytest.raises(ConfigurationError, match="takes its connections from dbrouter"):
        command.upgrade(alembic_config(directory), "head")
    env = directory / "env.py"
    env.write_text(
        env.read_text().replace(
            "run_migrations(target_metadata)",
            "run_migrations(target_metadata, version_table='mine')",
        )
    )
    async with DatabaseRouter(
        RouterSettings(
            databases={"primary": {"url": f"sqlite:///{tmp_path}/a.db", "migrations": directory}}
        )
    ) as router:
        report = await migrations.upgrade(router)
    assert "version_table cannot be set in env.py" in (report["database:primary"].error or "")


def test_init_refuses_bad_metadata_and_busy_directories(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="not of the form module:attribute"):
        migrations.init(tmp_path / "a", metadata="myapp.models")
    with pytest.raises(ConfigurationError, match="not of the form module:attribute"):
        migrations.init(tmp_path / "a", metadata="myapp.class:Base.metadata")
    assert not (tmp_path / "a").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigurationError, match="already exists"):
        migrations.init(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    assert migrations.init(tmp_path / "empty") == tmp_path / "empty"
    assert "target_metadata = None" in (tmp_path / "empty" / "env.py").read_text()


def test_two_event_loops_of_one_process_take_turns(tmp_path: Path) -> None:
    # Alembic's module-wide state allows one migration at a time in a process, whichever
    # thread's event loop runs it.
    tenants = script_directory(tmp_path / "tenants", SQLITE_TENANT_REVISIONS)
    add_revision(tenants, Revision("t3", "t2", "import time\n\ntime.sleep(0.3)"))

    def migrate(name: str) -> migrations.MigrationReport:
        settings = RouterSettings(
            databases={"primary": {"url": "sqlite://"}},
            tenancy={
                "migrations": tenants,
                "tenants": {name: {"url": f"sqlite:///{tmp_path}/{name}.db"}},
            },
        )

        async def run() -> migrations.MigrationReport:
            async with DatabaseRouter(settings) as router:
                return await migrations.upgrade(router)

        return asyncio.run(run())

    with ThreadPoolExecutor(max_workers=2) as pool:
        reports = list(pool.map(migrate, ["acme", "globex"]))
    for report, name in zip(reports, ["acme", "globex"], strict=True):
        assert report.ok, report.as_dict()
        assert sqlite_version(tmp_path / f"{name}.db") == ["t3"]


async def test_what_is_missing_is_said(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/app.db"
    async with DatabaseRouter(RouterSettings(databases={"primary": {"url": url}})) as router:
        with pytest.raises(ConfigurationError, match="nothing to migrate"):
            await migrations.upgrade(router)
    async with DatabaseRouter(
        RouterSettings(databases={"primary": {"url": url}}, tenancy={})
    ) as router:
        with pytest.raises(ConfigurationError, match=r"tenancy\.migrations is not set"):
            await migrations.status(router, all_tenants=True)
        with pytest.raises(ConfigurationError, match=r"tenancy\.migrations is not set"):
            await migrations.revision(router, "x", tenants=True)
    bare = tmp_path / "bare"
    bare.mkdir()
    broken = migrations.init(tmp_path / "broken")
    add_revision(broken, Revision("r2", "r1", "pass"))
    for directory, message in ((bare, "has no env.py"), (broken, "cannot be read")):
        settings = RouterSettings(databases={"primary": {"url": url, "migrations": directory}})
        async with DatabaseRouter(settings) as router:
            with (
                pytest.raises(ConfigurationError, match=message) as raised,
                warnings.catch_warnings(),
            ):
                warnings.simplefilter("ignore")  # Alembic warns of the missing revision too
                await migrations.upgrade(router)
        assert str(raised.value).startswith(f"databases.primary.migrations: {directory}")


def test_a_report_is_looked_up_by_target() -> None:
    result = migrations.TargetResult("tenant:acme", (), ("r1",), "ok")
    report = migrations.MigrationReport("upgrade", [result])
    assert report["tenant:acme"] is result
    with pytest.raises(KeyError):
        report["tenant:globex"]
    assert report.exit_status == 0
    assert migrations.MigrationReport("upgrade", [result, result]).as_dict()["failed"] == 0


def test_without_alembic_the_python_api_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "alembic", None)
    monkeypatch.delitem(sys.modules, "dbrouter.migrations.fleet", raising=False)
    with pytest.raises(ModuleNotFoundError, match=r"fastapi-dbrouter\[migrations\]"):
        migrations.upgrade  # noqa: B018
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        migrations.nothing  # noqa: B018
    router = DatabaseRouter(
        RouterSettings(
            databases={"primary": {"url": "sqlite://"}},
            tenancy={"url_template": "postgresql://a@h/t_{tenant}", "migrations": tmp_path},
        )
    )
    with pytest.raises(ConfigurationError, match=r"tenancy\.migrations is set: migrations need"):
        asyncio.run(router.create_tenant("acme"))
    asyncio.run(router.dispose())
