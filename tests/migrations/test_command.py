"""``dbrouter migrate``, run as the installed console script: its JSON, table, exit
status and errors; two deploys at once; a progress bar on a terminal."""

from __future__ import annotations

import asyncio
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from tests.migrations.conftest import (
    CONSOLE_SCRIPT,
    TENANTS,
    Fleet,
    held_lock,
    json_of,
    run_cli,
)
from tests.support.scripts import Revision, add_revision

pytestmark = pytest.mark.usefixtures("clean_environment")


def test_upgrade_status_and_downgrade_as_json(schema_fleet: Fleet) -> None:
    env = schema_fleet.environment
    behind = run_cli("migrate", "status", "--json", environment=env)
    assert behind.returncode == 1, behind.stderr
    document = json_of(behind)
    assert document["command"] == "status"
    assert {entry["behind"] for entry in document["targets"]} == {True}

    upgraded = run_cli("migrate", "upgrade", "--json", environment=env)
    assert upgraded.returncode == 0, upgraded.stderr
    document = json_of(upgraded)
    assert document["command"] == "upgrade"
    assert document["failed"] == 0
    assert [entry["target"] for entry in document["targets"]] == [
        "database:primary",
        *schema_fleet.tenant_targets,
    ]
    entry = document["targets"][1]
    assert set(entry) == {"target", "before", "after", "status", "error", "seconds"}
    assert (entry["before"], entry["after"], entry["status"], entry["error"]) == (
        [],
        ["t2"],
        "ok",
        None,
    )
    assert isinstance(entry["seconds"], float)

    assert run_cli("migrate", "status", environment=env).returncode == 0
    down = run_cli("migrate", "downgrade", "-1", "--tenant", "initech", "--json", environment=env)
    assert down.returncode == 0, down.stderr
    assert [entry["after"] for entry in json_of(down)["targets"]] == [["t1"]]
    drift = run_cli("migrate", "status", "--json", environment=env)
    assert drift.returncode == 1
    late = [entry["target"] for entry in json_of(drift)["targets"] if entry["behind"]]
    assert late == ["tenant:initech"]


def test_a_failing_tenant_exits_1_and_is_named(schema_fleet: Fleet) -> None:
    env = schema_fleet.environment
    assert run_cli("migrate", "upgrade", "t1", "--tenants", environment=env).returncode == 0
    url = schema_fleet.urls["tenant:umbrella"]

    async def break_umbrella() -> None:
        connection = await asyncpg.connect(url)
        try:
            await connection.execute("INSERT INTO tenant_umbrella.notes (body) VALUES ('')")
        finally:
            await connection.close()

    asyncio.run(break_umbrella())
    result = run_cli("migrate", "upgrade", "--json", environment=env)
    assert result.returncode == 1
    document = json_of(result)
    assert document["failed"] == 1
    failed = [entry for entry in document["targets"] if entry["status"] == "failed"]
    assert [entry["target"] for entry in failed] == ["tenant:umbrella"]
    assert "ck_notes_body_not_empty" in failed[0]["error"]
    assert failed[0]["before"] == failed[0]["after"] == ["t1"]
    assert {entry["status"] for entry in document["targets"] if entry not in failed} == {"ok"}
    assert "tenant:umbrella: failed: " in result.stderr

    table = run_cli("migrate", "upgrade", environment=env)
    assert table.returncode == 1
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["target", "before", "after", "status"]
    umbrella = next(line for line in lines if line.startswith("tenant:umbrella"))
    assert umbrella.split()[1:4] == ["t1", "t1", "failed"]
    assert lines[-1] == "6 target(s): 0 ok, 5 unchanged, 1 failed"


WAITING = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"


