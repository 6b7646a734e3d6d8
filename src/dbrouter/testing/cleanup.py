"""What throwaway servers leave behind, and making sure they do not: ports held for a
restart, an ``atexit`` hook that stops every server of the process, and a manifest in the
temporary directory that lets the next run stop servers whose process died without
running that hook (SIGKILL, segfault)."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import Protocol

from .programs import run, tmp_base

__all__ = [
    "HOST",
    "OwnedServer",
    "free_port",
    "kill_postmaster",
    "pg_ctl_stop",
    "registry",
    "release_port",
    "reserve_port",
]

HOST = "127.0.0.1"
"""The only address throwaway servers listen on."""

PG_CTL_WAIT = 60
"""Seconds ``pg_ctl`` waits for a server to start or stop."""
_MANIFEST_PREFIX = "dbrouter-pg-"


class OwnedServer(Protocol):
    """What the registry knows of a server it must not leave behind."""

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory."""
        ...

    @property
    def exec_bindir(self) -> Path:
        """Where its programs run from."""
        ...

    @property
    def owned_dirs(self) -> list[Path]:
        """The directories removed with it."""
        ...

    def cleanup(self) -> None:
        """Stop it and remove its directories."""
        ...


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


def reserve_port(port: int) -> None:
    """Keep *port* from `free_port` (a stopped server of ours restarts on it)."""
    with _ports_lock:
        _reserved_ports.add(port)


def release_port(port: int) -> None:
    """Hand *port* back to `free_port`."""
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


def kill_postmaster(data_dir: Path) -> None:
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


def pg_ctl_stop(bindir: Path, data_dir: Path, mode: str) -> subprocess.CompletedProcess[str]:
    """``pg_ctl stop -m *mode*`` of the cluster in *data_dir*, as the server account."""
    return run(
        [bindir / "pg_ctl", "stop", "-D", data_dir, "-m", mode, "-w", "-t", str(PG_CTL_WAIT)],
        as_server=True,
        timeout=PG_CTL_WAIT + 30,
        new_session=True,
    )


class _Registry:
    """Servers and directories this process must not leave behind."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._pid = os.getpid()
        self._servers: list[OwnedServer] = []
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
        """Register the atexit hook and reap what crashed runs left, once per process."""
        with self._lock:
            self._check_fork()
            if self._prepared:
                return
            self._prepared = True
            atexit.register(self.cleanup_all)
            _reap_stale_manifests()

    def add_server(self, server: OwnedServer) -> None:
        """Remember *server* until it is cleaned up."""
        with self._lock:
            self._check_fork()
            self._servers.append(server)
            self._save()

    def remove_server(self, server: OwnedServer) -> None:
        """Forget *server*: it cleaned up after itself."""
        with self._lock:
            self._check_fork()
            if server in self._servers:
                self._servers.remove(server)
            self._save()

    def add_dir(self, path: Path) -> None:
        """Remove *path* when the process ends."""
        with self._lock:
            self._check_fork()
            self._dirs.append(path)
            self._save()

    @property
    def manifest(self) -> Path:
        """The file that lists what this process must not leave behind."""
        return Path(tmp_base()) / f"{_MANIFEST_PREFIX}{self._pid}.json"

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
        """Stop every server of this process and remove its directories."""
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


registry = _Registry()
"""The servers and directories of this process."""


def _reap_stale_manifests() -> None:
    """Stop servers and remove directories left behind by test runs that died abruptly."""
    base = Path(tmp_base())
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
                        pg_ctl_stop(Path(entry["bindir"]), data_dir, "immediate")
            for path in content.get("dirs", []):
                shutil.rmtree(path, ignore_errors=True)
            manifest.unlink(missing_ok=True)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
