"""Configuration: defaults, the three ways to build it, and every rejected input."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from dbrouter import ConfigurationError, DatabaseSettings, RouterSettings
from dbrouter.settings import REPLICA_KEYS, STRATEGY_KEYS

SQLITE = "sqlite:///./app.db"


def test_defaults_are_the_production_pool_settings() -> None:
    database = DatabaseSettings(url="postgresql://app:secret@db:5432/app")
    assert (database.pool_size, database.max_overflow) == (20, 10)
    assert database.pool_recycle == 3600
    assert database.pool_pre_ping == "idle"
    assert database.pre_ping_idle_after == 5
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
    monkeypatch.setenv("DBROUTER_TENANCY__STRATEGY", "database")
    monkeypatch.setenv("DBROUTER_TENANCY__HEADER", "X-Org")
    monkeypatch.setenv("DBROUTER_TENANCY__TENANTS__ACME__URL", "postgresql://app:pw@acme/acme")
    settings = RouterSettings()
    assert settings.databases["primary"].pool_size == 7
    assert settings.databases["primary"].url.drivername == "postgresql+asyncpg"
    assert settings.databases["replica"].replica_of == "primary"
    assert settings.max_connections == 50
    assert settings.tenancy is not None
    assert settings.tenancy.strategy == "database"
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


# -- keys that cannot apply, and values out of range -------------------------------------

# Async drivers of the backends dbrouter serves, and of every extra it ships.
INSTALLABLE_DRIVERS = ("postgresql+asyncpg://", "postgresql+psycopg://", "sqlite+aiosqlite://")


@pytest.mark.parametrize(
    "url",
    [
        "mysql+pymysql://app:pw@db/app",
        "mysql+aiomysql://app:pw@db/app",
        "mariadb://app:pw@db/app",
        "oracle://app:pw@db/app",
        "mssql+pyodbc://app:pw@db/app",
    ],
)
def test_an_unsupported_backend_names_what_is_served(url: str) -> None:
    with pytest.raises(ConfigurationError, match="unsupported database backend") as caught:
        RouterSettings(databases={"primary": {"url": url}})
    assert "databases.primary.url" in str(caught.value)
    assert "postgresql://" in str(caught.value)
    assert "sqlite://" in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg2://app:pw@db/app",
        "postgresql+pg8000://app:pw@db/app",
        "sqlite+pysqlite:///x.db",
        "postgresql+nosuchdriver://app:pw@db/app",
        "mysql+pymysql://app:pw@db/app",
    ],
)
def test_driver_suggestions_name_only_installable_drivers(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        RouterSettings(databases={"primary": {"url": url}})
    suggested = re.findall(r"[a-z]+\+[a-z_]+://", str(caught.value))
    assert suggested, str(caught.value)
    wrong = [driver for driver in suggested if driver not in INSTALLABLE_DRIVERS]
    assert wrong in ([], [url.split("//")[0] + "//"]), str(caught.value)


@pytest.mark.parametrize("port", ["0", "65536", "99999"])
def test_a_port_out_of_range_is_refused(port: str) -> None:
    with pytest.raises(ConfigurationError, match="out of range") as caught:
        RouterSettings(databases={"primary": {"url": f"postgresql://app:pw@db:{port}/app"}})
    assert "databases.primary.url" in str(caught.value)
    assert "65535" in str(caught.value)


@pytest.mark.parametrize("key", sorted(REPLICA_KEYS))
def test_replica_keys_on_a_database_that_is_no_replica_are_refused(key: str) -> None:
    values: dict[str, object] = {
        "health_check_interval": 2,
        "max_lag": 5,
        "fallback": "error",
        "hosts": [{"url": "postgresql://app:pw@db2/app"}],
        "weight": 2,
        "balance": "least_busy",
        "consistency_wait": 1,
        "consistency_window": 1,
    }
    with pytest.raises(ConfigurationError, match="only a replica") as caught:
        RouterSettings(
            databases={"primary": {"url": "postgresql://app:pw@db/app", key: values[key]}}
        )
    assert f"databases.primary.{key}" in str(caught.value)
    assert "replica_of" in str(caught.value)
    # The same key on a replica is fine.
    RouterSettings(
        databases={
            "primary": {"url": "postgresql://app:pw@db/app"},
            "replica": {
                "url": "postgresql://app:pw@db2/app",
                "replica_of": "primary",
                key: values[key],
            },
        }
    )


@pytest.mark.parametrize(
    ("strategy", "key", "value"),
    [
        (strategy, key, value)
        for strategy, others in (("schema", "database"), ("database", "schema"))
        for key, value in {
            "url_template": "postgresql://app:pw@db/tenant_{tenant}",
            "max_engines": 5,
            "engine_idle_ttl": 5,
            "pool_size": 4,
            "max_overflow": 1,
            "pool_timeout": 3,
            "connect_timeout": 3,
            "schema_database": "primary",
            "schema_template": "t_{tenant}",
        }.items()
        if key in STRATEGY_KEYS[others]
    ],
)
def test_keys_of_one_strategy_are_refused_under_the_other(
    strategy: str, key: str, value: object
) -> None:
    with pytest.raises(ConfigurationError, match="not a key of the") as caught:
        RouterSettings(
            databases={"primary": {"url": "postgresql://app:pw@db/app"}},
            tenancy={"strategy": strategy, key: value},
        )
    assert f"tenancy.{key}" in str(caught.value)
    assert repr(strategy) in str(caught.value)


def test_a_schema_tenant_with_a_url_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="no database or pool of its own") as caught:
        RouterSettings(
            databases={"primary": {"url": "postgresql://app:pw@db/app"}},
            tenancy={
                "strategy": "schema",
                "tenants": {"acme": {"url": "postgresql://app:pw@db/acme"}},
            },
        )
    assert "tenancy.tenants.acme" in str(caught.value)
    assert "pw" not in str(caught.value)


def test_pgbouncer_on_sqlite_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"databases\.primary\.pgbouncer"):
        RouterSettings(databases={"primary": {"url": "sqlite://", "pgbouncer": True}})


@pytest.mark.parametrize("raw", ["[{", '{"url": 1}', "not json", '[{"url": "x", "weight": "a"}]'])
def test_malformed_json_in_an_environment_variable_names_the_key(
    raw: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DBROUTER_DATABASES__PRIMARY__URL", "postgresql://app:pw@db/app")
    monkeypatch.setenv("DBROUTER_DATABASES__REPLICA__URL", "postgresql://app:pw@db2/app")
    monkeypatch.setenv("DBROUTER_DATABASES__REPLICA__REPLICA_OF", "primary")
    monkeypatch.setenv("DBROUTER_DATABASES__REPLICA__HOSTS", raw)
    with pytest.raises(ConfigurationError) as caught:
        RouterSettings()
    assert "replica" in str(caught.value).lower()
    assert "hosts" in str(caught.value).lower()


def test_no_internal_placeholder_shows_in_a_message() -> None:
    for tenancy in (
        {"url_template": "sqlite:///tenant_{tenant}.db"},
        {"url_template": "postgresql+psycopg2://app:pw@db/tenant_{tenant}"},
        {"url_template": "postgresql://app:pw@db:99999/tenant_{tenant}"},
    ):
        with pytest.raises(ConfigurationError) as caught:
            RouterSettings(databases={"primary": {"url": "sqlite://"}}, tenancy=tenancy)
        assert "probe" not in str(caught.value).lower(), str(caught.value)
        assert "dbrouter" not in str(caught.value).replace("invalid dbrouter configuration", "")
