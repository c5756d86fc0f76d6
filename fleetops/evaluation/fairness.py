"""Bias and fairness of a model's test predictions, per slice against the rest, as Vertex AI defines them.

For a slice column (a categorical feature) and one of its values, group 1 is the test rows with that
value (the slice) and group 2 every other test row (the rest). Every difference is **slice minus the
rest**: a positive value means the metric is higher on the slice. With n rows, q true positive labels,
p predicted positive labels, and TP, FP, FN, TN the confusion counts about the positive class:

Data bias (depend on the data only):

- differenceInPopulationSize = (n1 - n2) / (n1 + n2)
- differenceInPositiveProportionsInTrueLabels (DPPTL) = q1/n1 - q2/n2

Model bias (depend on the model's predicted labels):

- differenceInPositiveProportionsInPredictedLabels (DPPPL) = p1/n1 - p2/n2
- accuracyDifference = (TP1 + TN1)/n1 - (TP2 + TN2)/n2
- recallDifference = TP1/(TP1 + FN1) - TP2/(TP2 + FN2)
- specificityDifference = TN1/(TN1 + FP1) - TN2/(TN2 + FP2)
- differenceInRatioOfErrorTypes = FN1/FP1 - FN2/FP2

Tasks:

- binary: the positive class is index 1 (the second of the model's classes); the predicted label is
  the class with the highest score (a 0.5 threshold), as `classification_metrics` counts accuracy.
- multiclass: there is no positive class and one-vs-rest per class is not computed, so only
  differenceInPopulationSize and accuracyDifference (correct against not) are defined; the others
  are undefined, with that reason.
- regression: only differenceInPopulationSize is defined; the others are undefined (no classes).

Undefined, never 0 (the value is None and `undefined` says why, with the row counts):

- a slice column with one value on the test rows: there is no rest to compare with;
- a rate whose denominator has fewer than `MIN_ROWS` rows in the slice or in the rest: rows for
  the proportions and accuracy, true positives (TP + FN) for recall, true negatives (TN + FP) for
  specificity. 20 is the rule `fleet.MIN_SLICE_ROWS` uses for slice metrics: a proportion's standard
  error on 20 rows is at most 0.11, so a smaller group's difference is mostly noise;
- differenceInRatioOfErrorTypes also needs at least `MIN_ROWS` rows and one false positive in each
  group (FN/FP has no value without a false positive).

Computed from counts with numpy rather than fairlearn's `MetricFrame`: a fleet evaluates thousands of
segments × slices, and counts pool over the fleet by addition (`pool`). The tests compare the rates with
`MetricFrame` (selection_rate, accuracy_score, recall_score, true_negative_rate) on the same rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MIN_ROWS = 20
# Tasks, as `fleetops.spec.Task` spells them.
BINARY, MULTICLASS, REGRESSION = "binary_classification", "multiclass_classification", "regression"

POPULATION = "differenceInPopulationSize"
DPPTL = "differenceInPositiveProportionsInTrueLabels"
DPPPL = "differenceInPositiveProportionsInPredictedLabels"
ACCURACY = "accuracyDifference"
RECALL = "recallDifference"
SPECIFICITY = "specificityDifference"
ERROR_TYPES = "differenceInRatioOfErrorTypes"

METRICS = (POPULATION, DPPTL, DPPPL, ACCURACY, RECALL, SPECIFICITY, ERROR_TYPES)
# The metrics each task defines (see the module docstring).
DEFINED = {
    BINARY: METRICS,
    MULTICLASS: (POPULATION, ACCURACY),
    REGRESSION: (POPULATION,),
}
_NOT_DEFINED = {
    MULTICLASS: "a multiclass model has no positive class (one-vs-rest per class is not computed)",
    REGRESSION: "a regression model has no classes",
}
# The counts kept per slice value, by task: enough to compute every defined metric, and to pool.
_COUNTS = {BINARY: ("tp", "fp", "fn", "tn"), MULTICLASS: ("correct", "wrong"), REGRESSION: ("rows",)}


def slice_values(column: Any) -> np.ndarray:
    """A column's values as strings, missing values as "" (as evaluation slices name them)."""
    return column.where(column.notna(), "").astype(str).to_numpy()


