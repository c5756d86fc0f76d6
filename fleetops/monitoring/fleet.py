"""Skew and drift of every segment and feature of a fleet in one vectorised pass.

`fleet_distributions(frame, groups, ...)` is `distributions` of each group's rows
(the same dicts, value for value), computed once over the whole frame:
per-group finite min/max with one pandas groupby, each value's bucket with
np.histogram's own arithmetic (its equal-width edges from np.linspace, its
index and its one-ULP corrections) against its group's edges, counts with one
bincount over (group, bucket); categorical counts with one bincount over
(group, value code). `fleet_distances` is `jensen_shannon` of many histogram
pairs at once: the pairs are grouped by how many distinct edges their union
has, so every sum adds the same numbers in the same order as the per-pair
function, and the distances are identical, not just close.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from fleetops.monitoring.compare import TOP_VALUES, FeatureResult, _text_array, compare_feature
from fleetops.monitoring.distance import BUCKETS, l_infinity


def fleet_distributions(
    frame: pd.DataFrame,
    groups: np.ndarray,
    n_groups: int,
    numeric: list[str],
    categorical: list[str],
    absent: list[set[str]] | None = None,
) -> list[dict[str, Any]]:
    """`distributions(frame[groups == g], ...)` for every g in range(n_groups), in one pass.

    `absent[g]` names the columns group g's own rows did not have (they were
    filled in when the groups were put in one frame): reported as absent.
    """
    groups = np.asarray(groups, dtype=np.int64)
    rows = np.bincount(groups, minlength=n_groups)
    features: list[dict[str, Any]] = [{} for _ in range(n_groups)]
    for name in numeric:
        if name not in frame.columns:
            for g in range(n_groups):
                features[g][name] = {"type": "absent"}
            continue
        for g, stats in enumerate(_numeric(frame[name], groups, n_groups, rows)):
            features[g][name] = stats
    for name in categorical:
        if name not in frame.columns:
            for g in range(n_groups):
                features[g][name] = {"type": "absent"}
            continue
        for g, stats in enumerate(_categorical(frame[name], groups, n_groups, rows)):
            features[g][name] = stats
    if absent is not None:
        for g, names in enumerate(absent):
            for name in names:
                features[g][name] = {"type": "absent"}
    return [{"rows": int(rows[g]), "features": features[g]} for g in range(n_groups)]


def _numeric(column: pd.Series, groups: np.ndarray, n_groups: int, rows: np.ndarray) -> list[dict[str, Any]]:
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    missing_mask = column.isna().to_numpy()
    missing = np.bincount(groups[missing_mask], minlength=n_groups)
    not_numbers = ~missing_mask & np.isnan(values)
    finite = np.isfinite(values)
    kept = np.where(finite, values, np.nan)
    by_group = pd.Series(kept).groupby(groups)
    low = by_group.min().reindex(range(n_groups)).to_numpy(dtype="float64")
    high = by_group.max().reindex(range(n_groups)).to_numpy(dtype="float64")
    spread = np.isfinite(low) & (low < high)
    # np.histogram(bins=BUCKETS, range=(low, high)): edges from linspace, indices from the same arithmetic.
    edges = np.linspace(np.where(spread, low, 0.0), np.where(spread, high, 1.0), BUCKETS + 1, axis=1)
    denom = np.where(spread, high - low, 1.0)
    use = finite & spread[groups]
    g, x = groups[use], values[use]
    index = (((x - low[g]) / denom[g]) * BUCKETS).astype(np.intp)
    index[index == BUCKETS] -= 1
    flat = edges.ravel()
    base = g * (BUCKETS + 1)
    index[x < flat[base + index]] -= 1
    index[(x >= flat[base + index + 1]) & (index != BUCKETS - 1)] += 1
    counts = np.bincount(g * BUCKETS + index, minlength=n_groups * BUCKETS).reshape(n_groups, BUCKETS)
    finite_counts = np.bincount(groups[finite], minlength=n_groups)
    problems = np.bincount(groups[not_numbers], minlength=n_groups)
    first_problem: dict[int, Any] = {}
    if problems.any():
        positions = np.flatnonzero(not_numbers)
        for position in positions[::-1]:
            first_problem[int(groups[position])] = column.iloc[position]
    result = []
    counts_f, edges_l = counts.astype(float), edges.tolist()
    for gi in range(n_groups):
        stats: dict[str, Any] = {
            "type": "numeric",
            "count": int(rows[gi] - missing[gi]),
            "missing": int(missing[gi]),
        }
        if problems[gi]:
            stats["type_problem"] = f"{int(problems[gi])} non-numeric value(s) such as {first_problem[gi]!r:.40}"
        if finite_counts[gi] == 0:
            stats["histogram"] = {"boundaries": [], "counts": []}
        elif not spread[gi]:
            stats["histogram"] = {"boundaries": [float(low[gi]), float(high[gi])], "counts": [float(finite_counts[gi])]}
        else:
            stats["histogram"] = {"boundaries": edges_l[gi], "counts": counts_f[gi].tolist()}
        result.append(stats)
    return result


def _categorical(column: pd.Series, groups: np.ndarray, n_groups: int, rows: np.ndarray) -> list[dict[str, Any]]:
    array = _text_array(column)
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    encoded = pc.dictionary_encode(array)
    dictionary = encoded.dictionary.to_pylist()
    indices = encoded.indices
    valid = np.asarray(pc.is_valid(indices))
    codes = np.asarray(indices.fill_null(0)).astype(np.int64)
    missing = np.bincount(groups[~valid], minlength=n_groups)
    width = max(len(dictionary), 1)
    g, c = groups[valid], codes[valid]
    keys = g * width + c
    if n_groups * width <= 50_000_000:
        counts = np.bincount(keys, minlength=n_groups * width)
        first = np.full(n_groups * width, len(keys), dtype=np.int64)
        first[keys[::-1]] = np.arange(len(keys) - 1, -1, -1)  # the last write wins: each key's first row
        cells = np.flatnonzero(counts)
        cell_counts, cell_first = counts[cells], first[cells]
    else:
        cells, cell_first, cell_counts = np.unique(keys, return_index=True, return_counts=True)
    # distributions' order: by count, most first; ties in order of first appearance (value_counts' order).
    order = np.lexsort((cell_first, -cell_counts, cells // width))
    cells, cell_counts = cells[order], cell_counts[order]
    cell_groups = cells // width
    starts = np.searchsorted(cell_groups, np.arange(n_groups + 1))
    names, frequencies = cells % width, cell_counts.astype(float)
    result = []
    for gi in range(n_groups):
        lo, hi = starts[gi], min(starts[gi + 1], starts[gi] + TOP_VALUES)
        values = {dictionary[k]: f for k, f in zip(names[lo:hi].tolist(), frequencies[lo:hi].tolist(), strict=True)}
        result.append(
            {
                "type": "categorical",
                "count": int(rows[gi] - missing[gi]),
                "missing": int(missing[gi]),
                "values": values,
            }
        )
    return result


def fleet_distances(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[float | None]:
    """`jensen_shannon(p, q)` for every (p, q) histogram pair, vectorised, identical values."""
    out: list[float | None] = [None] * len(pairs)
    live = [
        i
        for i, (p, q) in enumerate(pairs)
        if p.get("counts") and sum(p["counts"]) > 0 and q.get("counts") and sum(q["counts"]) > 0
    ]
    if not live:
        return out
    width = max(max(len(pairs[i][0]["counts"]), len(pairs[i][1]["counts"])) for i in live)
    n = len(live)
    sides = []
    for side in (0, 1):
        low, high, count = np.zeros((n, width)), np.zeros((n, width)), np.zeros((n, width))
        for row, i in enumerate(live):
            hist = pairs[i][side]
            edges, counts = hist["boundaries"], hist["counts"]
            k = len(counts)
            low[row, :k], high[row, :k], count[row, :k] = edges[:-1], edges[1:], counts
        sides.append((low, high, count))
    valid_q = np.arange(width)[None, :] < np.array([len(pairs[i][1]["counts"]) for i in live])[:, None]
    valid_p = np.arange(width)[None, :] < np.array([len(pairs[i][0]["counts"]) for i in live])[:, None]
    (p_low, p_high, p_count), (q_low, q_high, q_count) = sides
    candidates = np.concatenate([p_low, p_high, q_low, q_high], axis=1)
    present = np.concatenate([valid_p, valid_p, valid_q, valid_q], axis=1)
    candidates = np.where(present, candidates, np.inf)
    candidates.sort(axis=1)
    distinct = np.isfinite(candidates)
    distinct[:, 1:] &= candidates[:, 1:] != candidates[:, :-1]
    n_edges = distinct.sum(axis=1)
    distances = np.empty(n)
    for size in np.unique(n_edges):
        rows = np.flatnonzero(n_edges == size)
        edges = candidates[rows][distinct[rows]].reshape(len(rows), size)
        p = _rebucket(p_low[rows], p_high[rows], p_count[rows], edges)
        q = _rebucket(q_low[rows], q_high[rows], q_count[rows], edges)
        p = p / p.sum(axis=1, keepdims=True)
        q = q / q.sum(axis=1, keepdims=True)
        m = (p + q) / 2
        with np.errstate(divide="ignore", invalid="ignore"):
            terms_p = np.where(p > 0, p * np.log2(p / m), 0.0)
            terms_q = np.where(q > 0, q * np.log2(q / m), 0.0)
        distances[rows] = np.minimum(1.0, 0.5 * terms_p.sum(axis=1) + 0.5 * terms_q.sum(axis=1))
    for row, i in enumerate(live):
        out[i] = float(distances[row])
    return out


def _rebucket(low: np.ndarray, high: np.ndarray, count: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """distance._rebucket for many histograms (rows) on their own union edges (rows of `edges`)."""
    low, high, count = low[:, :, None], high[:, :, None], count[:, :, None]
    seg_low, seg_high = edges[:, None, :-1], edges[:, None, 1:]
    width = high - low
    overlap = np.clip(np.minimum(high, seg_high) - np.maximum(low, seg_low), 0.0, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        spread = np.where(width > 0, count * overlap / np.where(width > 0, width, 1.0), 0.0).sum(axis=1)
    points = np.where((width == 0) & (low == edges[:, None, :]), count, 0.0).sum(axis=1)
    return np.concatenate([spread, points], axis=1)


def fleet_compare(
    baselines: list[dict[str, Any]],
    currents: list[dict[str, Any]],
    features: list[str],
    thresholds: dict[str, float] | None = None,
    default_threshold: float = 0.3,
) -> list[list[FeatureResult]]:
    """`compare(baselines[g], currents[g], ...)` for every g, with the numeric distances computed at once."""
    pairs, where = [], []
    for g, (base, cur) in enumerate(zip(baselines, currents, strict=True)):
        for name in features:
            b, c = base["features"].get(name), cur["features"].get(name)
            if b is not None and b.get("type") == "numeric" and c is not None and c.get("type") != "absent":
                pairs.append((b.get("histogram", {}), c.get("histogram", {})))
                where.append((g, name))
    distances = dict(zip(where, fleet_distances(pairs), strict=True))
    results = []
    for g, (base, cur) in enumerate(zip(baselines, currents, strict=True)):
        row = []
        for name in features:
            threshold = (thresholds or {}).get(name, default_threshold)
            b, c = base["features"].get(name), cur["features"].get(name)
            if (g, name) in distances:
                distance = distances[(g, name)]
            elif b is not None and c is not None and b.get("type") != "numeric" and c.get("type") != "absent":
                distance = l_infinity(b.get("values", {}), c.get("values", {}))
            else:
                distance = None
            row.append(compare_feature(name, b, c, threshold, cur.get("rows", 0), distance))
        results.append(row)
    return results
