"""The Prometheus exporter (extra ``prometheus``): every figure of a router as
prometheus-client metric families, read from a fresh snapshot at each scrape."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError
from .catalog import histogram_readings, readings

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from ..router import DatabaseRouter

__all__ = ["CONTENT_TYPE", "RouterCollector", "render", "router_registry"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The media type of the Prometheus text format."""

_MISSING = (
    "the Prometheus exporter needs prometheus-client: install the 'prometheus' extra "
    "(pip install 'fastapi-dbrouter[prometheus]')"
)


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:
        raise ConfigurationError(_MISSING) from exc
    return prometheus_client


class RouterCollector:
    """A prometheus-client collector of *router*'s figures; register it in any registry
    (``prometheus_client.REGISTRY.register(RouterCollector(router))``).

    Building it starts collecting; each `collect` reads a new snapshot.
    """

    def __init__(self, router: DatabaseRouter) -> None:
        _prometheus()
        self._metrics = router.metrics_collector()

    def collect(self) -> Iterator[Any]:
        """The metric families now."""
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        snapshot = self._metrics.snapshot()
        for instrument, values in readings(snapshot).items():
            if not values:
                continue
            labels = list(instrument.labels)
            family: Any
            if instrument.kind == "counter":
                name = instrument.prometheus_name.removesuffix("_total")
                family = CounterMetricFamily(name, instrument.description, labels=labels)
            else:
                family = GaugeMetricFamily(
                    instrument.prometheus_name, instrument.description, labels=labels
                )
            for attributes, value in values:
                family.add_metric([attributes[key] for key in instrument.attributes], value)
            yield family
        for instrument, histograms in histogram_readings(snapshot).items():
            if not histograms:
                continue
            family = HistogramMetricFamily(
                instrument.prometheus_name,
                instrument.description,
                labels=list(instrument.labels),
                unit="seconds",
            )
            for attributes, histogram in histograms:
                family.add_metric(
                    [attributes[key] for key in instrument.attributes],
                    [(_bound(bound), count) for bound, count in histogram.cumulative()],
                    histogram.sum,
                )
            yield family


def _bound(bound: float) -> str:
    # As Prometheus writes an upper bound: 0.005, 1.0, +Inf.
    return "+Inf" if math.isinf(bound) else repr(bound)


def router_registry(router: DatabaseRouter) -> CollectorRegistry:
    """A registry of its own holding *router*'s collector."""
    prometheus_client = _prometheus()
    registry: CollectorRegistry = prometheus_client.CollectorRegistry(auto_describe=False)
    registry.register(RouterCollector(router))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """*registry*'s metrics in the Prometheus text format."""
    data: bytes = _prometheus().generate_latest(registry)
    return data