def counts(task: str, values: np.ndarray, y: np.ndarray | None, scores: np.ndarray | None) -> dict[str, dict]:
    """Per value of one slice column, the counts the metrics are computed from.

    Args:
        task: binary_classification, multiclass_classification or regression (`Task` values).
        values: The slice column on the test rows (`slice_values`).
        y: Class indices (classification) or labels (regression) of the same rows.
        scores: The model's outputs on them: (n, k) probabilities for classification.

    Returns:
        value -> {tp, fp, fn, tn} (binary), {correct, wrong} (multiclass) or {rows} (regression).
    """
    present, inverse = np.unique(np.asarray(values, dtype=str), return_inverse=True)
    k = len(present)
    if task == REGRESSION or y is None:
        table = np.bincount(inverse, minlength=k)[:, None]
        task = REGRESSION
    else:
        y = np.asarray(y, dtype=int)
        predicted = np.asarray(scores).argmax(axis=1)
        if task == BINARY:
            # Cell = 2 * truth + prediction: tn=0, fp=1, fn=2, tp=3.
            cells = np.bincount(inverse * 4 + 2 * (y == 1) + (predicted == 1), minlength=4 * k).reshape(k, 4)
            table = cells[:, [3, 1, 2, 0]]
        else:
            right = predicted == y
            table = np.stack(
                [np.bincount(inverse[right], minlength=k), np.bincount(inverse[~right], minlength=k)], axis=1
            )
    names = _COUNTS[task]
    return {str(v): dict(zip(names, map(int, row), strict=True)) for v, row in zip(present, table, strict=True)}


def column_report(task: str, column: str, by_value: dict[str, dict], min_rows: int = MIN_ROWS) -> dict[str, Any]:
    """Every metric for every value of one column, from `counts` (a segment's, or pooled over a fleet).

    Returns:
        {column, rows, slices: [{value, rows, rest_rows, metrics, undefined}]}: `metrics` holds every
        name in `METRICS`, None when undefined; `undefined` says why for each None.
    """
    names = _COUNTS[task]
    total = {name: sum(c[name] for c in by_value.values()) for name in names}
    slices = []
    for value in sorted(by_value):
        one = by_value[value]
        rest = {name: total[name] - one[name] for name in names}
        metrics, undefined = _compare(task, column, value, one, rest, len(by_value), min_rows)
        slices.append(
            {
                "value": value,
                "rows": _rows(one),
                "rest_rows": _rows(rest),
                "counts": one,
                "metrics": metrics,
                "undefined": undefined,
            }
        )
    return {"column": column, "rows": _rows(total), "slices": slices}


def evaluate(
    task: str,
    test: Any,
    columns: list[str],
    y: np.ndarray | None,
    scores: np.ndarray | None,
    min_rows: int = MIN_ROWS,
    classes: list[str] | None = None,
) -> dict[str, Any]:
    """The fairness section of a segment's evaluation: `column_report` for each column, on the test rows.

    `y`/`scores` are None when the segment has no test rows: each column then reports no slices.
    `classes` (the model's) names the positive class of a binary model in the result.
    """
    columns_out = []
    for column in columns:
        by_value = counts(task, slice_values(test[column]), y, scores) if y is not None else {}
        columns_out.append(column_report(task, column, by_value, min_rows))
    positive = classes[1] if task == BINARY and classes and len(classes) == 2 else None
    return {"task": task, "min_rows": min_rows, "positive_class": positive, "columns": columns_out}


def pool(task: str, reports: list[dict[str, Any] | None], min_rows: int = MIN_ROWS) -> dict[str, Any]:
    """Fleet-wide fairness: each column's counts summed over every segment's test rows, then the metrics.

    The rest of a slice value is then every other test row of the fleet (all segments).
    """
    summed: dict[str, dict[str, dict[str, int]]] = {}
    segments = 0
    for report in reports:
        if not report:
            continue
        segments += 1
        for column in report["columns"]:
            into = summed.setdefault(column["column"], {})
            for s in column["slices"]:
                target = into.setdefault(s["value"], dict.fromkeys(s["counts"], 0))
                for name, count in s["counts"].items():
                    target[name] += count
    columns = [column_report(task, column, by_value, min_rows) for column, by_value in summed.items()]
    return {"task": task, "min_rows": min_rows, "segments": segments, "columns": columns}


