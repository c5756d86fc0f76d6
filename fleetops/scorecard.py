"""The fleet scorecard: one self-contained page (and its Markdown) per training run, readable at 1,000 segments.

Built from what the training run already produces, as plain dicts: the register rows (a failed segment's
row has `failed`), the evaluations (metrics, `promote`, `reason`, `architecture`, `selection`), the validate
step's segment outcomes (`skipped`, `fallback` reasons) and, optionally, monitoring endpoint reports
(`EndpointReport.to_dict()`). The page has the fleet's totals first, the per-segment metric's distribution
(inline SVG), a segment x feature heat map of skew/drift distances when monitoring reports are given (a
canvas drawn from inline data), a sortable, filterable table of every segment (rows rendered once; sorting
reorders them) and one anchored section per segment. Nothing is fetched: no CDN, no fonts, no images.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from fleetops.errors import UserError
from fleetops.evaluation import fairness
from fleetops.names import (
    OUTPUT_ANOMALIES,
    OUTPUT_EVALUATION,
    OUTPUT_REGISTERED,
    OUTPUT_SEGMENTS,
    PARAM_FLEET_SPEC,
    TASK_EVALUATE,
    TASK_MONITOR,
    TASK_REGISTER,
    TASK_VALIDATE,
)
from fleetops.spec import parse_spec

_BINS = 20
_REASONS_LISTED = 10  # distinct reasons shown per group; the rest are counted
_CELL, _TOP = 28, 110  # the heat map's column width and the height of its rotated feature names


def render_scorecard(
    registrations: list[dict[str, Any]],
    evaluations: list[dict[str, Any]] | None = None,
    segments: dict[str, Any] | None = None,
    monitoring: list[dict[str, Any]] | None = None,
    fleet: str = "",
    metric: str | None = None,
) -> tuple[str, str]:
    """The scorecard of a run as (HTML, Markdown).

    Args:
        registrations: Every shard's register rows (a failed segment's row has `failed`: its reason).
        evaluations: Every shard's evaluation results (architecture, selection, champion decision).
        segments: The validate step's outcomes: `skipped` and `fallback` segments with their reasons.
        monitoring: Monitoring endpoint reports (`EndpointReport.to_dict()`), if any: alerts and the heat map.
        fleet: The fleet's name, for the title.
        metric: The primary metric's name when no registered row carries it.
    """
    card = _scorecard(registrations, evaluations or [], segments or {}, monitoring, fleet, metric)
    return _html(card), _markdown(card)


def _scorecard(
    registrations: list[dict[str, Any]],
    evaluations: list[dict[str, Any]],
    outcomes: dict[str, Any],
    monitoring: list[dict[str, Any]] | None,
    fleet: str,
    metric: str | None,
) -> dict[str, Any]:
    """Everything the page and the Markdown show, one record per segment, sorted by segment."""
    evaluated = {e["segment"]: e for e in evaluations}
    skipped = outcomes.get("skipped") or {}
    fallback = set(outcomes.get("fallback") or {}) | {e["segment"] for e in evaluations if e.get("fallback")}
    rows = [r for r in registrations if not r.get("failed")]
    metric = next((r["metric"] for r in rows if r.get("metric")), None) or metric or "metric"
    monitored = _monitoring(monitoring) if monitoring is not None else None
    records = []
    for r in registrations:
        e = evaluated.get(r["segment"], {})
        record = {
            "segment": r["segment"],
            "model_id": r.get("model_id", ""),
            "architecture": r.get("architecture") or e.get("architecture") or "",
            "selection": e.get("selection"),
            "test_rows": e.get("test_rows"),
            "fallback": _fallback_reason(r["segment"], e, outcomes) if r["segment"] in fallback else None,
            "fairness": e.get("fairness"),
        }
        if r.get("failed"):
            record |= {"status": "failed", "value": None, "reason": f"failed in training: {r['failed']}"}
        else:
            had = r.get("champion_version") is not None
            status = "new champion" if r.get("promoted") else ("kept champion" if had else "no champion")
            record |= {
                "status": status,
                "version": r.get("version_id"),
                "created": r.get("created", True),
                "value": _number(r.get("value")),
                "champion_version": r.get("champion_version"),
                "champion_value": _number(r.get("champion_value")),
                "reason": r.get("reason") or e.get("reason") or "",
                "undefined": (e.get("undefined") or {}).get(metric),
            }
        records.append(record)
    for name, reason in skipped.items():
        records.append({"segment": name, "status": "skipped", "value": None, "reason": f"skipped: {reason}"})
    if monitored is not None:  # monitored but not trained in this run (continuous training retrains the drifted)
        trained = {str(rec["segment"]) for rec in records}
        for name in sorted(set(monitored["segments"]) - trained):
            if registrations or skipped:
                status, reason = "not retrained", "not trained in this run"
            else:  # a run that only monitored: what monitoring found is the status
                alerts = monitored["segments"][name]["alerts"]
                status = "alerting" if alerts else "within thresholds"
                reason = f"{len(alerts)} alert(s): {', '.join(alerts)}" if alerts else "no feature over its threshold"
            records.append({"segment": name, "status": status, "value": None, "reason": reason})
    records.sort(key=lambda rec: str(rec["segment"]))
    ids: set[str] = set()
    for rec in records:
        rec["id"] = _anchor(str(rec["segment"]), ids)
        if monitored is not None:
            rec["monitoring"] = monitored["segments"].get(str(rec["segment"]))
    values = np.array([rec["value"] for rec in records if rec["value"] is not None], dtype="float64")
    failed = Counter(rec["reason"].removeprefix("failed in training: ") for rec in records if rec["status"] == "failed")
    totals = {
        "segments": len(records),
        "models": len(rows),
        "new champions": sum(1 for r in rows if r.get("promoted")),
        "new versions": sum(1 for r in rows if r.get("created", True)),
        "served by the global model": len(fallback & {r["segment"] for r in rows}),
        "skipped": len(skipped),
        "failed": sum(failed.values()),
        f"{metric} undefined": sum(1 for rec in records if rec.get("version") is not None) - len(values),
        "kept from champion by a fairness gate": sum(
            1 for r in rows if not r.get("promoted") and "fairness gate" in (r.get("reason") or "")
        ),
    }
    reports = [e.get("fairness") for e in evaluations if (e.get("fairness") or {}).get("columns")]
    pooled = fairness.pool(reports[0]["task"], reports) if reports else None
    return {
        "fleet": fleet,
        "metric": metric,
        "records": records,
        "values": values,
        "totals": totals,
        "skipped": Counter(str(reason) for reason in skipped.values()),
        "failed": failed,
        "monitoring": monitored,
        "fairness": pooled,
    }


def _fallback_reason(segment: str, evaluation: dict[str, Any], outcomes: dict[str, Any]) -> str:
    """Why the fleet's global model serves a segment: its evaluation's reason, else the validate step's."""
    reason = (evaluation.get("fallback") or {}).get("reason") or (outcomes.get("fallback") or {}).get(segment)
    return str(reason or "no reason recorded")


