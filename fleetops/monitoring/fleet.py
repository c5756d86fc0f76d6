"""Skew and drift of every segment and feature of a fleet in one vectorised pass, kept as arrays.

`fleet_statistics(frame, groups, ...)` holds `distributions` of each group's rows
as arrays (`FleetStatistics`; `.to_dicts()` gives the same dicts, value for
value, and `fleet_distributions` is that): per-group finite min/max with one
reduction, each value's bucket as `histogram` places it (TFDV's buckets on the
same np.linspace edges) against its group's edges, counts with one bincount
over (group, bucket);
categorical counts with one bincount over (group, value code).

`fleet_findings(baselines, currents, ...)` is `compare` of every group at once,
as arrays too (`FleetFindings`: each segment x feature's distance and verdict);
`.results()` builds the `FeatureResult`s the reports show, through the same
`compare_feature` the per-endpoint job runs. Jensen-Shannon of many histogram
pairs is computed at once: the pairs are grouped by how many distinct edges their
union has, so every sum adds the same numbers in the same order as the per-pair
function; L-infinity divides and subtracts the same numbers as the per-pair
function. The distances are identical, not just close.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from fleetops.monitoring.compare import DEFAULT_THRESHOLD, TOP_VALUES, FeatureResult, _text_array, compare_feature
from fleetops.monitoring.distance import BUCKETS

# A feature's kind in one group: not in the statistics at all, absent from the window, numeric, categorical.
NOT_THERE, ABSENT, NUMERIC, CATEGORICAL = 0, 1, 2, 3


@dataclass
class FeatureArrays:
    """One feature of every group: the arrays behind `distributions`' dicts."""

    kind: np.ndarray  # (G,) int8, one of NOT_THERE, ABSENT, NUMERIC, CATEGORICAL
    count: np.ndarray  # (G,) values present
    missing: np.ndarray  # (G,) values missing
    problems: dict[int, str] = field(default_factory=dict)  # group -> its type problem (non-numbers)
    # Numeric: each group's buckets, padded to the widest (buckets[g] = 0: no finite value; a point has low == high).
    low: np.ndarray | None = None  # (G, K)
    high: np.ndarray | None = None  # (G, K)
    weight: np.ndarray | None = None  # (G, K) values per bucket
    buckets: np.ndarray | None = None  # (G,)
    # Categorical: each group's top values as cells (group, value code, count), grouped, in distributions' order.
    dictionary: list[Any] = field(default_factory=list)
    cell_group: np.ndarray | None = None
    cell_value: np.ndarray | None = None
    cell_count: np.ndarray | None = None

    @property
    def missing_rate(self) -> np.ndarray:
        """`compare`'s missing rate: missing / (count + missing), 0 without values."""
        total = self.count + self.missing
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(total > 0, self.missing / np.where(total > 0, total, 1), 0.0)

    def as_dict(self, g: int) -> dict[str, Any] | None:
        """Group g's statistics of this feature, as `distributions` writes them."""
        kind = int(self.kind[g])
        if kind == NOT_THERE:
            return None
        if kind == ABSENT:
            return {"type": "absent"}
        stats: dict[str, Any] = {
            "type": "numeric" if kind == NUMERIC else "categorical",
            "count": int(self.count[g]),
            "missing": int(self.missing[g]),
        }
        if kind == NUMERIC:
            if g in self.problems:
                stats["type_problem"] = self.problems[g]
            n = int(self.buckets[g])
            edges = [*self.low[g, :n].tolist(), *self.high[g, n - 1 : n].tolist()]
            stats["histogram"] = {"boundaries": edges, "counts": self.weight[g, :n].tolist()}
        else:
            lo, hi = np.searchsorted(self.cell_group, [g, g + 1])
            values, counts = self.cell_value[lo:hi].tolist(), self.cell_count[lo:hi].tolist()
            stats["values"] = {self.dictionary[v]: c for v, c in zip(values, counts, strict=True)}
        return stats