def test_two_deploys_at_once_migrate_each_target_once(schema_fleet: Fleet) -> None:
    # A slow revision that would fail if it ran twice on a target.
    add_revision(
        schema_fleet.scripts["tenants"],
        Revision(
            "t3",
            "t2",
            """
            op.execute("SELECT pg_sleep(0.2)")
            op.create_table("runs", sa.Column("id", sa.Integer, primary_key=True))
            op.execute("INSERT INTO runs DEFAULT VALUES")
            """,
        ),
    )
    env = schema_fleet.environment
    url = schema_fleet.urls["database:primary"]

    async def race() -> tuple[int, list[subprocess.CompletedProcess[str]]]:
        # The test holds the primary's lock until both deploys wait for it.
        async with held_lock(url, "database:primary") as held:
            deploys = [
                asyncio.create_task(
                    asyncio.to_thread(run_cli, "migrate", "upgrade", "--json", environment=env)
                )
                for _ in range(2)
            ]
            deadline = time.monotonic() + 60
            while await held.connection.fetchval(WAITING) < 2:
                assert time.monotonic() < deadline, "the deploys never waited for the lock"
                await asyncio.sleep(0.05)
            await held.transaction.commit()
        return held.pid, list(await asyncio.gather(*deploys))

    pid, results = asyncio.run(race())
    documents = [json_of(result) for result in results]
    for result, document in zip(results, documents, strict=True):
        assert result.returncode == 0, result.stderr
        assert document["failed"] == 0
        assert (
            f"database:primary: another migration of it is running "
            f"(PostgreSQL server process {pid})" in result.stderr
        )
    for index, target in enumerate(["database:primary", *schema_fleet.tenant_targets]):
        outcomes = sorted(document["targets"][index]["status"] for document in documents)
        assert document["targets"][index]["target"] == target
        assert outcomes == ["ok", "unchanged"], (target, outcomes)

    async def runs() -> list[int]:
        connection = await asyncpg.connect(url)
        try:
            return [
                await connection.fetchval(f"SELECT count(*) FROM tenant_{tenant}.runs")
                for tenant in TENANTS
            ]
        finally:
            await connection.close()

    assert asyncio.run(runs()) == [1] * len(TENANTS)


def test_no_wait_fails_a_locked_target_and_names_who_holds_it(schema_fleet: Fleet) -> None:
    env = schema_fleet.environment
    url = schema_fleet.urls["database:primary"]

    async def locked() -> tuple[int, subprocess.CompletedProcess[str]]:
        async with held_lock(url, "tenant:acme") as held:
            result = await asyncio.to_thread(
                run_cli, "migrate", "upgrade", "--no-wait", "--json", environment=env
            )
        return held.pid, result

    pid, result = asyncio.run(locked())
    assert result.returncode == 1
    document = json_of(result)
    acme = next(entry for entry in document["targets"] if entry["target"] == "tenant:acme")
    assert acme["status"] == "failed"
    assert acme["error"] == (
        f"another migration of tenant:acme holds its lock (PostgreSQL server process {pid}); "
        "not waiting"
    )
    assert document["failed"] == 1


USAGE_ERRORS = [
    (["--database", "replica"], "a replica follows its primary and is never migrated"),
    (["--database", "nope"], "unknown database 'nope'"),
    (["--database", "plain"], "database 'plain' has no migrations"),
    (["--tenant", "Not Valid"], "malformed tenant id"),
    (["--concurrency", "0"], "expected a whole number of at least 1"),
]


def test_usage_errors_exit_2(schema_fleet: Fleet) -> None:
    url = schema_fleet.urls["database:primary"]
    env = {
        **schema_fleet.environment,
        "DBROUTER_DATABASES__REPLICA__URL": url,
        "DBROUTER_DATABASES__REPLICA__REPLICA_OF": "primary",
        "DBROUTER_DATABASES__PLAIN__URL": url,
    }
    for arguments, message in USAGE_ERRORS:
        result = run_cli("migrate", "upgrade", *arguments, environment=env)
        assert result.returncode == 2, (arguments, result.stdout)
        assert message in result.stderr, arguments
        assert "Traceback" not in result.stderr


