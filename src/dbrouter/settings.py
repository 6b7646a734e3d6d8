"""Configuration: which databases exist, how their pools behave, how tenants are found.

Settings are data. They are validated when built and have no side effects; the registry
builds engines from them. Every invalid value is a `ConfigurationError` that names the key
and, where there is a fixed set, the valid choices. No message contains a password.
"""

from __future__ import annotations

import json
import os
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)
from sqlalchemy.engine import URL

from .errors import ConfigurationError
from .parameters import MAX_TIMEOUT, SEARCH_PATH, check_server_settings
from .tls import SSLMode, readable_file, tls_problems
from .urls import is_sqlite, parse_url, render

__all__ = [
    "DEFAULT_TENANT_ID_PATTERN",
    "REPLICA_KEYS",
    "SECRET",
    "STRATEGY_KEYS",
    "DatabaseSettings",
    "ReplicaHostSettings",
    "RouterSettings",
    "SecretURL",
    "TenancySettings",
    "TenantSettings",
    "tenant_url",
]


class _Secret:
    """Marks the settings type that holds credentials: tests find every such field by it."""

    def __repr__(self) -> str:
        return "SECRET"


SECRET = _Secret()
"""The marker in the metadata of `SecretURL`."""

SecretURL = Annotated[
    URL,
    NoDecode,
    SECRET,
    BeforeValidator(parse_url),
    PlainSerializer(render, return_type=str),
]
"""A database URL with an async driver, and the one type of every settings field that may
hold a credential: its repr, str, ``model_dump()`` and ``model_dump_json()`` all show the
password as ``***``. URL templates are of this type too (``{tenant}`` in the database name)."""

Timeout = Annotated[float, Field(gt=0, le=MAX_TIMEOUT)]
"""Seconds, for a PostgreSQL timeout (at most 2^31 - 1 milliseconds)."""

ServerSettings = Annotated[dict[str, str], BeforeValidator(check_server_settings)]
"""PostgreSQL run-time parameters by name; names and values checked, names lowercase."""

CertificateFile = Annotated[Path, AfterValidator(readable_file)]
"""A file of the TLS settings: it must exist and be readable when the settings are built."""


def _not_a_url(value: object) -> object:
    if isinstance(value, str) and "://" in value:
        # Never echoed: a URL put here by mistake would carry its password.
        raise ConfigurationError("expected the path of an Alembic script directory, not a URL")
    return value


ScriptDirectoryPath = Annotated[Path, BeforeValidator(_not_a_url)]
"""The path of an Alembic script directory (checked when a migration runs, not before)."""


_TRUE_WORDS = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE_WORDS = frozenset({"0", "false", "f", "no", "n", "off"})


def _pre_ping_mode(value: object) -> bool | str:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word == "idle":
            return "idle"
        if word in _TRUE_WORDS or word in _FALSE_WORDS:
            return word in _TRUE_WORDS
    raise ConfigurationError('must be true, false or "idle"')


PrePing = Annotated[bool | Literal["idle"], BeforeValidator(_pre_ping_mode)]
"""``pool_pre_ping``: test every checkout (true), none (false), or only idle ones (idle)."""

_CONNECTION_KEYS = (
    "statement_timeout",
    "idle_in_transaction_timeout",
    "ssl",
    "ssl_ca",
    "ssl_cert",
    "ssl_key",
    "server_settings",
)
"""The keys of `DatabaseSettings` that tenant databases inherit from ``tenancy``."""
_TLS_FILES = ("ssl_ca", "ssl_cert", "ssl_key")
_TLS_QUERY_KEYS = ("ssl", "sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword")

DEFAULT_TENANT_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,62}$")
_TEMPLATE_PROBE = "dbroutertenantprobe"
_MAX_IDENTIFIER = 63
_SAFE_TENANT_ID = re.compile(r"[a-z0-9_-]+")
"""Whatever ``id_pattern`` says, an id never holds anything else: it goes into names."""


def tenant_url(template: URL, tenant: str) -> URL:
    """The URL *template* names for the (validated) *tenant*: ``{tenant}`` replaced in the
    database name, the only place it may appear."""
    return template.set(database=(template.database or "").replace("{tenant}", tenant))


