"""OpenTelemetry metrics (extra ``otel``): `instrument` exports every figure of a router
through a ``MeterProvider``, with the semantic conventions' names, units and attributes.

Pool counts, replica state, tenant and budget figures are observable instruments, read
from a snapshot when the provider collects; the three pool histograms are recorded as
connections are created, waited for and used.
"""

from __future__ import annotations

import functools
import importlib.metadata
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError
from .metrics.catalog import (
    CREATE_TIME,
    HISTOGRAMS,
    INSTRUMENTS,
    POOL_NAME,
    USE_TIME,
    WAIT_TIME,
    Instrument,
    readings,
)
from .metrics.collector import RouterMetrics
from .metrics.histograms import TIME_BUCKETS
from .metrics.pools import PoolMeter

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

    from .router import DatabaseRouter

__all__ = ["instrument"]

_MISSING = (
    "OpenTelemetry metrics need opentelemetry-api and opentelemetry-sdk: install the 'otel' "
    "extra (pip install 'fastapi-dbrouter[otel]')"
)


def instrument(
    router: DatabaseRouter,
    *,
    meter_provider: MeterProvider | None = None,
    histograms: bool = True,
) -> None:
    """Export every figure of *router* through *meter_provider* (default: the global one
    set with ``opentelemetry.metrics.set_meter_provider``). Collecting starts now; call
    it once per provider.

    The three pool histograms are the only instruments recorded as requests run (the
    SDK's record costs microseconds per value); ``histograms=False`` leaves them out.
    """
    try:
        from opentelemetry import metrics
    except ImportError as exc:
        raise ConfigurationError(_MISSING) from exc
    provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
    meter = provider.get_meter("dbrouter", importlib.metadata.version("fastapi-dbrouter"))
    collector = router.metrics_collector()
    for spec in INSTRUMENTS:
        if spec.kind == "histogram":
            continue
        create = {
            "counter": meter.create_observable_counter,
            "updowncounter": meter.create_observable_up_down_counter,
            "gauge": meter.create_observable_gauge,
        }[spec.kind]
        create(
            spec.name,
            callbacks=[functools.partial(_observe, collector, spec)],
            unit=spec.unit,
            description=spec.description,
        )
    if not histograms:
        return
    recorders = {
        spec: meter.create_histogram(
            spec.name,
            unit=spec.unit,
            description=spec.description,
            explicit_bucket_boundaries_advisory=list(TIME_BUCKETS),
        )
        for spec in HISTOGRAMS
    }

    def record_values(pool: PoolMeter) -> None:
        attributes = {POOL_NAME: pool.name}
        for spec, histogram in ((CREATE_TIME, pool.create_time), (WAIT_TIME, pool.wait_time),
                                (USE_TIME, pool.use_time)):  # fmt: skip
            record = functools.partial(recorders[spec].record, attributes=attributes)
            histogram.sinks = (*histogram.sinks, record)

    collector.on_meter(record_values)


def _observe(
    collector: RouterMetrics, spec: Instrument, options: CallbackOptions
) -> Iterable[Observation]:
    from opentelemetry.metrics import Observation

    values: list[Any] = readings(collector.snapshot())[spec]
    return [Observation(value, attributes) for attributes, value in values]
