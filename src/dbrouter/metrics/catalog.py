"""The instruments every exporter publishes: OpenTelemetry names, units and attributes,
the Prometheus names derived from them, and their values in a `MetricsSnapshot`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from .histograms import HistogramSnapshot
from .snapshot import MetricsSnapshot

__all__ = [
    "HISTOGRAMS",
    "INSTRUMENTS",
    "POOL_NAME",
    "STATE",
    "Instrument",
    "Reading",
    "histogram_readings",
    "readings",
]

POOL_NAME: Final = "db.client.connection.pool.name"
STATE: Final = "db.client.connection.state"
_LABELS: Final = {POOL_NAME: "pool_name", STATE: "state"}
_UNIT_SUFFIXES: Final = {"s": "_seconds", "By": "_bytes"}

Reading = tuple[dict[str, str], float]
"""One value of an instrument, with its attributes."""


@dataclass(frozen=True, slots=True)
class Instrument:
    """One metric, as OpenTelemetry names it."""

    name: str
    """The OpenTelemetry name (``db.client.connection.count``)."""
    kind: Literal["updowncounter", "gauge", "counter", "histogram"]
    unit: str
    """UCUM unit: ``s``, ``By``, or an annotation such as ``{connection}``."""
    description: str
    attributes: tuple[str, ...] = ()

    @property
    def prometheus_name(self) -> str:
        """The Prometheus name: dots as underscores, the unit's suffix, ``_total`` for a
        counter (``db_client_connection_timeouts_total``)."""
        name = self.name.replace(".", "_") + _UNIT_SUFFIXES.get(self.unit, "")
        return f"{name}_total" if self.kind == "counter" else name

    @property
    def labels(self) -> tuple[str, ...]:
        """The Prometheus label names of the attributes."""
        return tuple(_LABELS.get(name, name) for name in self.attributes)


def _pool(
    name: str, kind: Literal["updowncounter", "counter"], unit: str, text: str
) -> Instrument:
    return Instrument(name, kind, unit, text, (POOL_NAME,))


COUNT = Instrument(
    "db.client.connection.count",
    "updowncounter",
    "{connection}",
    "Connections in the pool, by state: idle or used.",
    (POOL_NAME, STATE),
)
MAX = _pool(
    "db.client.connection.max",
    "updowncounter",
    "{connection}",
    "The most open connections the pool allows.",
)
IDLE_MAX = _pool(
    "db.client.connection.idle.max",
    "updowncounter",
    "{connection}",
    "The most idle open connections the pool keeps.",
)
IDLE_MIN = _pool(
    "db.client.connection.idle.min",
    "updowncounter",
    "{connection}",
    "The fewest idle open connections the pool keeps.",
)
PENDING = _pool(
    "db.client.connection.pending_requests",
    "updowncounter",
    "{request}",
    "Requests waiting for an open connection now.",
)
TIMEOUTS = _pool(
    "db.client.connection.timeouts",
    "counter",
    "{timeout}",
    "Requests for a connection that timed out (pool_timeout).",
)
CREATE_TIME = Instrument(
    "db.client.connection.create_time",
    "histogram",
    "s",
    "The time it took to create a new connection.",
    (POOL_NAME,),
)
WAIT_TIME = Instrument(
    "db.client.connection.wait_time",
    "histogram",
    "s",
    "The time it took to obtain an open connection from the pool.",
    (POOL_NAME,),
)
USE_TIME = Instrument(
    "db.client.connection.use_time",
    "histogram",
    "s",
    "The time between borrowing a connection and returning it to the pool.",
    (POOL_NAME,),
)

UNAVAILABLE = Instrument(
    "dbrouter.unavailable",
    "counter",
    "{request}",
    "Requests answered 503, by database and reason.",
    ("database", "reason"),
)
IN_ROTATION = Instrument(
    "dbrouter.replica.in_rotation",
    "gauge",
    "{server}",
    "1 while the replica server serves reads, 0 while it is out of rotation.",
    ("database", POOL_NAME),
)
LAG = Instrument(
    "dbrouter.replica.lag",
    "gauge",
    "s",
    "Replay lag of the replica server.",
    ("database", POOL_NAME),
)
WAL_LAG = Instrument(
    "dbrouter.replica.wal_lag",
    "gauge",
    "By",
    "WAL the replica server has not replayed yet.",
    ("database", POOL_NAME),
)
CONSISTENCY_READS = Instrument(
    "dbrouter.consistency.reads",
    "counter",
    "{read}",
    "Reads that carried a consistency token, by replica and where they were served.",
    ("database", "served_by"),
)
TENANT_ENGINES = Instrument(
    "dbrouter.tenant.engines", "updowncounter", "{engine}", "Tenant engines cached now."
)
TENANT_BUILT = Instrument(
    "dbrouter.tenant.engines.built", "counter", "{engine}", "Tenant engines built."
)
TENANT_EVICTED = Instrument(
    "dbrouter.tenant.engines.evicted", "counter", "{engine}", "Tenant engines evicted."
)
TENANT_LOOKUPS = Instrument(
    "dbrouter.tenant.lookups",
    "counter",
    "{lookup}",
    "Lookups of tenants not declared in the settings, by result.",
    ("result",),
)
BUDGET_LIMIT = Instrument(
    "dbrouter.connection_budget.limit",
    "updowncounter",
    "{connection}",
    "max_connections: server connections the process may open.",
)
BUDGET_IN_USE = Instrument(
    "dbrouter.connection_budget.in_use",
    "updowncounter",
    "{connection}",
    "Server connections open now.",
)
BUDGET_WAITING = Instrument(
    "dbrouter.connection_budget.waiting",
    "updowncounter",
    "{request}",
    "New connections waiting for a slot now.",
)
BUDGET_WAITS = Instrument(
    "dbrouter.connection_budget.waits",
    "counter",
    "{request}",
    "New connections that waited for a slot and got one.",
)
BUDGET_EXHAUSTED = Instrument(
    "dbrouter.connection_budget.exhausted",
    "counter",
    "{request}",
    "New connections that got no slot within pool_timeout.",
)

HISTOGRAMS: Final = (CREATE_TIME, WAIT_TIME, USE_TIME)
"""The pool histograms, in the order `histogram_readings` gives them."""

INSTRUMENTS: Final = (
    COUNT,
    MAX,
    IDLE_MAX,
    IDLE_MIN,
    PENDING,
    TIMEOUTS,
    *HISTOGRAMS,
    UNAVAILABLE,
    IN_ROTATION,
    LAG,
    WAL_LAG,
    CONSISTENCY_READS,
    TENANT_ENGINES,
    TENANT_BUILT,
    TENANT_EVICTED,
    TENANT_LOOKUPS,
    BUDGET_LIMIT,
    BUDGET_IN_USE,
    BUDGET_WAITING,
    BUDGET_WAITS,
    BUDGET_EXHAUSTED,
)
"""Every instrument, pools first."""


def readings(snapshot: MetricsSnapshot) -> dict[Instrument, list[Reading]]:
    """The values of every instrument but the histograms in *snapshot*; an instrument
    that does not apply (no tenancy, no budget, no replica) has none."""
    found: dict[Instrument, list[Reading]] = {
        instrument: [] for instrument in INSTRUMENTS if instrument.kind != "histogram"
    }
    for name, pool in snapshot.pools.items():
        at = {POOL_NAME: name}
        found[COUNT] += [({**at, STATE: "idle"}, pool.idle), ({**at, STATE: "used"}, pool.used)]
        found[MAX].append((at, pool.max))
        found[IDLE_MAX].append((at, pool.idle_max))
        found[IDLE_MIN].append((at, pool.idle_min))
        found[PENDING].append((at, pool.pending_requests))
        found[TIMEOUTS].append((at, pool.timeouts))
    for database, reasons in snapshot.unavailable.items():
        for reason, count in reasons.items():
            found[UNAVAILABLE].append(({"database": database, "reason": reason}, count))
    for name, server in snapshot.replicas.items():
        at = {"database": server.database, POOL_NAME: name}
        found[IN_ROTATION].append((at, 1 if server.in_rotation else 0))
        if server.lag_seconds is not None:
            found[LAG].append((at, server.lag_seconds))
        if server.lag_bytes is not None:
            found[WAL_LAG].append((at, server.lag_bytes))
    for database, places in snapshot.consistency_reads.items():
        for place, count in places.items():
            found[CONSISTENCY_READS].append(({"database": database, "served_by": place}, count))
    tenants = snapshot.tenants
    if tenants is not None:
        found[TENANT_ENGINES].append(({}, tenants.engines))
        found[TENANT_BUILT].append(({}, tenants.built))
        found[TENANT_EVICTED].append(({}, tenants.evicted))
        for result in ("found", "unknown"):
            found[TENANT_LOOKUPS].append(({"result": result}, tenants.lookups.get(result, 0)))
    budget = snapshot.budget
    if budget is not None:
        found[BUDGET_LIMIT].append(({}, budget.limit))
        found[BUDGET_IN_USE].append(({}, budget.in_use))
        found[BUDGET_WAITING].append(({}, budget.waiting))
        found[BUDGET_WAITS].append(({}, budget.waits))
        found[BUDGET_EXHAUSTED].append(({}, budget.exhausted))
    return found


def histogram_readings(
    snapshot: MetricsSnapshot,
) -> dict[Instrument, list[tuple[dict[str, str], HistogramSnapshot]]]:
    """The pool histograms of *snapshot*, by instrument."""
    return {
        CREATE_TIME: [({POOL_NAME: n}, p.create_time) for n, p in snapshot.pools.items()],
        WAIT_TIME: [({POOL_NAME: n}, p.wait_time) for n, p in snapshot.pools.items()],
        USE_TIME: [({POOL_NAME: n}, p.use_time) for n, p in snapshot.pools.items()],
    }
