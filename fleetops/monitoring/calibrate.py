"""The calibrated policy: each segment x feature against its own no-drift range, the fleet against false discoveries.

Vertex's rule (the `fixed` policy) alerts when a distance is above one threshold
per feature. A small window's distance is large by chance alone, so a fleet of
many small segments alerts somewhere on every run. The `calibrated` policy asks,
for each segment x feature, how large the distance gets without drift at that
window's size:

- The statistic depends on bucket counts only, so resampling it is exact: a
  numeric window is counted on its baseline's buckets (values beyond the
  baseline's range in its first or last bucket) and compared with Jensen-Shannon
  (base 2); a categorical one is Vertex's L-infinity over the baseline's values
  (a value the baseline never saw is one more cell, empty in the baseline).
- The no-drift distribution: B multinomial resamples of the baseline's shares of
  the window's size, each one's distance to the baseline (seeded, cached per
  baseline and size). The baseline is a sample too, so the resample size is the
  two-sample effective size n*N/(n+N) (window n, baseline N rows): a large
  window against a small baseline is not judged as if the baseline were exact.
- p-value: the share of resampled distances at or above the observed one, with
  the +1 correction, (1 + #{d_b >= d}) / (B + 1). Beyond the largest resample
  the empirical value only says "< 1/(B+1)"; Benjamini-Hochberg over thousands
  of tests needs finer values than that, so there the tail of a gamma fitted to
  the resamples' mean and variance is used (never above 1/(B+1)).
- Across the fleet (every segment, feature, skew and drift of the run),
  Benjamini-Hochberg at `false_discovery_rate` decides which are alerts.
- Each finding carries its no-drift range: the alpha and 1 - alpha quantiles of
  the resampled distances, the upper one being the per-test threshold.

Findings the distance does not decide (a feature absent from the window, a type
change, a jump in missing values) alert under both policies.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from fleetops.monitoring.compare import FeatureResult
from fleetops.monitoring.distance import bucket_index

_CACHE: OrderedDict[tuple, np.ndarray] = OrderedDict()
_CACHED = 0
_CACHE_FLOATS = 16_000_000  # 128 MB of resampled distances (16,000 tests at 1,000 resamples), least recent out


@dataclass
class Test:
    """One segment x feature comparison to calibrate: the baseline's shares and the window's counts per cell."""

    result: FeatureResult
    expected: np.ndarray  # baseline counts per cell
    observed: np.ndarray  # window counts per cell (same cells)
    metric: str  # jensen_shannon | l_infinity


def numeric_cells(
    values: np.ndarray, groups: np.ndarray, n_groups: int, baselines: list[dict[str, Any] | None]
) -> list[np.ndarray | None]:
    """Each group's finite values counted on its baseline histogram's buckets (beyond the range: the end buckets)."""
    values, groups = np.asarray(values, dtype=float), np.asarray(groups, dtype=np.int64)
    finite = np.isfinite(values)
    out: list[np.ndarray | None] = [None] * n_groups
    order = np.argsort(groups[finite], kind="stable")
    x, g = values[finite][order], groups[finite][order]
    starts = np.searchsorted(g, np.arange(n_groups + 1))
    for gi in range(n_groups):
        hist = baselines[gi]
        if not hist or not hist.get("counts") or sum(hist["counts"]) <= 0:
            continue
        edges = np.asarray(hist["boundaries"], dtype=float)
        window = x[starts[gi] : starts[gi + 1]]
        if len(hist["counts"]) == 1:  # a constant baseline: its value, or anything else
            out[gi] = np.array([np.sum(window == edges[0]), np.sum(window != edges[0])], dtype=float)
            continue
        out[gi] = np.bincount(bucket_index(window, edges), minlength=len(hist["counts"])).astype(float)
    return out


def baseline_cells(hist: dict[str, Any]) -> np.ndarray:
    counts = np.asarray(hist["counts"], dtype=float)
    return np.array([counts.sum(), 0.0]) if len(counts) == 1 else counts


def categorical_cells(base: dict[str, float], current: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Baseline and window counts over the baseline's values, plus one cell for values it never saw."""
    names = list(base)
    expected = np.array([base[v] for v in names] + [0.0])
    seen = [current.get(v, 0.0) for v in names]
    observed = np.array(seen + [sum(current.values()) - sum(seen)])
    return expected, observed


def distance(metric: str, expected: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """JSD (base 2) or L-infinity between the baseline's shares and each row of `observed` (counts)."""
    p = expected / expected.sum()
    totals = observed.sum(axis=-1, keepdims=True)
    q = observed / np.where(totals > 0, totals, 1.0)
    if metric == "l_infinity":
        return np.abs(q - p).max(axis=-1)
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log2(p / m), 0.0) + np.where(q > 0, q * np.log2(q / m), 0.0)
    return np.minimum(1.0, 0.5 * terms.sum(axis=-1))


