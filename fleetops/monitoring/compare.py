"""Feature distributions of a table and their comparison with a baseline: skew or drift, per feature.

`distributions` summarises a serving window column by column (vectorised:
numpy histograms, Arrow value counts). `compare` measures each feature against
the baseline (the training statistics saved with the model, or an earlier
window) and says, for every feature, what was found: a distance above its
threshold, a missing rate that jumped, a type that changed, a feature the
baseline does not know, a window with no rows. Nothing is silently 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from fleetops.errors import UserError
from fleetops.monitoring.distance import histogram, jensen_shannon, l_infinity

DEFAULT_THRESHOLD = 0.3
TOP_VALUES = 1000


@dataclass(slots=True)
class FeatureResult:
    feature: str
    kind: str
    metric: str
    distance: float | None
    threshold: float
    anomaly: bool
    baseline_missing_rate: float | None = None
    current_missing_rate: float | None = None
    note: str = ""
    baseline: dict[str, Any] = field(default_factory=dict)
    current: dict[str, Any] = field(default_factory=dict)
    policy: str = "fixed"  # fixed: distance above threshold; calibrated: see calibrate.py
    p_value: float | None = None  # calibrated: chance of this distance or more without drift
    no_drift_range: list[float] | None = None  # calibrated: the alpha and 1 - alpha quantiles without drift

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def distributions(frame: pd.DataFrame, numeric: list[str], categorical: list[str]) -> dict[str, Any]:
    """TFDV-style statistics of a window: numeric histograms, categorical counts, missing values, type problems."""
    features: dict[str, Any] = {}
    for name in numeric:
        if name not in frame.columns:
            features[name] = {"type": "absent"}
            continue
        column = frame[name]
        values = pd.to_numeric(column, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        not_numbers = column.notna().to_numpy() & np.isnan(values)
        missing = int(column.isna().sum())
        stats = {"type": "numeric", "count": int(len(column) - missing), "missing": missing}
        if not_numbers.any():
            example = column[not_numbers].iloc[0]
            stats["type_problem"] = f"{int(not_numbers.sum())} non-numeric value(s) such as {example!r:.40}"
        stats["histogram"] = histogram(values[~not_numbers])
        features[name] = stats
    for name in categorical:
        if name not in frame.columns:
            features[name] = {"type": "absent"}
            continue
        array = _text_array(frame[name])
        counts = pc.value_counts(array.drop_null())
        ordered = sorted(
            zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True),
            key=lambda item: -item[1],
        )[:TOP_VALUES]
        missing = array.null_count
        features[name] = {
            "type": "categorical",
            "count": len(array) - missing,
            "missing": missing,
            "values": {value: float(count) for value, count in ordered},
        }
    return {"rows": int(len(frame)), "features": features}


def compare(
    baseline: dict[str, Any],
    current: dict[str, Any],
    features: list[str],
    thresholds: dict[str, float] | None = None,
    default_threshold: float = DEFAULT_THRESHOLD,
) -> list[FeatureResult]:
    """Each feature of `current` against `baseline` (both from `distributions` or training statistics)."""
    if not 0 < default_threshold <= 1:
        raise UserError(f"threshold {default_threshold!r} must be in (0, 1]")
    results = []
    for name in features:
        threshold = (thresholds or {}).get(name, default_threshold)
        base, cur = baseline["features"].get(name), current["features"].get(name)
        results.append(compare_feature(name, base, cur, threshold, current.get("rows", 0)))
    return results


_COMPUTE = object()


def compare_feature(
    name: str, base: dict | None, cur: dict | None, threshold: float, rows: int, distance: Any = _COMPUTE
) -> FeatureResult:
    """One feature's finding; `distance` when it was already computed (the fleet pass), else computed here."""
    if base is None:
        kind = "unknown"
        note = f"feature {name!r} is not in the baseline, so it cannot be compared; retrain to include it"
        return FeatureResult(name, kind, "l_infinity", None, threshold, False, note=note)
    kind = base.get("type", "unknown")
    metric = "jensen_shannon" if kind == "numeric" else "l_infinity"
    base_rate, base_summary = _missing_rate(base), _summary(base)
    if rows == 0:
        note = "the serving window has no rows: nothing to compare"
        return FeatureResult(name, kind, metric, None, threshold, False, base_rate, note=note, baseline=base_summary)
    if cur is None or cur.get("type") == "absent":
        note = f"feature {name!r} is absent from the serving data"
        return FeatureResult(name, kind, metric, None, threshold, True, base_rate, note=note, baseline=base_summary)
    cur_rate = _missing_rate(cur)
    note, anomaly = "", False
    if cur.get("type_problem"):
        note, anomaly = f"type changed: the baseline is numeric, the window has {cur['type_problem']}", True
    if distance is _COMPUTE:
        if kind == "numeric":
            distance = jensen_shannon(base.get("histogram", {}), cur.get("histogram", {}))
        else:
            distance = l_infinity(base.get("values", {}), cur.get("values", {}))
    if distance is not None:
        # Rounded so float noise (0.8 - 0.5 = 0.30000000000000004) cannot cross a threshold.
        distance = round(distance, 10)
        anomaly = anomaly or distance > threshold
    elif not note:
        side = "serving window" if cur.get("count", 0) == 0 else "baseline"
        note = f"every value is missing in the {side} ({_rates(base_rate, cur_rate)}): no distribution to compare"
    if cur_rate - base_rate > threshold:
        anomaly = True
        note = note or f"missing values jumped: {_rates(base_rate, cur_rate)}"
    return FeatureResult(
        name, kind, metric, distance, threshold, anomaly, base_rate, cur_rate, note, base_summary, _summary(cur)
    )


def _rates(base: float, cur: float) -> str:
    return f"missing rate {base:.0%} -> {cur:.0%}"


def _missing_rate(stats: dict[str, Any]) -> float:
    total = stats.get("count", 0) + stats.get("missing", 0)
    return stats.get("missing", 0) / total if total else 0.0


def _summary(stats: dict[str, Any]) -> dict[str, Any]:
    if stats.get("type") == "numeric":
        return {"histogram": stats.get("histogram", {})}
    values = stats.get("values", {})
    top = sorted(values.items(), key=lambda item: -item[1])[:20]
    return {"values": dict(top)}


def _text_array(column: pd.Series) -> pa.Array:
    """A column as Arrow strings: zero-copy for text columns, cast for integers, per value only for mixed ones."""
    array = pa.array(column, from_pandas=True)
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        return array.cast(pa.string())
    if pa.types.is_integer(array.type) or pa.types.is_boolean(array.type):
        return pc.cast(array, pa.string())
    return pa.array(column.astype(object).where(column.notna(), None).map(_as_text), type=pa.string())


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