def test_configuration_errors_exit_2(tmp_path: Path, schema_fleet: Fleet) -> None:
    url = schema_fleet.urls["database:primary"]
    nothing = run_cli("migrate", "status", environment={"DBROUTER_DATABASES__PRIMARY__URL": url})
    assert nothing.returncode == 2
    assert "nothing to migrate" in nothing.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = run_cli(
        "migrate",
        "status",
        environment={
            "DBROUTER_DATABASES__PRIMARY__URL": url,
            "DBROUTER_DATABASES__PRIMARY__MIGRATIONS": str(empty),
        },
    )
    assert missing.returncode == 2
    assert f"databases.primary.migrations: {empty} is not an Alembic script directory" in (
        missing.stderr
    )
    replica = run_cli(
        "migrate",
        "status",
        environment={
            "DBROUTER_DATABASES__PRIMARY__URL": url,
            "DBROUTER_DATABASES__REPLICA__URL": url,
            "DBROUTER_DATABASES__REPLICA__REPLICA_OF": "primary",
            "DBROUTER_DATABASES__REPLICA__MIGRATIONS": str(empty),
        },
    )
    assert replica.returncode == 2
    assert "databases.replica.migrations: a replica is never migrated" in replica.stderr
    tenants = run_cli(
        "migrate",
        "upgrade",
        "--tenants",
        environment={
            "DBROUTER_DATABASES__PRIMARY__URL": url,
            "DBROUTER_TENANCY__STRATEGY": "schema",
        },
    )
    assert tenants.returncode == 2
    assert "tenancy.migrations is not set" in tenants.stderr


def test_without_the_extra_migrate_says_what_to_install(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "sys.modules['alembic'] = None\n"
        "from dbrouter.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    for arguments in (["migrate", "init", str(tmp_path / "m")], ["migrate", "status"]):
        result = subprocess.run(
            [sys.executable, "-c", code, *arguments],
            capture_output=True,
            text=True,
            env={**os.environ, "DBROUTER_DATABASES__PRIMARY__URL": "sqlite://"},
            check=False,
        )
        assert result.returncode == 2, result.stderr
        assert 'pip install "fastapi-dbrouter[migrations]"' in result.stderr
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "m").exists()


def test_a_terminal_gets_a_progress_bar_and_a_table(schema_fleet: Fleet) -> None:
    primary, secondary = pty.openpty()
    env = {key: value for key, value in os.environ.items() if not key.startswith("DBROUTER_")}
    env.update(schema_fleet.environment, TERM="xterm-256color", COLUMNS="120")
    process = subprocess.Popen(
        [str(CONSOLE_SCRIPT), "migrate", "upgrade"],
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        env=env,
    )
    os.close(secondary)
    output = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([primary], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(primary, 65536)
            except OSError:
                break  # the terminal closed: the command is done
            if not chunk:
                break
            output += chunk
        elif process.poll() is not None:
            break
    os.close(primary)
    assert process.wait(timeout=30) == 0, output.decode(errors="replace")
    text = output.decode(errors="replace")
    assert "━" in text, text  # rich's bar
    assert "upgrade" in text
    assert "6 target(s): 6 ok, 0 unchanged, 0 failed" in text


def test_init_and_revision(schema_fleet: Fleet, tmp_path: Path) -> None:
    env = schema_fleet.environment
    directory = tmp_path / "fresh"
    made = run_cli("migrate", "init", str(directory), environment={})
    assert made.returncode == 0, made.stderr
    assert sorted(path.name for path in directory.iterdir()) == [
        "README",
        "env.py",
        "script.py.mako",
        "versions",
    ]
    again = run_cli("migrate", "init", str(directory), environment={})
    assert again.returncode == 2
    assert "already exists" in again.stderr

    written = run_cli("migrate", "revision", "-m", "add labels", "--tenants", environment=env)
    assert written.returncode == 0, written.stderr
    path = Path(written.stdout.split("created ", 1)[1].strip())
    assert path.parent == schema_fleet.scripts["tenants"] / "versions"
    source = path.read_text()
    assert '"""add labels' in source
    assert "down_revision: str | Sequence[str] | None = 't2'" in source
    neither = run_cli("migrate", "revision", "-m", "x", environment=env)
    assert neither.returncode == 2
    assert "a database (--database NAME) or the tenants' (--tenants)" in neither.stderr
