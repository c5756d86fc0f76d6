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

from dataclasses import dataclass
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

    `absent[g]` names the columns group g's own rows did not have: reported as absent.
    """
    groups = np.asarray(groups, dtype=np.int64)
    numeric_columns = {n: _numeric_column(frame[n], groups) if n in frame.columns else None for n in numeric}
    text_columns = {n: _text_array(frame[n]) if n in frame.columns else None for n in categorical}
    return _assemble(groups, n_groups, numeric_columns, text_columns, absent)


def windows_frame(frames: list[pd.DataFrame], columns: list[str]) -> tuple[pd.DataFrame, np.ndarray, list[set[str]]]:
    """The windows' rows in one frame, each row's window, and the columns each window did not have."""
    absent = [{c for c in columns if c not in f.columns} for f in frames]
    groups = np.repeat(np.arange(len(frames), dtype=np.int64), [len(f) for f in frames])
    if not frames:
        return pd.DataFrame(columns=columns), groups, absent
    parts = [f.reindex(columns=columns) if a else f for f, a in zip(frames, absent, strict=True)]
    return pd.concat(parts, ignore_index=True), groups, absent


def windows_distributions(
    frames: list[pd.DataFrame], numeric: list[str], categorical: list[str]
) -> list[dict[str, Any]]:
    """`distributions` of each window (one endpoint's logged rows each), computed over all of them at once."""
    if not frames:
        return []
    frame, groups, absent = windows_frame(frames, [*numeric, *categorical])
    numeric_columns = {n: _numeric_column(frame[n], groups) for n in numeric}
    dtypes = [f.dtypes for f in frames]
    text_columns = {}
    for name in categorical:
        kinds = {d[name] for d, a in zip(dtypes, absent, strict=True) if name not in a}
        if len(kinds) <= 1:  # one dtype: the concatenated column converts as each window's would
            text_columns[name] = _text_array(frame[name])
        else:  # windows disagree (ints here, text there): convert each as `distributions` would, then join
            text_columns[name] = pa.concat_arrays(
                [
                    _chunks(
                        _text_array(f[name] if name in f.columns else pd.Series([None] * len(f), dtype=object))
                    ).cast(pa.string())
                    for f in frames
                ]
            )
    return _assemble(groups, len(frames), numeric_columns, text_columns, absent)


@dataclass
class _NumericColumn:
    values: np.ndarray  # float64, NaN where missing or not a number
    missing: np.ndarray  # bool: missing in the log (None, NaN)
    problems: dict[int, tuple[int, Any]]  # group -> (non-numeric values, the first one)


def _numeric_column(column: pd.Series, groups: np.ndarray | None, group: int = 0) -> _NumericColumn:
    """`distributions`' reading of a numeric column (`groups` None: the whole column is `group`)."""
    if column.dtype.kind in "fiub":
        values = column.to_numpy(dtype="float64")
        missing = np.isnan(values) if column.dtype.kind == "f" else np.zeros(len(values), bool)
        return _NumericColumn(values, missing, {})
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    missing = column.isna().to_numpy()
    not_numbers = ~missing & np.isnan(values)
    problems: dict[int, tuple[int, Any]] = {}
    if not_numbers.any():
        positions = np.flatnonzero(not_numbers)
        if groups is None:
            problems[group] = (len(positions), column.iloc[positions[0]])
        else:
            counts = np.bincount(groups[positions])
            for position in positions[::-1]:
                g = int(groups[position])
                problems[g] = (int(counts[g]), column.iloc[position])
    return _NumericColumn(values, missing, problems)


def _chunks(array: pa.Array | pa.ChunkedArray) -> pa.Array:
    return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array


def _assemble(
    groups: np.ndarray,
    n_groups: int,
    numeric: dict[str, _NumericColumn | None],
    categorical: dict[str, pa.Array | None],
    absent: list[set[str]] | None,
) -> list[dict[str, Any]]:
    rows = np.bincount(groups, minlength=n_groups)
    starts = None
    if len(groups) and np.all(groups[1:] >= groups[:-1]):  # windows one after the other: reduce by slices
        starts = np.searchsorted(groups, np.arange(n_groups))
    features: list[dict[str, Any]] = [{} for _ in range(n_groups)]
    for name, column in numeric.items():
        found = (
            _numeric(column, groups, n_groups, rows, starts) if column is not None else [{"type": "absent"}] * n_groups
        )
        for g, stats in enumerate(found):
            features[g][name] = stats
    for name, array in categorical.items():
        found = _categorical(array, groups, n_groups, rows) if array is not None else [{"type": "absent"}] * n_groups
        for g, stats in enumerate(found):
            features[g][name] = stats
    if absent is not None:
        for g, names in enumerate(absent):
            for name in names:
                features[g][name] = {"type": "absent"}
    return [{"rows": int(rows[g]), "features": features[g]} for g in range(n_groups)]


def _numeric(
    column: _NumericColumn, groups: np.ndarray, n_groups: int, rows: np.ndarray, starts: np.ndarray | None
) -> list[dict[str, Any]]:
    values = column.values
    finite = np.isfinite(values)
    if starts is not None:
        filled = rows > 0
        low, high = np.full(n_groups, np.nan), np.full(n_groups, np.nan)
        with np.errstate(invalid="ignore"):
            low[filled] = np.fmin.reduceat(values, starts[filled])  # NaN is skipped; an inf is not:
            high[filled] = np.fmax.reduceat(values, starts[filled])
            if np.isinf(low).any() or np.isinf(high).any():  # then again without the infinities
                kept = np.where(finite, values, np.nan)
                low[filled] = np.fmin.reduceat(kept, starts[filled])
                high[filled] = np.fmax.reduceat(kept, starts[filled])
        missing = _per_group(column.missing, starts, filled)
        finite_counts = _per_group(finite, starts, filled)
    else:
        kept = np.where(finite, values, np.nan)
        by_group = pd.Series(kept).groupby(groups)
        low = by_group.min().reindex(range(n_groups)).to_numpy(dtype="float64")
        high = by_group.max().reindex(range(n_groups)).to_numpy(dtype="float64")
        missing = np.bincount(groups[column.missing], minlength=n_groups)
        finite_counts = np.bincount(groups[finite], minlength=n_groups)
    spread = np.isfinite(low) & (low < high)
    # np.histogram(bins=BUCKETS, range=(low, high)) puts x in the bucket its edges (np.linspace) say:
    # edges[i] <= x < edges[i + 1], the last one closed. A scaled estimate finds it; the few values
    # within a hair of an edge are settled by comparing with that edge, as np.histogram does.
    edges = np.linspace(np.where(spread, low, 0.0), np.where(spread, high, 1.0), BUCKETS + 1, axis=1)
    scale = np.where(spread, BUCKETS / np.where(spread, high - low, 1.0), 0.0)
    use = finite & (np.repeat(spread, rows) if starts is not None else spread[groups])
    g, x = (groups, values) if use.all() else (groups[use], values[use])
    position = (x - low[g]) * scale[g]
    fraction, whole = np.modf(position)
    index = whole.astype(np.intp)
    near = (fraction < 1e-6) | (fraction > 1 - 1e-6)
    if near.any():
        rows_near = np.flatnonzero(near)
        xs, gs = x[rows_near], g[rows_near]
        fixed = np.minimum(index[rows_near], BUCKETS - 1)
        flat = edges.ravel()
        fixed[xs < flat[gs * (BUCKETS + 1) + fixed]] -= 1
        fixed[(xs >= flat[gs * (BUCKETS + 1) + fixed + 1]) & (fixed != BUCKETS - 1)] += 1
        index[rows_near] = fixed
    index += g * BUCKETS
    counts = np.bincount(index, minlength=n_groups * BUCKETS).reshape(n_groups, BUCKETS)
    result = []
    counts_f, edges_l = counts.astype(float).tolist(), edges.tolist()
    for gi in range(n_groups):
        stats: dict[str, Any] = {"type": "numeric", "count": int(rows[gi] - missing[gi]), "missing": int(missing[gi])}
        if gi in column.problems:
            count, example = column.problems[gi]
            stats["type_problem"] = f"{count} non-numeric value(s) such as {example!r:.40}"
        if finite_counts[gi] == 0:
            stats["histogram"] = {"boundaries": [], "counts": []}
        elif not spread[gi]:
            stats["histogram"] = {"boundaries": [float(low[gi]), float(high[gi])], "counts": [float(finite_counts[gi])]}
        else:
            stats["histogram"] = {"boundaries": edges_l[gi], "counts": counts_f[gi]}
        result.append(stats)
    return result


def _per_group(mask: np.ndarray, starts: np.ndarray, filled: np.ndarray) -> np.ndarray:
    """How many rows of each group (rows in group order, groups starting at `starts`) are set in `mask`."""
    counts = np.zeros(len(starts), dtype=np.int64)
    if len(mask):
        counts[filled] = np.add.reduceat(mask.view(np.uint8), starts[filled], dtype=np.int64)
    return counts


def _categorical(array: pa.Array, groups: np.ndarray, n_groups: int, rows: np.ndarray) -> list[dict[str, Any]]:
    array = _chunks(array)
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
    p_low, p_high, p_count, p_valid = _bucket_arrays([pairs[i][0] for i in live])
    q_low, q_high, q_count, q_valid = _bucket_arrays([pairs[i][1] for i in live])
    width = max(p_low.shape[1], q_low.shape[1])
    p_low, p_high, p_count, p_valid = (_pad(a, width) for a in (p_low, p_high, p_count, p_valid))
    q_low, q_high, q_count, q_valid = (_pad(a, width) for a in (q_low, q_high, q_count, q_valid))
    n = len(live)
    candidates = np.concatenate([p_low, p_high, q_low, q_high], axis=1)
    present = np.concatenate([p_valid, p_valid, q_valid, q_valid], axis=1)
    candidates = np.where(present, candidates, np.inf)
    candidates.sort(axis=1)
    distinct = np.isfinite(candidates)
    distinct[:, 1:] &= candidates[:, 1:] != candidates[:, :-1]
    n_edges = distinct.sum(axis=1)
    simple = _simple(p_low, p_high, p_valid) & _simple(q_low, q_high, q_valid)
    distances = np.empty(n)
    for size in np.unique(n_edges):
        rows = np.flatnonzero(n_edges == size)
        edges = candidates[rows][distinct[rows]].reshape(len(rows), size)
        sides = []
        for low, high, count, valid in ((p_low, p_high, p_count, p_valid), (q_low, q_high, q_count, q_valid)):
            mass = np.empty((len(rows), 2 * size - 1))
            fast = simple[rows]
            if fast.any():
                mass[fast] = _rebucket_simple(
                    low[rows][fast], high[rows][fast], count[rows][fast], valid[rows][fast], edges[fast]
                )
            if not fast.all():
                mass[~fast] = _rebucket(low[rows][~fast], high[rows][~fast], count[rows][~fast], edges[~fast])
            sides.append(mass)
        p, q = sides
        p = p / p.sum(axis=1, keepdims=True)
        q = q / q.sum(axis=1, keepdims=True)
        m = (p + q) / 2
        with np.errstate(divide="ignore", invalid="ignore"):
            terms_p = np.where(p > 0, p * np.log2(p / m), 0.0)
            terms_q = np.where(q > 0, q * np.log2(q / m), 0.0)
        distances[rows] = np.minimum(1.0, 0.5 * terms_p.sum(axis=1) + 0.5 * terms_q.sum(axis=1))
    for row, value in zip(live, distances.tolist(), strict=True):
        out[row] = value
    return out


def _bucket_arrays(hists: list[dict[str, Any]]) -> tuple[np.ndarray, ...]:
    """(rows, k) arrays of bucket low, high, count and validity (histograms of fewer buckets are padded)."""
    sizes, edges, counts = [], [], []
    for hist in hists:
        sizes.append(len(hist["counts"]))
        edges.extend(hist["boundaries"])
        counts.extend(hist["counts"])
    k = np.asarray(sizes)
    width = int(k.max())
    valid = np.arange(width)[None, :] < k[:, None]
    edge_start = np.concatenate([[0], np.cumsum(k + 1)[:-1]])
    position = np.where(valid, edge_start[:, None] + np.arange(width)[None, :], 0)
    flat_edges = np.asarray(edges, dtype=float)
    low = np.where(valid, flat_edges[position], 0.0)
    high = np.where(valid, flat_edges[np.where(valid, position + 1, 0)], 0.0)
    count = np.zeros((len(hists), width))
    count[valid] = np.asarray(counts, dtype=float)
    return low, high, count, valid


def _pad(array: np.ndarray, width: int) -> np.ndarray:
    if array.shape[1] == width:
        return array
    return np.pad(array, ((0, 0), (0, width - array.shape[1])))


def _simple(low: np.ndarray, high: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Rows whose buckets all have a width and follow one another without overlapping (every equal-width one)."""
    wide = np.where(valid, high > low, True).all(axis=1)
    ordered = np.where(valid[:, 1:], high[:, :-1] <= low[:, 1:], True).all(axis=1)
    return wide & ordered


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


def _rebucket_simple(
    low: np.ndarray, high: np.ndarray, count: np.ndarray, valid: np.ndarray, edges: np.ndarray
) -> np.ndarray:
    """`_rebucket` when each union segment lies in at most one bucket: that bucket's term, the others add 0."""
    seg_low, seg_high = edges[:, :-1], edges[:, 1:]
    lows = np.where(valid, low, np.inf)
    bucket = (lows[:, None, :] <= seg_low[:, :, None]).sum(axis=2) - 1
    at = np.maximum(bucket, 0)
    b_low = np.take_along_axis(low, at, axis=1)
    b_high = np.take_along_axis(high, at, axis=1)
    b_count = np.take_along_axis(count, at, axis=1)
    inside = (bucket >= 0) & (seg_high <= b_high)
    with np.errstate(divide="ignore", invalid="ignore"):
        spread = np.where(inside, b_count * (seg_high - seg_low) / (b_high - b_low), 0.0)
    return np.concatenate([spread, np.zeros(edges.shape)], axis=1)


def fleet_compare(
    baselines: list[dict[str, Any]],
    currents: list[dict[str, Any]],
    features: list[str],
    thresholds: dict[str, float] | None = None,
    default_threshold: float = 0.3,
) -> list[list[FeatureResult]]:
    """`compare(baselines[g], currents[g], ...)` for every g, with the numeric distances computed at once."""
    limits = [(name, (thresholds or {}).get(name, default_threshold)) for name in features]
    found, histograms, numeric_at = [], [], []
    for base, cur in zip(baselines, currents, strict=True):
        base_features, cur_features = base["features"], cur["features"]
        for name, _ in limits:
            b, c = base_features.get(name), cur_features.get(name)
            live = b is not None and c is not None and c.get("type") != "absent"
            if live and b.get("type") == "numeric":
                numeric_at.append(len(found))
                histograms.append((b.get("histogram", {}), c.get("histogram", {})))
                found.append((b, c, None))
            elif live:
                found.append((b, c, l_infinity(b.get("values", {}), c.get("values", {}))))
            else:
                found.append((b, c, None))
    distances = [d for _, _, d in found]
    for at, distance in zip(numeric_at, fleet_distances(histograms), strict=True):
        distances[at] = distance
    results, at = [], 0
    for cur in currents:
        rows, row = cur.get("rows", 0), []
        for name, threshold in limits:
            b, c, _ = found[at]
            row.append(compare_feature(name, b, c, threshold, rows, distances[at]))
            at += 1
        results.append(row)
    return results
