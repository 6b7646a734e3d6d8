"""Small projects that use the plugin, run by pytest's own `pytester` in this process:
an app module with its router, a pytest configuration, and test files."""

from __future__ import annotations

import textwrap
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from sqlalchemy.engine import make_url

__all__ = ["APP", "InnerProject", "inner_project"]

APP = """
from fastapi import Depends, FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from dbrouter import DatabaseRouter, RouterSettings, get_db

router = DatabaseRouter(
    RouterSettings(
        databases={{
            "primary": {{"url": "postgresql://app@db.internal/{database}"}},
            "replica": {{
                "url": "postgresql://app@replica.internal/{database}",
                "replica_of": "primary",
            }},
        }},
        tenancy={{
            "url_template": "postgresql://app@db.internal/{database}_{{tenant}}",
            "tenants": {{"acme": {{}}}},
        }},
    )
)
app = FastAPI(lifespan=router.lifespan)


@app.get("/one")
async def one(db: AsyncSession = Depends(get_db())) -> int:
    return int(await db.scalar(text("SELECT 1")))
"""


class InnerProject:
    """A project in *pytester*'s directory, its databases named *database* (and
    ``<database>_<tenant>``) on the server of *server_url*."""

    def __init__(self, pytester: pytest.Pytester, server_url: str, database: str) -> None:
        self.pytester = pytester
        self.server_url = server_url
        self.database = database

    def configure(self, *lines: str, app: str = APP) -> None:
        """Write the app module ``inner_app`` and a pyproject.toml with *lines* added to
        its ``[tool.pytest.ini_options]``."""
        self.pytester.makepyfile(inner_app=textwrap.dedent(app.format(database=self.database)))
        options = "\n".join(
            [
                "[tool.pytest.ini_options]",
                'asyncio_mode = "auto"',
                'asyncio_default_fixture_loop_scope = "session"',
                'asyncio_default_test_loop_scope = "session"',
                *lines,
            ]
        )
        self.pytester.makefile(".toml", pyproject=options)

    def run(self, *arguments: str) -> pytest.RunResult:
        """pytest in the project, in this process, on the server."""
        return self.pytester.runpytest_inprocess(
            "-p", "no:cacheprovider", f"--dbrouter-postgres-url={self.server_url}", *arguments
        )

    def drop_databases(self) -> None:
        """Drop every database the project made."""
        with psycopg.connect(self.server_url, autocommit=True) as admin:
            names = admin.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s", (f"{self.database}%",)
            ).fetchall()
            for (name,) in names:
                admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@contextmanager
def inner_project(pytester: pytest.Pytester, server_url: str) -> Iterator[InnerProject]:
    """A project with databases of its own name (see `InnerProject`), dropped after."""
    pytester.syspathinsert()
    url = make_url(server_url).render_as_string(hide_password=False)
    project = InnerProject(pytester, url, f"dbr_inner_{uuid.uuid4().hex[:8]}")
    try:
        yield project
    finally:
        project.drop_databases()
