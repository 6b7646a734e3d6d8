"""Histograms of durations, cheap enough for the path of every request."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

__all__ = ["TIME_BUCKETS", "Histogram", "HistogramSnapshot"]

TIME_BUCKETS: Final = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)
"""Upper bounds, in seconds, of the buckets of every duration: those the OpenTelemetry
semantic conventions advise for database client durations."""


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    """A histogram at one moment: how many values fell in each bucket, and their sum."""

    bounds: tuple[float, ...]
    """Upper bounds of the buckets (a value equal to a bound counts in its bucket)."""
    counts: tuple[int, ...]
    """Values per bucket, one more than *bounds*: the last counts values above every bound."""
    sum: float
    """The sum of every value, in seconds."""

    @property
    def count(self) -> int:
        """How many values there are."""
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, values at most that)`` per bucket, ending with ``(inf, count)``:
        the buckets as Prometheus writes them."""
        total = 0
        pairs: list[tuple[float, int]] = []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            pairs.append((bound, total))
        return pairs


class Histogram:
    """Counts values in fixed buckets; each value is also handed to the sinks (an
    OpenTelemetry histogram, say), if any."""

    __slots__ = ("_bounds", "_counts", "_sum", "sinks")

    def __init__(self, bounds: tuple[float, ...] = TIME_BUCKETS) -> None:
        self._bounds = bounds
        self._counts = [0] * (len(bounds) + 1)
        self._sum = 0.0
        self.sinks: tuple[Callable[[float], None], ...] = ()
        """Called with every value as it is observed."""

    def observe(self, value: float) -> None:
        """Count *value*."""
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value
        for sink in self.sinks:
            sink(value)

    def snapshot(self) -> HistogramSnapshot:
        """The counts so far."""
        return HistogramSnapshot(self._bounds, tuple(self._counts), self._sum)
