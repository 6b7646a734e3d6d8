"""The arithmetic of the comparison: medians, ratios with their spread, percentiles.

Every ratio compares two stacks measured side by side in one process (or one run), round
by round: ``ratio`` is the quotient of the medians, the spread is the lowest and highest
quotient of paired rounds.
"""

import argparse
import math
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

__all__ = ["Ratio", "counts", "percentile", "ratio", "rotation"]


@dataclass(frozen=True)
class Ratio:
    """One stack against another: the quotient of the medians and of each pair of rounds."""

    value: float
    low: float
    high: float

    @property
    def span(self) -> float:
        """How far apart the paired rounds are: highest / lowest (1.0: all alike)."""
        return self.high / self.low

    def __str__(self) -> str:
        if self.low == self.high:
            return f"{self.value:.2f}"
        return f"{self.value:.2f} ({self.low:.2f}-{self.high:.2f})"


def ratio(sides: Sequence[float], bases: Sequence[float]) -> Ratio:
    """*sides* against *bases*, rounds paired in order: median quotient and its spread.

    For throughputs, above 1 means the side is faster; for costs (CPU time per request),
    below 1 means it is cheaper.
    """
    if not sides or len(sides) != len(bases):
        raise ValueError(
            f"need the same number of rounds on both sides, got {len(sides)} and {len(bases)}"
        )
    if min(bases) <= 0 or min(sides) <= 0:
        raise ValueError("figures must be positive")
    pairs = [side / base for side, base in zip(sides, bases, strict=True)]
    return Ratio(statistics.median(sides) / statistics.median(bases), min(pairs), max(pairs))


def percentile(values: Sequence[float], fraction: float) -> float:
    """The *fraction* (0..1) percentile of *values*, by the nearest-rank method."""
    if not values:
        raise ValueError("no values")
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be within 0..1, not {fraction}")
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def rotation(count: int, rounds: int) -> Iterator[int]:
    """Indexes of *count* sides for *rounds* rounds: 0 1 2, 2 1 0, 0 1 2 ...

    Reversing every other round puts each side early and late equally often, so slow
    drift (CPU frequency, autovacuum, caches) weighs on every side alike.
    """
    for index in range(rounds):
        order = range(count) if index % 2 == 0 else reversed(range(count))
        yield from order


def counts(text: str) -> list[int]:
    """``10,100,1000`` on a command line: increasing whole numbers of at least 1."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not values or values != sorted(set(values)) or values[0] < 1:
        raise argparse.ArgumentTypeError(f"need increasing numbers of at least 1, not {text!r}")
    return values
