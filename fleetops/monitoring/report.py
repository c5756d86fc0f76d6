"""The monitoring report: HTML with a baseline-vs-current chart per feature, Markdown, and scalar metrics.

Charts are inline SVG (no plotting dependency, renders in the Vertex console's
HTML viewer and any browser): numeric features as the two histograms' densities,
categorical features as the share of each value, side by side.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from typing import Any

from fleetops.monitoring.compare import FeatureResult
from fleetops.monitoring.jobs import EndpointReport

_BASE, _CURRENT, _ALERT = "#4e79a7", "#f28e2b", "#e15759"
_W, _H, _PAD = 360, 130, 18
_CSS = " ".join(
    [
        "body{font-family:system-ui,sans-serif;margin:24px;color:#222} h2 small{font-weight:normal;color:#666}",
        f"h2.alert{{color:{_ALERT}}} .cards{{display:flex;flex-wrap:wrap;gap:12px}}",
        f".card{{border:1px solid #ddd;border-radius:6px;padding:8px;width:{_W}px}}",
        f".card.anomaly{{border-color:{_ALERT};box-shadow:0 0 0 1px {_ALERT}}}",
        ".card h3{margin:0 0 4px;font-size:14px}",
        ".meta{font-size:12px;color:#555} .note{color:#a33} .info{color:#666;font-style:italic}",
        ".legend span{display:inline-block;width:10px;height:10px;margin:0 4px 0 10px}",
    ]
)


def render_markdown(fleet: str, reports: list[EndpointReport]) -> str:
    flagged = [r for r in reports if r.skew_anomaly or r.drift_anomaly]
    lines = [
        f"# Monitoring: fleet {fleet}",
        "",
        f"{len(reports)} endpoint(s), {len(flagged)} with skew or drift above threshold.",
        "",
        "| segment | model | rows | max skew | max drift | anomalies | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sorted(reports, key=lambda r: r.segment):
        lines.append(
            f"| {r.segment} | {r.model_id}@{r.version_id} | {r.rows} | {_fmt(_max(r.skew))} | {_fmt(_max(r.drift))} "
            f"| {', '.join(r.anomalies) or 'none'} | {r.note} |"
        )
    alerts = [(r.segment, kind, f) for r in reports for kind, fs in (("skew", r.skew), ("drift", r.drift)) for f in fs]
    alerts = [a for a in alerts if a[2].anomaly]
    if alerts:
        lines += ["", "## Alerts", "", "| segment | finding | distance | no-drift range at this size | policy |"]
        lines.append("|---|---|---|---|---|")
        for segment, kind, f in sorted(alerts, key=lambda a: (a[0], a[1], a[2].feature)):
            lines.append(f"| {segment} | {kind} {f.feature} | {_fmt(f.distance)} | {no_drift_range(f)} | {f.policy} |")
    return "\n".join(lines) + "\n"


def no_drift_range(result: FeatureResult) -> str:
    """Where the distance falls without drift: calibrated, the resampled range; fixed, at most the threshold."""
    if result.no_drift_range is not None:
        low, high = result.no_drift_range
        return f"{low:.3f} to {high:.3f} (p {result.p_value:.2g})"
    return f"at most {result.threshold} (fixed threshold)"


def render_html(fleet: str, reports: list[EndpointReport]) -> str:
    flagged = [r for r in reports if r.skew_anomaly or r.drift_anomaly]
    sections = []
    for report in sorted(reports, key=lambda r: (not (r.skew_anomaly or r.drift_anomaly), r.segment)):
        state = "ALERT" if report in flagged else "ok"
        cards = [_card(result, "skew", "training") for result in report.skew]
        cards += [_card(result, "drift", "previous window") for result in report.drift]
        note = f"<p class='info'>{html.escape(report.note)}</p>" if report.note else ""
        sections.append(
            f"<section><h2 class='{state.lower()}'>{html.escape(report.segment)} "
            f"<small>{html.escape(report.model_id)}@{html.escape(report.version_id)} · {report.rows} rows · {state}"
            f"</small></h2>{note}<div class='cards'>{''.join(cards) or '<p>nothing compared</p>'}</div></section>"
        )
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Monitoring: {html.escape(fleet)}</title>
<style>{_CSS}</style></head><body>
<h1>Monitoring: fleet {html.escape(fleet)}</h1>
<p>{len(reports)} endpoint(s); <b>{len(flagged)}</b> with skew or drift above threshold. Generated {generated}.
<span class="legend"><span style="background:{_BASE}"></span>baseline<span style="background:{_CURRENT}"></span>current
serving window</span></p>
{"".join(sections)}
</body></html>"""


