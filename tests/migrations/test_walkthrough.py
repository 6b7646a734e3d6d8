"""docs/migrations.md, followed as a new user would: its files written, its commands run
in order with the installed ``dbrouter`` against a real server, its deploy script run."""

from __future__ import annotations

import asyncio
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.migrations.conftest import run_cli, tables_of, version_of

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = ROOT / "docs" / "migrations.md"
FENCE = re.compile(r"^```(\w*)$")
FILE = re.compile(r"^<!-- file: (\S+) -->$")
DOCUMENTED_URLS = re.compile(r"postgresql://app:secret@localhost:543[23]/app")


def blocks() -> list[tuple[list[str], str]]:
    """Every fenced block of the document, with the comment lines right above it."""
    lines = DOCUMENT.read_text(encoding="utf-8").splitlines()
    found: list[tuple[list[str], str]] = []
    index = 0
    while index < len(lines):
        if not FENCE.match(lines[index]):
            index += 1
            continue
        end = next(i for i in range(index + 1, len(lines)) if lines[i] == "```")
        comments: list[str] = []
        above = index - 1
        while above >= 0 and lines[above].startswith("<!--"):
            comments.insert(0, lines[above])
            above -= 1
        found.append((comments, "\n".join(lines[index + 1 : end]) + "\n"))
        index = end + 1
    return found


@pytest.mark.usefixtures("clean_environment")
async def test_following_the_page_migrates_a_primary_and_its_tenants(
    pg_url: str, tmp_path: Path
) -> None:
    outputs: dict[str, subprocess.CompletedProcess[str]] = {}
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "__init__.py").write_text("")
    steps = 0
    for comments, body in blocks():
        named = [FILE.match(comment) for comment in comments]
        for match in named:
            if match is not None:
                path = tmp_path / match.group(1)
                path.write_text(DOCUMENTED_URLS.sub(pg_url, body), encoding="utf-8")
        if "<!-- walkthrough -->" not in comments:
            continue
        for line in body.splitlines():
            assert line.startswith("dbrouter "), line
            result = run_cli(*shlex.split(line)[1:], environment={}, cwd=tmp_path)
            assert result.returncode == 0, f"{line}\n{result.stdout}\n{result.stderr}"
            outputs[line] = result
            steps += 1
    assert steps == 8

    assert await version_of(pg_url) != []
    assert await tables_of(pg_url) == {"alembic_version", "plans"}
    for tenant in ("acme", "globex"):
        assert await tables_of(pg_url, f"tenant_{tenant}") == {"alembic_version", "projects"}

    # The table the page shows is the table the command prints.
    shown = next(body for _, body in blocks() if "target(s):" in body).splitlines()
    printed = outputs["dbrouter migrate upgrade"].stdout.splitlines()
    assert printed[0].split() == shown[0].split()
    assert printed[-1] == shown[-1]
    assert [line.split()[0] for line in printed[2:-1]] == [line.split()[0] for line in shown[2:-1]]

    deploy = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "deploy.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert deploy.returncode == 0, deploy.stderr
