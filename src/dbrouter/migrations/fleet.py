"""Running a migration command over every selected target: bounded concurrency, a lock
per target, carrying on past failures, one result per target."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from pathlib import Path

from alembic import command as alembic_command
from alembic.runtime.migration import MigrationContext
from alembic.util import CommandError
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from ..errors import ConfigurationError, DBRouterError
from ..outages import outage_reason
from ..router import DatabaseRouter
from .environment import Binding
from .locks import TargetLocked, alembic_turn, take_lock
from .progress import MigrationProgress, SilentProgress
from .report import Command, MigrationReport, Outcome, TargetResult
from .scripts import Scripts
from .targets import Place, Selection, Target, select_targets

__all__ = ["current", "describe", "downgrade", "prepare", "run_command", "status", "upgrade"]

logger = logging.getLogger("dbrouter")

# A migration may take longer than any request, and a target may wait, idle in its
# transaction, for another target's turn: the database's own limits for requests do not
# apply to it. DDL that must not queue behind other locks sets lock_timeout itself.
_UNLIMITED = (
    "SELECT set_config('statement_timeout', '0', true), "
    "set_config('idle_in_transaction_session_timeout', '0', true)"
)
_PREPARE = text(_UNLIMITED)
# Transaction-local, as the tenant's sessions pin it: raw SQL of a revision lands in the
# tenant's schema, and nothing is left on the connection afterwards.
_PREPARE_PINNED = text(f"{_UNLIMITED}, set_config('search_path', :path, true)")
_HEADS = ("head", "heads")


async def upgrade(
    router: DatabaseRouter,
    revision: str = "head",
    *,
    databases: Iterable[str] = (),
    tenants: Iterable[str] = (),
    all_tenants: bool = False,
    concurrency: int = 4,
    wait: bool = True,
    progress: MigrationProgress | None = None,
) -> MigrationReport:
    """Upgrade the selected targets to *revision* (default: the head of each one's script
    directory) and report on each.

    *databases* names databases and *tenants* tenant ids; *all_tenants* selects every
    tenant that can be listed; nothing selected selects every target. At most
    *concurrency* targets run at once (and no more than ``max_connections``). Each target
    is migrated in one transaction under its own advisory lock: when another deploy holds
    it, this one waits (or, without *wait*, fails the target). A failing target is rolled
    back and the others carry on.
    """
    selection = Selection.of(databases, tenants, all_tenants=all_tenants)
    return await run_command(
        router,
        "upgrade",
        revision,
        selection,
        concurrency=concurrency,
        wait=wait,
        progress=progress,
    )


async def downgrade(
    router: DatabaseRouter,
    revision: str,
    *,
    databases: Iterable[str] = (),
    tenants: Iterable[str] = (),
    all_tenants: bool = False,
    concurrency: int = 4,
    wait: bool = True,
    progress: MigrationProgress | None = None,
) -> MigrationReport:
    """Downgrade the selected targets to *revision* (``-1``, ``base``, a revision id);
    otherwise as `upgrade`."""
    selection = Selection.of(databases, tenants, all_tenants=all_tenants)
    return await run_command(
        router,
        "downgrade",
        revision,
        selection,
        concurrency=concurrency,
        wait=wait,
        progress=progress,
    )


async def current(
    router: DatabaseRouter,
    *,
    databases: Iterable[str] = (),
    tenants: Iterable[str] = (),
    all_tenants: bool = False,
    concurrency: int = 4,
    progress: MigrationProgress | None = None,
) -> MigrationReport:
    """The revisions each selected target is at (``before`` = ``after``)."""
    selection = Selection.of(databases, tenants, all_tenants=all_tenants)
    return await run_command(
        router, "current", None, selection, concurrency=concurrency, progress=progress
    )


async def status(
    router: DatabaseRouter,
    *,
    databases: Iterable[str] = (),
    tenants: Iterable[str] = (),
    all_tenants: bool = False,
    concurrency: int = 4,
    progress: MigrationProgress | None = None,
) -> MigrationReport:
    """`current`, and whether each target is behind the head of its script directory:
    the drift check (``report.ok`` is False when any target is behind or failed)."""
    selection = Selection.of(databases, tenants, all_tenants=all_tenants)
    return await run_command(
        router, "status", None, selection, concurrency=concurrency, progress=progress
    )


async def run_command(
    router: DatabaseRouter,
    command: Command,
    revision: str | None,
    selection: Selection,
    *,
    concurrency: int = 4,
    wait: bool = True,
    progress: MigrationProgress | None = None,
) -> MigrationReport:
    """Run *command* (to *revision*) on every target of *selection*: the named databases
    first, then the tenants (whose revisions may rely on the databases' tables)."""
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ConfigurationError(
            f"concurrency: must be a whole number of at least 1, not {concurrency!r}"
        )
    if command in ("upgrade", "downgrade") and not revision:
        raise ConfigurationError(f"{command}: a revision is required (head, base, -1, an id)")
    targets = await select_targets(router, selection)
    scripts: dict[Path, Scripts] = {}
    for target in targets:
        if target.scripts not in scripts:
            scripts[target.scripts] = Scripts(target.scripts, key=target.key)
    follower = progress or SilentProgress()
    follower.started([target.name for target in targets])
    runner = _Runner(command, revision, wait=wait, progress=follower)

    async def one(target: Target, gate: asyncio.Semaphore) -> TargetResult:
        async with gate:
            result = await runner.run(target, scripts[target.scripts])
        follower.finished(result)
        return result

    results: list[TargetResult] = []
    for phase in (
        [target for target in targets if not target.is_tenant],
        [target for target in targets if target.is_tenant],
    ):
        gate = asyncio.Semaphore(_in_flight(router, concurrency))
        results += await asyncio.gather(*(one(target, gate) for target in phase))
    return MigrationReport(command, results)


def _in_flight(router: DatabaseRouter, concurrency: int) -> int:
    """How many targets may migrate at once: *concurrency*, but no more than the slots
    of ``max_connections`` free now (the pools of the named databases keep theirs)."""
    limit = router.settings.max_connections
    if limit is None:
        return concurrency
    return max(1, min(concurrency, limit - (router.open_connections or 0)))


class _Runner:
    """Runs one command on one target at a time (many at once on one event loop)."""

    def __init__(
        self, command: Command, revision: str | None, *, wait: bool, progress: MigrationProgress
    ) -> None:
        self.command = command
        self.revision = revision
        self.wait = wait
        self.progress = progress

    async def run(self, target: Target, scripts: Scripts) -> TargetResult:
        started = time.perf_counter()
        before: tuple[str, ...] = ()
        try:
            async with (
                target.reach() as place,
                place.database.engine.connect() as connection,
                connection.begin(),
            ):
                postgresql = connection.dialect.name == "postgresql"
                await prepare(connection, place)
                before = await _revisions(connection, place)
                after = before
                if self._moves(before, scripts):
                    if postgresql:
                        await take_lock(
                            connection,
                            target.name,
                            wait=self.wait,
                            waiting=lambda holder: self._waiting(target.name, holder),
                        )
                        # Read again: a deploy that held the lock may have moved it.
                        before = await _revisions(connection, place)
                    async with alembic_turn():
                        await connection.run_sync(
                            _alembic, scripts, self.command, self.revision, target, place
                        )
                    after = await _revisions(connection, place)
                unknown = sorted(set(after) - scripts.revisions)
                if unknown:
                    raise CommandError(
                        f"the target is at revision {', '.join(unknown)}, which "
                        f"{scripts.path} does not have"
                    )
        except Exception as exc:
            return self._result(target, scripts, before, before, started, exc)
        return self._result(target, scripts, before, after, started)

    def _moves(self, before: tuple[str, ...], scripts: Scripts) -> bool:
        """Whether the command may change the target, as far as can be told before its
        lock is taken: an upgrade to the heads it is at, or a downgrade to the base it is
        at, takes no lock."""
        if self.command in ("current", "status"):
            return False
        if self.command == "upgrade" and self.revision in _HEADS:
            return set(before) != set(scripts.heads)
        return not (self.command == "downgrade" and self.revision == "base" and not before)

    def _waiting(self, target: str, holder: int | None) -> None:
        logger.info(
            "dbrouter: %s is being migrated by PostgreSQL server process %s; %s",
            target,
            holder,
            "waiting for it" if self.wait else "not waiting",
        )
        self.progress.waiting(target, holder)

    def _result(
        self,
        target: Target,
        scripts: Scripts,
        before: tuple[str, ...],
        after: tuple[str, ...],
        started: float,
        error: Exception | None = None,
    ) -> TargetResult:
        outcome: Outcome = "unchanged" if after == before else "ok"
        if error is not None:
            outcome = "failed"
        behind = None
        if self.command == "status":
            behind = error is not None or set(after) != set(scripts.heads)
        return TargetResult(
            target.name,
            before,
            after,
            outcome,
            None if error is None else describe(error),
            time.perf_counter() - started,
            behind,
        )


async def prepare(connection: AsyncConnection, place: Place) -> None:
    """Begin a migration transaction on *connection*, which has just begun one.

    PostgreSQL: without the request time limits, and a schema tenant's search path
    pinned. SQLite: with an explicit ``BEGIN``, since the driver begins a transaction only
    before data changes, and DDL run before that would stay when the migration fails.
    """
    if connection.dialect.name == "sqlite":
        await connection.exec_driver_sql("BEGIN")
        return
    if place.search_path is None:
        await connection.execute(_PREPARE)
    else:
        await connection.execute(_PREPARE_PINNED, {"path": place.search_path})


async def _revisions(connection: AsyncConnection, place: Place) -> tuple[str, ...]:
    return await connection.run_sync(_current_heads, place.schema)


def _current_heads(connection: Connection, schema: str | None) -> tuple[str, ...]:
    context = MigrationContext.configure(connection, opts={"version_table_schema": schema})
    return tuple(sorted(context.get_current_heads()))


def _alembic(
    connection: Connection,
    scripts: Scripts,
    command: Command,
    revision: str | None,
    target: Target,
    place: Place,
) -> None:
    assert revision is not None
    config = scripts.config(Binding(target.name, connection, place.schema))
    if command == "upgrade":
        alembic_command.upgrade(config, revision)
    else:
        alembic_command.downgrade(config, revision)


def describe(exc: BaseException) -> str:
    """Why a target failed, in words that hold no URL or password: the outage, the
    server's own message with its SQLSTATE, or the exception."""
    reason = outage_reason(exc)
    if reason is not None:
        return f"database unavailable: {reason}"
    if isinstance(exc, (DBRouterError, CommandError, TargetLocked)):
        return str(exc)
    if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None:
        inner: BaseException = exc.orig.__cause__ or exc.orig
        message = str(inner).strip().splitlines()[0] if str(inner).strip() else ""
        sqlstate = getattr(inner, "sqlstate", None) or getattr(exc.orig, "sqlstate", None)
        described = f"{type(inner).__name__}: {message}"
        return f"{described} (SQLSTATE {sqlstate})" if isinstance(sqlstate, str) else described
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
