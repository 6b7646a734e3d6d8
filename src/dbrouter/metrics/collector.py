"""`RouterMetrics`: the figures of one router, kept from its events and its pools.

Nothing is measured until a router's metrics are first asked for (`DatabaseRouter.metrics`,
``metrics_router()``, ``dbrouter.otel.instrument``): only then are pool meters attached
and events subscribed to, so a router nobody observes pays nothing per request.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from ..databases import Database
from ..events import (
    BudgetExhausted,
    BudgetWaited,
    ConsistencyRead,
    EngineBuilt,
    EventBus,
    TenantEngineEvicted,
    TenantLookedUp,
    UnavailableAnswered,
)
from ..urls import is_postgresql
from .pools import MeteredPool, PoolMeter, attach_meter, pool_counts
from .snapshot import (
    BudgetMetrics,
    MetricsSnapshot,
    PoolMetrics,
    ReplicaServerMetrics,
    TenantMetrics,
)

if TYPE_CHECKING:
    from ..budget import ConnectionBudget
    from ..engines import EngineFactory
    from ..replicas.rotation import ReplicaSet

__all__ = ["RouterMetrics", "pool_name"]


def pool_name(database: Database) -> str:
    """The pool name of *database* in metrics: its name, or ``<database>@<host>:<port>``
    for a server of a PostgreSQL replica."""
    settings = database.settings
    if settings.replica_of is None or not is_postgresql(settings.url):
        return database.name
    url = settings.url
    host = url.host or "localhost"
    if ":" in host:
        host = f"[{host}]"  # an IPv6 address
    # The second and later servers are named replica#2...; their pool names say where.
    return f"{database.name.partition('#')[0]}@{host}:{url.port or 5432}"


class RouterMetrics:
    """The figures of a router: counters fed by its events, pool meters attached to every
    engine its factory builds, and gauges read from pools, replica sets, tenancy and the
    budget when a snapshot is taken."""

    def __init__(
        self,
        events: EventBus,
        factory: EngineFactory,
        *,
        replica_sets: Callable[[], Iterable[ReplicaSet]],
        tenant_engines: Callable[[], int] | None = None,
        budget: ConnectionBudget | None = None,
    ) -> None:
        self._factory = factory
        self._replica_sets = replica_sets
        self._tenant_engines = tenant_engines
        self._budget = budget
        self._unavailable: dict[str, Counter[str]] = {}
        self._reads: dict[str, Counter[str]] = {}
        self._lookups: Counter[str] = Counter()
        self._built = 0
        self._evicted = 0
        self._budget_waits = 0
        self._budget_exhausted = 0
        self._meter_watchers: list[Callable[[PoolMeter], None]] = []
        events.subscribe(UnavailableAnswered, self._answered_unavailable)
        events.subscribe(ConsistencyRead, self._consistency_read)
        events.subscribe(EngineBuilt, self._built_engine)
        events.subscribe(TenantEngineEvicted, self._evicted_engine)
        events.subscribe(TenantLookedUp, self._looked_up)
        events.subscribe(BudgetWaited, self._budget_waited)
        events.subscribe(BudgetExhausted, self._budget_ran_out)
        for database in factory.live():
            self._attach(database)
        factory.watch(self._attach)

    # ---- pools -----------------------------------------------------------------------

    def meters(self) -> list[PoolMeter]:
        """The meters of every pool measured now."""
        return [meter for _, _, meter in self._pools()]

    def on_meter(self, watcher: Callable[[PoolMeter], None]) -> None:
        """Call *watcher* with the meter of every pool, now and as pools are built (an
        exporter hands each value of a histogram on so)."""
        self._meter_watchers.append(watcher)
        for meter in self.meters():
            watcher(meter)

    def _attach(self, database: Database) -> None:
        if database.kind == "maintenance":
            return  # short-lived, and no pool of its own
        meter = PoolMeter(self._unique_name(database))
        if attach_meter(database.engine.sync_engine.pool, meter):
            for watcher in self._meter_watchers:
                watcher(meter)

    def _unique_name(self, database: Database) -> str:
        name = pool_name(database)
        taken = {meter.name for _, _, meter in self._pools()}
        unique, number = name, 2
        while unique in taken:
            unique, number = f"{name}#{number}", number + 1  # one server listed twice
        return unique

    def _pools(self) -> list[tuple[Database, MeteredPool, PoolMeter]]:
        found = []
        for database in self._factory.live():
            if database.leases.retired:
                continue  # evicted or closing: its series go now, not when it is disposed
            pool = database.engine.sync_engine.pool
            if isinstance(pool, MeteredPool) and pool.meter is not None:
                found.append((database, pool, pool.meter))
        return found

    # ---- events ----------------------------------------------------------------------

    def _answered_unavailable(self, event: UnavailableAnswered) -> None:
        self._unavailable.setdefault(event.database, Counter())[event.reason] += 1

    def _consistency_read(self, event: ConsistencyRead) -> None:
        self._reads.setdefault(event.database, Counter())[event.served_by] += 1

    def _built_engine(self, event: EngineBuilt) -> None:
        if event.kind == "tenant":
            self._built += 1

    def _evicted_engine(self, event: TenantEngineEvicted) -> None:
        self._evicted += 1
        # Its series go with it: label values stay within max_engines tenants.
        self._unavailable.pop(event.name, None)

    def _looked_up(self, event: TenantLookedUp) -> None:
        self._lookups["found" if event.found else "unknown"] += 1

    def _budget_waited(self, event: BudgetWaited) -> None:
        self._budget_waits += 1

    def _budget_ran_out(self, event: BudgetExhausted) -> None:
        self._budget_exhausted += 1

    # ---- the snapshot ----------------------------------------------------------------

    def snapshot(self) -> MetricsSnapshot:
        """Every figure now."""
        pools: dict[str, PoolMetrics] = {}
        for database, pool, meter in self._pools():
            counts = pool_counts(pool)
            pools[meter.name] = PoolMetrics(
                name=meter.name,
                kind="replica" if database.is_replica else database.kind,
                used=counts.used,
                idle=counts.idle,
                max=counts.max,
                idle_max=counts.idle_max,
                idle_min=counts.idle_min,
                pending_requests=meter.pending,
                timeouts=meter.timeouts,
                create_time=meter.create_time.snapshot(),
                wait_time=meter.wait_time.snapshot(),
                use_time=meter.use_time.snapshot(),
            )
        return MetricsSnapshot(
            pools=pools,
            replicas=self._replica_servers(),
            unavailable={name: dict(counts) for name, counts in self._unavailable.items()},
            consistency_reads={name: dict(counts) for name, counts in self._reads.items()},
            tenants=self._tenants(),
            budget=self._budget_figures(),
        )

    def _replica_servers(self) -> dict[str, ReplicaServerMetrics]:
        servers: dict[str, ReplicaServerMetrics] = {}
        for replica_set in self._replica_sets():
            for member in replica_set.members:
                meter = getattr(member.database.engine.sync_engine.pool, "meter", None)
                pool = pool_name(member.database) if meter is None else meter.name
                servers[pool] = ReplicaServerMetrics(
                    database=member.name.partition("#")[0],
                    pool=pool,
                    in_rotation=member.in_rotation,
                    reason=member.reason,
                    lag_seconds=member.lag_seconds,
                    lag_bytes=member.lag_bytes,
                )
        return servers

    def _tenants(self) -> TenantMetrics | None:
        if self._tenant_engines is None:
            return None
        return TenantMetrics(
            engines=self._tenant_engines(),
            built=self._built,
            evicted=self._evicted,
            lookups=dict(self._lookups),
        )

    def _budget_figures(self) -> BudgetMetrics | None:
        budget = self._budget
        if budget is None:
            return None
        return BudgetMetrics(
            limit=budget.limit,
            in_use=budget.open,
            waiting=budget.waiting,
            waits=self._budget_waits,
            exhausted=self._budget_exhausted,
        )