class _Model(BaseModel):
    """Base of the nested settings models: unknown keys are errors, the URL type is allowed."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, frozen=True)

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _configuration_error(exc, type(self)) from None


class ReplicaHostSettings(_Model):
    """One more server answering under a replica's name."""

    url: SecretURL
    """Where this server is. A secret, like every URL."""
    weight: int = Field(default=1, ge=1)
    """Its share of reads under the ``weighted`` balancing policy."""


class DatabaseSettings(_Model):
    """One database: where it is and how its connection pool behaves."""

    url: SecretURL
    """Where the database is. A secret: rendered with the password hidden everywhere."""
    echo: bool = False
    """Log every SQL statement (SQLAlchemy's ``echo``)."""
    pool_size: int = Field(default=20, ge=1)
    """Connections kept open in the pool."""
    max_overflow: int = Field(default=10, ge=0)
    """Connections opened beyond ``pool_size`` under load, closed when returned."""
    pool_recycle: int = Field(default=3600, ge=-1)
    """Seconds after which a pooled connection is replaced (-1: never)."""
    pool_pre_ping: PrePing = "idle"
    """Test pooled connections before handing them out, so that a restart costs no request:
    ``idle`` tests one only when it sat unused for ``pre_ping_idle_after`` or the driver
    saw it close (no round trip on other checkouts); ``true`` every checkout; ``false``
    none."""
    pre_ping_idle_after: float = Field(default=5.0, gt=0)
    """With ``pool_pre_ping: idle``: seconds a pooled connection may sit unused and still be
    handed out untested."""
    pool_use_lifo: bool = True
    """Reuse the most recently returned connection first, so idle extras can time out."""
    pool_timeout: float = Field(default=30.0, gt=0)
    """Seconds to wait for a pooled connection before the request fails with 503."""
    connect_timeout: float = Field(default=10.0, gt=0)
    """Seconds to wait for a new server connection (asyncpg's own default is 60)."""
    replica_of: str | None = None
    """Name of the database this one replicates; makes this one read-only."""
    health_check_interval: float = Field(default=5.0, gt=0)
    """Replicas: seconds between background probes of reachability and lag."""
    max_lag: float = Field(default=30.0, gt=0)
    """Replicas: seconds of replay lag past which the replica leaves rotation."""
    fallback: Literal["primary", "error"] = "primary"
    """Replicas: where reads go when no replica is usable: the primary, or an error (503)."""
    hosts: list[ReplicaHostSettings] = Field(default_factory=list)
    """Replicas: more servers serving this name besides ``url``, as ``{"url", "weight"}``."""
    weight: int = Field(default=1, ge=1)
    """Replicas: the share of reads of ``url`` under the ``weighted`` policy."""
    balance: Literal["round_robin", "least_busy", "weighted"] = "round_robin"
    """Replicas: how a read picks among the servers in rotation."""
    consistency_wait: float = Field(default=0.0, ge=0)
    """Replicas: seconds a read carrying a consistency token may wait for a replica to
    replay it before it goes to the primary instead (0: go at once)."""
    consistency_window: float = Field(default=5.0, ge=0)
    """Replicas of a database without WAL positions (SQLite): seconds after a write during
    which the writing client reads from the primary."""
    pgbouncer: bool = False
    """The database is reached through PgBouncer in transaction mode (no prepared-statement
    cache, unique statement names)."""
    statement_timeout: Timeout | None = None
    """Seconds a statement may run before the server cancels it; the request gets 503
    (PostgreSQL's ``statement_timeout``; none: the server's own setting)."""
    idle_in_transaction_timeout: Timeout | None = None
    """Seconds a session may sit idle inside a transaction before the server ends it
    (PostgreSQL's ``idle_in_transaction_session_timeout``; none: the server's own setting)."""
    ssl: SSLMode | None = None
    """TLS: ``disable``, ``require`` (encrypted, certificate unchecked), ``verify-ca``
    (signed by ``ssl_ca``) or ``verify-full`` (and issued for the URL's host); none: the
    driver's default, ``prefer``."""
    ssl_ca: CertificateFile | None = None
    """File of the authorities the server's certificate must be signed by; ``verify-full``
    without it trusts the system's authorities."""
    ssl_cert: CertificateFile | None = None
    """File of the client certificate presented to the server, with ``ssl_key``."""
    ssl_key: CertificateFile | None = None
    """File of the client certificate's private key (not encrypted)."""
    server_settings: ServerSettings = Field(default_factory=dict)
    """Other PostgreSQL run-time parameters set on every connection, such as
    ``{"lock_timeout": "5s", "jit": "off"}``."""
    migrations: ScriptDirectoryPath | None = None
    """The Alembic script directory this database is migrated with (``dbrouter migrate
    init PATH`` makes one); never on a replica, which follows its primary."""

    @model_validator(mode="after")
    def _connection_options_apply(self) -> DatabaseSettings:
        options = {key: getattr(self, key) for key in _CONNECTION_KEYS}
        problems = _connection_problems(options, self.url.get_backend_name())
        query = self.url.query
        if any(options[key] for key in ("ssl", "ssl_ca", "ssl_cert", "ssl_key")):
            problems += [
                ("ssl", f"the URL sets {name} too; configure TLS in one place")
                for name in _TLS_QUERY_KEYS
                if name in query
            ]
        if "application_name" in self.server_settings and "application_name" in query:
            problems.append(
                (
                    "server_settings.application_name",
                    "the URL sets application_name too; set it in one place",
                )
            )
        if problems:
            raise _problems(problems)
        return self

    @model_validator(mode="after")
    def _keys_apply(self) -> DatabaseSettings:
        if self.replica_of is None:
            misplaced = sorted(self.model_fields_set & REPLICA_KEYS)
            if misplaced:
                raise _problem(
                    misplaced[0],
                    f"only a replica takes {', '.join(misplaced)}; set replica_of "
                    "to the database it replicates, or remove "
                    f"{'it' if len(misplaced) == 1 else 'them'}",
                )
        elif self.migrations is not None:
            raise _problem(
                "migrations",
                f"a replica is never migrated: it follows {self.replica_of!r}; set "
                f"migrations on {self.replica_of!r} and remove it here",
            )
        if "pre_ping_idle_after" in self.model_fields_set and self.pool_pre_ping != "idle":
            raise _problem(
                "pre_ping_idle_after",
                f"only applies with pool_pre_ping: idle (pool_pre_ping is "
                f"{str(self.pool_pre_ping).lower()}); set pool_pre_ping to idle, or remove it",
            )
        if self.pgbouncer and is_sqlite(self.url):
            raise _problem(
                "pgbouncer",
                "only a PostgreSQL database is reached through PgBouncer; remove it for an "
                "SQLite URL",
            )
        return self