def check_gates(report: dict[str, Any] | None, gates: list[Any]) -> list[dict[str, Any]]:
    """Each gate (`FairnessGate`: slice, metric, max_abs) against every value of its column.

    A value breaks a gate when |metric| is strictly above max_abs (as Vertex alerts strictly above a
    threshold). A slice where the metric is undefined cannot break it: it is listed as not checked,
    with the reason (`broken` None), so a gate never passes or fails on a silent 0.

    Returns:
        One row per gate and slice value: {gate, slice, value, metric, max_abs, measured, broken, note}.
    """
    by_column = {c["column"]: c for c in (report or {}).get("columns", [])}
    rows = []
    for index, gate in enumerate(gates):
        where = f"evaluation.fairness[{index}]"
        column = by_column.get(gate.slice)
        if column is None or not column["slices"]:
            note = f"{gate.metric} on {gate.slice}: no test rows"
            rows.append(_gate_row(where, gate, None, None, None, note))
            continue
        for s in column["slices"]:
            measured = s["metrics"].get(gate.metric)
            if measured is None:
                note = s["undefined"].get(gate.metric, f"{gate.metric} is undefined")
                rows.append(_gate_row(where, gate, s["value"], None, None, note))
                continue
            broken = abs(measured) > gate.max_abs
            relation = "above" if broken else "within"
            note = (
                f"{gate.metric} on {gate.slice}={s['value']} is {measured:+.4f}: |{measured:.4f}| is {relation} "
                f"max_abs {gate.max_abs:g} ({s['rows']} rows against {s['rest_rows']})"
            )
            rows.append(_gate_row(where, gate, s["value"], measured, broken, note))
    return rows


def _gate_row(where: str, gate: Any, value: str | None, measured: float | None, broken: bool | None, note: str):
    return {
        "gate": where,
        "slice": gate.slice,
        "value": value,
        "metric": gate.metric,
        "max_abs": gate.max_abs,
        "measured": measured,
        "broken": broken,
        "note": note,
    }


def _rows(c: dict[str, int]) -> int:
    return int(sum(c.values()))


def _compare(
    task: str, column: str, value: str, one: dict[str, int], rest: dict[str, int], values: int, min_rows: int
) -> tuple[dict[str, float | None], dict[str, str]]:
    """The metrics of one slice value against the rest, and why each undefined one is undefined."""
    metrics: dict[str, float | None] = dict.fromkeys(METRICS)
    undefined: dict[str, str] = {}
    n1, n2 = _rows(one), _rows(rest)
    if n2 == 0:
        seen = f"{n1} test row" + ("" if n1 == 1 else "s")
        why = f"column {column} has one value ({value!r}) in the {seen}, so there is no rest to compare with"
        return metrics, {name: f"{name} is undefined: {why}" for name in METRICS}
    for name in METRICS:
        if name not in DEFINED[task]:
            undefined[name] = f"{name} is undefined: {_NOT_DEFINED[task]}"
    metrics[POPULATION] = (n1 - n2) / (n1 + n2)
    if task == MULTICLASS:
        _difference(
            metrics, undefined, ACCURACY, column, value, (one["correct"], n1), (rest["correct"], n2), "rows", min_rows
        )
    if task != BINARY:
        return metrics, undefined

    def rate(name: str, numerator: str | tuple[str, ...], denominator: tuple[str, ...], kind: str) -> None:
        tops = (numerator,) if isinstance(numerator, str) else numerator
        first = (sum(one[t] for t in tops), sum(one[d] for d in denominator))
        second = (sum(rest[t] for t in tops), sum(rest[d] for d in denominator))
        _difference(metrics, undefined, name, column, value, first, second, kind, min_rows)

    everything = ("tp", "fp", "fn", "tn")
    rate(DPPTL, ("tp", "fn"), everything, "rows")
    rate(DPPPL, ("tp", "fp"), everything, "rows")
    rate(ACCURACY, ("tp", "tn"), everything, "rows")
    rate(RECALL, "tp", ("tp", "fn"), "true positive rows")
    rate(SPECIFICITY, "tn", ("tn", "fp"), "true negative rows")
    short = _short(column, value, n1, n2, "rows", min_rows)
    no_fp = [
        f"{group} has no false positive ({rows} rows)"
        for group, c, rows in _groups(column, value, one, rest, n1, n2)
        if c["fp"] == 0
    ]
    if short:
        undefined[ERROR_TYPES] = f"{ERROR_TYPES} is undefined: {short}"
    elif no_fp:
        undefined[ERROR_TYPES] = f"{ERROR_TYPES} is undefined: FN/FP needs a false positive, and " + " and ".join(no_fp)
    else:
        metrics[ERROR_TYPES] = one["fn"] / one["fp"] - rest["fn"] / rest["fp"]
    return metrics, undefined


