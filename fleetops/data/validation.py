"""Schema, statistics and validation of a table against a fleet spec.

`validate` lists every problem at once (missing columns, wrong types, unexpected
label values, empty segments) so the step fails with one readable report.
`statistics` summarises a table as TFDV does (equal-width numeric histograms,
categorical value counts, missing-value rates); it is the baseline that model
monitoring compares serving data against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from fleetops.data.split import TEST, TRAIN, VALIDATION, assign_splits
from fleetops.errors import DataValidationError
from fleetops.monitoring.distance import histogram
from fleetops.spec import FailurePolicy, FleetSpec, Task

TOP_VALUES = 1000
WHOLE_FLEET = "__all__"


# Segments listed by name in a report before "and N more".
_LISTED = 50


@dataclass
class ValidationReport:
    """What `validate` found: fleet-wide problems fail the run; a segment's own problem gets the spec's policy.

    `skipped` (policy `skip`) and `fallback` (policy `global`) map a segment to the reason it gets no
    model of its own; with policy `fail` those reasons are problems instead.
    """

    rows: int
    segments: dict[str, int]
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    fallback: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def trainable(self) -> dict[str, int]:
        """The segments that train a model of their own, with their row counts."""
        return {name: n for name, n in self.segments.items() if name not in self.skipped and name not in self.fallback}

    def raise_if_failed(self) -> None:
        if self.problems:
            raise DataValidationError(self.problems)

    def to_markdown(self) -> str:
        status = "passed" if self.ok else f"FAILED with {len(self.problems)} problem(s)"
        lines = [f"# Data validation {status}", "", f"- rows: {self.rows}", f"- segments: {len(self.segments)}", ""]
        if self.problems:
            lines += ["## Problems", "", *[f"- {p}" for p in self.problems], ""]
        if self.warnings:
            lines += ["## Warnings", "", *[f"- {w}" for w in self.warnings], ""]
        for title, reasons in (
            ("Skipped segments", self.skipped),
            ("Segments served by the global model", self.fallback),
        ):
            if reasons:
                lines += [f"## {title} ({len(reasons)})", ""]
                lines += [f"- {name}: {reason}" for name, reason in sorted(reasons.items())[:_LISTED]]
                lines += [f"- ... and {len(reasons) - _LISTED} more"] if len(reasons) > _LISTED else []
                lines.append("")
        counts = sorted(self.segments.items())
        lines += ["## Rows per segment", "", "| segment | rows |", "|---|---|"]
        lines += [f"| {name} | {count} |" for name, count in counts[:_LISTED]]
        if len(counts) > _LISTED:
            sizes = np.array([n for _, n in counts])
            lines.append(
                f"| ... {len(counts) - _LISTED} more | min {sizes.min()}, median {int(np.median(sizes))}, "
                f"max {sizes.max()} |"
            )
        return "\n".join(lines) + "\n"


def segment_values(df: pd.DataFrame, spec: FleetSpec) -> pd.Series:
    """The segment of each row as a string (the whole fleet is one segment without a segment column)."""
    column = spec.data.segment_column
    if column is None:
        return pd.Series(WHOLE_FLEET, index=df.index)
    values = df[column]
    return values.where(values.isna(), values.astype(str))


# The most categories a model keeps per categorical feature (its train rows' most frequent values).
MAX_VOCABULARY = 1000


def validate(df: pd.DataFrame, spec: FleetSpec) -> ValidationReport:
    """Check `df` against `spec`; the report lists every problem (nothing is raised here)."""
    problems: list[str] = []
    warnings: list[str] = []
    required = {
        **{c: "features.numeric" for c in spec.features.numeric},
        **{c: "features.categorical" for c in spec.features.categorical},
        spec.label: "label",
    }
    if spec.data.segment_column:
        required[spec.data.segment_column] = "data.segment_column"
    if spec.data.split_key:
        required[spec.data.split_key] = "data.split_key"
    missing = [f"column '{c}' ({role}) is missing from the data" for c, role in required.items() if c not in df.columns]
    if missing:
        problems += missing
        problems.append(f"the data has columns {list(df.columns)}")
        return ValidationReport(rows=len(df), segments={}, problems=problems)
    if df.empty:
        return ValidationReport(rows=0, segments={}, problems=["the data has no rows"])

    for column in spec.features.numeric:
        problems += _numeric_problems(df[column], f"numeric feature '{column}'")
        if df[column].isna().all():
            problems.append(f"numeric feature '{column}' has no values at all (every row is missing)")
    problems += _label_problems(df[spec.label], spec)

    segments = segment_values(df, spec)
    null_segments = int(segments.isna().sum())
    if null_segments:
        first = int(np.flatnonzero(segments.isna().to_numpy())[0])
        problems.append(
            f"segment_column '{spec.data.segment_column}' is empty in {null_segments} row(s) (first at row {first}); "
            "every row needs a segment"
        )
    counts = {str(k): int(v) for k, v in segments.dropna().value_counts().items()}
    # A segment's own problems: the failure policy decides (skip it, serve the global model, or fail).
    own: dict[str, str] = {}
    if spec.data.segments is not None:
        for wanted in spec.data.segments:
            if wanted not in counts:
                own[wanted] = f"has no rows in the data (named in data.segments; {len(counts)} segment(s) present)"
        counts = {s: n for s, n in counts.items() if s in set(spec.data.segments)}
    for name, n in sorted(counts.items()):
        if n < spec.data.min_rows_per_segment:
            own[name] = (
                f"has {n} row(s); at least {spec.data.min_rows_per_segment} are needed (data.min_rows_per_segment)"
            )
    if not problems:
        own |= _segment_problems(df, spec, segments, counts, own)
        warnings += _empty_feature_warnings(df, spec, segments, counts)
    skipped, fallback = _apply_policy(spec, own, counts, problems)
    for column in spec.features.categorical:
        distinct = int(df[column].nunique(dropna=True))
        if distinct > MAX_VOCABULARY:
            warnings.append(
                f"categorical feature '{column}' has {distinct:,} distinct values; each model keeps the "
                f"{MAX_VOCABULARY:,} most frequent of its train rows, and the rest share one unknown value "
                "(gbt treats it as missing): group rare values, or make the column numeric if it is a count or id"
            )
    for column in spec.features.all:
        rate = float(df[column].isna().mean())
        if rate > 0.5:
            warnings.append(f"feature '{column}' is missing in {rate:.0%} of rows")
    return ValidationReport(
        rows=len(df), segments=counts, problems=problems, warnings=warnings, skipped=skipped, fallback=fallback
    )


def coerce_features(df: pd.DataFrame, numeric: list[str], categorical: list[str]) -> pd.DataFrame:
    """Typed features: numeric as float64 (missing = NaN), categorical as str (missing = '')."""
    out = df.copy()
    for column in numeric:
        out[column] = pd.to_numeric(out[column], errors="raise").astype("float64")
    for column in categorical:
        values = out[column]
        out[column] = values.where(values.notna(), "").astype(str)
    return out


def statistics(df: pd.DataFrame, spec: FleetSpec, typed: bool = False) -> dict[str, Any]:
    """TFDV-style statistics of the features and the label of `df` (`typed`: already `coerce_features`'d)."""
    typed = df if typed else coerce_features(df, spec.features.numeric, spec.features.categorical)
    features: dict[str, Any] = {}
    for column in spec.features.numeric:
        features[column] = numeric_statistics(typed[column])
    for column in spec.features.categorical:
        features[column] = categorical_statistics(df[column])
    label = df[spec.label]
    label_stats = (
        numeric_statistics(pd.to_numeric(label, errors="coerce"))
        if spec.task is Task.REGRESSION
        else categorical_statistics(label)
    )
    return {"rows": int(len(df)), "features": features, "label": {spec.label: label_stats}}


def schema(df: pd.DataFrame, spec: FleetSpec) -> dict[str, Any]:
    """The columns the fleet uses, with their role and the type seen in the data."""
    roles = {c: "numeric_feature" for c in spec.features.numeric}
    roles |= {c: "categorical_feature" for c in spec.features.categorical}
    roles[spec.label] = "label"
    if spec.data.segment_column:
        roles[spec.data.segment_column] = "segment"
    if spec.data.split_key:
        roles[spec.data.split_key] = "split_key"
    return {"task": spec.task.value, "columns": {c: {"role": r, "dtype": str(df[c].dtype)} for c, r in roles.items()}}


def numeric_statistics(values: pd.Series) -> dict[str, Any]:
    arr = values.to_numpy(dtype="float64", na_value=np.nan)
    finite = arr[np.isfinite(arr)]
    missing = int(np.isnan(arr).sum())
    stats: dict[str, Any] = {"type": "numeric", "count": int(arr.size - missing), "missing": missing}
    stats["missing_rate"] = missing / arr.size if arr.size else 0.0
    if finite.size == 0:
        return stats | {"histogram": {"boundaries": [], "counts": []}}
    return stats | {
        "min": float(finite.min()),
        "max": float(finite.max()),
        "mean": float(finite.mean()),
        "std": float(finite.std()),
        "histogram": histogram(finite),  # the serving windows' own: one rule for both
    }


def categorical_statistics(values: pd.Series) -> dict[str, Any]:
    array = values.to_numpy(dtype=object)
    missing_mask = pd.isna(array)
    missing = int(missing_mask.sum())
    # np.unique over the strings: pandas' value_counts cost ~1 ms a column, a fleet's statistics 4 s per
    # 1,000 segments. Past TOP_VALUES distinct values, value_counts' choice of the most frequent is kept.
    names, frequencies = np.unique(array[~missing_mask].astype(str), return_counts=True)
    if names.size <= TOP_VALUES:
        order = np.argsort(-frequencies, kind="stable")
        top = {str(names[i]): int(frequencies[i]) for i in order}
    else:
        counts = values.dropna().astype(str).value_counts()
        top = {str(k): int(v) for k, v in counts.head(TOP_VALUES).items()}
    return {
        "type": "categorical",
        "count": int(len(values) - missing),
        "missing": missing,
        "missing_rate": missing / len(values) if len(values) else 0.0,
        "unique": int(names.size),
        "values": top,
    }


def _segment_problems(
    df: pd.DataFrame, spec: FleetSpec, segments: pd.Series, counts: dict[str, int], known: dict[str, str]
) -> dict[str, str]:
    """Segments that cannot train or be evaluated: one label value, or an empty train/validation/test split."""
    own: dict[str, str] = {}
    wanted = segments.isin(list(counts)).to_numpy() & segments.notna().to_numpy()
    frame = df[wanted]
    names = segments[wanted].astype(str)
    if spec.task.is_classification:
        classes = frame[spec.label].astype(str).groupby(names.to_numpy()).agg(["nunique", "first"])
        for name, row in classes[classes["nunique"] < 2].iterrows():
            if str(name) not in known:
                own[str(name)] = f"has a single label value {row['first']!r}; a classifier needs at least two"
    split = assign_splits(frame, spec.data.split, spec.data.split_key).to_numpy()
    table = pd.crosstab(names.to_numpy(), split).reindex(columns=[TRAIN, VALIDATION, TEST], fill_value=0)
    for name, row in table.iterrows():
        empty = [part for part in (TRAIN, VALIDATION, TEST) if row[part] == 0]
        if empty and str(name) not in known and str(name) not in own:
            split_counts = ", ".join(f"{part} {row[part]}" for part in (TRAIN, VALIDATION, TEST))
            own[str(name)] = f"has no {' or '.join(empty)} rows after the split ({split_counts}; data.split)"
    return own


def _empty_feature_warnings(
    df: pd.DataFrame, spec: FleetSpec, segments: pd.Series, counts: dict[str, int]
) -> list[str]:
    """A numeric feature missing in every row of a segment: it still trains (imputed), but say so."""
    if not spec.features.numeric or not counts:
        return []
    present = df[spec.features.numeric].notna().groupby(segments.to_numpy()).any()
    present = present[present.index.isin(list(counts))]
    warnings = []
    for column in spec.features.numeric:
        empty = sorted(map(str, present.index[~present[column].to_numpy()]))
        if empty:
            listed = ", ".join(empty[:10]) + (f" and {len(empty) - 10} more" if len(empty) > 10 else "")
            warnings.append(
                f"numeric feature '{column}' is missing in every row of segment(s) {listed}: "
                "their models see it as a constant (imputed with 0)"
            )
    return warnings


def _apply_policy(
    spec: FleetSpec, own: dict[str, str], counts: dict[str, int], problems: list[str]
) -> tuple[dict[str, str], dict[str, str]]:
    """Sort segment problems by `segment_failures.policy`; too many skipped segments fail the run."""
    policy = spec.segment_failures.policy
    if policy == FailurePolicy.FAIL:
        problems += [
            f"segment '{name}' {reason} (segment_failures.policy: fail)" for name, reason in sorted(own.items())
        ]
        return {}, {}
    if policy == FailurePolicy.GLOBAL:
        return {}, dict(sorted(own.items()))
    total = len(counts) + sum(1 for name in own if name not in counts)
    limit = spec.segment_failures.max_failed_fraction
    if spec.segment_failures.too_many(len(own), total):
        examples = "; ".join(f"'{n}' {r}" for n, r in sorted(own.items())[:5])
        problems.append(
            f"{len(own)} of {total} segment(s) ({len(own) / total:.0%}) cannot be trained, more than "
            f"segment_failures.max_failed_fraction {limit:g}: {examples}"
            + (f"; and {len(own) - 5} more" if len(own) > 5 else "")
        )
    return dict(sorted(own.items())), {}


def _numeric_problems(values: pd.Series, what: str) -> list[str]:
    if pd.api.types.is_bool_dtype(values):
        return [f"{what} is boolean; use a categorical feature or 0/1 numbers"]
    if pd.api.types.is_numeric_dtype(values):
        return []
    coerced = pd.to_numeric(values, errors="coerce")
    bad = values.notna() & coerced.isna()
    if not bad.any():
        return []
    positions = np.flatnonzero(bad.to_numpy())
    example = values.iloc[positions[0]]
    return [f"{what} has non-numeric value {example!r} in {bad.sum()} row(s) (first at row {positions[0]})"]


def _label_problems(label: pd.Series, spec: FleetSpec) -> list[str]:
    name = f"label '{spec.label}'"
    problems = []
    if label.isna().any():
        first = int(np.flatnonzero(label.isna().to_numpy())[0])
        problems.append(f"{name} is missing in {int(label.isna().sum())} row(s) (first at row {first})")
    present = label.dropna()
    if spec.task is Task.REGRESSION:
        return problems + _numeric_problems(present, name)
    values = sorted(present.astype(str).unique())
    if spec.task is Task.BINARY and len(values) != 2:
        problems.append(
            f"{name} has {len(values)} distinct value(s) {values[:10]}; binary_classification needs exactly 2"
        )
    if spec.task is Task.MULTICLASS and len(values) < 3:
        problems.append(
            f"{name} has {len(values)} distinct value(s) {values[:10]}; multiclass_classification needs 3 or more"
        )
    if spec.task is Task.MULTICLASS and len(values) > 100:
        problems.append(f"{name} has {len(values)} distinct values; at most 100 classes are supported")
    return problems
