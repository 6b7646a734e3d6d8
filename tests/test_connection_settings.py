"""The settings of timeouts, TLS and server settings: what they accept, what they refuse and
how, what tenants inherit, and the connection arguments the drivers get from them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from dbrouter import ConfigurationError, DatabaseSettings, RouterSettings, TenantSettings
from dbrouter.engines import engine_options
from tests.support.tls import Authority

PG = "postgresql://app:secret@db:5432/app"
SQLITE = "sqlite:///./app.db"


def problems(**database: Any) -> dict[str, str]:
    """The problems of the settings of one database ``primary``, by key."""
    with pytest.raises(ConfigurationError) as caught:
        RouterSettings(databases={"primary": {"url": PG, **database}})
    return dict(caught.value.problems)


@dataclass(frozen=True)
class Files:
    ca: Path
    cert: Path
    key: Path
    other_key: Path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    directory = tmp_path_factory.mktemp("certificates")
    authority = Authority("settings test authority")
    ca = directory / "ca.crt"
    ca.write_bytes(authority.pem)
    cert, key = authority.issue("app", client=True).write(directory, "client")
    _, other_key = authority.issue("other", client=True).write(directory, "other")
    return Files(ca, cert, key, other_key)


# -- timeouts -----------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["statement_timeout", "idle_in_transaction_timeout"])
@pytest.mark.parametrize("value", [0, -1, 3_000_000])
def test_timeouts_are_positive_and_within_postgresql_range(key: str, value: float) -> None:
    assert f"databases.primary.{key}" in problems(**{key: value})


@pytest.mark.parametrize(
    ("seconds", "sent"), [(1.5, "1500"), (1.1, "1100"), (0.0001, "1"), (30, "30000")]
)
def test_timeouts_are_sent_in_milliseconds_never_zero(seconds: float, sent: str) -> None:
    settings = DatabaseSettings(url=PG, statement_timeout=seconds)
    server_settings = engine_options(settings, name="primary")["connect_args"]["server_settings"]
    assert server_settings["statement_timeout"] == sent


# -- keys that cannot apply ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("statement_timeout", 5),
        ("idle_in_transaction_timeout", 5),
        ("ssl", "require"),
        ("ssl", "disable"),
        ("server_settings", {"jit": "off"}),
    ],
)
def test_postgresql_keys_on_sqlite_are_errors_naming_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigurationError) as caught:
        RouterSettings(databases={"primary": {"url": SQLITE, key: value}})
    found = dict(caught.value.problems)
    assert found == {f"databases.primary.{key}": found[f"databases.primary.{key}"]}
    assert "SQLite" in found[f"databases.primary.{key}"]


def test_tls_files_on_sqlite_are_errors(files: Files) -> None:
    with pytest.raises(ConfigurationError, match=r"databases\.primary\.ssl_ca: only applies"):
        RouterSettings(databases={"primary": {"url": SQLITE, "ssl_ca": files.ca}})


def test_schema_tenants_take_no_connection_options() -> None:
    with pytest.raises(ConfigurationError) as caught:
        RouterSettings(
            databases={"primary": {"url": PG}},
            tenancy={
                "strategy": "schema",
                "statement_timeout": 5,
                "tenants": {"acme": {"server_settings": {"jit": "off"}}},
            },
        )
    keys = [key for key, _ in caught.value.problems]
    assert keys == ["tenancy.statement_timeout", "tenancy.tenants.acme.server_settings"]
    assert "schema database" in str(caught.value)


def test_a_sqlite_tenant_cannot_inherit_postgresql_options() -> None:
    with pytest.raises(ConfigurationError) as caught:
        RouterSettings(
            databases={"primary": {"url": PG}},
            tenancy={"statement_timeout": 5, "tenants": {"local": {"url": SQLITE}}},
        )
    assert dict(caught.value.problems) == {
        "tenancy.tenants.local.statement_timeout": (
            "inherited from tenancy: only applies to PostgreSQL databases; this one is SQLite"
        )
    }


# -- server_settings ----------------------------------------------------------------------


def test_server_settings_values_become_strings_and_names_lowercase() -> None:
    settings = DatabaseSettings(
        url=PG,
        server_settings={"JIT": False, "work_mem": 4096, "pg_trgm.similarity_threshold": 0.4},
    )
    assert settings.server_settings == {
        "jit": "off",
        "work_mem": "4096",
        "pg_trgm.similarity_threshold": "0.4",
    }


@pytest.mark.parametrize(
    "name",
    [
        "default_transaction_read_only",
        "transaction_read_only",
        "statement_timeout",
        "Idle_In_Transaction_Session_Timeout",
        "client_encoding",
    ],
)
def test_server_settings_refuse_what_dbrouter_decides(name: str) -> None:
    found = problems(server_settings={name: "on"})
    message = found[f"databases.primary.server_settings.{name.lower()}"]
    assert message.startswith("cannot be set here: ")


@pytest.mark.parametrize("name", ["lock timeout", "1abc", "drop;table", "a..b", "x" * 64, ""])
def test_server_settings_names_are_parameter_names(name: str) -> None:
    found = problems(server_settings={name: "1"})
    assert found == {
        "databases.primary.server_settings": (
            f"{name!r} is not a PostgreSQL parameter name (such as lock_timeout)"
        )
    }


@pytest.mark.parametrize("value", [None, ["1"], {"a": "b"}, "a\x00b"])
def test_server_settings_values_are_plain(value: object) -> None:
    assert "databases.primary.server_settings.jit" in problems(server_settings={"jit": value})


def test_server_settings_names_given_twice_are_an_error() -> None:
    found = problems(server_settings={"JIT": "on", "jit": "off"})
    assert "given twice" in found["databases.primary.server_settings.jit"]


def test_search_path_is_refused_only_where_schema_tenants_live() -> None:
    databases = {
        "primary": {"url": PG, "server_settings": {"search_path": "app"}},
        "reports": {"url": PG},
    }
    RouterSettings(databases=databases)
    RouterSettings(
        databases=databases, tenancy={"strategy": "schema", "schema_database": "reports"}
    )
    with pytest.raises(ConfigurationError) as caught:
        RouterSettings(databases=databases, tenancy={"strategy": "schema"})
    assert [key for key, _ in caught.value.problems] == [
        "databases.primary.server_settings.search_path"
    ]
    # Tenants with a database of their own may have any search path.
    RouterSettings(
        databases=databases,
        tenancy={
            "url_template": "postgresql://app@db/t_{tenant}",
            "server_settings": {"search_path": "app"},
        },
    )


def test_application_name_in_the_url_and_in_server_settings_is_an_error() -> None:
    with pytest.raises(ConfigurationError, match=r"server_settings\.application_name"):
        DatabaseSettings(url=f"{PG}?application_name=a", server_settings={"application_name": "b"})


def test_server_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBROUTER_DATABASES__PRIMARY__URL", PG)
    monkeypatch.setenv("DBROUTER_DATABASES__PRIMARY__SERVER_SETTINGS__LOCK_TIMEOUT", "5s")
    monkeypatch.setenv("DBROUTER_DATABASES__REPORTS__URL", PG)
    monkeypatch.setenv(
        "DBROUTER_DATABASES__REPORTS__SERVER_SETTINGS", '{"pg_trgm.similarity_threshold": 0.4}'
    )
    monkeypatch.setenv("DBROUTER_DATABASES__REPORTS__STATEMENT_TIMEOUT", "2.5")
    settings = RouterSettings()
    assert settings.databases["primary"].server_settings == {"lock_timeout": "5s"}
    assert settings.databases["reports"].server_settings == {"pg_trgm.similarity_threshold": "0.4"}
    assert settings.databases["reports"].statement_timeout == 2.5


# -- what the drivers get -----------------------------------------------------------------


def test_psycopg_gets_the_parameters_as_libpq_options_after_the_urls() -> None:
    settings = DatabaseSettings(
        url="postgresql+psycopg://app@db/app?options=-c%20work_mem%3D4MB",
        statement_timeout=2,
        server_settings={"search_path": '"$user", public', "application_name": "api"},
    )
    connect_args = engine_options(settings, name="primary")["connect_args"]
    assert connect_args["options"] == (
        r'-c work_mem=4MB -c search_path="$user",\ public -c statement_timeout=2000'
    )
    assert connect_args["application_name"] == "api"


def test_through_pgbouncer_only_application_name_is_sent_when_connecting() -> None:
    settings = DatabaseSettings(
        url=PG,
        pgbouncer=True,
        statement_timeout=2,
        server_settings={"lock_timeout": "it's 1s", "application_name": "api"},
    )
    options = engine_options(settings, name="primary")
    assert options["connect_args"]["server_settings"] == {"application_name": "api"}
    assert options["plugins"] == ["dbrouter_per_transaction_parameters"]
    assert options["dbrouter_per_transaction_parameters"] == {
        "lock_timeout": "it's 1s",
        "statement_timeout": "2000",
    }


def test_a_replica_keeps_its_read_only_start_with_server_settings() -> None:
    settings = DatabaseSettings(url=PG, replica_of="primary", server_settings={"jit": "off"})
    server_settings = engine_options(settings, name="replica")["connect_args"]["server_settings"]
    assert server_settings["default_transaction_read_only"] == "on"
    assert server_settings["jit"] == "off"


# -- TLS ----------------------------------------------------------------------------------


def test_tls_settings_that_go_together(files: Files) -> None:
    assert "databases.primary.ssl_ca" in problems(ssl="verify-ca")
    assert "databases.primary.ssl_ca" in problems(ssl="require", ssl_ca=files.ca)
    assert "databases.primary.ssl_key" in problems(ssl="require", ssl_cert=files.cert)
    assert "databases.primary.ssl_cert" in problems(ssl="require", ssl_key=files.key)
    assert "databases.primary.ssl_ca" in problems(ssl_ca=files.ca)
    assert "databases.primary.ssl_cert" in problems(
        ssl="disable", ssl_cert=files.cert, ssl_key=files.key
    )
    DatabaseSettings(url=PG, ssl="verify-full")
    DatabaseSettings(url=PG, ssl="verify-ca", ssl_ca=files.ca)
    DatabaseSettings(url=PG, ssl="require", ssl_cert=files.cert, ssl_key=files.key)


def test_tls_files_must_exist_and_be_files(files: Files, tmp_path: Path) -> None:
    missing = tmp_path / "missing.crt"
    assert problems(ssl="verify-full", ssl_ca=missing) == {
        "databases.primary.ssl_ca": f"no such file: {missing}"
    }
    assert problems(ssl="verify-full", ssl_ca=tmp_path) == {
        "databases.primary.ssl_ca": f"not a file: {tmp_path}"
    }


def test_relative_tls_paths_are_made_absolute(
    files: Files, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(files.ca.parent)
    settings = DatabaseSettings(url=PG, ssl="verify-ca", ssl_ca=Path(files.ca.name))
    assert settings.ssl_ca == files.ca


def test_tls_files_that_hold_the_wrong_thing_are_named_but_never_shown(
    files: Files, tmp_path: Path
) -> None:
    secret = "c2VjcmV0LWtleS1tYXRlcmlhbA"
    garbage = tmp_path / "garbage.pem"
    garbage.write_text(f"-----BEGIN PRIVATE KEY-----\n{secret}\n-----END PRIVATE KEY-----\n")
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    cases = {
        "ssl_ca": {"ssl_ca": garbage},
        "ssl_cert": {"ssl_cert": garbage, "ssl_key": files.key},
        "ssl_key": {"ssl_cert": files.cert, "ssl_key": garbage},
    }
    for key, given in cases.items():
        found = problems(ssl="verify-full", **given)
        assert list(found) == [f"databases.primary.{key}"]
        assert str(garbage) in found[f"databases.primary.{key}"]
        assert secret not in str(found)
    found = problems(ssl="require", ssl_cert=files.cert, ssl_key=encrypted)
    assert "passphrase" in found["databases.primary.ssl_key"]
    found = problems(ssl="require", ssl_cert=files.cert, ssl_key=files.other_key)
    assert found == {
        "databases.primary.ssl_key": f"{files.other_key} is not the private key of ssl_cert"
    }
    with pytest.raises(ConfigurationError) as caught:
        DatabaseSettings(url=PG, ssl="verify-full", ssl_ca=files.ca, ssl_cert=files.key)
    assert files.key.read_text().splitlines()[1] not in str(caught.value)


def test_tls_in_the_url_and_in_the_settings_is_an_error(files: Files) -> None:
    with pytest.raises(ConfigurationError, match="the URL sets sslmode too"):
        DatabaseSettings(url=f"{PG}?sslmode=require", ssl="verify-full")
    DatabaseSettings(url=f"{PG}?sslmode=require")


def test_drivers_get_the_same_tls(files: Files) -> None:
    asyncpg = DatabaseSettings(url=PG, ssl="verify-ca", ssl_ca=files.ca)
    context = engine_options(asyncpg, name="primary")["connect_args"]["ssl"]
    assert context.verify_mode.name == "CERT_REQUIRED"
    assert context.check_hostname is False
    psycopg = DatabaseSettings(
        url="postgresql+psycopg://app@db/app",
        ssl="verify-full",
        ssl_ca=files.ca,
        ssl_cert=files.cert,
        ssl_key=files.key,
    )
    connect_args = engine_options(psycopg, name="primary")["connect_args"]
    assert {key: connect_args[key] for key in ("sslmode", "sslrootcert", "sslcert", "sslkey")} == {
        "sslmode": "verify-full",
        "sslrootcert": str(files.ca),
        "sslcert": str(files.cert),
        "sslkey": str(files.key),
    }
    disabled = DatabaseSettings(url=PG, ssl="disable")
    assert engine_options(disabled, name="primary")["connect_args"]["ssl"] == "disable"


# -- tenants ------------------------------------------------------------------------------


def test_tenants_inherit_key_by_key(files: Files) -> None:
    settings = RouterSettings(
        databases={"primary": {"url": PG}},
        tenancy={
            "url_template": "postgresql://app@db/tenant_{tenant}",
            "statement_timeout": 5,
            "idle_in_transaction_timeout": 60,
            "ssl": "verify-full",
            "ssl_ca": files.ca,
            "server_settings": {"lock_timeout": "2s", "jit": "off"},
            "tenants": {
                "acme": {"statement_timeout": 30, "server_settings": {"jit": "on"}},
                "local": {"url": "postgresql://app@localhost/local", "ssl": "disable"},
                "plain": {"url": "postgresql://app@other/plain", "ssl": "require"},
            },
        },
    )
    tenancy = settings.tenancy
    assert tenancy is not None
    acme = tenancy.tenant_connection(tenancy.tenants["acme"])
    assert acme == {
        "statement_timeout": 30,
        "idle_in_transaction_timeout": 60,
        "ssl": "verify-full",
        "ssl_ca": files.ca,
        "ssl_cert": None,
        "ssl_key": None,
        "server_settings": {"lock_timeout": "2s", "jit": "on"},
    }
    # A tenant's own disable or require takes no file that would not apply.
    local = tenancy.tenant_connection(tenancy.tenants["local"])
    assert (local["ssl"], local["ssl_ca"]) == ("disable", None)
    plain = tenancy.tenant_connection(tenancy.tenants["plain"])
    assert (plain["ssl"], plain["ssl_ca"]) == ("require", None)
    undeclared = tenancy.tenant_connection(TenantSettings())
    assert (undeclared["statement_timeout"], undeclared["ssl"]) == (5, "verify-full")


def test_a_tenants_combination_is_checked_when_built(files: Files) -> None:
    with pytest.raises(ConfigurationError) as caught:
        RouterSettings(
            databases={"primary": {"url": PG}},
            tenancy={
                "ssl": "require",
                "tenants": {"acme": {"url": PG, "ssl_cert": files.cert}},
            },
        )
    assert dict(caught.value.problems) == {
        "tenancy.tenants.acme.ssl_key": "ssl_cert and ssl_key go together: set both or neither"
    }