@dataclass
class FleetStatistics:
    """`distributions` of many groups (windows, or training sets), feature by feature as arrays."""

    rows: np.ndarray  # (G,)
    features: dict[str, FeatureArrays]
    _dicts: list[dict[str, Any]] | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def to_dicts(self) -> list[dict[str, Any]]:
        """Each group's `distributions` dict (the ones it was made from, when it was made from dicts)."""
        if self._dicts is None:
            found: list[dict[str, Any]] = [{} for _ in range(len(self))]
            for name, arrays in self.features.items():
                for g, stats in enumerate(found):
                    value = arrays.as_dict(g)
                    if value is not None:
                        stats[name] = value
            self._dicts = [{"rows": int(r), "features": f} for r, f in zip(self.rows.tolist(), found, strict=True)]
        return self._dicts

    @classmethod
    def from_dicts(cls, stats: list[dict[str, Any]], features: list[str]) -> FleetStatistics:
        """The arrays of `distributions` dicts (or training statistics, which have the same fields)."""
        rows = np.asarray([s.get("rows", 0) for s in stats], dtype=np.int64)
        arrays = {name: _from_dicts([s["features"].get(name) for s in stats]) for name in features}
        return cls(rows, arrays, list(stats))


_KINDS = {"numeric": NUMERIC, "absent": ABSENT}


def _from_dicts(found: list[dict[str, Any] | None]) -> FeatureArrays:
    """One feature's arrays from each group's dict (None: not there); any other type counts as categorical."""
    kind = np.asarray([NOT_THERE if d is None else _KINDS.get(d.get("type"), CATEGORICAL) for d in found], np.int8)
    there = [d or {} for d in found]
    count = np.asarray([d.get("count", 0) for d in there], dtype=np.int64)
    missing = np.asarray([d.get("missing", 0) for d in there], dtype=np.int64)
    problems = {g: d["type_problem"] for g, d in enumerate(there) if d.get("type_problem")}
    numeric = (kind == NUMERIC).tolist()
    hists = [d.get("histogram") or {} if is_numeric else {} for d, is_numeric in zip(there, numeric, strict=True)]
    low, high, weight, buckets = _bucket_arrays(hists)
    codes: dict[Any, int] = {}
    categorical = np.flatnonzero(kind == CATEGORICAL)
    values = [there[g].get("values") or {} for g in categorical.tolist()]
    cell_group = np.repeat(categorical.astype(np.int64), [len(counted) for counted in values])
    cell_value = [codes.setdefault(v, len(codes)) for counted in values for v in counted]
    cell_count = [c for counted in values for c in counted.values()]
    return FeatureArrays(
        kind,
        count,
        missing,
        problems,
        low,
        high,
        weight,
        buckets,
        list(codes),
        cell_group,
        np.asarray(cell_value, dtype=np.int64),
        np.asarray(cell_count, dtype=float),
    )


def _bucket_arrays(hists: list[dict[str, Any]]) -> tuple[np.ndarray, ...]:
    """(groups, k) arrays of bucket low, high and count, and the buckets of each (histograms padded)."""
    counted = [h.get("counts") or [] for h in hists]
    k = np.asarray([len(c) for c in counted], dtype=np.int64)
    if len(k) and k[0] > 0 and (k == k[0]).all():  # every histogram has the same buckets (the usual case)
        edges_2d = np.asarray([h["boundaries"] for h in hists], dtype=float)
        return edges_2d[:, :-1].copy(), edges_2d[:, 1:].copy(), np.asarray(counted, dtype=float), k
    edges = [e for h, c in zip(hists, counted, strict=True) if c for e in h["boundaries"]]
    width = max(int(k.max()) if len(k) else 0, 1)
    valid = np.arange(width)[None, :] < k[:, None]
    edge_start = np.concatenate([[0], np.cumsum(np.where(k > 0, k + 1, 0))[:-1]]).astype(np.int64)
    position = np.where(valid, edge_start[:, None] + np.arange(width)[None, :], 0)
    flat_edges = np.asarray(edges, dtype=float) if edges else np.zeros(1)
    low = np.where(valid, flat_edges[position], 0.0)
    high = np.where(valid, flat_edges[np.where(valid, position + 1, 0)], 0.0)
    weight = np.zeros((len(hists), width))
    weight[valid] = np.asarray([x for c in counted for x in c], dtype=float)
    return low, high, weight, k


