"""The fleet scorecard: its content from plain run dicts, and the page itself in headless Chromium
at 4 and at 1,000 segments (load time, totals, sorting, filtering, a non-blank screenshot)."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path
from typing import Any

import pytest

from fleetops.scorecard import render_scorecard

FEATURES = [f"f{i}" for i in range(15)]


def fleet_inputs(n: int, monitored: bool = True, seed: int = 0) -> dict[str, Any]:
    """A run of `n` segments as the training pipeline leaves it: one in 50 failed, one in 40 skipped,
    the rest registered (about a third new champions); monitoring reports for the registered ones."""
    rng = random.Random(seed)
    registrations, evaluations, skipped, reports = [], [], {}, []
    for i in range(n):
        name = f"seg-{i:04d}"
        if i % 40 == 7:
            skipped[name] = f"{rng.randint(3, 40)} rows, fewer than min_rows 50" if i % 80 == 7 else "one class only"
            continue
        if i % 50 == 3:
            registrations.append({"segment": name, "model_id": f"m-{name}", "failed": "OOM", "promoted": False})
            continue
        value = round(rng.uniform(0.55, 0.95), 4)
        champion = None if i % 3 == 0 else round(value + rng.uniform(-0.05, 0.05), 4)
        promoted = champion is None or value > champion + 0.005
        architecture = ["linear", "dnn", "gbt", "ensemble"][i % 4]
        registrations.append(
            {
                "segment": name,
                "model_id": f"m-{name}",
                "version_id": "2",
                "created": True,
                "promoted": promoted,
                "metric": "auRoc",
                "value": value,
                "champion_version": None if champion is None else "1",
                "champion_value": champion,
                "reason": "first model" if champion is None else f"new auRoc {value} vs champion {champion}",
            }
        )
        evaluations.append(
            {
                "segment": name,
                "model_id": f"m-{name}",
                "test_rows": 100 + i,
                "metric": "auRoc",
                "metrics": {"auRoc": value},
                "promote": promoted,
                "reason": "decided",
                "architecture": architecture,
                "selection": {
                    "metric": "auRoc",
                    "chosen": architecture,
                    "reason": "best on validation",
                    "candidates": {architecture: {"validation": value, "test": value}, "linear": {"validation": 0.5}},
                    "failed": {"dnn": "diverged"} if i % 7 == 0 else {},
                },
            }
        )
        if monitored:
            results = [
                {"feature": f, "distance": rng.uniform(0, 0.4), "threshold": 0.3, "anomaly": False} for f in FEATURES
            ]
            for r in results:
                r["anomaly"] = r["distance"] > r["threshold"]
            reports.append({"segment": name, "endpoint_id": f"e-{name}", "window": {"rows": 500}, "skew": results})
    return {
        "registrations": registrations,
        "evaluations": evaluations,
        "segments": {"skipped": skipped},
        "monitoring": reports if monitored else None,
        "fleet": "churn",
    }


def test_totals_reasons_and_details_from_plain_run_dicts():
    inputs = fleet_inputs(100)
    page, markdown = render_scorecard(**inputs)
    rows = [r for r in inputs["registrations"] if not r.get("failed")]
    champions = sum(r["promoted"] for r in rows)
    title = f"Fleet scorecard of churn: {len(rows)} model(s), {champions} new champion(s)"
    assert markdown.startswith(f"# {title}\n")
    assert f"<h1>{title}</h1>" in page
    # Totals before anything else; skipped and failed grouped by reason with their counts.
    assert markdown.index("| skipped | 3 |") < markdown.index("## Segments")
    assert "- 2 x OOM" in markdown and "- 1 x one class only" in markdown
    alerting = sum(1 for r in inputs["monitoring"] if any(x["anomaly"] for x in r["skew"]))
    assert f"| alerting segments | {alerting:,} (" in markdown
    # One row and one anchored detail section per segment, selection and architecture in it.
    assert page.count('<tr data-status="') == 100
    assert page.count('<section class="segment" id="seg-seg-') == 100
    assert 'id="seg-seg-0003"' in page and "failed in training: OOM" in page
    assert "Model selection: chose dnn: best on validation" in page and "dnn failed: diverged" in page
    assert 'id="heatmap"' in page and "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "<noscript><p>The heat map needs JavaScript" in page  # a viewer without scripts is told where to look


def test_undefined_metrics_odd_names_and_no_monitoring():
    registrations = [
        {"segment": "a<b>&\"c'", "model_id": "m1", "version_id": "1", "promoted": False, "metric": "auRoc"}
        | {"value": math.nan, "champion_version": None, "champion_value": None, "reason": "auRoc undefined: one class"},
        {"segment": "a b", "model_id": "m2", "version_id": "1", "promoted": True, "metric": "auRoc", "value": 0.7}
        | {"champion_version": None, "champion_value": None, "reason": "first model"},
    ]
    evaluations = [{"segment": "a<b>&\"c'", "undefined": {"auRoc": "one class in the test rows"}}]
    outcomes = {"fallback": {"a b": "12 rows, fewer than min_rows 50"}}
    page, markdown = render_scorecard(registrations, evaluations, outcomes)
    assert "served by the fleet's global model: 12 rows, fewer than min_rows 50" in page
    assert "| served by the global model | 1 |" in markdown
    assert "<b>" not in page and "a&lt;b&gt;&amp;&quot;c&#x27;" in page
    assert "auRoc undefined | 1 |" in markdown
    assert "test auRoc undefined: one class in the test rows" in page
    assert 'data-v="nan"' not in page  # undefined sorts last, never as a number
    assert 'id="heatmap"' not in page and "alerting" not in page


def test_an_empty_run_renders():
    page, markdown = render_scorecard([], segments={"skipped": {"x": "no rows"}}, metric="rmse")
    assert "No segment has a defined value." in page and "| skipped | 1 |" in markdown


def _browser():
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (make install-test installs it): no headless page check")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the test extra)")
    return sync_api, chromium


@pytest.mark.parametrize("n", [4, 1000])
def test_the_page_in_headless_chromium(n, tmp_path: Path):
    sync_api, chromium = _browser()
    image = pytest.importorskip("PIL.Image")
    inputs = fleet_inputs(n, monitored=n > 4)
    page_html, _ = render_scorecard(**inputs)
    path = tmp_path / "scorecard.html"
    path.write_text(page_html)
    values = sorted(r["value"] for r in inputs["registrations"] if not r.get("failed"))
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(path.as_uri(), wait_until="load")
            page.wait_for_selector("body[data-ready='1']", timeout=10_000)
            ready = page.evaluate("window.scorecardReady")
            loaded = page.evaluate("performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd")
            assert ready < 2000 and loaded < 2000, (ready, loaded)
            totals = page.locator("#totals")
            assert totals.is_visible() and "new champions" in totals.inner_text()
            first = "#segments tbody tr:not([hidden]) td:nth-child(3)"
            page.click("#segments thead th:nth-child(3)")  # numeric: highest first
            assert float(page.locator(first).first.inner_text()) == pytest.approx(values[-1])
            page.click("#segments thead th:nth-child(3)")
            assert float(page.locator(first).first.inner_text()) == pytest.approx(values[0])
            page.fill("#filter", "seg-0002")
            assert page.locator("#shown").inner_text() == "1"
            assert page.locator("#segments tbody tr:not([hidden])").count() == 1
            page.fill("#filter", "")
            page.select_option("#status", "failed")
            failed = sum(1 for r in inputs["registrations"] if r.get("failed"))
            assert page.locator("#shown").inner_text() == str(failed)
            page.select_option("#status", "")
            shot = tmp_path / "scorecard.png"
            page.screenshot(path=str(shot))
        finally:
            browser.close()
    assert shot.stat().st_size > 5_000
    picture = image.open(shot).convert("RGB")
    colours = picture.getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 20, "the screenshot is blank"
    print(f"scorecard of {n} segments: ready in {ready:.0f} ms, {len(page_html) / 1e6:.2f} MB")


def test_the_summarize_component_writes_the_scorecard_artifact(tmp_path: Path, spec):
    from kfp.dsl import HTML, Artifact, Markdown

    from components import registry

    inputs = fleet_inputs(6, monitored=False)
    rows = [r for r in inputs["registrations"] if not r.get("failed")]
    files = {"registered": rows, "evaluation": inputs["evaluations"], "segments": {"skipped": {}}}
    for name, content in files.items():
        (tmp_path / name).write_text(json.dumps(content))
    registry.summarize.python_func(
        fleet_spec=spec.to_json(),
        registrations=[Artifact(uri=str(tmp_path / "registered"))],
        evaluations=[Artifact(uri=str(tmp_path / "evaluation"))],
        segments=Artifact(uri=str(tmp_path / "segments")),
        summary=Markdown(uri=str(tmp_path / "summary")),
        scorecard=HTML(uri=str(tmp_path / "scorecard.html")),
    )
    page = (tmp_path / "scorecard.html").read_text()
    assert f"<h1>Fleet scorecard of {spec.name}: {len(rows)} model(s)" in page
    assert page.count('<tr data-status="') == len(rows)


def _twin_run(home: Path, stamp: str, spec_text: str, inputs: dict[str, Any] | None) -> Path:
    """A run folder as `fleetops run` leaves it: arguments.json, a run.log naming the pipeline root, and
    the register, evaluate, validate (and monitor) outputs there; `inputs` None: a run that trained nothing."""
    run_dir = home / "runs" / stamp
    run_dir.mkdir(parents=True)
    (run_dir / "arguments.json").write_text(json.dumps({"fleet_spec": spec_text}))
    root = home / "pipeline_root" / f"fleetops-training-{stamp}"
    (run_dir / "run.log").write_text(f'  "uri": "{root}/ingest/raw_data",\n')
    if inputs is not None:
        for i, start in enumerate(range(0, len(inputs["registrations"]), 3)):
            task = root / f"for-loop-1-iteration-{i}"
            (task / "register").mkdir(parents=True)
            (task / "register" / "registered").write_text(json.dumps(inputs["registrations"][start : start + 3]))
            (task / "evaluate").mkdir(parents=True)
            (task / "evaluate" / "evaluation").write_text(json.dumps(inputs["evaluations"]))
        (root / "validate").mkdir(parents=True)
        (root / "validate" / "segments").write_text(json.dumps(inputs["segments"]))
        if inputs["monitoring"]:
            (root / "monitor").mkdir(parents=True)
            (root / "monitor" / "anomalies").write_text(json.dumps({"endpoints": inputs["monitoring"]}))
    return run_dir


def test_fleetops_report_writes_the_latest_training_runs_scorecard(tmp_path: Path, spec, capsys):
    from fleetops_cli.cli import main

    home, text = tmp_path / "home", spec.to_json()
    older = _twin_run(home, "20260101-000000-000000", text, fleet_inputs(5, monitored=False))
    latest = _twin_run(home, "20260102-000000-000000", text, fleet_inputs(12))
    _twin_run(home, "20260103-000000-000000", text, None)  # newest, but trained nothing (e.g. monitoring only)
    assert main(["report", "--home", str(home)]) == 0
    written = latest / "scorecard.html"
    assert capsys.readouterr().out.strip() == str(written)
    page = written.read_text()
    assert f"Fleet scorecard of {spec.name}: 10 model(s)" in page and 'id="heatmap"' in page
    assert (latest / "scorecard.md").read_text().startswith(f"# Fleet scorecard of {spec.name}")
    out = tmp_path / "out" / "card.html"
    assert main(["report", "--home", str(home), "--run", str(older), "--output", str(out)]) == 0
    assert "4 model(s)" in out.read_text() and out.with_suffix(".md").is_file()
    assert main(["report", "--home", str(tmp_path / "empty")]) == 2
    assert "no run that trained or monitored under" in capsys.readouterr().err
    # A continuous-training run that found nothing to retrain only monitored: its scorecard is the alerts.
    monitored = fleet_inputs(6)
    only = _twin_run(home, "20260104-000000-000000", text, monitored | {"registrations": [], "evaluations": []})
    assert main(["report", "--home", str(home)]) == 0
    page = (only / "scorecard.html").read_text()
    alerting = sum(1 for r in monitored["monitoring"] if any(x["anomaly"] for x in r["skew"]))
    assert f"Fleet monitoring scorecard of {spec.name}: 5 segment(s) monitored, {alerting} alerting" in page


def test_monitored_segments_not_retrained_and_empty_windows_are_listed():
    inputs = fleet_inputs(3)
    reports = inputs["monitoring"] + [
        {"segment": "quiet", "window": {"rows": 0}, "note": "0 logged request row(s) in the window", "skew": []}
    ]
    page, markdown = render_scorecard(**(inputs | {"monitoring": reports}))
    assert "| quiet | not retrained |" in markdown
    assert "| monitored segments | 4 (1 not judged: too few rows) |" in markdown
    assert "monitoring: 0 logged request row(s) in the window" in page
    assert "| auRoc undefined |" not in markdown  # a segment that was not trained has no metric to miss


def test_fairness_fleet_wide_and_each_segments_gates():
    """The scorecard pools every segment's fairness counts and shows each segment's gate verdicts."""
    import numpy as np
    import pandas as pd

    from fleetops.evaluation import fairness
    from fleetops.spec import FairnessGate

    rng = np.random.default_rng(3)
    evaluations, registrations = [], []
    for i, segment in enumerate(["north", "south"]):
        test = pd.DataFrame({"plan": rng.choice(["basic", "premium"], 60)})
        y = rng.integers(0, 2, 60)
        scores = rng.dirichlet([1, 1], 60)
        report = fairness.evaluate("binary_classification", test, ["plan"], y, scores, classes=["0", "1"])
        report["gates"] = fairness.check_gates(
            report, [FairnessGate(slice="plan", metric=fairness.ACCURACY, max_abs=0.0 if i == 0 else 1.0)]
        )
        blocked = i == 0
        reason = "not promoted: breaks the fairness gate (x)" if blocked else "first champion"
        evaluations.append({"segment": segment, "fairness": report, "reason": reason})
        registrations.append(
            {
                "segment": segment,
                "model_id": f"churn-{segment}",
                "version_id": "1",
                "promoted": not blocked,
                "metric": "auRoc",
                "value": 0.7,
                "champion_version": None,
                "champion_value": None,
                "reason": reason,
            }
        )
    page, markdown = render_scorecard(registrations, evaluations, {}, fleet="churn")
    pooled = fairness.pool("binary_classification", [e["fairness"] for e in evaluations])
    assert "## Fairness, fleet-wide (2 segments' test rows pooled)" in markdown
    assert "\n".join(fairness.markdown_lines(pooled, heading=False)) in markdown
    assert "| kept from champion by a fairness gate | 1 |" in markdown
    assert 'id="fairness"' in page and "fairness gate evaluation.fairness[0]" in page
    basic = next(s for s in pooled["columns"][0]["slices"] if s["value"] == "basic")
    assert basic["rows"] + basic["rest_rows"] == 120


def test_a_run_that_only_monitored_shows_what_monitoring_found():
    """No training in the run: no training totals or metric chart; each segment's status is its findings."""
    reports = fleet_inputs(6)["monitoring"]
    page, markdown = render_scorecard([], [], {}, monitoring=reports, fleet="churn", metric="auRoc")
    assert markdown.startswith(f"# Fleet monitoring scorecard of churn: {len(reports)} segment(s) monitored")
    assert "| models |" not in markdown and "| new champions |" not in markdown
    assert 'id="distribution"' not in page and "not retrained" not in markdown
    statuses = {line.split(" | ")[1] for line in markdown.splitlines() if line.startswith("| seg-")}
    assert statuses <= {"alerting", "within thresholds"} and statuses
