"""The demo app (examples/demo.py): in-process on SQLite and on PostgreSQL, its tenants
included, and served over HTTP by ``scripts/demo`` the way a newcomer starts it."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from examples.demo import build_app

from dbrouter import ConfigurationError, RouterSettings
from tests.conftest import fresh_database, serve
from tests.support.postgres import free_port

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ``DBROUTER_*`` variable or ``.env`` file of the machine reaches the demo."""
    for key in list(os.environ):
        if key.upper().startswith("DBROUTER_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


async def exercise(app: object, *, tenants: tuple[str, str] | None = None) -> None:
    """Create a note, read it back from both databases, and check the health endpoint;
    then, with *tenants*, check that each of the two sees its own notes only."""
    async with serve(app) as client:
        created = await client.post("/notes", json={"text": "hello"})
        assert created.status_code == 201, created.text
        note = created.json()
        assert note["text"] == "hello"
        assert isinstance(note["id"], int)
        datetime.fromisoformat(note["created_at"])

        # The list is read on the replica's own engine: the note was committed.
        listed = await client.get("/notes")
        assert listed.status_code == 200
        assert note in listed.json()

        fetched = await client.get(f"/notes/{note['id']}")
        assert fetched.status_code == 200
        assert fetched.json() == note
        assert (await client.get("/notes/999999")).status_code == 404

        health = await client.get("/health/databases")
        assert health.status_code == 200, health.text
        report = health.json()
        assert report["status"] == "ok"
        assert {name: db["status"] for name, db in report["databases"].items()} == {
            "primary": "up",
            "replica": "up",
        }

        if tenants is None:
            paths = (await client.get("/openapi.json")).json()["paths"]
            assert "/tenant/notes" not in paths, "no tenancy configured, no tenant routes"
        else:
            await exercise_tenants(client, tenants)


async def exercise_tenants(client: httpx.AsyncClient, tenants: tuple[str, str]) -> None:
    """Each tenant reads back what it wrote, and nothing of the other tenant or the primary."""
    for tenant in tenants:
        created = await client.post(
            "/tenant/notes", json={"text": f"for {tenant}"}, headers=as_tenant(tenant)
        )
        assert created.status_code == 201, created.text
        assert created.json()["text"] == f"for {tenant}"
    for tenant in tenants:
        listed = await client.get("/tenant/notes", headers=as_tenant(tenant))
        assert listed.status_code == 200, listed.text
        assert [note["text"] for note in listed.json()] == [f"for {tenant}"]

    missing = await client.get("/tenant/notes")
    assert (missing.status_code, missing.json()) == (400, {"detail": "missing tenant id"})
    malformed = await client.get("/tenant/notes", headers=as_tenant("Acme Corp"))
    assert (malformed.status_code, malformed.json()) == (400, {"detail": "invalid tenant id"})
    unknown = await client.get("/tenant/notes", headers=as_tenant("initech"))
    assert (unknown.status_code, unknown.json()) == (404, {"detail": "unknown tenant"})
    refused = await client.post(
        "/tenant/notes", json={"text": "lost"}, headers=as_tenant("initech")
    )
    assert refused.status_code == 404
    for response in (missing, malformed, unknown, refused):
        assert not any(tenant in response.text for tenant in tenants)


def as_tenant(tenant: str) -> dict[str, str]:
    return {"X-Tenant-ID": tenant}


async def test_demo_on_sqlite_by_default(tmp_path: Path) -> None:
    await exercise(build_app(), tenants=("acme", "globex"))
    data = tmp_path / ".demo-data"
    assert {path.name for path in data.iterdir()} == {
        "notes.db",
        "tenant_acme.db",
        "tenant_globex.db",
    }


async def test_demo_on_postgresql_from_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pg_url: str
) -> None:
    monkeypatch.setenv("DBROUTER_DATABASES__PRIMARY__URL", pg_url)
    monkeypatch.setenv("DBROUTER_DATABASES__REPLICA__URL", pg_url)
    monkeypatch.setenv("DBROUTER_DATABASES__REPLICA__REPLICA_OF", "primary")
    await exercise(build_app())
    assert not (tmp_path / ".demo-data").exists()


async def test_demo_on_postgresql_from_a_dotenv_file(tmp_path: Path, pg_url: str) -> None:
    (tmp_path / ".env").write_text(
        f"DBROUTER_DATABASES__PRIMARY__URL={pg_url}\n"
        f"export DBROUTER_DATABASES__REPLICA__URL={pg_url}\n"
        "DBROUTER_DATABASES__REPLICA__REPLICA_OF=primary\n",
        encoding="utf-8",
    )
    await exercise(build_app())
    assert not (tmp_path / ".demo-data").exists()


