"""Running PostgreSQL's programs for throwaway servers: as which account, with which
environment, and in which temporary directory.

PostgreSQL refuses to run as root. When the tests run as root, every program that touches
a data directory runs as an unprivileged account instead (``nobody``, or the account
named by ``DBROUTER_TEST_PG_USER``).
"""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "USER_ENV",
    "Account",
    "child_env",
    "chown",
    "chown_tree",
    "output",
    "reachable_by",
    "run",
    "server_account",
    "tail",
    "tmp_base",
]

USER_ENV = "DBROUTER_TEST_PG_USER"
"""The account server programs run as when the tests run as root (default ``nobody``)."""


@dataclass(frozen=True)
class Account:
    """An unprivileged account that runs the server programs."""

    name: str
    uid: int
    gid: int


def server_account() -> Account | None:
    """The account server programs run as, or None to run them as ourselves."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get(USER_ENV) or "nobody"
    try:
        entry = pwd.getpwnam(name)
    except KeyError as exc:
        raise RuntimeError(
            f"PostgreSQL cannot run as root and there is no account {name!r} to run it as; "
            f"set {USER_ENV} to an unprivileged account"
        ) from exc
    if entry.pw_uid == 0:
        raise RuntimeError(f"{USER_ENV}={name!r} is root; PostgreSQL refuses to run as root")
    return Account(name=name, uid=entry.pw_uid, gid=entry.pw_gid)


def child_env(home: Path | None) -> dict[str, str]:
    """The environment of a server program: no inherited ``PG*`` variable, the C locale."""
    # Any inherited PG* variable (PGHOST, PGPORT, PGSERVICE, PGPASSFILE, PGOPTIONS ...) could
    # redirect a connection or change its behaviour, so none is passed on.
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    # C locale keeps server messages in English, which start() relies on to spot port clashes.
    env["LC_ALL"] = "C"
    env["LANG"] = "C"
    env["PGCLIENTENCODING"] = "UTF8"
    env["PGCONNECT_TIMEOUT"] = "10"
    if home is not None:
        # The server account's own home may not exist or may be unreadable.
        env["HOME"] = str(home)
    return env


def run(
    args: Sequence[str | Path],
    *,
    as_server: bool,
    cwd: Path | None = None,
    stdin_text: str | None = None,
    timeout: float = 120.0,
    new_session: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run *args*, as the server account when *as_server*; the completed process."""
    account = server_account() if as_server else None
    if account is not None and cwd is None:
        # The caller's working directory may be unreadable for the server account.
        cwd = Path("/")
    return subprocess.run(
        [str(arg) for arg in args],
        input=stdin_text,
        stdin=None if stdin_text is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        cwd=cwd,
        env=child_env(cwd if account is not None else None),
        timeout=timeout,
        check=False,
        start_new_session=new_session,
        user=account.uid if account is not None else None,
        group=account.gid if account is not None else None,
        # Drop root's supplementary groups too, not just the uid and gid.
        extra_groups=[] if account is not None else None,
    )


def output(result: subprocess.CompletedProcess[str]) -> str:
    """What a program printed, both streams."""
    return "\n".join(part.strip() for part in (result.stdout, result.stderr) if part.strip())


def tail(text: str, lines: int = 40) -> str:
    """The last *lines* of *text*."""
    return "\n".join(text.splitlines()[-lines:])


def tmp_base() -> str:
    """The directory temporary directories are made in: short, for unix socket paths."""
    # mkdtemp under a short, well-known directory: unix socket paths are limited to ~107
    # bytes, and $TMPDIR can be long (macOS) or private to the current user.
    if os.path.isdir("/tmp") and os.access("/tmp", os.W_OK | os.X_OK):
        return "/tmp"
    return tempfile.gettempdir()


def chown(path: Path, account: Account | None) -> None:
    """Give *path* to *account* (nothing when None)."""
    if account is not None:
        os.chown(path, account.uid, account.gid)


def chown_tree(path: Path, account: Account) -> None:
    """Give *path* and everything under it to *account*."""
    os.lchown(path, account.uid, account.gid)
    for parent, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.lchown(os.path.join(parent, name), account.uid, account.gid)


def reachable_by(path: Path, account: Account) -> bool:
    """Whether `account` can traverse every directory above `path`.

    os.access() is useless here: it answers for root, who can traverse anything.
    """
    for directory in reversed(path.parents):
        try:
            st = os.stat(directory)
        except OSError:
            return False
        if st.st_uid == account.uid:
            bit = stat.S_IXUSR
        elif st.st_gid == account.gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True
