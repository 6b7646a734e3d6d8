"""Metrics: pool figures by the OpenTelemetry semantic conventions and dbrouter's own,
as a snapshot (`MetricsSnapshot`) any exporter reads. The Prometheus exporter is in
`dbrouter.metrics.prometheus` (extra ``prometheus``), the OpenTelemetry one in
`dbrouter.otel` (extra ``otel``)."""

from .collector import RouterMetrics, pool_name
from .histograms import HistogramSnapshot
from .snapshot import (
    BudgetMetrics,
    MetricsSnapshot,
    PoolMetrics,
    ReplicaServerMetrics,
    TenantMetrics,
)

__all__ = [
    "BudgetMetrics",
    "HistogramSnapshot",
    "MetricsSnapshot",
    "PoolMetrics",
    "ReplicaServerMetrics",
    "RouterMetrics",
    "TenantMetrics",
    "pool_name",
]
