"""A training run's reports in Markdown: each shard's evaluation and the run's fleet summary.

The evaluate step writes `evaluation_report` as its Markdown artifact, the summarize step
`summarize` (and `summary_head`, what the step returns); both read the plain dicts that the
training steps (`fleetops.training_steps`) produce. The run's page is `fleetops.scorecard`.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

import numpy as np

from fleetops.evaluation import fairness
from fleetops.evaluation.metrics import headline, task_metrics

if TYPE_CHECKING:
    from fleetops.spec import FleetSpec

# Segments listed by name in a summary before "and N more".
_LISTED = 50


def evaluation_report(evaluations: list[dict[str, Any]]) -> str:
    """Markdown for a shard's evaluation: test metrics, the champion decision, slices, and the tuning trials.

    An undefined metric is shown as "undefined", with its reason under the table, never as a number.
    """
    lines = []
    for e in evaluations:
        undefined = e.get("undefined") or {}
        shown = headline(e["metrics"]) | dict.fromkeys(undefined)
        lines += [f"## {e['segment']} ({e['model_id']}), {e['test_rows']} test rows", ""]
        lines += [
            "| metric | value |",
            "|---|---|",
            *[f"| {k} | {_metric(v)} |" for k, v in sorted(shown.items())],
        ]
        if undefined:
            lines += ["", *[f"- {reason}" for _, reason in sorted(undefined.items())]]
        lines += ["", f"**Champion**: {e['reason']}; promote: {'yes' if e['promote'] else 'no'}.", ""]
        if e.get("fallback"):
            lines += [f"**The fleet's global model** stands in for this segment: {e['fallback']['reason']}.", ""]
        lines += _selection_report(e.get("selection"), e.get("architecture"))
        transfer = e.get("transfer")
        if transfer:
            metric = transfer["metric"]
            lines += [
                f"**Transfer learning** ({transfer['architecture']}; chosen on validation: {transfer['chosen']})",
                "",
            ]
            lines += [f"| start | validation {metric} | test {metric} |", "|---|---|---|"]
            for start in ("scratch", "warm_start"):
                if start in transfer:
                    values = transfer[start]
                    lines.append(f"| {start} | {_metric(values['validation'])} | {_metric(values['test'])} |")
            lines.append("")
        if e["slices"]:
            lines += ["| slice | rows | " + e["metric"] + " |", "|---|---|---|"]
            lines += [
                f"| {s['feature']}={s['value']} | {s['rows']} | {_metric(s['metrics'].get(e['metric']))} |"
                for s in e["slices"]
            ]
            notes = [s["undefined"][e["metric"]] for s in e["slices"] if e["metric"] in s.get("undefined", {})]
            if notes:
                lines += ["", *[f"- {note}" for note in notes]]
            lines.append("")
        lines += fairness.markdown_lines(e.get("fairness"))
        runtimes = e.get("runtimes")
        if runtimes:
            lines += [f"**Runtimes** (serving: {runtimes['serving']})", ""]
            lines += [
                f"| runtime | bytes | load ms | first ms | p50 ms | max score delta | {runtimes['metric']} delta |"
            ]
            lines += ["|---|---|---|---|---|---|---|"]
            for name, r in runtimes["variants"].items():
                delta = "" if r.get("max_delta") is None else f"{r['max_delta']:.1e}"
                # Deltas are against Keras: none for Keras itself, nor for the one runtime of trees or an ensemble.
                change = "" if name in ("keras", "xgboost", "ensemble") else _fmt(r.get("metric_delta"))
                lines.append(
                    f"| {name} | {r['bytes']} | {r['load_ms']:.2f} | {r['first_ms']:.3f} | {r['p50_ms']:.3f} "
                    f"| {delta} | {change} |"
                )
            lines += ["", *[f"- no {name}: {why}" for name, why in sorted(runtimes.get("skipped", {}).items())]]
            for r in runtimes["variants"].values():
                if r.get("members"):
                    served = ", ".join(f"{name} {runtime}" for name, runtime in sorted(r["members"].items()))
                    lines.append(f"- the runtime serving each member: {served}")
            lines.append("")
        tuning = e.get("tuning") or {}
        if tuning.get("trials"):
            names = sorted({n for t in tuning["trials"] for n in t["parameters"]})
            lines += [f"**Tuning** ({tuning.get('scope')}): best {tuning['metric']} {_fmt(tuning['best_value'])}", ""]
            lines += ["| trial | state | " + tuning["metric"] + " | seconds | " + " | ".join(names) + " |"]
            lines += ["|---" * (4 + len(names)) + "|"]
            for t in tuning["trials"]:
                values = " | ".join(_cell(t["parameters"].get(n)) for n in names)
                lines.append(f"| {t['trial_id']} | {t['state']} | {_fmt(t['value'])} | {t['seconds']:.1f} | {values} |")
            lines.append("")
    reports = [e.get("fairness") for e in evaluations if (e.get("fairness") or {}).get("columns")]
    if len(reports) > 1:
        pooled = fairness.pool(reports[0]["task"], reports)
        lines += [f"## Fairness over all {pooled['segments']} segments (their test rows pooled)", ""]
        lines += fairness.markdown_lines(pooled, heading=False)
    return "\n".join(lines) + "\n"


def _selection_report(selection: dict[str, Any] | None, architecture: str | None) -> list[str]:
    """The trainer's choice as Markdown: every candidate's validation and test values, the chosen one and why,
    and the candidates that failed to train (with why). Nothing for models trained before selection records."""
    if not selection:
        return []
    metric, chosen = selection.get("metric", "metric"), selection.get("chosen")
    served = f" (serves {architecture})" if architecture and architecture != chosen else ""
    goal = f", {selection['goal']}" if selection.get("goal") else ""
    lines = [f"**Model selection** on validation {metric}{goal}: chose {chosen}{served}: {selection.get('reason')}", ""]
    candidates = selection.get("candidates") or {}
    if candidates:
        lines += [f"| candidate | validation {metric} | test {metric} |", "|---|---|---|"]
        for name, values in candidates.items():
            label = f"{name} ({values['architecture']})" if values.get("architecture") else name
            label += " **chosen**" if name == chosen else ""
            lines.append(f"| {label} | {_metric(values.get('validation'))} | {_metric(values.get('test'))} |")
        lines.append("")
    failed = selection.get("failed") or {}
    if failed:
        lines += [*[f"- {name} failed: {why}" for name, why in sorted(failed.items())], ""]
    return lines


def summarize(
    registrations: list[dict[str, Any]],
    evaluations: list[dict[str, Any]] | None = None,
    segments: dict[str, Any] | None = None,
    spec: FleetSpec | None = None,
) -> str:
    """The run's fleet summary (Markdown): totals first, then the metric's distribution, then every segment.

    Args:
        registrations: Every shard's register rows (a failed segment's row has `failed`: its reason).
        evaluations: Every shard's evaluation results (with each segment's test predictions): the
            pooled test metric is computed over all of them, each row scored by its own segment's model.
        segments: The validate step's outcomes: rows per segment, `skipped` and `fallback` reasons.
        spec: The fleet spec (name, task, failure policy).

    A new value that is undefined reads "undefined" and a champion without a value "n/a";
    either way the segment's champion decision follows the table as a note.
    """
    segments = segments or {}
    failed = sorted((r for r in registrations if r.get("failed")), key=lambda r: r["segment"])
    rows = sorted((r for r in registrations if not r.get("failed")), key=lambda r: r["segment"])
    skipped = segments.get("skipped", {})
    fallback = {e["segment"] for e in evaluations or [] if e.get("fallback")} | set(segments.get("fallback", {}))
    promoted = sum(1 for r in rows if r["promoted"])
    created = sum(1 for r in rows if r.get("created", True))
    metric = rows[0]["metric"] if rows else (spec.primary_metric if spec else "metric")
    title = f"# Fleet training{' of ' + spec.name if spec else ''}: {len(rows)} model(s), {promoted} new champion(s)"
    total = len(rows) + len(failed) + len(skipped)
    lines = [title, "", "| fleet | |", "|---|---|", f"| segments | {total:,} |"]
    lines.append(f"| trained their own model | {len(rows) - len(fallback & {r['segment'] for r in rows}):,} |")
    lines.append(f"| served by the fleet's global model | {len(fallback & {r['segment'] for r in rows}):,} |")
    lines.append(f"| skipped | {len(skipped):,} |")
    lines.append(f"| failed in training | {len(failed):,} |")
    lines.append(f"| new versions | {created:,} ({len(rows) - created:,} unchanged: identical data, no new version) |")
    lines.append(f"| new champions | {promoted:,} |")
    architectures = _architectures(rows, evaluations or [])
    if architectures:
        lines.append(f"| architectures | {_counted(architectures)} |")
    failed_candidates = Counter(
        name for e in evaluations or [] for name in (e.get("selection") or {}).get("failed") or {}
    )
    if failed_candidates:
        lines.append(f"| candidates that failed to train | {_counted(failed_candidates, ' in {:,} segment(s)')} |")
    values = np.array([r["value"] for r in rows if r["value"] is not None], dtype="float64")
    pooled = _pooled(evaluations or [], metric, spec)
    if pooled is not None:
        lines.append(f"| pooled test {metric} | {pooled[0]:.4f} over {pooled[1]:,} test rows, each by its own model |")
    if values.size:
        q = np.quantile(values, [0, 0.1, 0.5, 0.9, 1])
        spread = f"mean {values.mean():.4f}; min {q[0]:.4f}, p10 {q[1]:.4f}, median {q[2]:.4f}, "
        spread += f"p90 {q[3]:.4f}, max {q[4]:.4f}"
        lines.append(f"| per-segment test {metric} | {spread} |")
    if len(values) < len(rows):
        lines.append(f"| {metric} undefined | {len(rows) - len(values):,} segment(s) (see below) |")
    if values.size >= 10:  # a distribution worth drawing
        lines += ["", f"## Per-segment test {metric}", "", "```", *_histogram(values), "```"]
    problems = [(n, f"skipped: {reason}") for n, reason in skipped.items()]
    problems += [(r["segment"], f"failed: {r['failed']}") for r in failed]
    if problems:
        lines += ["", f"## Skipped and failed segments ({len(problems)})", ""]
        lines += [f"- {name}: {why}" for name, why in sorted(problems)[:_LISTED]]
        lines += [f"- ... and {len(problems) - _LISTED} more"] if len(problems) > _LISTED else []
    table, notes, blocked = [], [], []
    for r in rows:
        had_champion = r["champion_version"] is not None
        before = f"v{r['champion_version']} {_fmt(r['champion_value'])}" if had_champion else "none"
        # Not promoted and no champion before: the segment still has none.
        now = f"v{r['version_id']}" if r["promoted"] else (f"v{r['champion_version']}" if had_champion else "none")
        # Rows from before `created` existed were always new versions.
        version = r["version_id"] if r.get("created", True) else f"{r['version_id']} (unchanged, no new version)"
        segment = f"{r['segment']} (global model)" if r["segment"] in fallback else r["segment"]
        cells = [segment, r["model_id"], version, r["metric"], _metric(r["value"]), before, now]
        table.append("| " + " | ".join(map(str, cells)) + " |")
        if r.get("reason") and (r["value"] is None or (had_champion and r["champion_value"] is None)):
            notes.append(f"- {r['segment']}: {r['reason']}")
        elif not r["promoted"] and "fairness gate" in (r.get("reason") or ""):
            blocked.append(f"- {r['segment']}: {r['reason']}")
    if notes:  # before the table: a fleet of 1,000 shows its head only, and these explain its totals
        lines += ["", f"## Champion decisions on undefined metrics ({len(notes)})", "", *notes]
    if blocked:  # a better model kept from champion: the table alone would not say why
        lines += ["", f"## Kept from champion by a fairness gate ({len(blocked)})", ""]
        lines += blocked[:_LISTED] + ([f"- ... and {len(blocked) - _LISTED} more"] if len(blocked) > _LISTED else [])
    lines += [
        "",
        "## Segments",
        "",
        "| segment | model | version | metric | new | champion before | champion now |",
        "|---|---|---|---|---|---|---|",
        *table,
    ]
    return "\n".join(lines) + "\n"


def _architectures(rows: list[dict[str, Any]], evaluations: list[dict[str, Any]]) -> Counter[str]:
    """How many registered segments serve each architecture (rows from before architectures were recorded: none)."""
    evaluated = {e["segment"]: e.get("architecture") for e in evaluations}
    return Counter(a for r in rows if (a := r.get("architecture") or evaluated.get(r["segment"])))


def _counted(counts: Counter[str], each: str = " {:,}") -> str:
    """`gbt 612, ensemble 301, dnn 50`: most first, ties by name."""
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return ", ".join(f"{name}{each.format(n)}" for name, n in ordered)


def summary_head(summary: str, where: str, limit: int = _LISTED) -> str:
    """The summary as it is for a fleet of up to `limit` segments; past that, everything but the table."""
    head, _, table = summary.partition("\n## Segments\n")
    rows = table.count("\n| ") - 1  # the header row starts with "| " too
    if rows <= limit:
        return summary
    return f"{head}\nThe table of all {rows:,} segments is in the run's summary: {where}\n"


def _pooled(evaluations: list[dict[str, Any]], metric: str, spec: FleetSpec | None) -> tuple[float, int] | None:
    """The metric over every segment's test rows together, each scored by its own segment's model."""
    parts = [e["predictions"] for e in evaluations if e.get("predictions")]
    if not parts or spec is None:
        return None
    y = np.concatenate([np.asarray(p["y"]) for p in parts])
    scores = np.concatenate([np.asarray(p["scores"], dtype="float64") for p in parts])
    value = task_metrics(spec.task, y, scores, parts[0]["classes"]).get(metric)
    return (float(value), int(len(y))) if value is not None else None


def _histogram(values: np.ndarray, bins: int = 10, width: int = 40) -> list[str]:
    """A text histogram: readable in a log, a Markdown artifact and the console alike."""
    counts, edges = np.histogram(values, bins=bins)
    most = max(int(counts.max()), 1)
    return [
        f"{edges[i]:.3f}-{edges[i + 1]:.3f} | {'#' * int(round(width * c / most)):<{width}} {c}"
        for i, c in enumerate(counts)
    ]


def _metric(value: float | None) -> str:
    """A metric value for people: None only ever means undefined (see `undefined_reasons`)."""
    return "undefined" if value is None else f"{value:.4f}"


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