def fleet_statistics(
    frame: pd.DataFrame,
    groups: np.ndarray,
    n_groups: int,
    numeric: list[str],
    categorical: list[str],
    absent: list[set[str]] | None = None,
) -> FleetStatistics:
    """`distributions(frame[groups == g], ...)` for every g in range(n_groups), in one pass, as arrays.

    `absent[g]` names the columns group g's own rows did not have: reported as absent.
    """
    groups = np.asarray(groups, dtype=np.int64)
    numeric_columns = {n: _numeric_column(frame[n], groups) if n in frame.columns else None for n in numeric}
    text_columns = {n: _text_array(frame[n]) if n in frame.columns else None for n in categorical}
    return _assemble(groups, n_groups, numeric_columns, text_columns, absent)


def fleet_distributions(
    frame: pd.DataFrame,
    groups: np.ndarray,
    n_groups: int,
    numeric: list[str],
    categorical: list[str],
    absent: list[set[str]] | None = None,
) -> list[dict[str, Any]]:
    """`distributions(frame[groups == g], ...)` for every g in range(n_groups): `fleet_statistics`' dicts."""
    return fleet_statistics(frame, groups, n_groups, numeric, categorical, absent).to_dicts()


def windows_frame(frames: list[pd.DataFrame], columns: list[str]) -> tuple[pd.DataFrame, np.ndarray, list[set[str]]]:
    """The windows' rows in one frame, each row's window, and the columns each window did not have."""
    absent = [{c for c in columns if c not in f.columns} for f in frames]
    groups = np.repeat(np.arange(len(frames), dtype=np.int64), [len(f) for f in frames])
    if not frames:
        return pd.DataFrame(columns=columns), groups, absent
    parts = [f.reindex(columns=columns) if a else f for f, a in zip(frames, absent, strict=True)]
    return pd.concat(parts, ignore_index=True), groups, absent


def windows_statistics(frames: list[pd.DataFrame], numeric: list[str], categorical: list[str]) -> FleetStatistics:
    """`distributions` of each window (one endpoint's logged rows each), computed over all of them at once."""
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


def windows_distributions(
    frames: list[pd.DataFrame], numeric: list[str], categorical: list[str]
) -> list[dict[str, Any]]:
    """`distributions` of each window: `windows_statistics`' dicts."""
    return windows_statistics(frames, numeric, categorical).to_dicts() if frames else []


@dataclass
class _NumericColumn:
    values: np.ndarray  # float64, NaN where missing or not a number
    missing: np.ndarray | None  # bool: missing in the log (None, NaN); None: the NaNs (a float column)
    problems: dict[int, tuple[int, Any]]  # group -> (non-numeric values, the first one)


def _numeric_column(column: pd.Series, groups: np.ndarray | None, group: int = 0) -> _NumericColumn:
    """`distributions`' reading of a numeric column (`groups` None: the whole column is `group`)."""
    if column.dtype.kind in "fiub":
        values = column.to_numpy(dtype="float64")
        return _NumericColumn(values, None if column.dtype.kind == "f" else np.zeros(len(values), bool), {})
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
) -> FleetStatistics:
    rows = np.bincount(groups, minlength=n_groups)
    starts = None
    if len(groups) and np.all(groups[1:] >= groups[:-1]):  # windows one after the other: reduce by slices
        starts = np.searchsorted(groups, np.arange(n_groups))
    offsets = groups * BUCKETS
    jobs: dict[str, Callable[[], FeatureArrays] | None] = {}
    for name, column in numeric.items():
        jobs[name] = partial(_numeric, column, groups, n_groups, rows, starts, offsets) if column is not None else None
    for name, array in categorical.items():
        jobs[name] = partial(_categorical, array, groups, n_groups, rows) if array is not None else None
    # Column by column on every core: numpy and Arrow let go of the GIL in their loops over the rows.
    with ThreadPoolExecutor(max(1, min(len(jobs), os.cpu_count() or 1, 8))) as pool:
        running = {name: pool.submit(job) for name, job in jobs.items() if job is not None}
        features = {name: running[name].result() if name in running else _uniform(n_groups, ABSENT) for name in jobs}
    for g, names in enumerate(absent or []):
        for name in names:
            features[name].kind[g] = ABSENT
    return FleetStatistics(rows, features)