class TenantSettings(_Model):
    """A tenant declared in configuration, with optional pool overrides."""

    url: SecretURL | None = None
    """The tenant's own database (``database`` strategy); default: the URL template."""
    pool_size: int | None = Field(default=None, ge=1)
    """Overrides ``tenancy.pool_size`` for this tenant."""
    max_overflow: int | None = Field(default=None, ge=0)
    """Overrides ``tenancy.max_overflow`` for this tenant."""
    statement_timeout: Timeout | None = None
    """Overrides ``tenancy.statement_timeout`` for this tenant."""
    idle_in_transaction_timeout: Timeout | None = None
    """Overrides ``tenancy.idle_in_transaction_timeout`` for this tenant."""
    ssl: SSLMode | None = None
    """Overrides ``tenancy.ssl`` for this tenant."""
    ssl_ca: CertificateFile | None = None
    """Overrides ``tenancy.ssl_ca`` for this tenant."""
    ssl_cert: CertificateFile | None = None
    """Overrides ``tenancy.ssl_cert`` for this tenant."""
    ssl_key: CertificateFile | None = None
    """Overrides ``tenancy.ssl_key`` for this tenant."""
    server_settings: ServerSettings | None = None
    """Added to ``tenancy.server_settings`` for this tenant, its values winning."""


NO_OVERRIDES = TenantSettings()
"""The settings of a tenant that declares nothing of its own: one shared (frozen) value,
so remembering many such tenants costs no copy of it each."""


