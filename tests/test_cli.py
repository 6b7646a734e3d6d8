"""The ``dbrouter`` command."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from dbrouter.cli import main


def test_check_reports_and_sets_the_exit_status(
    pg_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DBROUTER_DATABASES__PRIMARY__URL", pg_url)
    assert main(["check"]) == 0
    assert capsys.readouterr().out.startswith("primary")
    monkeypatch.setenv("DBROUTER_DATABASES__DOWN__URL", "postgresql://a:secret@127.0.0.1:1/x")
    monkeypatch.setenv("DBROUTER_DATABASES__DOWN__CONNECT_TIMEOUT", "1")
    assert main(["check", "--json"]) == 1
    output = capsys.readouterr().out
    report = json.loads(output)
    assert report["databases"]["down"]["status"] == "down"
    assert "secret" not in output


def test_bad_configuration_is_reported_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DBROUTER_DATABASES__PRIMARY__URL", "postgresql+psycopg2://a:secret@h/d")
    assert main(["check"]) == 2
    error = capsys.readouterr().err
    assert "postgresql+asyncpg://" in error
    assert "secret" not in error


def test_python_m_dbrouter_is_the_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dbrouter", "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0
    assert "check" in result.stdout


def test_the_console_script_is_installed_and_its_help_is_plain_text() -> None:
    script = Path(sysconfig.get_path("scripts")) / "dbrouter"
    assert script.is_file(), f"no console script {script}: is the project installed?"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    help_text = result.stdout
    assert help_text.startswith("usage: dbrouter ")
    assert "\ncommands:\n" in help_text, help_text
    commands = help_text.split("\ncommands:\n", 1)[1].split("\n\n", 1)[0]
    listed = [line.split()[0] for line in commands.splitlines()[1:]]
    assert listed == ["check", "tenants", "migrate"], help_text
    assert "dbrouter tenants list" in help_text
    # Text for a terminal: no reStructuredText or Markdown markup.
    assert "`" not in help_text


def test_tenants_list(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DBROUTER_DATABASES__PRIMARY__URL", "sqlite://")
    assert main(["tenants", "list"]) == 2
    monkeypatch.setenv("DBROUTER_TENANCY__TENANTS__ACME__URL", "postgresql://a:secret@db/acme")
    monkeypatch.setenv("DBROUTER_TENANCY__TENANTS__GLOBEX__URL", "postgresql://a:secret@db/globex")
    capsys.readouterr()
    assert main(["tenants", "list"]) == 0
    output = capsys.readouterr().out
    assert output.splitlines()[1].split() == ["acme", "postgresql+asyncpg://a:***@db/acme"]
    assert "globex" in output
    assert "secret" not in output


def test_tenants_are_listed_created_and_dropped_from_the_command_line(
    pg_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DBROUTER_DATABASES__PRIMARY__URL", pg_url)
    monkeypatch.setenv("DBROUTER_TENANCY__STRATEGY", "schema")
    assert main(["tenants", "create", "acme"]) == 0
    assert "schema tenant_acme" in capsys.readouterr().out
    assert main(["tenants", "create", "globex"]) == 0
    assert main(["tenants", "create", "acme"]) == 1
    assert "exists already" in capsys.readouterr().err
    assert main(["tenants", "create", "Not Valid"]) == 2
    assert "malformed tenant id" in capsys.readouterr().err
    assert main(["tenants", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed == {
        "strategy": "schema",
        "tenants": [
            {"tenant": "acme", "where": "schema tenant_acme in database 'primary'"},
            {"tenant": "globex", "where": "schema tenant_globex in database 'primary'"},
        ],
    }
    # Dropping destroys data: it is refused unless confirmed.
    assert main(["tenants", "drop", "acme"]) == 2
    assert "--yes" in capsys.readouterr().err
    assert main(["tenants", "drop", "acme", "--yes"]) == 0
    assert main(["tenants", "drop", "acme", "--yes"]) == 1
    assert "unknown tenant 'acme'" in capsys.readouterr().err
    assert main(["tenants", "list"]) == 0
    assert capsys.readouterr().out.split() == ["strategy:", "schema", "globex", *_where("globex")]


def _where(tenant: str) -> list[str]:
    return f"schema tenant_{tenant} in database 'primary'".split()


APP_MODULE = """
from fastapi import FastAPI

from dbrouter import DatabaseRouter, RouterSettings

router = DatabaseRouter(
    RouterSettings(
        databases={{"primary": {{"url": {url!r}}}}},
        tenancy={{"strategy": "schema", "schema_template": "app_{{tenant}}"}},
    )
)
app = FastAPI(lifespan=router.lifespan)
settings = {{"not": "a router"}}
"""


def test_app_names_the_applications_own_router(pg_url: str, tmp_path: Path) -> None:
    (tmp_path / "shop.py").write_text(APP_MODULE.format(url=pg_url))
    script = Path(sysconfig.get_path("scripts")) / "dbrouter"

    def run(*arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(script), *arguments],
            capture_output=True,
            text=True,
            check=False,
            cwd=tmp_path,
            env={"PATH": "/usr/bin:/bin"},
        )

    created = run("--app", "shop:router", "tenants", "create", "acme")
    assert created.returncode == 0, created.stderr
    listed = run("--app", "shop:app", "tenants", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [row["tenant"] for row in json.loads(listed.stdout)["tenants"]] == ["acme"]
    checked = run("--app", "shop:app", "check")
    assert checked.returncode == 0, checked.stderr
    for spec, message in [
        ("shop", "is not module:attribute"),
        ("nowhere:app", "no module 'nowhere'"),
        ("shop:missing", "has no attribute 'missing'"),
        ("shop:settings", "is a dict, not a DatabaseRouter"),
    ]:
        failed = run("--app", spec, "check")
        assert failed.returncode == 2, (spec, failed.stderr)
        assert message in failed.stderr, (spec, failed.stderr)
        assert "Traceback" not in failed.stderr
    dropped = run("--app", "shop:router", "tenants", "drop", "acme", "--yes")
    assert dropped.returncode == 0, dropped.stderr
