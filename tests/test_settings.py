"""Configuration: defaults, the three ways to build it, and every rejected input."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from dbrouter import ConfigurationError, DatabaseSettings, RouterSettings

SQLITE = "sqlite:///./app.db"


def test_defaults_are_the_production_pool_settings() -> None:
    database = DatabaseSettings(url="postgresql://app:secret@db:5432/app")
    assert (database.pool_size, database.max_overflow) == (20, 10)
    assert database.pool_recycle == 3600
    assert database.pool_pre_ping is True
    assert database.pool_use_lifo is True
    assert database.pool_timeout == 30
    assert database.connect_timeout == 10
    assert database.echo is False
    assert database.replica_of is None
    assert database.fallback == "primary"
    assert database.pgbouncer is False


def test_top_level_defaults() -> None:
    settings = RouterSettings(databases={"primary": {"url": SQLITE}})
    assert settings.default_database == "primary"
    assert settings.max_connections is None
    assert settings.tenancy is None


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://app:pw@db:5432/app", "postgresql+asyncpg"),
        ("postgres://app:pw@db:5432/app", "postgresql+asyncpg"),
        ("postgresql+asyncpg://app:pw@db/app", "postgresql+asyncpg"),
        ("sqlite:///./app.db", "sqlite+aiosqlite"),
        ("sqlite://", "sqlite+aiosqlite"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite"),
    ],
)
def test_urls_get_the_async_driver(given: str, expected: str) -> None:
    assert DatabaseSettings(url=given).url.drivername == expected


@pytest.mark.parametrize(
    ("url", "advice"),
    [
        ("postgresql+psycopg2://app:pw@db/app", "postgresql+asyncpg://"),
        ("postgresql+pg8000://app:pw@db/app", "postgresql+asyncpg://"),
        ("sqlite+pysqlite:///x.db", "sqlite+aiosqlite://"),
        ("mysql+pymysql://app:pw@db/app", "mysql+asyncmy://"),
    ],
)
def test_a_sync_driver_is_rejected_with_the_driver_to_use(url: str, advice: str) -> None:
    with pytest.raises(ConfigurationError, match="synchronous") as caught:
        RouterSettings(databases={"primary": {"url": url}})
    assert advice in str(caught.value)
    assert "databases.primary.url" in str(caught.value)


@pytest.mark.parametrize(
    "url", ["not a url", "postgresql://app:pw@db:port/app", "nosuchdb://x/y", "", "://"]
)
def test_a_broken_url_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError, match=r"databases\.primary\.url"):
        RouterSettings(databases={"primary": {"url": url}})


def test_a_url_that_is_not_a_string_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="expected a database URL"):
        RouterSettings(databases={"primary": {"url": 5432}})


def test_a_missing_url_is_named() -> None:
    with pytest.raises(ConfigurationError, match=r"databases\.primary\.url: Field required"):
        RouterSettings(databases={"primary": {}})


def test_unknown_keys_list_the_valid_keys() -> None:
    with pytest.raises(ConfigurationError) as caught:
        RouterSettings(databases={"primary": {"url": SQLITE, "pool_sise": 3}})
    message = str(caught.value)
    assert "databases.primary.pool_sise: unknown key" in message
    assert "pool_size" in message
    with pytest.raises(ConfigurationError, match="valid keys: databases, default_database"):
        RouterSettings(databases={"primary": {"url": SQLITE}}, replicas={})


def test_replica_of_must_name_a_database() -> None:
    with pytest.raises(ConfigurationError) as caught:
        RouterSettings(
            databases={"primary": {"url": SQLITE}, "replica": {"url": SQLITE, "replica_of": "x"}}
        )
    assert "databases.replica.replica_of: 'x' is not a configured database" in str(caught.value)
    assert "'primary'" in str(caught.value)


def test_replica_of_must_name_a_primary() -> None:
    with pytest.raises(ConfigurationError, match="is itself a replica"):
        RouterSettings(
            databases={
                "primary": {"url": SQLITE},
                "a": {"url": SQLITE, "replica_of": "primary"},
                "b": {"url": SQLITE, "replica_of": "a"},
            }
        )


def test_default_database_must_exist() -> None:
    with pytest.raises(ConfigurationError) as caught:
        RouterSettings(databases={"main": {"url": SQLITE}})
    assert "default_database: 'primary' is not a configured database" in str(caught.value)
    assert "'main'" in str(caught.value)
    settings = RouterSettings(databases={"main": {"url": SQLITE}}, default_database="main")
    assert settings.default_database == "main"


def test_no_database_at_all_is_explained() -> None:
    with pytest.raises(ConfigurationError, match="DBROUTER_DATABASES__PRIMARY__URL"):
        RouterSettings()


@pytest.mark.parametrize("name", ["has space", "semi;colon", "x" * 64, "dot.ted"])
def test_database_names_are_plain(name: str) -> None:
    with pytest.raises(ConfigurationError, match="not a valid database name"):
        RouterSettings(databases={"primary": {"url": SQLITE}, name: {"url": SQLITE}})


@pytest.mark.parametrize(
    ("template", "complaint"),
    [
        ("postgresql://app:pw@db/app", "exactly once"),
        ("postgresql://app:pw@{tenant}.db/app", "only appear in the database name"),
        ("postgresql://{tenant}:pw@db/app", "only appear in the database name"),
        ("postgresql://app:pw@db/app?options={tenant}", "only appear in the database name"),
        ("postgresql://app:pw@db/{tenant}_{tenant}", "exactly once"),
    ],
)
def test_url_template_puts_the_tenant_in_the_database_name_only(
    template: str, complaint: str
) -> None:
    with pytest.raises(ConfigurationError, match=complaint) as caught:
        RouterSettings(databases={"primary": {"url": SQLITE}}, tenancy={"url_template": template})
    assert "tenancy.url_template" in str(caught.value)


def test_url_template_accepts_the_database_name() -> None:
    settings = RouterSettings(
        databases={"primary": {"url": SQLITE}},
        tenancy={"url_template": "postgresql://app:pw@db:5432/tenant_{tenant}"},
    )
    assert settings.tenancy is not None


def test_schema_template_needs_the_tenant() -> None:
    with pytest.raises(ConfigurationError, match=r"tenancy\.schema_template"):
        RouterSettings(databases={"primary": {"url": SQLITE}}, tenancy={"schema_template": "x"})


def test_schema_database_must_exist() -> None:
    with pytest.raises(ConfigurationError, match=r"tenancy\.schema_database: 'nope'"):
        RouterSettings(
            databases={"primary": {"url": SQLITE}},
            tenancy={"strategy": "schema", "schema_database": "nope"},
        )


def test_static_tenant_ids_are_validated() -> None:
    with pytest.raises(ConfigurationError, match=r"tenancy\.tenants: 'ACME' is not a valid"):
        RouterSettings(databases={"primary": {"url": SQLITE}}, tenancy={"tenants": {"ACME": {}}})


def test_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBROUTER_DATABASES__PRIMARY__URL", "postgresql://app:pw@db:5432/app")
    monkeypatch.setenv("DBROUTER_DATABASES__PRIMARY__POOL_SIZE", "7")
    monkeypatch.setenv("DBROUTER_DATABASES__REPLICA__URL", "postgresql://app:pw@replica/app")
    monkeypatch.setenv("DBROUTER_DATABASES__REPLICA__REPLICA_OF", "primary")
    monkeypatch.setenv("DBROUTER_DEFAULT_DATABASE", "primary")
    monkeypatch.setenv("DBROUTER_MAX_CONNECTIONS", "50")
    monkeypatch.setenv("DBROUTER_TENANCY__STRATEGY", "schema")
    monkeypatch.setenv("DBROUTER_TENANCY__HEADER", "X-Org")
    monkeypatch.setenv("DBROUTER_TENANCY__TENANTS__ACME__URL", "postgresql://app:pw@acme/acme")
    settings = RouterSettings()
    assert settings.databases["primary"].pool_size == 7
    assert settings.databases["primary"].url.drivername == "postgresql+asyncpg"
    assert settings.databases["replica"].replica_of == "primary"
    assert settings.max_connections == 50
    assert settings.tenancy is not None
    assert settings.tenancy.strategy == "schema"
    assert settings.tenancy.header == "X-Org"
    acme = settings.tenancy.tenants["acme"].url
    assert acme is not None
    assert acme.host == "acme"


def test_environment_typos_are_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBROUTER_DATABASES__PRIMARY__URL", "postgresql://app:pw@db:5432/app")
    monkeypatch.setenv("DBROUTER_DATABASES__PRIMARY__POOLSIZE", "7")
    with pytest.raises(ConfigurationError, match=r"databases\.primary\.poolsize: unknown key"):
        RouterSettings()


def test_dotenv_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(
        "DBROUTER_DATABASES__MAIN__URL=sqlite:///./main.db\n"
        "DBROUTER_DATABASES__MAIN__POOL_TIMEOUT=2.5\n"
        "DBROUTER_DEFAULT_DATABASE=main\n"
    )
    settings = RouterSettings()
    assert settings.default_database == "main"
    assert settings.databases["main"].pool_timeout == 2.5


def test_python_values_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBROUTER_DATABASES__PRIMARY__URL", "postgresql://app:pw@db:5432/app")
    settings = RouterSettings(databases={"primary": {"url": SQLITE}})
    assert settings.databases["primary"].url.drivername == "sqlite+aiosqlite"


def test_settings_are_immutable() -> None:
    settings = RouterSettings(databases={"primary": {"url": SQLITE}})
    with pytest.raises(ValidationError, match="frozen"):
        settings.default_database = "other"  # type: ignore[misc]


def test_dotenv_entries_of_other_settings_are_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(
        "SECRET_KEY=not-ours\nDBROUTER_DATABASES__PRIMARY__URL=sqlite:///./main.db\n"
    )
    assert RouterSettings().databases["primary"].url.database == "./main.db"
    (tmp_path / ".env").write_text(
        "DBROUTER_DATABASES__PRIMARY__URL=sqlite:///./main.db\nDBROUTER_DEFAULT_DATABSE=x\n"
    )
    with pytest.raises(ConfigurationError, match="dbrouter_default_databse: unknown key"):
        RouterSettings()
