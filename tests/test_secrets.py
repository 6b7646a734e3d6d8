"""A database password never shows: not in a repr, a log line, an exception, a response,
or the health output."""

import logging
import subprocess
import sys
import traceback
import typing
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import asyncpg
import pytest
from fastapi import Depends, FastAPI
from pydantic import BaseModel, ConfigDict, PydanticUserError, TypeAdapter, ValidationError
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from dbrouter import (
    ConfigurationError,
    DatabaseRouter,
    DatabaseSettings,
    DatabaseUnavailableError,
    RouterSettings,
    get_db,
)
from dbrouter.settings import SECRET
from tests.conftest import serve
from tests.support.postgres import CLIENT_BACKENDS

PASSWORD = "s3cr@t:/p%ss@w0rd:/"
QUOTED = quote(PASSWORD, safe="")
FORMS = (PASSWORD, QUOTED, "s3cr@t", "p%ss@w0rd")


def assert_hidden(*texts: object) -> None:
    for shown in texts:
        for form in FORMS:
            assert form not in str(shown), f"{form!r} leaked in {shown!r}"


@pytest.fixture
async def secret_url(postgres_admin_url: str, pg_url: str) -> AsyncIterator[str]:
    """*pg_url* as a role whose password is PASSWORD: it logs in whether the server checks
    passwords or trusts local connections."""
    role = f"secret_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(postgres_admin_url)
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'")
        yield (
            make_url(pg_url)
            .set(username=role, password=PASSWORD)
            .render_as_string(hide_password=False)
        )
    finally:
        await admin.execute(
            f"SELECT pg_terminate_backend(pid) FROM {CLIENT_BACKENDS} AND usename = $1", role
        )
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()


def test_the_password_survives_parsing_intact() -> None:
    settings = DatabaseSettings(url=f"postgresql://app:{QUOTED}@db:5432/app")
    assert settings.url.password == PASSWORD


