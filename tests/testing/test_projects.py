"""The plugin as users' projects meet it: in a fresh pytest, in a subprocess.

The example project (``examples/testing``) passes against the suite's primary and standby
and leaves every database it touched empty; a project that configures no server gets a
throwaway one for its session; a project that does not use the plugin runs none of it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from tests.support.replication import Replication

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "testing"


def run_pytest(project: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    """A fresh pytest in *project*, as its developer would run it, with no DBROUTER_
    variable of this machine."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DBROUTER_", "PYTEST_", "COV_CORE"))
    }
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *arguments],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


async def rows(url: str, database: str) -> int:
    connection = await asyncpg.connect(
        make_url(url).set(database=database).render_as_string(hide_password=False)
    )
    try:
        return int(await connection.fetchval("SELECT count(*) FROM notes"))
    finally:
        await connection.close()


async def test_the_example_project_passes_and_leaves_nothing(replication: Replication) -> None:
    server, standby = replication.primary.url(), replication.standby.url()
    result = run_pytest(
        EXAMPLE, "-q", f"--dbrouter-postgres-url={server}", f"--dbrouter-standby-url={standby}"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "8 passed" in result.stdout, result.stdout
    for database in ("notes", "notes_acme", "notes_globex"):
        assert await rows(server, database) == 0, database


def test_a_project_without_a_server_gets_a_throwaway_one(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        textwrap.dedent(
            """\
            [tool.pytest.ini_options]
            pythonpath = ["."]
            asyncio_mode = "auto"
            asyncio_default_fixture_loop_scope = "session"
            asyncio_default_test_loop_scope = "session"
            dbrouter_router = "service:router"
            filterwarnings = ["error"]
            """
        )
    )
    (tmp_path / "service.py").write_text(
        textwrap.dedent(
            """\
            from dbrouter import DatabaseRouter, RouterSettings

            router = DatabaseRouter(
                RouterSettings(databases={"primary": {"url": "postgresql://db.internal/app"}})
            )
            """
        )
    )
    (tmp_path / "test_service.py").write_text(
        textwrap.dedent(
            """\
            from sqlalchemy import text


            async def test_the_server_is_a_throwaway(dbrouter):
                async with dbrouter.session(commit=True) as session:
                    directory = await session.scalar(text("SHOW data_directory"))
                    await session.execute(text("CREATE TABLE t (x int)"))
                print("data directory:", directory)
            """
        )
    )
    result = run_pytest(tmp_path, "-q", "-s")
    assert result.returncode == 0, result.stdout + result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("data directory"))
    directory = Path(line.split(": ", 1)[1])
    assert directory.name == "data"
    assert directory.parent.name.startswith("dbr-pg-"), directory
    assert not directory.exists(), "the throwaway server is removed when the session ends"


def test_a_project_that_does_not_use_the_plugin_runs_none_of_it(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(
        textwrap.dedent(
            """\
            import sys


            def pytest_sessionfinish(session):
                assert session.config.pluginmanager.has_plugin("dbrouter")
                loaded = sorted(name for name in sys.modules if name.startswith("dbrouter"))
                print("\\ndbrouter modules loaded:", loaded)
            """
        )
    )
    (tmp_path / "test_plain.py").write_text(
        "async def test_async():\n    pass\n\n\ndef test_sync():\n    pass\n"
    )
    plan = run_pytest(tmp_path, "--setup-plan", "-o", "asyncio_mode=auto")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    steps = [line for line in plan.stdout.splitlines() if "SETUP" in line or "TEARDOWN" in line]
    assert steps, plan.stdout
    assert not [step for step in steps if "dbrouter" in step], plan.stdout
    run = run_pytest(tmp_path, "-q", "-s", "-o", "asyncio_mode=auto")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 passed" in run.stdout
    assert "dbrouter modules loaded: []" in run.stdout, run.stdout


@pytest.mark.parametrize("option", ["--help"])
def test_the_options_are_listed(tmp_path: Path, option: str) -> None:
    result = run_pytest(tmp_path, option)
    assert result.returncode == 0, result.stderr
    for name in ("--dbrouter-app", "--dbrouter-router", "--dbrouter-postgres-url"):
        assert name in result.stdout
    assert "dbrouter_guard" in result.stdout