def _groups(column: str, value: str, one: dict, rest: dict, n1: int, n2: int):
    return ((f"slice {column}={value}", one, n1), ("the rest", rest, n2))


def _difference(
    metrics: dict[str, float | None],
    undefined: dict[str, str],
    name: str,
    column: str,
    value: str,
    first: tuple[int, int],
    second: tuple[int, int],
    kind: str,
    min_rows: int,
) -> None:
    """first[0]/first[1] - second[0]/second[1], or the reason it is undefined (a denominator below min_rows)."""
    short = _short(column, value, first[1], second[1], kind, min_rows)
    if short:
        undefined[name] = f"{name} is undefined: {short}"
    else:
        metrics[name] = first[0] / first[1] - second[0] / second[1]


def _short(column: str, value: str, n1: int, n2: int, kind: str, min_rows: int) -> str:
    """Which group has fewer than min_rows rows of `kind`, as the end of a sentence ("" when neither)."""
    groups = [f"slice {column}={value} has {n1} {kind}", f"the rest has {n2} {kind}"]
    short = [text for text, n in zip(groups, (n1, n2), strict=True) if n < min_rows]
    if not short:
        return ""
    return " and ".join(short) + f" (at least {min_rows} needed)"


# Column headings of the fairness tables (the full names are in the legend under each table).
HEADINGS = {
    POPULATION: "population",
    DPPTL: "DPPTL",
    DPPPL: "DPPPL",
    ACCURACY: "accuracy",
    RECALL: "recall",
    SPECIFICITY: "specificity",
    ERROR_TYPES: "FN/FP",
}


def markdown_lines(report: dict[str, Any] | None, heading: bool = True) -> list[str]:
    """The fairness metrics as Markdown: per sensitive column, one row per value (slice minus the rest),
    undefined values as "undefined" with their reasons grouped under the table, then the gates' checks."""
    if not report or not report.get("columns"):
        return []
    positive = f"; positive class {report['positive_class']!r}" if report.get("positive_class") else ""
    lines = [
        f"**Fairness** (each value of the column against the rest of the test rows; slice minus the rest{positive})",
        "",
    ]
    lines = lines if heading else []
    names = list(HEADINGS)
    for column in report["columns"]:
        if not column["slices"]:
            lines += [f"- {column['column']}: no test rows", ""]
            continue
        lines += [f"| {column['column']} | rows | rest | " + " | ".join(HEADINGS.values()) + " |"]
        lines += ["|---" * (3 + len(names)) + "|"]
        notes: dict[str, list[str]] = {}
        for s in column["slices"]:
            cells = " | ".join(_shown(s["metrics"].get(name)) for name in names)
            lines.append(f"| {s['value'] or '(missing)'} | {s['rows']} | {s['rest_rows']} | {cells} |")
            for name, why in s["undefined"].items():
                notes.setdefault(why.split(" is undefined: ", 1)[-1], []).append(name)
        if notes:
            lines += [""]
            lines += [f"- {', '.join(sorted(set(n)))} undefined: {cause}" for cause, n in notes.items()]
        lines.append("")
    legend = ", ".join(f"{short} = {name}" for name, short in HEADINGS.items())
    lines += [f"_{legend}._", ""]
    gates = report.get("gates") or []
    if gates:
        lines += ["**Fairness gates**", ""]
        for check in gates:
            verdict = {True: "**broken**", False: "passed", None: "not checked"}[check["broken"]]
            lines.append(f"- {check['gate']}: {verdict}: {check['note']}")
        lines.append("")
    return lines


def _shown(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.4f}"
