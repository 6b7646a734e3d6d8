"""A throwaway PgBouncer in transaction mode, in front of the test suite's PostgreSQL.

The program is, in order: the one named by ``DBROUTER_TEST_PGBOUNCER``, ``pgbouncer`` on
``PATH`` (or ``/usr/sbin``), or Debian's package fetched with ``apt-get download`` and
unpacked with ``dpkg-deb`` into the user's cache directory (``$XDG_CACHE_HOME/dbrouter``,
by default ``~/.cache/dbrouter``), with the one library it needs that a machine may lack
(c-ares). Fetching needs no installation and no root, only a Debian-like system with its
package lists (which root fetches first when there are none).

PgBouncer refuses to run as root; when the tests run as root it runs as the same
unprivileged account as the PostgreSQL servers. It listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from dbrouter.testing.cleanup import HOST, free_port
from dbrouter.testing.cleanup import registry as _registry
from dbrouter.testing.programs import Account as _Account
from dbrouter.testing.programs import chown_tree as _chown_tree
from dbrouter.testing.programs import reachable_by as _reachable_by
from dbrouter.testing.programs import server_account as _server_account
from dbrouter.testing.programs import tmp_base as _tmp_base

__all__ = [
    "PGBOUNCER_ENV",
    "Unavailable",
    "describe_pgbouncer",
    "find_pgbouncer",
    "running_pgbouncer",
]

PGBOUNCER_ENV = "DBROUTER_TEST_PGBOUNCER"
_PACKAGES = ("pgbouncer", "libc-ares2")
_PROGRAM = Path("usr/sbin/pgbouncer")
_LIBRARY_DIRS = ("usr/lib/x86_64-linux-gnu", "usr/lib/aarch64-linux-gnu")
_START_TIMEOUT = 15.0


class Unavailable(RuntimeError):
    """No PgBouncer program could be found or fetched on this machine."""


@dataclass(frozen=True)
class PgBouncerProgram:
    path: Path
    library_dirs: tuple[Path, ...] = ()


def find_pgbouncer() -> PgBouncerProgram:
    """The PgBouncer program to run; `Unavailable` saying why there is none."""
    configured = os.environ.get(PGBOUNCER_ENV)
    if configured:
        return PgBouncerProgram(Path(configured))
    found = _on_this_machine()
    if found:
        return PgBouncerProgram(Path(found))
    return _fetched()


def describe_pgbouncer() -> str:
    """Which PgBouncer `find_pgbouncer` would run, for people; fetches nothing."""
    configured = os.environ.get(PGBOUNCER_ENV)
    if configured:
        return f"{configured} (named by ${PGBOUNCER_ENV})"
    found = _on_this_machine()
    if found:
        return f"{found} (on this machine)"
    cache = _cache_dir() / "pgbouncer" / "root"
    if (cache / _PROGRAM).exists():
        return f"Debian's package, unpacked in {cache}"
    if shutil.which("apt-get") and shutil.which("dpkg-deb"):
        return "Debian's package, fetched with `apt-get download` when its tests start"
    return f"none, so its tests fail (install PgBouncer or set {PGBOUNCER_ENV})"


def _on_this_machine() -> str | None:
    return shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if os.access("/usr/sbin/pgbouncer", os.X_OK) else None
    )


def _fetched() -> PgBouncerProgram:
    if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
        raise Unavailable(
            f"no pgbouncer program: install PgBouncer, put it on PATH or name it in "
            f"{PGBOUNCER_ENV} (on Debian-like systems the suite fetches it by itself)"
        )
    cache = _cache_dir() / "pgbouncer"
    if not (cache / "root" / _PROGRAM).exists():
        download = Path(tempfile.mkdtemp(prefix="dbrouter-pgbouncer-deb-", dir=_tmp_base()))
        unpacked: Path | None = None
        try:
            os.chmod(download, 0o777)  # apt's sandbox account writes the files
            result = _apt_download(download)
            if result.returncode != 0 and os.geteuid() == 0:
                # A new machine may have no package lists yet; root can fetch them.
                subprocess.run(
                    ["apt-get", "update", "-qq"], capture_output=True, check=False, timeout=600
                )
                result = _apt_download(download)
            debs = sorted(download.glob("*.deb"))
            if result.returncode != 0 or len(debs) < len(_PACKAGES):
                raise Unavailable(
                    "no pgbouncer program, and `apt-get download pgbouncer` failed: "
                    + (result.stderr.strip().splitlines() or ["no output"])[-1]
                )
            cache.mkdir(mode=0o755, parents=True, exist_ok=True)
            # Unpacked next to its final place, so that the rename stays on one file system.
            unpacked = Path(tempfile.mkdtemp(prefix="unpack-", dir=cache))
            for deb in debs:
                subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True)
            shutil.rmtree(cache / "root", ignore_errors=True)
            os.replace(unpacked, cache / "root")
            os.chmod(cache / "root", 0o755)
        finally:
            shutil.rmtree(download, ignore_errors=True)
            if unpacked is not None:
                shutil.rmtree(unpacked, ignore_errors=True)
    root = _runnable_copy(cache / "root")
    libraries = (root / sub for sub in _LIBRARY_DIRS)
    return PgBouncerProgram(root / _PROGRAM, tuple(path for path in libraries if path.is_dir()))


def _cache_dir() -> Path:
    configured = os.environ.get("XDG_CACHE_HOME")
    base = Path(configured) if configured else Path.home() / ".cache"
    return base / "dbrouter"


_runnable_copies: dict[Path, Path] = {}


def _runnable_copy(root: Path) -> Path:
    """*root*, or a copy of it the server account can run, removed when the run ends."""
    account = _server_account()
    if account is None or _reachable_by(root / _PROGRAM, account):
        return root
    if root not in _runnable_copies:
        # Root's cache sits in its home directory, out of the server account's reach.
        _registry.prepare()
        copy = Path(tempfile.mkdtemp(prefix="dbrouter-pgbouncer-", dir=_tmp_base()))
        _registry.add_dir(copy)
        os.chmod(copy, 0o755)
        shutil.copytree(root, copy / "root", symlinks=True)
        _runnable_copies[root] = copy / "root"
    return _runnable_copies[root]


def _apt_download(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["apt-get", "download", *_PACKAGES],
        cwd=directory,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


@contextlib.contextmanager
def running_pgbouncer(server_url: str, *, pool_size: int = 3) -> Iterator[str]:
    """PgBouncer in transaction mode in front of the server of *server_url* (any database
    name passes through), with at most *pool_size* server connections per database; yields
    *server_url* with its host and port replaced by PgBouncer's."""
    program = find_pgbouncer()
    server = make_url(server_url)
    account = _server_account()
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="dbrouter-pgbouncer-", dir=_tmp_base()))
    user = server.username or "postgres"
    target = f"host={server.host or HOST} port={server.port or 5432} user={user}"
    if server.password:
        target += f" password={server.password}"
    (workdir / "userlist.txt").write_text(f'"{user}" ""\n', encoding="utf-8")
    (workdir / "pgbouncer.ini").write_text(
        "\n".join(
            [
                "[databases]",
                f"* = {target}",
                "[pgbouncer]",
                f"listen_addr = {HOST}",
                f"listen_port = {port}",
                "unix_socket_dir =",
                "auth_type = trust",
                f"auth_file = {workdir / 'userlist.txt'}",
                "pool_mode = transaction",
                f"default_pool_size = {pool_size}",
                "max_client_conn = 1000",
                f"logfile = {workdir / 'pgbouncer.log'}",
                f"pidfile = {workdir / 'pgbouncer.pid'}",
                "ignore_startup_parameters = extra_float_digits",
                "",
            ]
        ),
        encoding="utf-8",
    )
    os.chmod(workdir, 0o700)
    if account is not None:
        _chown_tree(workdir, account)
    process = _start(program, workdir, account)
    try:
        _wait_until_listening(port, process, workdir)
        yield server.set(host=HOST, port=port).render_as_string(hide_password=False)
    finally:
        process.send_signal(signal.SIGINT)  # immediate shutdown
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def _start(
    program: PgBouncerProgram, workdir: Path, account: _Account | None
) -> subprocess.Popen[bytes]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    if program.library_dirs:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(str(path) for path in program.library_dirs)
    return subprocess.Popen(
        [str(program.path), str(workdir / "pgbouncer.ini")],
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        user=account.uid if account is not None else None,
        group=account.gid if account is not None else None,
        extra_groups=[] if account is not None else None,
    )


def _wait_until_listening(port: int, process: subprocess.Popen[bytes], workdir: Path) -> None:
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = workdir / "pgbouncer.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
            raise RuntimeError(f"pgbouncer exited with {process.returncode}:\n{tail}")
        with socket.socket() as sock:
            if sock.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"pgbouncer did not listen on {HOST}:{port} within {_START_TIMEOUT} s")