def test_settings_never_show_the_password() -> None:
    settings = RouterSettings(
        databases={"primary": {"url": f"postgresql://app:{QUOTED}@db:5432/app"}},
        tenancy={"tenants": {"acme": {"url": f"postgresql://app:{QUOTED}@acme:5432/acme"}}},
    )
    assert_hidden(
        repr(settings),
        str(settings),
        settings.model_dump(),
        settings.model_dump_json(),
        repr(settings.databases["primary"]),
        settings.databases["primary"].url,
    )
    router = DatabaseRouter(settings)
    assert_hidden(repr(router.engine()), str(router.engine().url), router.engine().url)


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+psycopg2://app:{QUOTED}@db/app",
        f"postgresql://app:{QUOTED}@db:notaport/app",
        f"nosuchdb://app:{QUOTED}@db/app",
        f"postgresql:/app:{QUOTED}@db/app",
        f"app:{QUOTED}@db/app",
    ],
)
def test_configuration_errors_never_show_the_password(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        RouterSettings(databases={"primary": {"url": url}})
    assert_hidden(
        str(caught.value),
        repr(caught.value),
        caught.value.problems,
        "".join(traceback.format_exception(caught.value)),
    )


async def test_outages_never_show_the_password(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"postgresql://app:{QUOTED}@127.0.0.1:1/app"
    router = DatabaseRouter(
        RouterSettings(databases={"primary": {"url": url, "connect_timeout": 1, "echo": True}})
    )
    with pytest.raises(DatabaseUnavailableError) as caught:
        async with router.session() as session:
            await session.execute(text("SELECT 1"))
    report = await router.check()
    await router.dispose()
    assert_hidden(
        str(caught.value),
        "".join(traceback.format_exception(caught.value)),
        report,
        report.as_dict(),
        caplog.text,
        capsys.readouterr(),
    )


async def test_requests_logs_and_health_never_show_the_password(
    secret_url: str, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    router = DatabaseRouter(
        RouterSettings(
            databases={
                "primary": {"url": secret_url, "echo": True},
                "down": {"url": f"postgresql://app:{QUOTED}@127.0.0.1:1/x", "connect_timeout": 1},
            }
        )
    )
    app = FastAPI(lifespan=router.lifespan)
    app.include_router(router.health_router())

    @app.get("/ok")
    async def ok(db: AsyncSession = Depends(get_db("primary"))) -> int:  # noqa: B008
        return int(await db.scalar(text("SELECT 1")) or 0)

    @app.get("/down")
    async def down(db: AsyncSession = Depends(get_db("down"))) -> int:  # noqa: B008
        return int(await db.scalar(text("SELECT 1")) or 0)

    async with serve(app) as client:
        responses = [await client.get(path) for path in ("/ok", "/down", "/health/databases")]
    assert [response.status_code for response in responses] == [200, 503, 503]
    assert "dbrouter" in caplog.text  # the startup lines were logged, and checked below
    assert_hidden(
        *(response.text for response in responses),
        *(response.headers for response in responses),
        caplog.text,
        capsys.readouterr(),
    )


# -- every field, every channel ------------------------------------------------------------

# Text fields that hold no credential, checked one by one. A new text field fails
# `test_every_field_that_takes_a_url_is_a_secret` until it is a SecretURL or listed here.
NOT_SECRET = {
    ("RouterSettings", "default_database"),
    ("DatabaseSettings", "replica_of"),
    ("TenancySettings", "header"),
    ("TenancySettings", "id_pattern"),
    ("TenancySettings", "schema_database"),
    ("TenancySettings", "schema_template"),
}
SECRET_URL = f"postgresql://app:{QUOTED}@db:5432/app"


def settings_models() -> list[type[BaseModel]]:
    """RouterSettings and every model nested in it, however deep."""
    found: list[type[BaseModel]] = []
    pending: list[Any] = [RouterSettings]
    while pending:
        current = pending.pop()
        if isinstance(current, type) and issubclass(current, BaseModel):
            if current not in found:
                found.append(current)
                pending.extend(field.annotation for field in current.model_fields.values())
        else:
            pending.extend(typing.get_args(current))
    return found


def takes_text(annotation: Any) -> bool:
    try:
        adapter: TypeAdapter[Any] = TypeAdapter(
            annotation, config=ConfigDict(arbitrary_types_allowed=True)
        )
    except PydanticUserError:  # a model: its own config applies
        adapter = TypeAdapter(annotation)
    try:
        adapter.validate_python(SECRET_URL)
    except (ValidationError, ConfigurationError, ValueError):
        return False
    return True


def test_the_walk_reaches_every_settings_model() -> None:
    names = {model.__name__ for model in settings_models()}
    assert names >= {
        "RouterSettings",
        "DatabaseSettings",
        "ReplicaHostSettings",
        "TenancySettings",
        "TenantSettings",
    }


@pytest.mark.parametrize("model", settings_models(), ids=lambda model: model.__name__)
def test_every_field_that_takes_a_url_is_a_secret(model: type[BaseModel]) -> None:
    for name, field in model.model_fields.items():
        if (model.__name__, name) in NOT_SECRET:
            continue
        secret = SECRET in field.metadata or any(
            SECRET in getattr(arg, "__metadata__", ()) for arg in typing.get_args(field.annotation)
        )
        if takes_text(field.annotation):
            assert secret, f"{model.__name__}.{name} takes a URL but is no SecretURL"


def test_every_secret_field_hides_its_password_everywhere() -> None:
    settings = RouterSettings(
        databases={
            "primary": {"url": SECRET_URL},
            "replica": {
                "url": SECRET_URL,
                "replica_of": "primary",
                "hosts": [{"url": SECRET_URL.replace("@db", "@db2")}],
            },
        },
        tenancy={
            "url_template": f"postgresql://app:{QUOTED}@db:5432/tenant_{{tenant}}",
            "tenants": {"acme": {"url": f"postgresql://app:{QUOTED}@db:5432/acme"}},
        },
    )
    tenancy = settings.tenancy
    assert tenancy is not None
    assert tenancy.url_template is not None
    assert tenancy.url_template.password == PASSWORD  # kept, only never shown
    assert_hidden(
        repr(settings),
        str(settings),
        settings.model_dump(),
        settings.model_dump(mode="json"),
        settings.model_dump_json(),
        repr(tenancy),
        tenancy.model_dump_json(),
        repr(settings.databases["replica"].hosts),
    )


def test_the_cli_never_shows_the_password(
    monkeypatch: pytest.MonkeyPatch, postgres_admin_url: str
) -> None:
    server = make_url(postgres_admin_url)
    monkeypatch.setenv("DBROUTER_DATABASES__PRIMARY__URL", "sqlite://")
    monkeypatch.setenv("DBROUTER_TENANCY__TENANTS__ACME__URL", SECRET_URL)
    # The template's server is listed, over a connection that carries the password: with
    # it answering, and with it down.
    for where, status in ((f"{server.host}:{server.port}", 0), ("127.0.0.1:1", 1)):
        monkeypatch.setenv(
            "DBROUTER_TENANCY__URL_TEMPLATE",
            f"postgresql://{server.username}:{QUOTED}@{where}/tenant_{{tenant}}",
        )
        result = subprocess.run(
            [sys.executable, "-m", "dbrouter", "tenants", "list"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == status, result.stderr
        assert ("acme" in result.stdout) is (status == 0)
        assert_hidden(result.stdout, result.stderr)