def _monitoring(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Per segment: alerts, the largest distance relative to its threshold, every feature's results; the
    features across the fleet; the heat map's cells (distance / threshold, the larger of skew and drift)."""
    segments: dict[str, Any] = {}
    features: list[str] = []
    for report in reports:
        results = [("skew", r) for r in report.get("skew") or []] + [("drift", r) for r in report.get("drift") or []]
        for _, r in results:
            if r["feature"] not in features:
                features.append(r["feature"])
        alerts = [f"{kind} {r['feature']}" for kind, r in results if r.get("anomaly")]
        ratios = [_ratio(r) for _, r in results]
        judged = [x for x in ratios if x is not None]
        segments[str(report["segment"])] = {
            "endpoint_id": report.get("endpoint_id", ""),
            "rows": (report.get("window") or {}).get("rows"),
            "alerts": alerts,
            "worst": max(judged) if judged else None,
            "note": report.get("note", ""),
            "results": results,
        }
    return {
        "segments": segments,
        "features": features,
        "alerting": sum(1 for s in segments.values() if s["alerts"]),
        "alerts": sum(len(s["alerts"]) for s in segments.values()),
        "not judged": sum(1 for s in segments.values() if not s["results"]),
    }


def _ratio(result: dict[str, Any]) -> float | None:
    """A feature's distance as a multiple of its threshold (1 = at the threshold); None when not measured."""
    distance, threshold = result.get("distance"), result.get("threshold")
    if distance is None or not threshold:
        return None
    return float(distance) / float(threshold)


def _anchor(name: str, taken: set[str]) -> str:
    base = "seg-" + (re.sub(r"[^A-Za-z0-9_-]+", "_", name) or "_")
    anchor, n = base, 1
    while anchor in taken:
        n += 1
        anchor = f"{base}-{n}"
    taken.add(anchor)
    return anchor


def _number(value: Any) -> float | None:
    """A metric value, or None when undefined (None or NaN): undefined sorts last, never as a number."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def _dv(value: float | None) -> str:
    """A cell's sort key: the number in full, '' (sorted last) when undefined."""
    return "" if value is None else repr(value)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def _title(card: dict[str, Any]) -> str:
    t = card["totals"]
    name = f" of {card['fleet']}" if card["fleet"] else ""
    m = card["monitoring"]
    if _monitoring_only(card):
        return (
            f"Fleet monitoring scorecard{name}: {len(m['segments']):,} segment(s) monitored, {m['alerting']:,} alerting"
        )
    return f"Fleet scorecard{name}: {t['models']:,} model(s), {t['new champions']:,} new champion(s)"


def _monitoring_only(card: dict[str, Any]) -> bool:
    t = card["totals"]
    return card["monitoring"] is not None and not t["models"] and not t["skipped"] and not t["failed"]


def _total_lines(card: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) for the totals table, the same in HTML and Markdown."""
    t, lines = card["totals"], []
    if _monitoring_only(card):  # no training in this run: its totals would all read 0
        t = {"segments": t["segments"]}
    for label, value in t.items():
        if value or label in ("segments", "models", "new champions", "skipped", "failed"):
            lines.append((label, f"{value:,}"))
    values = card["values"]
    if values.size:
        q = np.quantile(values, [0, 0.5, 1])
        lines.append(
            (
                f"per-segment test {card['metric']}",
                f"mean {values.mean():.4f}; min {q[0]:.4f}, median {q[1]:.4f}, max {q[2]:.4f}",
            )
        )
    m = card["monitoring"]
    if m is not None:
        lines.append(("monitored segments", f"{len(m['segments']):,} ({m['not judged']:,} not judged: too few rows)"))
        lines.append(("alerting segments", f"{m['alerting']:,} ({m['alerts']:,} skew/drift alerts)"))
    return lines


def _reason_lines(counts: Counter[str]) -> list[str]:
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    lines = [f"{n:,} x {reason}" for reason, n in ordered[:_REASONS_LISTED]]
    if len(ordered) > _REASONS_LISTED:
        lines.append(f"... and {len(ordered) - _REASONS_LISTED:,} other reason(s)")
    return lines


def _markdown(card: dict[str, Any]) -> str:
    lines = [f"# {_title(card)}", "", "| fleet | |", "|---|---|"]
    lines += [f"| {label} | {value} |" for label, value in _total_lines(card)]
    for label in ("skipped", "failed"):
        if card[label]:
            lines += [
                "",
                f"## {label.capitalize()} segments by reason",
                "",
                *[f"- {x}" for x in _reason_lines(card[label])],
            ]
    if card["fairness"]:
        pooled = card["fairness"]
        lines += ["", f"## Fairness, fleet-wide ({pooled['segments']:,} segments' test rows pooled)", ""]
        lines += fairness.markdown_lines(pooled, heading=False)
    m = card["monitoring"]
    if m is not None and m["alerting"]:
        alerting = sorted(
            ((name, s) for name, s in m["segments"].items() if s["alerts"]), key=lambda item: -(item[1]["worst"] or 0)
        )
        lines += ["", f"## Alerting segments ({len(alerting):,}, worst first)", ""]
        lines += [f"- {name}: {', '.join(s['alerts'])}" for name, s in alerting]
    metric = card["metric"]
    header = f"| segment | status | {metric} | champion before | architecture |"
    lines += ["", "## Segments", "", header, "|---|---|---|---|---|"]
    for rec in card["records"]:
        before = f"v{rec['champion_version']} {_fmt(rec.get('champion_value'))}" if rec.get("champion_version") else ""
        value = _fmt(rec["value"]) or ("undefined" if rec.get("undefined") else "")
        cells = [rec["segment"], rec["status"], value, before, rec.get("architecture", "")]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    lines += ["", "## Segment details", ""]
    for rec in card["records"]:
        lines += [f"### {rec['segment']}", "", f"- status: {rec['status']}; {rec['reason'] or 'no reason recorded'}"]
        if rec.get("undefined"):
            lines.append(f"- {metric} undefined: {rec['undefined']}")
        if rec.get("architecture"):
            lines.append(f"- architecture: {rec['architecture']}")
        selection = rec.get("selection")
        if selection:
            lines.append(f"- selection: chose {selection.get('chosen')}: {selection.get('reason')}")
        mon = rec.get("monitoring")
        if mon and mon["alerts"]:
            lines.append(f"- alerts: {', '.join(mon['alerts'])}")
        lines.append("")
    return "\n".join(lines)


def _histogram_svg(values: np.ndarray, metric: str) -> str:
    """The per-segment metric's distribution: a bar per bin, counts on hover, the median marked."""
    width, height, pad = 640, 200, 36
    if not values.size:
        return "<p>No segment has a defined value.</p>"
    low, high = float(values.min()), float(values.max())
    if high == low:
        low, high = low - 0.5, high + 0.5
    counts, edges = np.histogram(values, bins=_BINS, range=(low, high))
    top = int(counts.max()) or 1
    bar = (width - 2 * pad) / _BINS
    parts = [
        f'<svg id="histogram" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="distribution of per-segment test {html.escape(metric)}">'
    ]
    for i, n in enumerate(counts):
        h = (height - 2 * pad) * n / top
        x, y = pad + i * bar, height - pad - h
        title = f"{edges[i]:.4f} to {edges[i + 1]:.4f}: {n} segment(s)"
        parts.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar - 1:.1f}" height="{h:.1f}"><title>{title}</title></rect>'
        )
    median = float(np.median(values))
    mx = pad + (median - low) / (high - low) * (width - 2 * pad)
    parts += [
        f'<line x1="{mx:.1f}" x2="{mx:.1f}" y1="{pad - 10}" y2="{height - pad}" class="median"/>',
        f'<text x="{mx + 4:.1f}" y="{pad - 12}">median {median:.4f}</text>',
        f'<line x1="{pad}" x2="{width - pad}" y1="{height - pad}" y2="{height - pad}" class="axis"/>',
        f'<text x="{pad}" y="{height - pad + 16}">{low:.4f}</text>',
        f'<text x="{width - pad}" y="{height - pad + 16}" text-anchor="end">{high:.4f}</text>',
        f'<text x="{pad - 4}" y="{pad}" text-anchor="end">{top}</text>',
        f'<text x="{width / 2}" y="{height - 4}" text-anchor="middle">test {html.escape(metric)} '
        f"({values.size:,} segments)</text>",
        "</svg>",
    ]
    return "".join(parts)


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:16px 24px;color:#222;background:#fff}
h1{font-size:22px}h2{font-size:18px;margin-top:28px}h3{font-size:15px}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}
#totals td:last-child{font-weight:600}
#segments th{cursor:pointer;background:#f2f2f2;position:sticky;top:0}
#segments th[aria-sort=ascending]::after{content:" \\25B2"}#segments th[aria-sort=descending]::after{content:" \\25BC"}
.num{text-align:right;font-variant-numeric:tabular-nums}
svg rect{fill:#4a7bd0}svg .median{stroke:#d04a4a;stroke-width:2}svg .axis{stroke:#555}svg text{font-size:11px}
.failed,.skipped{color:#b00020}.new{color:#0a7d27}.alert{color:#b00020;font-weight:600}
.controls{margin:8px 0}.controls input{width:240px}
section.segment{border-top:1px solid #ddd;padding:4px 0;content-visibility:auto;contain-intrinsic-size:auto 240px}
#heatmap{border:1px solid #ccc;image-rendering:pixelated}
"""

_JS = """
(function(){
  var table=document.getElementById('segments'), body=table.tBodies[0];
  var rows=Array.prototype.slice.call(body.rows), heads=table.tHead.rows[0].cells;
  var keys=rows.map(function(r){return Array.prototype.map.call(r.cells,function(c){
    var v=c.getAttribute('data-v'); if(v===null){return c.textContent.toLowerCase();}
    return v===''?null:parseFloat(v);});});
  var order=rows.map(function(_,i){return i;});
  function sort(col){
    var h=heads[col], dir=h.getAttribute('aria-sort')==='descending'?'ascending':
      (h.getAttribute('aria-sort')==='ascending'?'descending':(h.classList.contains('num')?'descending':'ascending'));
    for(var i=0;i<heads.length;i++){heads[i].removeAttribute('aria-sort');}
    h.setAttribute('aria-sort',dir); var s=dir==='ascending'?1:-1;
    order.sort(function(a,b){var x=keys[a][col],y=keys[b][col];
      if(x===y){return a-b;} if(x===null){return 1;} if(y===null){return -1;} return x<y?-s:s;});
    var f=document.createDocumentFragment(); order.forEach(function(i){f.appendChild(rows[i]);}); body.appendChild(f);
  }
  for(var i=0;i<heads.length;i++){(function(i){heads[i].addEventListener('click',function(){sort(i);});})(i);}
  var text=document.getElementById('filter'), status=document.getElementById('status');
  var names=rows.map(function(r){return r.cells[0].textContent.toLowerCase();});
  var states=rows.map(function(r){return r.getAttribute('data-status');});
  function filter(){var q=text.value.toLowerCase(), st=status.value, shown=0;
    for(var i=0;i<rows.length;i++){
      var ok=names[i].indexOf(q)>=0&&(!st||states[i]===st||(st==='alert'&&rows[i].hasAttribute('data-alert')));
      rows[i].hidden=!ok; if(ok){shown++;}}
    document.getElementById('shown').textContent=shown;}
  text.addEventListener('input',filter); status.addEventListener('change',filter);
  var heat=document.getElementById('heatdata');
  if(heat){var d=JSON.parse(heat.textContent), c=document.getElementById('heatmap'), g=c.getContext('2d');
    var top=d.top, cw=c.width/d.features.length, ch=(c.height-top)/d.segments.length;
    g.font='11px sans-serif'; g.fillStyle='#222';
    d.features.forEach(function(f,k){g.save(); g.translate(k*cw+cw/2+4,top-4); g.rotate(-Math.PI/2.6);
      g.fillText(f.length>16?f.slice(0,15)+'\u2026':f,0,0); g.restore();});
    g.translate(0,top);
    for(var r=0;r<d.cells.length;r++){for(var k=0;k<d.cells[r].length;k++){var v=d.cells[r][k];
      if(v===null){g.fillStyle='#eee';}else{var t=Math.min(v/2,1);
        g.fillStyle=v>1?'rgb(200,'+Math.round(80*(1-t))+',40)':'rgb('+Math.round(255*t)+','+Math.round(140+80*t)+','+Math.round(255-155*t)+')';}
      g.fillRect(k*cw,r*ch,Math.ceil(cw),Math.ceil(ch));}}
    c.addEventListener('click',function(ev){var b=c.getBoundingClientRect();
      var r=Math.floor((ev.clientY-b.top-top)/ch); if(d.anchors[r]){location.hash=d.anchors[r];}});
    c.addEventListener('mousemove',function(ev){var b=c.getBoundingClientRect();
      var r=Math.floor((ev.clientY-b.top-top)/ch), k=Math.floor((ev.clientX-b.left)/cw);
      if(d.segments[r]!==undefined&&d.features[k]!==undefined){var v=d.cells[r][k];
        c.title=d.segments[r]+' / '+d.features[k]+': '+(v===null?'not measured':v.toFixed(2)+'x threshold');}});}
  window.scorecardReady=performance.now(); document.body.setAttribute('data-ready','1');
})();
"""


def _html(card: dict[str, Any]) -> str:
    e, metric, records = html.escape, card["metric"], card["records"]
    title = e(_title(card))
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{title}</title><style>{_CSS}</style></head><body>",
        f"<h1>{title}</h1>",
        '<h2 id="fleet">The fleet</h2><table id="totals"><tbody>',
        *[f"<tr><td>{e(label)}</td><td>{e(value)}</td></tr>" for label, value in _total_lines(card)],
        "</tbody></table>",
    ]
    for label in ("skipped", "failed"):
        if card[label]:
            out.append(f'<h2 id="{label}">{label.capitalize()} segments by reason</h2><ul>')
            out += [f"<li>{e(line)}</li>" for line in _reason_lines(card[label])]
            out.append("</ul>")
    if not _monitoring_only(card):
        out += [f'<h2 id="distribution">Per-segment test {e(metric)}</h2>', _histogram_svg(card["values"], metric)]
    if card["fairness"]:
        pooled = card["fairness"]
        out.append(f'<h2 id="fairness">Fairness, fleet-wide ({pooled["segments"]:,} segments\' test rows pooled)</h2>')
        out += _fairness_tables(pooled)
    m = card["monitoring"]
    if m is not None and m["features"]:
        out += _heatmap(card)
    out += [
        f'<h2 id="table">Segments (<span id="shown">{len(records):,}</span> shown of {len(records):,})</h2>',
        '<div class="controls"><input id="filter" type="search" placeholder="filter segments by name"> ',
        '<select id="status"><option value="">every status</option>',
        *[
            f'<option value="{e(s)}">{e(s)}</option>'
            for s in ("new champion", "kept champion", "no champion", "skipped", "failed", "not retrained")
            + (("alerting", "within thresholds") if m is not None else ())
        ],
        '<option value="alert">alerting</option>' if m is not None else "",
        "</select></div>",
        '<table id="segments"><thead><tr><th>segment</th><th>status</th>',
        f'<th class="num">{e(metric)}</th><th class="num">champion before</th><th>architecture</th>',
        '<th class="num">alerts</th><th class="num">worst distance / threshold</th>' if m is not None else "",
        "</tr></thead><tbody>",
    ]
    for rec in records:
        mon = rec.get("monitoring")
        alert = ' data-alert=""' if mon and mon["alerts"] else ""
        css = {"new champion": "new", "failed": "failed", "skipped": "skipped"}.get(rec["status"], "")
        value = rec["value"]
        shown = _fmt(value) if value is not None else ("undefined" if rec.get("undefined") else "")
        before = rec.get("champion_value")
        cells = [
            f'<td><a href="#{rec["id"]}">{e(str(rec["segment"]))}</a></td>',
            f'<td class="{css}">{e(rec["status"])}</td>',
            f'<td class="num" data-v="{_dv(value)}">{e(shown)}</td>',
            f'<td class="num" data-v="{_dv(before)}">{e(_fmt(before))}</td>',
            f"<td>{e(rec.get('architecture') or '')}</td>",
        ]
        if m is not None:
            n = len(mon["alerts"]) if mon else None
            worst = mon["worst"] if mon else None
            cells.append(f'<td class="num" data-v="{_dv(n)}">{"" if n is None else n}</td>')
            cells.append(f'<td class="num" data-v="{_dv(worst)}">{_fmt(worst)}</td>')
        out.append(f'<tr data-status="{e(rec["status"])}"{alert}>{"".join(cells)}</tr>')
    out += ["</tbody></table>", '<h2 id="details">Segment details</h2>']
    out += [_detail(rec, metric) for rec in records]
    out += [f"<script>{_JS}</script>", "</body></html>"]
    return "\n".join(out)


def _fairness_tables(report: dict[str, Any]) -> list[str]:
    """Each sensitive column's values against the rest (slice minus the rest), undefined cells with their reasons."""
    e = html.escape
    names = list(fairness.HEADINGS)
    out = []
    for column in report["columns"]:
        out.append(f"<table><tr><th>{e(column['column'])}</th><th>rows</th><th>rest</th>")
        out += [f"<th>{e(fairness.HEADINGS[name])}</th>" for name in names]
        out.append("</tr>")
        for s in column["slices"]:
            cells = "".join(
                f'<td class="num" title="{e(s["undefined"].get(name, ""))}">'
                f"{_fmt(s['metrics'].get(name)) or 'undefined'}</td>"
                for name in names
            )
            out.append(
                f'<tr><td>{e(s["value"] or "(missing)")}</td><td class="num">{s["rows"]:,}</td>'
                f'<td class="num">{s["rest_rows"]:,}</td>{cells}</tr>'
            )
        out.append("</table>")
    legend = ", ".join(f"{short} = {name}" for name, short in fairness.HEADINGS.items())
    out.append(f"<p><small>{e(legend)}; an undefined cell's reason is its tooltip.</small></p>")
    return out


def _heatmap(card: dict[str, Any]) -> list[str]:
    """Segment x feature: each cell the larger of skew and drift distance as a multiple of its threshold."""
    m = card["monitoring"]
    features = m["features"]
    names, anchors, cells = [], [], []
    for rec in card["records"]:
        mon = rec.get("monitoring")
        if not mon:
            continue
        worst: dict[str, float] = {}
        for _, r in mon["results"]:
            ratio = _ratio(r)
            if ratio is not None:
                worst[r["feature"]] = max(worst.get(r["feature"], 0.0), ratio)
        names.append(str(rec["segment"]))
        anchors.append(rec["id"])
        cells.append([round(worst[f], 4) if f in worst else None for f in features])
    order = sorted(range(len(names)), key=lambda i: -max((v for v in cells[i] if v is not None), default=-1.0))
    names, anchors, cells = [names[i] for i in order], [anchors[i] for i in order], [cells[i] for i in order]
    row = max(1, min(16, 800 // max(1, len(names))))  # at most ~800 px tall: 1,000 segments are 1 px rows
    data = json.dumps({"segments": names, "anchors": anchors, "features": features, "cells": cells, "top": _TOP})
    data = data.replace("</", "<\\/")  # no "</script>" inside the script element
    return [
        '<h2 id="heatmap-title">Skew and drift: segment x feature</h2>',
        "<p>Each cell is the larger of the skew and drift distance as a multiple of its threshold "
        "(grey: not measured; blue below the threshold, red above); segments worst first. "
        "Hover for values, click for the segment.</p>",
        f'<canvas id="heatmap" width="{_CELL * len(features)}" height="{_TOP + row * len(names)}"></canvas>',
        # A viewer that runs no script (some artifact viewers sandbox them) still has every value below.
        "<noscript><p>The heat map needs JavaScript; each segment's findings, with their distances and "
        "thresholds, are in its section below.</p></noscript>",
        f'<script type="application/json" id="heatdata">{data}</script>',
    ]


def _detail(rec: dict[str, Any], metric: str) -> str:
    e = html.escape
    parts = [f'<section class="segment" id="{rec["id"]}"><h3>{e(str(rec["segment"]))}</h3><ul>']
    parts.append(f"<li>status: {e(rec['status'])}; {e(rec['reason'] or 'no reason recorded')}</li>")
    if rec.get("model_id"):
        version = f" v{rec['version']}" if rec.get("version") else ""
        same = "" if rec.get("created", True) else " (unchanged data: no new version)"
        parts.append(f"<li>model: {e(rec['model_id'])}{e(version)}{same}</li>")
    if rec.get("value") is not None:
        rows = f" on {rec['test_rows']:,} test rows" if rec.get("test_rows") else ""
        parts.append(f"<li>test {e(metric)}: {_fmt(rec['value'])}{rows}</li>")
    elif rec.get("undefined"):
        parts.append(f"<li>test {e(metric)} undefined: {e(str(rec['undefined']))}</li>")
    if rec.get("fallback"):
        parts.append(f"<li>served by the fleet's global model: {e(rec['fallback'])}</li>")
    if rec.get("architecture"):
        parts.append(f"<li>architecture: {e(rec['architecture'])}</li>")
    parts.append("</ul>")
    selection = rec.get("selection")
    if selection:
        chosen = selection.get("chosen")
        parts.append(f"<p>Model selection: chose {e(str(chosen))}: {e(str(selection.get('reason') or ''))}</p>")
        candidates = selection.get("candidates") or {}
        if candidates:
            sm = e(str(selection.get("metric", metric)))
            parts.append(f"<table><tr><th>candidate</th><th>validation {sm}</th><th>test {sm}</th></tr>")
            for name, values in candidates.items():
                label = f"{name} ({values['architecture']})" if values.get("architecture") else str(name)
                label += " (chosen)" if name == chosen else ""
                parts.append(
                    f"<tr><td>{e(label)}</td><td>{_fmt(values.get('validation'))}</td>"
                    f"<td>{_fmt(values.get('test'))}</td></tr>"
                )
            parts.append("</table>")
        for name, why in sorted((selection.get("failed") or {}).items()):
            parts.append(f"<p>{e(str(name))} failed: {e(str(why))}</p>")
    report = rec.get("fairness") or {}
    for check in report.get("gates") or []:
        verdict = {True: "broken", False: "passed", None: "not checked"}[check["broken"]]
        css = ' class="alert"' if check["broken"] else ""
        parts.append(f"<p>fairness gate {e(check['gate'])}: <span{css}>{verdict}</span>: {e(check['note'])}</p>")
    mon = rec.get("monitoring")
    if mon:
        if mon["note"]:
            parts.append(f"<p>monitoring: {e(mon['note'])}</p>")
        if mon["results"]:
            parts.append("<table><tr><th>kind</th><th>feature</th><th>distance</th><th>threshold</th><th></th></tr>")
            for kind, r in mon["results"]:
                flag = '<span class="alert">alert</span>' if r.get("anomaly") else ""
                distance = _fmt(r.get("distance")) or e(r.get("note") or "not measured")
                parts.append(
                    f"<tr><td>{kind}</td><td>{e(r['feature'])}</td><td>{distance}</td>"
                    f"<td>{_fmt(r.get('threshold'))}</td><td>{flag}</td></tr>"
                )
            parts.append("</table>")
    parts.append('<p><a href="#table">back to the table</a></p></section>')
    return "".join(parts)


def run_inputs(run_dir: str | Path) -> dict[str, Any]:
    """The scorecard's inputs from a local twin run (`<home>/runs/<run>/`): its register, evaluate and validate
    outputs under the pipeline root its run.log names, and the monitor step's endpoint reports if it ran
    (a continuous-training run that found nothing to retrain only monitored)."""
    run_dir = Path(run_dir)
    log = run_dir / "run.log"
    match = (
        re.search(r"(/[^\s\"']*/pipeline_root/[^/\s\"']+)/", log.read_text(errors="replace")) if log.is_file() else None
    )
    if match is None:
        raise UserError(f"{run_dir}: no run.log naming the run's pipeline root (a run folder under <home>/runs/)")
    root = Path(match.group(1))
    moved = run_dir.parent.parent / "pipeline_root" / root.name
    root = moved if moved.is_dir() else root  # a home copied or moved since the run: its own outputs
    registrations = [row for p in sorted(root.glob(f"**/{TASK_REGISTER}/{OUTPUT_REGISTERED}")) for row in _json(p)]
    evaluations = [e for p in sorted(root.glob(f"**/{TASK_EVALUATE}/{OUTPUT_EVALUATION}")) for e in _json(p)]
    anomalies = root / TASK_MONITOR / OUTPUT_ANOMALIES
    segments_path = root / TASK_VALIDATE / OUTPUT_SEGMENTS
    if not registrations and not segments_path.is_file() and not anomalies.is_file():
        raise UserError(f"{run_dir}: the run trained and monitored nothing: no scorecard to write")
    for e in evaluations:
        e.pop("predictions", None)  # the pooled metric's test rows: not shown, and large
    segments = _json(segments_path) if segments_path.is_file() else {}
    monitoring = _json(anomalies).get("endpoints") if anomalies.is_file() else None
    fleet, metric = "", None
    arguments = run_dir / "arguments.json"
    if arguments.is_file():
        text = json.loads(arguments.read_text()).get(PARAM_FLEET_SPEC) or ""
        try:
            spec = parse_spec(text)
            fleet, metric = spec.name, spec.primary_metric
        except ValueError:  # a spec this version no longer reads: the page goes without its name
            pass
    return {
        "registrations": registrations,
        "evaluations": evaluations,
        "segments": segments,
        "monitoring": monitoring,
        "fleet": fleet,
        "metric": metric,
    }


def _json(path: Path) -> Any:
    return json.loads(path.read_text())