def _uniform(n_groups: int, kind: int) -> FeatureArrays:
    """A feature with no values in any group: absent from every window, or not in the statistics at all."""
    zeros = np.zeros(n_groups, dtype=np.int64)
    return FeatureArrays(np.full(n_groups, kind, dtype=np.int8), zeros, zeros)


def _numeric(
    column: _NumericColumn,
    groups: np.ndarray,
    n_groups: int,
    rows: np.ndarray,
    starts: np.ndarray | None,
    offsets: np.ndarray,
) -> FeatureArrays:
    """One numeric column's statistics per group; `offsets` is each row's first bin (group * BUCKETS)."""
    values = column.values
    finite = np.isfinite(values)
    if starts is not None:
        filled = rows > 0
        low, high = np.full(n_groups, np.nan), np.full(n_groups, np.nan)
        with np.errstate(invalid="ignore"):
            low[filled] = np.fmin.reduceat(values, starts[filled])  # NaN is skipped; an inf is not:
            high[filled] = np.fmax.reduceat(values, starts[filled])
            infinite = bool(np.isinf(low).any() or np.isinf(high).any())
            if infinite:  # then again without the infinities
                kept = np.where(finite, values, np.nan)
                low[filled] = np.fmin.reduceat(kept, starts[filled])
                high[filled] = np.fmax.reduceat(kept, starts[filled])
        finite_counts = _per_group(finite, starts, filled)
        if column.missing is not None:
            missing = _per_group(column.missing, starts, filled)
        elif infinite:
            missing = _per_group(np.isnan(values), starts, filled)
        else:  # a float column without infinities: what is not finite is NaN
            missing = rows - finite_counts
    else:
        kept = np.where(finite, values, np.nan)
        by_group = pd.Series(kept).groupby(groups)
        low = by_group.min().reindex(range(n_groups)).to_numpy(dtype="float64")
        high = by_group.max().reindex(range(n_groups)).to_numpy(dtype="float64")
        absent = column.missing if column.missing is not None else np.isnan(values)
        missing = np.bincount(groups[absent], minlength=n_groups)
        finite_counts = np.bincount(groups[finite], minlength=n_groups)
    spread = np.isfinite(low) & (low < high)
    # `histogram`'s buckets (TFDV's: [b0, b1], (b1, b2], ...) on its np.linspace edges: a scaled estimate
    # finds each value's bucket; the few values within a hair of an edge are settled against that edge.
    edges = np.linspace(np.where(spread, low, 0.0), np.where(spread, high, 1.0), BUCKETS + 1, axis=1)
    scale = np.where(spread, BUCKETS / np.where(spread, high - low, 1.0), 0.0)

    def per_row(of_group: np.ndarray) -> np.ndarray:
        """Each row's value of its group: repeated when the rows come group after group, else gathered."""
        return np.repeat(of_group, rows) if starts is not None else of_group[groups]

    use = finite & per_row(spread)
    with np.errstate(invalid="ignore"):
        position = values - per_row(np.where(spread, low, 0.0))
        position *= per_row(scale)
    np.copyto(position, 0.0, where=~use)  # rows not counted (no number, a group without spread): dropped below
    index = position.astype(np.intp)
    fraction = position - index
    near = (fraction < 1e-6) | (fraction > 1 - 1e-6)
    near &= use
    if near.any():
        rows_near = np.flatnonzero(near)
        xs, gs = values[rows_near], groups[rows_near]
        fixed = np.minimum(index[rows_near], BUCKETS - 1)
        flat = edges.ravel()
        fixed[(xs <= flat[gs * (BUCKETS + 1) + fixed]) & (fixed > 0)] -= 1  # on or below its lower edge
        fixed[(xs > flat[gs * (BUCKETS + 1) + fixed + 1]) & (fixed < BUCKETS - 1)] += 1  # above its upper edge
        index[rows_near] = fixed
    index += offsets
    np.copyto(index, n_groups * BUCKETS, where=~use)  # one more bin, for the rows not counted
    weight = np.bincount(index, minlength=n_groups * BUCKETS + 1)[:-1].reshape(n_groups, BUCKETS).astype(float)
    bucket_low, bucket_high = edges[:, :-1].copy(), edges[:, 1:].copy()
    point = ~spread & (finite_counts > 0)  # one value (constant column): one point bucket
    bucket_low[point, 0] = bucket_high[point, 0] = low[point]
    weight[point, 0] = finite_counts[point]
    buckets = np.where(spread, BUCKETS, np.where(point, 1, 0))
    problems = {
        group: f"{count} non-numeric value(s) such as {example!r:.40}"
        for group, (count, example) in column.problems.items()
    }
    kind = np.full(n_groups, NUMERIC, dtype=np.int8)
    return FeatureArrays(kind, rows - missing, missing, problems, bucket_low, bucket_high, weight, buckets)


