"""The plot of the comparison: reads per second over HTTP against concurrency, one line per
stack, from the results ``compare.py`` saved. Runs in the plot environment, which has
matplotlib (imported with importlib: the project's environment, where mypy runs, does not).

    python benchmarks/plot.py benchmarks/results/compare.json benchmarks/results/throughput.png
"""

import importlib
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "series"]


def series(results: dict[str, Any]) -> dict[str, list[tuple[int, float]]]:
    """Per stack label: (concurrency, median reads per second) for each level measured."""
    labels = results.get("labels", {})
    found: dict[str, list[tuple[int, float]]] = {}
    levels = sorted(int(level) for level in results["http"]["levels"])
    for stack in results["order"]:
        points = []
        for level in levels:
            runs = results["http"]["levels"][str(level)].get(stack, {}).get("read")
            if runs:
                points.append((level, statistics.median(run["throughput"] for run in runs)))
        if points:
            found[labels.get(stack, stack)] = points
    return found


def main(argv: Sequence[str] | None = None) -> int:
    source, target = (Path(arg) for arg in (argv if argv is not None else sys.argv[1:]))
    results = json.loads(source.read_text())
    matplotlib: Any = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    pyplot: Any = importlib.import_module("matplotlib.pyplot")
    figure, axes = pyplot.subplots(figsize=(10, 4.5), dpi=90)
    for label, points in series(results).items():
        dbrouter = label.startswith("dbrouter")
        axes.plot(
            [level for level, _ in points],
            [rate for _, rate in points],
            marker="o",
            linewidth=2.2 if dbrouter else 1.2,
            linestyle="-" if dbrouter else "--",
            label=label,
        )
    axes.set_xscale("log", base=2)
    levels = sorted({level for points in series(results).values() for level, _ in points})
    axes.set_xticks(levels, [str(level) for level in levels])
    axes.set_xlabel("concurrent requests")
    axes.set_ylabel("reads per second")
    client = results["http"].get("client", "")
    axes.set_title(f"GET /items/{{id}} under uvicorn, load from {client}")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target)
    print(f"plot: {target}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