def null_distances(metric: str, expected: np.ndarray, size: int, resamples: int, seed: int) -> np.ndarray:
    """Distances of `resamples` multinomial resamples of the baseline, of `size` rows, to the baseline (cached)."""
    global _CACHED
    digest = hashlib.blake2b(expected.tobytes() + metric.encode(), digest_size=8).digest()
    key = (digest, size, resamples, seed)
    found = _CACHE.get(key)
    if found is not None:
        _CACHE.move_to_end(key)
        return found
    rng = np.random.default_rng([seed, size, int.from_bytes(digest, "little")])
    shares = expected / expected.sum()
    draws = rng.multinomial(size, shares, size=resamples).astype(float)
    found = np.sort(distance(metric, expected, draws))
    _CACHE[key] = found
    _CACHED += found.size
    while _CACHED > _CACHE_FLOATS and len(_CACHE) > 1:
        _CACHED -= _CACHE.popitem(last=False)[1].size
    return found


def p_value(observed: float, null: np.ndarray) -> float:
    """(1 + #{null >= observed}) / (B + 1); beyond every resample, a fitted gamma's tail (at most 1/(B+1))."""
    resamples = len(null)
    above = resamples - int(np.searchsorted(null, observed - 1e-12, side="left"))
    if above > 0:
        return (1 + above) / (resamples + 1)
    mean, var = float(null.mean()), float(null.var())
    if var <= 0 or mean <= 0:
        return 0.0  # the baseline cannot produce this distance at all (a new value of a constant feature)
    tail = float(scipy_stats.gamma.sf(observed, mean * mean / var, scale=var / mean))
    return min(tail, 1 / (resamples + 1))


def calibrate(
    tests: list[Test], alpha: float, false_discovery_rate: float, resamples: int, seed: int
) -> list[FeatureResult]:
    """Judge every test against its no-drift range; Benjamini-Hochberg across all of them decides the alerts."""
    pvalues = []
    for test in tests:
        result, expected, observed = test.result, test.expected, test.observed
        size, reference = int(observed.sum()), float(expected.sum())
        effective = max(1, round(size * reference / (size + reference)))
        null = null_distances(test.metric, expected, effective, resamples, seed)
        observed_distance = float(distance(test.metric, expected, observed[None, :])[0])
        result.distance = round(observed_distance, 10)
        result.metric = test.metric if test.metric == "l_infinity" else "jensen_shannon_on_baseline_buckets"
        low, high = np.quantile(null, [alpha, 1 - alpha])
        result.no_drift_range = [round(float(low), 6), round(float(high), 6)]
        result.threshold = round(float(high), 6)
        result.p_value = p_value(observed_distance, null)
        pvalues.append(result.p_value)
    if pvalues:
        adjusted = scipy_stats.false_discovery_control(np.asarray(pvalues), method="bh")
        for test, value in zip(tests, adjusted.tolist(), strict=True):
            test.result.anomaly = test.result.anomaly or value <= false_discovery_rate
    return [t.result for t in tests]


def calibration_tests(
    results: list[list[FeatureResult]],
    baselines: list[dict[str, Any]],
    currents: list[dict[str, Any]],
    frame: pd.DataFrame,
    groups: np.ndarray,
    numeric: list[str],
) -> list[Test]:
    """The distance tests among fleet_compare's findings, switched to the calibrated policy (not yet judged).

    `frame` holds the windows' rows (`groups`: the window of each row), whose numeric values are counted
    again on their baseline's buckets. A finding's other reasons to alert (absent, type change, missing
    values jumping) are kept; the distance's verdict is left to `calibrate`.
    """
    tests: list[Test] = []
    n_groups = len(results)
    columns = {}
    for name in numeric:
        if name in frame.columns:
            values = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
            hists = [(b["features"].get(name) or {}).get("histogram") for b in baselines]
            columns[name] = numeric_cells(values, groups, n_groups, hists)
    for g, row in enumerate(results):
        for result in row:
            result.policy = "calibrated"
            if result.distance is None:
                continue
            base, cur = baselines[g]["features"][result.feature], currents[g]["features"][result.feature]
            jumped = (result.current_missing_rate or 0) - (result.baseline_missing_rate or 0) > result.threshold
            result.anomaly = bool(cur.get("type_problem")) or jumped
            if result.kind == "numeric":
                observed = columns.get(result.feature, [None] * n_groups)[g]
                if observed is None or observed.sum() == 0:
                    continue
                tests.append(Test(result, baseline_cells(base["histogram"]), observed, "jensen_shannon"))
            else:
                expected, observed = categorical_cells(base.get("values", {}), cur.get("values", {}))
                if expected.sum() > 0 and observed.sum() > 0:
                    tests.append(Test(result, expected, observed, "l_infinity"))
    return tests


def reset_cache() -> None:
    global _CACHED
    _CACHE.clear()
    _CACHED = 0