class TenancySettings(_Model):
    """How requests are mapped to tenants and tenants to databases or schemas."""

    strategy: Literal["database", "schema"] = "database"
    """``database``: one database (and engine) per tenant; ``schema``: one schema per tenant
    in a shared database."""
    header: str = "X-Tenant-ID"
    """The request header that carries the tenant id."""
    id_pattern: str = DEFAULT_TENANT_ID_PATTERN
    """A tenant id must match this regular expression; checked before anything else. It can
    only narrow the default: lowercase letters, digits, ``_`` and ``-`` are all an id may
    ever hold, and the database or schema name it makes must fit in 63 bytes."""
    url_template: SecretURL | None = None
    """``database`` strategy: URL of a tenant's database, with ``{tenant}`` in the database
    name, for tenants not listed under ``tenants``. A secret, like every URL."""
    tenants: dict[str, TenantSettings] = Field(default_factory=dict)
    """Tenants declared up front, by id."""
    schema_database: str | None = None
    """``schema`` strategy: the database that holds the schemas (default: the default
    database)."""
    schema_template: str = "tenant_{tenant}"
    """``schema`` strategy: the schema name of a tenant."""
    max_engines: int = Field(default=100, ge=1)
    """``database`` strategy: at most this many tenant engines stay cached."""
    engine_idle_ttl: float = Field(default=600.0, gt=0)
    """``database`` strategy: seconds an unused tenant engine stays cached."""
    lookup_ttl: float = Field(default=60.0, gt=0)
    """Seconds an answer about a tenant that is not declared (from the catalog, the URL
    template or the schema), found or not found, is kept before it is asked again."""
    pool_size: int = Field(default=2, ge=1)
    """Pool size of a tenant engine (small: a process may serve many tenants)."""
    max_overflow: int = Field(default=3, ge=0)
    """Overflow of a tenant engine's pool."""
    pool_timeout: float = Field(default=30.0, gt=0)
    """Seconds a request waits for a connection of its tenant's pool, then 503."""
    connect_timeout: float = Field(default=10.0, gt=0)
    """Seconds to wait for a new connection to a tenant's database."""
    statement_timeout: Timeout | None = None
    """``database`` strategy: ``statement_timeout`` of every tenant's database."""
    idle_in_transaction_timeout: Timeout | None = None
    """``database`` strategy: ``idle_in_transaction_timeout`` of every tenant's database."""
    ssl: SSLMode | None = None
    """``database`` strategy: the TLS mode of every tenant's database."""
    ssl_ca: CertificateFile | None = None
    """``database`` strategy: ``ssl_ca`` of every tenant's database."""
    ssl_cert: CertificateFile | None = None
    """``database`` strategy: ``ssl_cert`` of every tenant's database."""
    ssl_key: CertificateFile | None = None
    """``database`` strategy: ``ssl_key`` of every tenant's database."""
    server_settings: ServerSettings = Field(default_factory=dict)
    """``database`` strategy: ``server_settings`` of every tenant's database."""
    migrations: ScriptDirectoryPath | None = None
    """The Alembic script directory every tenant is migrated with: each tenant's database,
    or each tenant's schema with an ``alembic_version`` table of its own."""

    def tenant_connection(self, tenant: TenantSettings) -> dict[str, Any]:
        """The timeouts, TLS and server settings of *tenant*'s database: each key the
        tenant sets, else the tenancy's; ``server_settings`` merged, the tenant's winning.

        A tenant whose own ``ssl`` is ``disable`` inherits no TLS file, and one whose own
        ``ssl`` is ``require`` no ``ssl_ca``: they would not apply.
        """
        options = {
            key: getattr(self, key) if getattr(tenant, key) is None else getattr(tenant, key)
            for key in _CONNECTION_KEYS
        }
        options["server_settings"] = {**self.server_settings, **(tenant.server_settings or {})}
        unused = {"disable": _TLS_FILES, "require": ("ssl_ca",)}.get(tenant.ssl or "", ())
        for key in unused:
            options[key] = getattr(tenant, key)
        return options

    @model_validator(mode="after")
    def _tenant_connections_apply(self) -> TenancySettings:
        own = {key: getattr(self, key) for key in _CONNECTION_KEYS}
        if self.strategy == "schema":
            shared = (
                "the schema strategy's tenants share the connections of the schema database; "
                "set it on that database (databases.<name>)"
            )
            problems = [(key, shared) for key, value in own.items() if value]
            for tenant, settings in self.tenants.items():
                problems += [
                    (f"tenants.{tenant}.{key}", shared)
                    for key in _CONNECTION_KEYS
                    if getattr(settings, key)
                ]
        else:
            problems = _connection_problems(own, "postgresql")
            for tenant, settings in self.tenants.items():
                if problems:
                    break  # the tenants' own problems would only repeat these
                backend = "postgresql" if settings.url is None else settings.url.get_backend_name()
                for key, message in _connection_problems(
                    self.tenant_connection(settings), backend
                ):
                    if not getattr(settings, key) and getattr(self, key):
                        message = f"inherited from tenancy: {message}"
                    problems.append((f"tenants.{tenant}.{key}", message))
        if problems:
            raise _problems(problems)
        return self

    @field_validator("id_pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ConfigurationError(f"not a regular expression: {exc}") from None
        return value

    @field_validator("url_template")
    @classmethod
    def _template_names_database_only(cls, value: URL | None) -> URL | None:
        if value is None:
            return None
        parts = [value.username, value.password, value.host, value.database]
        for key, entry in value.query.items():
            parts += [key, *((entry,) if isinstance(entry, str) else entry)]
        if sum((part or "").count("{tenant}") for part in parts) != 1:
            raise ConfigurationError("must contain {tenant} exactly once, in the database name")
        url = tenant_url(value, _TEMPLATE_PROBE)
        if url.get_backend_name() == "sqlite":
            raise ConfigurationError(
                "must name a database server such as PostgreSQL: SQLite would create a new "
                "file for every well-formed id; declare SQLite tenants under tenancy.tenants"
            )
        if "{tenant}" not in (value.database or ""):
            raise ConfigurationError(
                "{tenant} may only appear in the database name, "
                "not in the host, user, port or query"
            )
        return value

    @field_validator("schema_template")
    @classmethod
    def _schema_template_has_tenant(cls, value: str) -> str:
        if value.count("{tenant}") != 1:
            raise ConfigurationError("must contain {tenant} exactly once")
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", value.replace("{tenant}", "x")):
            raise ConfigurationError(
                "may contain only lowercase letters, digits, underscores and {tenant}"
            )
        return value

    def max_id_length(self) -> int:
        """The longest tenant id whose database or schema name PostgreSQL keeps whole.

        PostgreSQL cuts names at 63 bytes: two longer ids that agree on their first 63
        bytes would name the same database or schema.
        """
        fixed = len(self.schema_template) - len("{tenant}")
        if self.strategy == "database" and self.url_template is not None:
            fixed = len(self.url_template.database or "") - len("{tenant}")
        return _MAX_IDENTIFIER - fixed

    @model_validator(mode="after")
    def _keys_fit_the_strategy(self) -> TenancySettings:
        foreign = sorted(
            key
            for strategy, keys in STRATEGY_KEYS.items()
            if strategy != self.strategy
            for key in keys & self.model_fields_set
        )
        if foreign:
            raise _problem(
                foreign[0],
                f"not a key of the {self.strategy!r} strategy "
                f"(keys of other strategies set: {', '.join(foreign)}); "
                f"the {self.strategy!r} strategy takes "
                f"{', '.join(sorted(STRATEGY_KEYS[self.strategy]))} besides "
                f"{', '.join(sorted(_COMMON_TENANCY_KEYS))}",
            )
        if self.strategy != "database":
            for tenant, settings in self.tenants.items():
                if settings.model_fields_set:
                    raise _problem(
                        f"tenants.{tenant}",
                        f"{', '.join(sorted(settings.model_fields_set))}: a tenant of the "
                        f"{self.strategy!r} strategy has no database or pool of its own; "
                        "declare it with no keys",
                    )
        return self

    @model_validator(mode="after")
    def _tenant_ids_are_valid(self) -> TenancySettings:
        pattern = re.compile(self.id_pattern)
        for tenant in self.tenants:
            if not pattern.fullmatch(tenant) or not _SAFE_TENANT_ID.fullmatch(tenant):
                raise _problem(
                    "tenants",
                    f"{tenant!r} is not a valid tenant id (must match {self.id_pattern})",
                )
        return self


REPLICA_KEYS = frozenset(
    {
        "health_check_interval",
        "max_lag",
        "fallback",
        "hosts",
        "weight",
        "balance",
        "consistency_wait",
        "consistency_window",
    }
)
"""Keys of `DatabaseSettings` that only a replica (``replica_of``) takes."""

STRATEGY_KEYS: dict[str, frozenset[str]] = {
    "database": frozenset(
        {
            "url_template",
            "max_engines",
            "engine_idle_ttl",
            "pool_size",
            "max_overflow",
            "pool_timeout",
            "connect_timeout",
            "statement_timeout",
            "idle_in_transaction_timeout",
            "ssl",
            "ssl_ca",
            "ssl_cert",
            "ssl_key",
            "server_settings",
        }
    ),
    "schema": frozenset({"schema_database", "schema_template"}),
}
"""Keys of `TenancySettings` that belong to one strategy; refused under another."""

_COMMON_TENANCY_KEYS = frozenset(
    {"strategy", "header", "id_pattern", "tenants", "lookup_ttl", "migrations"}
)


class RouterSettings(BaseSettings):
    """Every database of the process, read from ``DBROUTER_*`` variables, a ``.env`` file,
    or built in Python.

    ``DBROUTER_DATABASES__PRIMARY__URL=postgresql://app:secret@db:5432/app`` declares the
    database ``primary``; nested keys are joined with ``__``.
    """

    model_config = SettingsConfigDict(
        env_prefix="DBROUTER_",
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="forbid",
        arbitrary_types_allowed=True,
        frozen=True,
    )

    databases: dict[str, DatabaseSettings] = Field(default_factory=dict)
    """The named databases."""
    default_database: str = "primary"
    """The database of ``get_db()`` and ``router.session()`` when no name is given."""
    max_connections: int | None = Field(default=None, ge=1)
    """A cap on the server connections the process opens, across every database and tenant."""
    tenancy: TenancySettings | None = None
    """Tenant routing; ``None`` when the application has no tenants."""

    def __init__(self, /, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise _configuration_error(exc, type(self)) from None
        except SettingsError:
            # pydantic-settings names only the top field, and its cause quotes the value.
            raise _unparsable_environment() from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Python values first, then the environment, then ``.env``, then secret files."""
        return init_settings, env_settings, _OwnDotEnvSource(settings_cls), file_secret_settings

    @field_validator("databases")
    @classmethod
    def _names_are_plain(cls, value: dict[str, DatabaseSettings]) -> dict[str, DatabaseSettings]:
        for name in value:
            if not _NAME_PATTERN.fullmatch(name):
                raise ConfigurationError(
                    f"{name!r} is not a valid database name "
                    "(letters, digits, '_' and '-', at most 63 characters)"
                )
        return value

    @model_validator(mode="after")
    def _references_resolve(self) -> RouterSettings:
        names = set(self.databases)
        if not names and self.tenancy is None:
            raise _problem(
                "databases",
                "no database is configured; set for example "
                "DBROUTER_DATABASES__PRIMARY__URL=postgresql://user:password@host/dbname",
            )
        if names and self.default_database not in names:
            raise _problem(
                "default_database",
                f"{self.default_database!r} is not a configured database; "
                f"choose one of {_listing(names)}",
            )
        for name, database in self.databases.items():
            target = database.replica_of
            if target is None:
                if database.hosts:
                    raise _problem(
                        f"databases.{name}.hosts", "only a replica (replica_of) may list hosts"
                    )
                continue
            if target not in names or target == name:
                choices = _listing(names - {name})
                raise _problem(
                    f"databases.{name}.replica_of",
                    f"{target!r} is not a configured database; choose one of {choices}",
                )
            if self.databases[target].replica_of is not None:
                raise _problem(
                    f"databases.{name}.replica_of",
                    f"{target!r} is itself a replica; name the primary it replicates",
                )
        tenancy = self.tenancy
        if tenancy is not None and tenancy.strategy == "schema":
            holder = tenancy.schema_database or self.default_database
            if holder not in names:
                raise _problem(
                    "tenancy.schema_database",
                    f"{holder!r} is not a configured database; choose one of {_listing(names)}",
                )
        return self

    @model_validator(mode="after")
    def _schema_tenants_keep_their_search_path(self) -> RouterSettings:
        tenancy = self.tenancy
        if tenancy is None or tenancy.strategy != "schema":
            return self
        holder = tenancy.schema_database or self.default_database
        database = self.databases.get(holder)
        if database is not None and SEARCH_PATH in database.server_settings:
            raise _problem(
                f"databases.{holder}.server_settings.{SEARCH_PATH}",
                "cannot be set on the database that holds the tenants' schemas: the schema "
                "strategy pins each transaction's search_path to its tenant's schema",
            )
        return self


class _OwnDotEnvSource(DotEnvSettingsSource):
    """``.env`` entries with the ``DBROUTER_`` prefix only.

    An application's ``.env`` holds its other settings too; those are not ours to reject,
    while a misspelt ``DBROUTER_`` entry still is.
    """

    def __call__(self) -> dict[str, Any]:
        prefix = self.env_prefix.lower()
        fields = self.settings_cls.model_fields
        return {
            key: value
            for key, value in super().__call__().items()
            if key in fields or key.lower().startswith(prefix)
        }


def _unparsable_environment() -> ConfigurationError:
    """The error for an environment variable (or ``.env`` entry) whose JSON is malformed,
    naming the variables that hold bad JSON and never their values."""
    prefix = RouterSettings.model_config.get("env_prefix", "")
    delimiter = RouterSettings.model_config.get("env_nested_delimiter") or "__"
    bad = []
    for name, value in sorted(os.environ.items()):
        if not name.upper().startswith(prefix) or name.rsplit(delimiter, 1)[-1].lower() not in (
            _JSON_KEYS
        ):
            continue
        try:
            json.loads(value)
        except ValueError:
            bad.append(name)
    named = ", ".join(bad) or "a DBROUTER_ variable that takes JSON"
    problems = [
        (name.removeprefix(prefix).lower().replace(delimiter, "."), "not valid JSON")
        for name in bad
    ]
    return ConfigurationError(
        f"invalid dbrouter configuration: {named}: not valid JSON; lists and mappings are "
        'written as JSON, for example DBROUTER_DATABASES__REPLICA__HOSTS=\'[{"url": '
        '"postgresql://user:password@host/db", "weight": 2}]\'',
        problems=problems,
    )


_JSON_KEYS = frozenset({"hosts", "tenants", "databases", "tenancy", "server_settings"})


def _problem(key: str, message: str) -> ConfigurationError:
    return ConfigurationError(f"{key}: {message}", problems=[(key, message)])


def _problems(problems: list[tuple[str, str]]) -> ConfigurationError:
    summary = "; ".join(f"{key}: {message}" for key, message in problems)
    return ConfigurationError(summary, problems=problems)


def _connection_problems(options: Mapping[str, Any], backend: str) -> list[tuple[str, str]]:
    """What is wrong with a database's timeouts, TLS and server settings, on *backend*."""
    if backend != "postgresql":
        kind = "SQLite" if backend == "sqlite" else backend
        return [
            (key, f"only applies to PostgreSQL databases; this one is {kind}")
            for key in _CONNECTION_KEYS
            if options[key]
        ]
    return tls_problems(
        options["ssl"], ca=options["ssl_ca"], cert=options["ssl_cert"], key=options["ssl_key"]
    )


def _listing(names: set[str] | frozenset[str]) -> str:
    return ", ".join(repr(name) for name in sorted(names)) or "(none)"


def _configuration_error(exc: ValidationError, model: type[BaseModel]) -> ConfigurationError:
    """A `ConfigurationError` listing every problem, without echoing any input value."""
    problems: list[tuple[str, str]] = []
    for error in exc.errors(include_input=False, include_url=False):
        location = ".".join(str(part) for part in error["loc"])
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, ConfigurationError):
            for key, message in cause.problems:
                problems.append((".".join(part for part in (location, key) if part), message))
        elif error["type"] == "extra_forbidden":
            owner = _model_at(model, error["loc"][:-1])
            valid = ", ".join(sorted(owner.model_fields)) if owner else "see the documentation"
            problems.append((location, f"unknown key; valid keys: {valid}"))
        else:
            problems.append((location, error["msg"]))
    summary = "; ".join(f"{key}: {message}" if key else message for key, message in problems)
    return ConfigurationError(f"invalid dbrouter configuration: {summary}", problems=problems)


def _model_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The settings model that owns the key at *loc*, following nested models and dicts."""
    current: Any = model
    expect_key = False
    for part in loc:
        if expect_key:
            expect_key = False
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        current, expect_key = _unwrap(field.annotation)
    if expect_key:
        return None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """The model inside ``Model | None`` or ``dict[str, Model]``; True when a key follows."""
    origin = typing.get_origin(annotation)
    if origin is dict:
        return typing.get_args(annotation)[1], True
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if arg is not type(None):
                return _unwrap(arg)
    return annotation, False
