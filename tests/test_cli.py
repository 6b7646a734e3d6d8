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
    assert listed == ["check", "tenants"], help_text
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
