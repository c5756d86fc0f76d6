"""Fleet monitoring: skew and drift of 1,000 segments x 15 features over 1M logged rows, in one pass.

The logged rows (synthetic: 10 numeric and 5 categorical features, windows of
uneven size, missing values) and each segment's training statistics are made in
process, no server. Both sides get the same per-endpoint windows, as the monitor
job reads them from the request log:

- today's job, segment by segment: `distributions` and `compare` per endpoint
  (what `monitor_endpoint` runs), skew against training and drift against the
  previous window;
- the fleet pass (`fleet.py`, what `monitor_fleet` runs): `fleet_statistics` and
  `fleet_findings` over all endpoints at once, each segment x feature's
  statistics, distance and verdict kept as arrays. The baselines come in as the
  dicts saved with each model, and their conversion to arrays is timed.

Both sides end with every segment x feature's distance and verdict. The loop
holds them as `FeatureResult`s; the fleet pass as arrays, from which the
reports build `FeatureResult`s (`FleetFindings.results()`, timed separately and
printed as well). Every distance and verdict must be identical (asserted).
Each side is given the windows as its reads give them (a frame per endpoint; all
endpoints' rows in one frame) and timed as its best of 3 runs. Target: >= 20x
faster.

    PYTHONPATH=$PWD python benchmarks/bench_fleet_monitoring.py [segments] [rows]
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import pandas as pd

from fleetops.monitoring.compare import compare, distributions
from fleetops.monitoring.fleet import FleetFindings, fleet_distributions, fleet_findings, fleet_statistics

NUMERIC = [f"x{i}" for i in range(10)]
CATEGORICAL = [f"c{i}" for i in range(5)]
FEATURES = NUMERIC + CATEGORICAL
TARGET = 20.0
RUNS = 3  # each side's best of 3
T = TypeVar("T")


def _rows(rng: np.random.Generator, segments: np.ndarray, shift: float = 0.0) -> pd.DataFrame:
    n = len(segments)
    columns: dict[str, object] = {}
    for i, name in enumerate(NUMERIC):
        centre = segments * 0.01 * (i + 1) + shift
        values = rng.normal(centre, 1.0 + (i % 3), n) if i % 2 == 0 else rng.gamma(2.0 + i % 4, 1.0, n) + centre
        values[rng.random(n) < 0.02] = np.nan
        columns[name] = values
    for i, name in enumerate(CATEGORICAL):
        choices = np.array([f"v{j}" for j in range(3 + 2 * i)], dtype=object)
        values = choices[rng.zipf(1.6, n) % len(choices)]
        values[rng.random(n) < 0.01] = None
        columns[name] = values
    return pd.DataFrame(columns)


def _logged(rng: np.random.Generator, segments: int, rows: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Logged rows of uneven windows (a few large segments, many small), summing to `rows`, by segment."""
    weights = rng.pareto(1.5, segments) + 0.2
    sizes = np.maximum(1, np.floor(weights / weights.sum() * rows)).astype(int)
    sizes[0] += rows - sizes.sum()
    codes = np.repeat(np.arange(segments), sizes)
    return _rows(rng, codes), codes


def _best_of(runs: int, work: Callable[[], T]) -> tuple[float, T]:
    """The fastest of `runs` runs (what the code costs, less what other work on the machine took) and a result."""
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        result = work()
        best = min(best, time.perf_counter() - start)
    return best, result


def main(segments: int = 1000, rows: int = 1_000_000) -> None:
    rng = np.random.default_rng(11)
    training_codes = np.repeat(np.arange(segments), 500)
    baselines = fleet_distributions(_rows(rng, training_codes), training_codes, segments, NUMERIC, CATEGORICAL)
    previous, previous_codes = _logged(rng, segments, rows // 2)
    current, current_codes = _logged(rng, segments, rows - rows // 2)

    # Each side gets the windows as its reads give them: one frame per endpoint, or all endpoints' rows at once.
    before_windows = dict(iter(previous.groupby(previous_codes)))
    now_windows = dict(iter(current.groupby(current_codes)))

    def loop() -> tuple[list, list]:
        skew, drift = [], []
        for s, window in now_windows.items():
            now = distributions(window, NUMERIC, CATEGORICAL)
            before = distributions(before_windows[s], NUMERIC, CATEGORICAL)
            skew.append(compare(baselines[s], now, FEATURES))
            drift.append(compare(before, now, FEATURES))
        return skew, drift

    def fleet() -> tuple[FleetFindings, FleetFindings]:
        now_all = fleet_statistics(current, current_codes, segments, NUMERIC, CATEGORICAL)
        before_all = fleet_statistics(previous, previous_codes, segments, NUMERIC, CATEGORICAL)
        return fleet_findings(baselines, now_all, FEATURES), fleet_findings(before_all, now_all, FEATURES)

    loop_seconds, (loop_skew, loop_drift) = _best_of(RUNS, loop)
    fleet_seconds, (skew, drift) = _best_of(RUNS, fleet)

    start = time.perf_counter()
    fleet_skew, fleet_drift = skew.results(), drift.results()
    report_seconds = time.perf_counter() - start

    pairs = 0
    for loop, fleet, arrays in ((loop_skew, fleet_skew, skew), (loop_drift, fleet_drift, drift)):
        for g, (a, b) in enumerate(zip(loop, fleet, strict=True)):
            assert [r.to_dict() for r in a] == [r.to_dict() for r in b], a[0].feature
            assert [r.anomaly for r in a] == arrays.anomaly[g].tolist()
            assert [r.distance for r in a] == [None if d != d else d for d in arrays.distance[g].tolist()]
            pairs += sum(r.distance is not None for r in a)
    speedup = loop_seconds / fleet_seconds
    print(
        f"{segments} segments x {len(FEATURES)} features, {rows:,} logged rows, skew + drift; "
        f"{pairs:,} distances and every verdict identical. Building the reports' FeatureResults from the "
        f"arrays: {report_seconds:.2f} s more ({loop_seconds / (fleet_seconds + report_seconds):.1f}x with them)."
    )
    print(
        f"BENCH fleet_monitoring: fleet pass {fleet_seconds:.2f} s vs per-endpoint loop {loop_seconds:.2f} s = "
        f"{speedup:.1f}x (target >= {TARGET:.0f}x)"
    )


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