def metrics(reports: list[EndpointReport]) -> dict[str, float]:
    """Scalars for a KFP `Metrics` artifact: the largest skew and drift per segment, and the count flagged."""
    values: dict[str, float] = {"flagged_segments": float(sum(r.skew_anomaly or r.drift_anomaly for r in reports))}
    for report in reports:
        for kind, results in (("skew", report.skew), ("drift", report.drift)):
            largest = _max(results)
            if largest is not None:
                values[f"{report.segment}/max_{kind}"] = largest
    return values


def _card(result: FeatureResult, kind: str, against: str) -> str:
    distance = "n/a" if result.distance is None else f"{result.distance:.3f}"
    if result.no_drift_range is not None:
        meta = f"{kind} vs {against}: {result.metric} {distance}, no-drift {no_drift_range(result)}, {result.policy}"
    else:
        meta = f"{kind} vs {against}: {result.metric} {distance} (threshold {result.threshold})"
    note = f"<div class='note'>{html.escape(result.note)}</div>" if result.note else ""
    css = "card anomaly" if result.anomaly else "card"
    return (
        f"<div class='{css}'><h3>{html.escape(result.feature)}</h3><div class='meta'>{html.escape(meta)}</div>"
        f"{_chart(result)}{note}</div>"
    )


def _chart(result: FeatureResult) -> str:
    if "histogram" in result.baseline:
        return _histograms(result.baseline["histogram"], result.current.get("histogram", {}))
    if "values" in result.baseline:
        return _bars(result.baseline["values"], result.current.get("values", {}))
    return ""


def _histograms(base: dict[str, Any], cur: dict[str, Any]) -> str:
    sides = [(h, color) for h, color in ((base, _BASE), (cur, _CURRENT)) if h.get("counts")]
    if not sides:
        return ""
    edges = [e for h, _ in sides for e in h["boundaries"]]
    low, high = min(edges), max(edges)
    span = (high - low) or 1.0
    densities = []
    for h, color in sides:
        total = sum(h["counts"]) or 1.0
        for (a, b), count in zip(zip(h["boundaries"][:-1], h["boundaries"][1:], strict=True), h["counts"], strict=True):
            width = b - a
            densities.append((a, b, (count / total / width) if width > 0 else None, color, count / total))
    peak = max((d for _, _, d, _, _ in densities if d is not None), default=1.0) or 1.0
    shapes = []
    for a, b, density, color, share in densities:
        x0 = _PAD + (a - low) / span * (_W - 2 * _PAD)
        if density is None:  # a point bucket: a constant column
            height = (_H - 2 * _PAD) * min(1.0, share)
            shapes.append(
                f"<rect x='{x0 - 1:.1f}' y='{_H - _PAD - height:.1f}' width='3' height='{height:.1f}' fill='{color}'/>"
            )
            continue
        x1 = _PAD + (b - low) / span * (_W - 2 * _PAD)
        height = (_H - 2 * _PAD) * density / peak
        shapes.append(
            f"<rect x='{x0:.1f}' y='{_H - _PAD - height:.1f}' width='{max(x1 - x0, 0.5):.1f}' height='{height:.1f}' "
            f"fill='{color}' fill-opacity='0.45' stroke='{color}'/>"
        )
    axis = (
        f"<text x='{_PAD}' y='{_H - 3}' font-size='10'>{low:.3g}</text>"
        f"<text x='{_W - _PAD}' y='{_H - 3}' font-size='10' text-anchor='end'>{high:.3g}</text>"
    )
    return f"<svg width='{_W}' height='{_H}' role='img'>{''.join(shapes)}{axis}</svg>"


def _bars(base: dict[str, float], cur: dict[str, float]) -> str:
    base_total, cur_total = sum(base.values()) or 1.0, sum(cur.values()) or 1.0
    values = sorted(set(base) | set(cur), key=lambda v: -(base.get(v, 0) / base_total + cur.get(v, 0) / cur_total))[:8]
    row = (_H - 10) / max(len(values), 1)
    label_width = 90
    scale = _W - label_width - 40
    shapes = []
    for i, value in enumerate(values):
        y = 5 + i * row
        for j, (share, color) in enumerate(
            ((base.get(value, 0) / base_total, _BASE), (cur.get(value, 0) / cur_total, _CURRENT))
        ):
            shapes.append(
                f"<rect x='{label_width}' y='{y + j * row / 2:.1f}' width='{share * scale:.1f}' "
                f"height='{row / 2 - 1:.1f}' fill='{color}'/>"
            )
        shapes.append(
            f"<text x='{label_width - 4}' y='{y + row / 2 + 3:.1f}' font-size='10' text-anchor='end'>"
            f"{html.escape(value[:14])}</text>"
        )
    return f"<svg width='{_W}' height='{_H}' role='img'>{''.join(shapes)}</svg>"


def _max(results: list[FeatureResult]) -> float | None:
    values = [r.distance for r in results if r.distance is not None]
    return max(values) if values else None


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
