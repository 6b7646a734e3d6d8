"""The example project (examples/migrations/): tenants created and the whole fleet
migrated through ``--app``, then its app served on the migrated tables."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from tests.conftest import serve
from tests.migrations.conftest import json_of, run_cli, version_of

ROOT = Path(__file__).resolve().parents[2]
APP = "examples.migrations.app:app"


@pytest.mark.usefixtures("clean_environment")
async def test_the_example_migrates_its_fleet_and_serves(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {
        "DBROUTER_DATABASES__PRIMARY__URL": pg_url,
        # A stand-in for a standby: the replica is never migrated, whatever it is.
        "DBROUTER_DATABASES__REPLICA__URL": pg_url,
    }
    for tenant in ("acme", "globex"):
        created = run_cli("--app", APP, "tenants", "create", tenant, environment=env, cwd=ROOT)
        assert created.returncode == 0, created.stderr
    upgraded = run_cli("--app", APP, "migrate", "upgrade", "--json", environment=env, cwd=ROOT)
    assert upgraded.returncode == 0, upgraded.stderr
    outcomes = {entry["target"]: entry["status"] for entry in json_of(upgraded)["targets"]}
    # The tenants were migrated as they were created.
    assert outcomes == {
        "database:primary": "ok",
        "tenant:acme": "unchanged",
        "tenant:globex": "unchanged",
    }
    assert await version_of(pg_url) == ["primary_0002"]
    assert await version_of(pg_url, "tenant_acme") == ["tenants_0002"]
    status = run_cli("--app", APP, "migrate", "status", environment=env, cwd=ROOT)
    assert status.returncode == 0, status.stdout + status.stderr

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    example = importlib.reload(importlib.import_module("examples.migrations.app"))
    async with serve(example.app) as client:
        plans = await client.get("/plans")
        assert plans.json() == [
            {"name": "free", "price_cents": 0},
            {"name": "team", "price_cents": 1900},
        ]
        acme, globex = {"X-Tenant-ID": "acme"}, {"X-Tenant-ID": "globex"}
        project = await client.post("/projects", json={"name": "apollo"}, headers=acme)
        assert project.status_code == 201, project.text
        assert project.json() == {"id": 1, "name": "apollo", "done": False}
        assert (await client.get("/projects", headers=acme)).json() == [project.json()]
        assert (await client.get("/projects", headers=globex)).json() == []