async def test_demo_tenants_on_postgresql_from_environment(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    postgres_admin_url: str,
    pg_url: str,
    pg_url_2: str,
) -> None:
    monkeypatch.setenv("DBROUTER_DATABASES__PRIMARY__URL", pg_url)
    monkeypatch.setenv("DBROUTER_DATABASES__REPLICA__URL", pg_url)
    monkeypatch.setenv("DBROUTER_DATABASES__REPLICA__REPLICA_OF", "primary")
    async with fresh_database(postgres_admin_url) as other_url:
        monkeypatch.setenv("DBROUTER_TENANCY__TENANTS__UMBRELLA__URL", pg_url_2)
        monkeypatch.setenv("DBROUTER_TENANCY__TENANTS__HOOLI__URL", other_url)
        await exercise(build_app(), tenants=("hooli", "umbrella"))
    assert not (tmp_path / ".demo-data").exists()


async def test_demo_with_explicit_settings(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'explicit.db'}"
    settings = RouterSettings(
        databases={"primary": {"url": url}, "replica": {"url": url, "replica_of": "primary"}}
    )
    await exercise(build_app(settings))
    assert (tmp_path / "explicit.db").is_file()


async def test_demo_does_not_start_without_its_replica(tmp_path: Path) -> None:
    settings = RouterSettings(databases={"primary": {"url": f"sqlite:///{tmp_path / 'a.db'}"}})
    with pytest.raises(ConfigurationError, match=r"get_db\('replica'\).*'primary'"):
        async with serve(build_app(settings)):
            pass


def demo_environment(tmp_path: Path) -> dict[str, str]:
    """The environment `scripts/demo` runs in: no ``DBROUTER_*`` variable, and the
    interpreter's virtualenv reused instead of a new one built (outside a virtualenv, the
    script builds one in *tmp_path*)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("DBROUTER_")}
    in_venv = sys.prefix != sys.base_prefix
    env["DBROUTER_VENV"] = sys.prefix if in_venv else str(tmp_path / "venv")
    return env


def test_scripts_demo_serves_over_http(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "demo.log"
    with log.open("w") as log_file:
        process = subprocess.Popen(
            [str(ROOT / "scripts" / "demo"), "--port", str(port)],
            cwd=tmp_path,
            env=demo_environment(tmp_path),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        health = wait_until_healthy(process, f"{base}/health/databases", log, timeout=90)
        assert health.json()["status"] == "ok"
        created = httpx.post(f"{base}/notes", json={"text": "over HTTP"}, timeout=10)
        assert created.status_code == 201, created.text
        assert created.json() in httpx.get(f"{base}/notes", timeout=10).json()
        acme, globex = as_tenant("acme"), as_tenant("globex")
        mine = httpx.post(
            f"{base}/tenant/notes", json={"text": "acme's"}, headers=acme, timeout=10
        )
        assert mine.status_code == 201, mine.text
        assert httpx.get(f"{base}/tenant/notes", headers=acme, timeout=10).json() == [mine.json()]
        assert httpx.get(f"{base}/tenant/notes", headers=globex, timeout=10).json() == []
    finally:
        process.terminate()
        returncode = process.wait(timeout=30)
    output = log.read_text()
    assert f"curl {base}/health/databases" in output
    assert f"curl {base}/tenant/notes -H 'X-Tenant-ID: acme'" in output
    # uvicorn shuts down cleanly, then re-raises the signal it caught.
    assert returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output
    assert (tmp_path / ".demo-data" / "notes.db").is_file()
    assert (tmp_path / ".demo-data" / "tenant_acme.db").is_file()


def test_scripts_demo_on_a_busy_port_says_so_first(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [str(ROOT / "scripts" / "demo"), "--port", str(port)],
            cwd=tmp_path,
            env=demo_environment(tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=300,
            check=False,
        )
    assert result.returncode == 1, result.stdout
    # Lines of "== " are the script setting up its virtualenv, before the demo starts.
    said = [line for line in result.stdout.splitlines() if not line.startswith("== ")]
    assert said[0] == f"dbrouter demo: port {port} is already in use on 127.0.0.1.", said
    suggestion = re.fullmatch(
        r"Start it on another port with --port, e\.g\. \./scripts/demo --port (\d+)", said[1]
    )
    assert suggestion is not None, said
    assert int(suggestion.group(1)) != port
    # Nothing else: no traceback, no curl lines for a demo that is not running.
    assert said[2:] == [], said


def wait_until_healthy(
    process: subprocess.Popen[bytes], url: str, log: Path, *, timeout: float
) -> httpx.Response:
    """Poll *url* until it answers 200; fail early if *process* exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"scripts/demo exited with {process.returncode}:\n{log.read_text()}")
        try:
            response = httpx.get(url, timeout=5)
        except httpx.TransportError:
            pass
        else:
            if response.status_code == 200:
                return response
        time.sleep(0.2)
    pytest.fail(f"scripts/demo did not become healthy within {timeout} s:\n{log.read_text()}")