def _per_group(mask: np.ndarray, starts: np.ndarray, filled: np.ndarray) -> np.ndarray:
    """How many rows of each group (rows in group order, groups starting at `starts`) are set in `mask`."""
    counts = np.zeros(len(starts), dtype=np.int64)
    if len(mask):
        counts[filled] = np.add.reduceat(mask.view(np.uint8), starts[filled], dtype=np.int64)
    return counts


def _categorical(array: pa.Array, groups: np.ndarray, n_groups: int, rows: np.ndarray) -> FeatureArrays:
    array = _chunks(array)
    encoded = pc.dictionary_encode(array)
    dictionary = encoded.dictionary.to_pylist()
    width = len(dictionary) + 1  # the values' codes, and one more for a missing value
    codes = np.asarray(encoded.indices.fill_null(width - 1))
    keys = groups * width + codes
    if n_groups * width <= 50_000_000:
        counts = np.bincount(keys, minlength=n_groups * width)
        missing = counts[width - 1 :: width].copy()
        counts[width - 1 :: width] = 0
        first = np.full(n_groups * width, len(keys), dtype=np.int64)
        first[keys[::-1]] = np.arange(len(keys) - 1, -1, -1)  # the last write wins: each key's first row
        cells = np.flatnonzero(counts)
        cell_counts, cell_first = counts[cells], first[cells]
    else:
        cells, cell_first, cell_counts = np.unique(keys, return_index=True, return_counts=True)
        nulls = cells % width == width - 1
        missing = np.zeros(n_groups, dtype=np.int64)
        missing[cells[nulls] // width] = cell_counts[nulls]
        cells, cell_first, cell_counts = cells[~nulls], cell_first[~nulls], cell_counts[~nulls]
    # distributions' order: by count, most first; ties in order of first appearance (value_counts' order).
    order = np.lexsort((cell_first, -cell_counts, cells // width))
    cells, cell_counts = cells[order], cell_counts[order]
    cell_groups = cells // width
    rank = np.arange(len(cells)) - np.searchsorted(cell_groups, cell_groups)  # place within its group
    top = rank < TOP_VALUES
    kind = np.full(n_groups, CATEGORICAL, dtype=np.int8)
    return FeatureArrays(
        kind,
        rows - missing,
        missing,
        dictionary=dictionary,
        cell_group=cell_groups[top],
        cell_value=(cells % width)[top],
        cell_count=cell_counts[top].astype(float),
    )


@dataclass
class FleetFindings:
    """`compare` of every group: each segment x feature's distance and verdict as (groups, features) arrays."""

    features: list[str]
    thresholds: list[float]
    distance: np.ndarray  # (G, F), as compare reports it (rounded to 10 places); NaN where there is none
    anomaly: np.ndarray  # (G, F) bool
    baselines: FleetStatistics
    currents: FleetStatistics

    def results(self) -> list[list[FeatureResult]]:
        """The findings as the reports show them: `compare_feature`'s, with the distances computed here.

        `compare_feature` rounds the distance it is given to 10 places again, which leaves it as it is.
        """
        bases, currents = self.baselines.to_dicts(), self.currents.to_dicts()
        distances = self.distance.tolist()
        found = []
        for g, (base, cur) in enumerate(zip(bases, currents, strict=True)):
            b, c, rows = base["features"], cur["features"], cur.get("rows", 0)
            found.append(
                [
                    compare_feature(name, b.get(name), c.get(name), limit, rows, None if d != d else d)
                    for name, limit, d in zip(self.features, self.thresholds, distances[g], strict=True)
                ]
            )
        return found


def fleet_findings(
    baselines: FleetStatistics | list[dict[str, Any]],
    currents: FleetStatistics | list[dict[str, Any]],
    features: list[str],
    thresholds: dict[str, float] | None = None,
    default_threshold: float = DEFAULT_THRESHOLD,
) -> FleetFindings:
    """`compare(baselines[g], currents[g], ...)` for every g, as arrays: the same distances and verdicts."""
    if not isinstance(baselines, FleetStatistics):
        baselines = FleetStatistics.from_dicts(baselines, features)
    if not isinstance(currents, FleetStatistics):
        currents = FleetStatistics.from_dicts(currents, features)
    limits = [(thresholds or {}).get(name, default_threshold) for name in features]
    n = len(currents)
    distance = np.full((n, len(features)), np.nan)
    anomaly = np.zeros((n, len(features)), dtype=bool)
    windowed = currents.rows > 0
    for f, (name, limit) in enumerate(zip(features, limits, strict=True)):
        base = baselines.features.get(name) or _uniform(n, NOT_THERE)
        cur = currents.features.get(name) or _uniform(n, NOT_THERE)
        # Rounded as compare rounds (Python's round: numpy's differs in the last place).
        distance[:, f] = [round(d, 10) if d == d else d for d in _distances(base, cur, windowed).tolist()]
        gone = np.isin(cur.kind, (NOT_THERE, ABSENT))
        problem = np.zeros(n, dtype=bool)
        problem[list(cur.problems)] = True
        with np.errstate(invalid="ignore"):
            above = distance[:, f] > limit
        jumped = cur.missing_rate - base.missing_rate > limit
        anomaly[:, f] = (base.kind != NOT_THERE) & windowed & (gone | problem | above | jumped)
    return FleetFindings(list(features), limits, distance, anomaly, baselines, currents)


def fleet_compare(
    baselines: FleetStatistics | list[dict[str, Any]],
    currents: FleetStatistics | list[dict[str, Any]],
    features: list[str],
    thresholds: dict[str, float] | None = None,
    default_threshold: float = DEFAULT_THRESHOLD,
) -> list[list[FeatureResult]]:
    """`compare(baselines[g], currents[g], ...)` for every g: `fleet_findings`' results."""
    return fleet_findings(baselines, currents, features, thresholds, default_threshold).results()


def _distances(base: FeatureArrays, cur: FeatureArrays, windowed: np.ndarray) -> np.ndarray:
    """Each group's distance (NaN where `compare` has none): JSD of numeric pairs, L-infinity of categorical ones."""
    out = np.full(len(windowed), np.nan)
    numeric = windowed & (base.kind == NUMERIC) & (cur.kind == NUMERIC)
    if numeric.any():
        at = np.flatnonzero(numeric)
        out[at] = _jensen_shannon(
            (base.low[at], base.high[at], base.weight[at], base.buckets[at]),
            (cur.low[at], cur.high[at], cur.weight[at], cur.buckets[at]),
        )
    categorical = windowed & (base.kind == CATEGORICAL) & (cur.kind == CATEGORICAL)
    if categorical.any():
        out[categorical] = _l_infinity(base, cur, categorical)[categorical]
    return out


def _l_infinity(base: FeatureArrays, cur: FeatureArrays, wanted: np.ndarray) -> np.ndarray:
    """`l_infinity` of each group's value counts: max |p - q| over the union of their values, NaN when a side has none.

    Each value's share is its count over its group's total (both exact sums of whole numbers), and the
    difference of a value on both sides is p + (-q): the same division and subtraction as the per-pair function.
    """
    n = len(wanted)
    out = np.full(n, np.nan)
    b_total = np.bincount(base.cell_group, weights=base.cell_count, minlength=n)
    c_total = np.bincount(cur.cell_group, weights=cur.cell_count, minlength=n)
    live = wanted & (b_total > 0) & (c_total > 0)
    if not live.any():
        return out
    union = {value: code for code, value in enumerate(base.dictionary)}
    to_union = np.asarray([union.setdefault(v, len(union)) for v in cur.dictionary] or [0], dtype=np.int64)
    width = max(len(union), 1)
    b_keep, c_keep = live[base.cell_group], live[cur.cell_group]
    b_groups, c_groups = base.cell_group[b_keep], cur.cell_group[c_keep]
    keys = np.concatenate(
        [b_groups * width + base.cell_value[b_keep], c_groups * width + to_union[cur.cell_value[c_keep]]]
    )
    shares = np.concatenate(
        [base.cell_count[b_keep] / b_total[b_groups], -(cur.cell_count[c_keep] / c_total[c_groups])]
    )
    cells, inverse = np.unique(keys, return_inverse=True)
    gaps = np.abs(np.bincount(inverse, weights=shares, minlength=len(cells)))
    cell_groups = cells // width
    starts = np.flatnonzero(np.r_[True, cell_groups[1:] != cell_groups[:-1]])
    out[cell_groups[starts]] = np.maximum(np.maximum.reduceat(gaps, starts), 0.0)
    return out


def _jensen_shannon(p_side: tuple[np.ndarray, ...], q_side: tuple[np.ndarray, ...]) -> np.ndarray:
    """JSD of each row's (low, high, weight, buckets) histograms, as `jensen_shannon` computes it; NaN when
    a side has no values."""
    p_low, p_high, p_count, p_buckets = p_side
    q_low, q_high, q_count, q_buckets = q_side
    width = max(p_low.shape[1], q_low.shape[1])
    p_low, p_high, p_count = (_pad(a, width) for a in (p_low, p_high, p_count))
    q_low, q_high, q_count = (_pad(a, width) for a in (q_low, q_high, q_count))
    columns = np.arange(width)[None, :]
    p_valid, q_valid = columns < p_buckets[:, None], columns < q_buckets[:, None]
    p_count, q_count = np.where(p_valid, p_count, 0.0), np.where(q_valid, q_count, 0.0)
    out = np.full(len(p_low), np.nan)
    live = np.flatnonzero((p_count.sum(axis=1) > 0) & (q_count.sum(axis=1) > 0))
    if not len(live):
        return out
    p_low, p_high, p_count, p_valid = p_low[live], p_high[live], p_count[live], p_valid[live]
    q_low, q_high, q_count, q_valid = q_low[live], q_high[live], q_count[live], q_valid[live]
    candidates = np.concatenate([p_low, p_high, q_low, q_high], axis=1)
    present = np.concatenate([p_valid, p_valid, q_valid, q_valid], axis=1)
    candidates = np.where(present, candidates, np.inf)
    candidates.sort(axis=1)
    distinct = np.isfinite(candidates)
    distinct[:, 1:] &= candidates[:, 1:] != candidates[:, :-1]
    n_edges = distinct.sum(axis=1)
    simple = _simple(p_low, p_high, p_valid) & _simple(q_low, q_high, q_valid)
    distances = np.empty(len(live))
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
    out[live] = distances
    return out


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
    bucket = np.count_nonzero(lows[:, None, :] <= seg_low[:, :, None], axis=2) - 1
    at = np.maximum(bucket, 0)
    b_low = np.take_along_axis(low, at, axis=1)
    b_high = np.take_along_axis(high, at, axis=1)
    b_count = np.take_along_axis(count, at, axis=1)
    inside = (bucket >= 0) & (seg_high <= b_high)
    with np.errstate(divide="ignore", invalid="ignore"):
        spread = np.where(inside, b_count * (seg_high - seg_low) / (b_high - b_low), 0.0)
    return np.concatenate([spread, np.zeros(edges.shape)], axis=1)
