"""The same operations in this process, where every line is measured: the command line's
``main``, its table and progress, locks held by another session, revisions written."""

from __future__ import annotations

import asyncio
import io
import json
import sys
from pathlib import Path

import pytest
from rich.console import Console

from dbrouter import ConfigurationError, migrations
from dbrouter.cli import main
from dbrouter.migrations.display import ConsoleProgress, print_table
from dbrouter.migrations.report import MigrationReport, TargetResult
from tests.migrations.conftest import Fleet, held_lock, version_of
from tests.migrations.test_schemas import MODELS, use_metadata

pytestmark = pytest.mark.usefixtures("clean_environment")

STATUS_COLUMNS = ["target", "before", "after", "status", "behind", "seconds", "error"]


def configure(monkeypatch: pytest.MonkeyPatch, fleet: Fleet) -> None:
    for key, value in fleet.environment.items():
        monkeypatch.setenv(key, value)


async def run_main(*arguments: str) -> int:
    # main() runs its own event loop: off this one.
    return await asyncio.to_thread(main, list(arguments))


async def test_main_migrates_and_reports(
    schema_fleet: Fleet, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    configure(monkeypatch, schema_fleet)
    assert await run_main("migrate", "status") == 1
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == STATUS_COLUMNS
    assert table[-1] == "6 target(s): 0 ok, 6 unchanged, 0 failed; 6 behind head"
    assert await run_main("migrate", "upgrade", "--concurrency", "2") == 0
    assert capsys.readouterr().out.splitlines()[-1] == "6 target(s): 6 ok, 0 unchanged, 0 failed"
    assert await run_main("migrate", "current", "--tenants", "--json") == 0
    document = json.loads(capsys.readouterr().out)
    assert document["command"] == "current"
    assert {tuple(entry["after"]) for entry in document["targets"]} == {("t2",)}
    assert await run_main("migrate", "downgrade", "base", "--database", "primary") == 0
    capsys.readouterr()
    assert await run_main("migrate", "upgrade", "--database", "nope") == 2
    assert "unknown database 'nope'" in capsys.readouterr().err


async def test_main_writes_revisions(
    schema_fleet: Fleet, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    configure(monkeypatch, schema_fleet)
    assert await run_main("migrate", "revision", "-m", "more", "--database", "primary") == 0
    written = Path(capsys.readouterr().out.split("created ", 1)[1].strip())
    assert written.parent == schema_fleet.scripts["primary"] / "versions"
    assert await run_main("migrate", "revision", "-m", "x", "--database", "nope") == 2
    assert "unknown database 'nope'" in capsys.readouterr().err
    late = ("migrate", "revision", "-m", "x", "--tenants", "--autogenerate")
    assert await run_main(*late) == 1
    assert "Target database is not up to date" in capsys.readouterr().err


def test_main_initializes_without_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["migrate", "init", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "env.py").is_file()
    assert main(["migrate", "init", str(tmp_path / "m")]) == 2
    assert "already exists" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "alembic", None)
    assert main(["migrate", "init", str(tmp_path / "n")]) == 2
    assert 'pip install "fastapi-dbrouter[migrations]"' in capsys.readouterr().err
    monkeypatch.setenv("DBROUTER_DATABASES__PRIMARY__URL", "sqlite://")
    for arguments in (["status"], ["revision", "-m", "x", "--tenants"]):
        assert main(["migrate", *arguments]) == 2
        assert "fastapi-dbrouter[migrations]" in capsys.readouterr().err


async def test_a_held_lock_is_waited_for_or_reported(schema_fleet: Fleet) -> None:
    url = schema_fleet.urls["database:primary"]
    waits: list[tuple[str, int | None]] = []
    async with held_lock(url, "tenant:acme") as held:

        class Release:
            """Progress that lets the lock go once the migration says it waits."""

            def started(self, targets: object) -> None:
                pass

            def waiting(self, target: str, holder_pid: int | None) -> None:
                waits.append((target, holder_pid))
                asyncio.get_running_loop().create_task(held.transaction.commit())

            def finished(self, result: TargetResult) -> None:
                pass

        async with schema_fleet.router() as router:
            refused = await migrations.upgrade(router, tenants=["acme"], wait=False)
            assert refused["tenant:acme"].status == "failed"
            assert f"server process {held.pid}" in (refused["tenant:acme"].error or "")
            waited = await migrations.upgrade(router, tenants=["acme"], progress=Release())
    assert waits == [("tenant:acme", held.pid)]
    assert waited["tenant:acme"].status == "ok"
    assert await version_of(url, "tenant_acme") == ["t2"]


async def test_revisions_from_python(
    schema_fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "app_models.py").write_text(MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    use_metadata(schema_fleet.scripts["primary"], "primary")
    use_metadata(schema_fleet.scripts["tenants"], "tenants")
    async with schema_fleet.router() as router:
        await migrations.upgrade(router)
        tenants = await migrations.revision(router, "labels", tenant="globex", autogenerate=True)
        assert "op.create_table('labels'" in tenants.read_text()
        primary = await migrations.revision(
            router, "invoices", database="primary", autogenerate=True
        )
        assert "op.create_table('invoices'" in primary.read_text()
        database = await migrations.revision(router, "again", database="primary")
        assert database.parent == schema_fleet.scripts["primary"] / "versions"
        with pytest.raises(ConfigurationError, match="name the script directory"):
            await migrations.revision(router, "x", database="primary", tenants=True)


def test_the_console_shows_progress_and_a_table() -> None:
    terminal = io.StringIO()
    console = Console(file=terminal, force_terminal=True, width=120, emoji=False)
    failed = TargetResult(
        "tenant:b", ("r1",), ("r1",), "failed", "Boom: [SQL] went wrong", 0.2, behind=True
    )
    with ConsoleProgress(console, "upgrade") as progress:
        progress.started(["tenant:a", "tenant:b"])
        progress.waiting("tenant:a", 42)
        progress.waiting("tenant:a", None)
        progress.finished(TargetResult("tenant:a", (), ("r1",), "ok", None, 0.1))
        progress.finished(failed)
    shown = terminal.getvalue()
    assert "tenant:a: another migration of it is running (PostgreSQL server process 42)" in shown
    assert "tenant:b: failed: Boom: [SQL] went wrong" in shown
    assert "━" in shown
    table = io.StringIO()
    behind = TargetResult("tenant:a", ("r1",), ("r1",), "unchanged", None, 0.1, behind=True)
    print_table(
        MigrationReport("status", [behind, failed]), Console(file=table, width=120, emoji=False)
    )
    lines = table.getvalue().splitlines()
    assert lines[0].split() == STATUS_COLUMNS
    assert "Boom: [SQL] went wrong" in table.getvalue()  # brackets are text, not markup
    assert lines[-1] == "2 target(s): 0 ok, 1 unchanged, 1 failed; 2 behind head"
    quiet = io.StringIO()
    with ConsoleProgress(Console(file=quiet, emoji=False), "status") as progress:
        progress.started([])
    assert quiet.getvalue() == ""
