"""Skew and drift jobs over the request log of a served model, the report, and alerts."""

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from fleetops.data.sample import make_churn
from fleetops.monitoring.alerts import read_alerts, send_alerts
from fleetops.monitoring.jobs import drifted_segments, monitor_endpoint, monitor_fleet
from fleetops.monitoring.report import metrics, render_html, render_markdown
from fleetops.serving.request_log import RequestLogWriter
from fleetops.spec import parse_spec
from tests.loopback import LoopbackJsonServer

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


class Webhook(LoopbackJsonServer):
    def handle(self, method, path, query, body):
        return 200, {"received": True}


@pytest.fixture
def served(platform, trained_models, spec):
    platform.registry.upload_version("churn-north", trained_models[0], aliases=["champion"])
    platform.endpoints.create("churn-north", labels={"fleet": "churn", "segment": "north"}, request_logging_rate=1.0)
    platform.endpoints.deploy("churn-north", "churn-north", "champion")
    base = spec.model_dump(mode="json")
    spec = parse_spec(base | {"monitoring": {"window_hours": 1.0, "min_rows": 50}})
    return platform, spec


def _log(platform, rows, at):
    writer = RequestLogWriter(platform.home)
    endpoint = platform.endpoints.get("churn-north")
    deployed = endpoint.deployed_models[0]
    features = [
        "tenure_months",
        "monthly_charges",
        "support_calls",
        "data_usage_gb",
        "plan",
        "contract",
        "payment_method",
    ]
    instances = [{f: (None if v != v else v) for f, v in row.items()} for row in rows[features].to_dict("records")]
    writer.log("churn-north", deployed, instances, [{}] * len(instances), at=at)
    writer.close()


def _drifted(df):
    df = df.copy()
    df["tenure_months"] = df["tenure_months"] + 60
    df["plan"] = "premium"
    return df


def test_same_traffic_is_quiet_and_drifted_traffic_is_flagged(served):
    platform, spec = served
    normal = make_churn(rows_per_segment=400, segments=1, seed=21)
    _log(platform, normal.iloc[:200], T0 + timedelta(minutes=10))
    _log(platform, normal.iloc[200:], T0 + timedelta(minutes=70))
    quiet = monitor_endpoint(spec, platform, platform.home, "churn-north", now=T0 + timedelta(minutes=100))
    assert quiet.rows == 200 and quiet.previous_rows == 200 and quiet.segment == "north"
    assert not quiet.skew_anomaly and not quiet.drift_anomaly, quiet.anomalies
    assert {r.feature for r in quiet.skew} == set(spec.features.all)

    _log(platform, _drifted(make_churn(rows_per_segment=200, segments=1, seed=22)), T0 + timedelta(minutes=130))
    [flagged] = monitor_fleet(spec, platform, platform.home, now=T0 + timedelta(minutes=160))
    assert "skew tenure_months" in flagged.anomalies and "skew plan" in flagged.anomalies
    assert "drift tenure_months" in flagged.anomalies and "drift plan" in flagged.anomalies
    assert "skew contract" not in flagged.anomalies  # untouched features stay quiet
    assert drifted_segments([quiet, flagged]) == ["north"]

    html = render_html("churn", [flagged])
    assert html.count("<svg") >= 2 * len(spec.features.all) and "ALERT" in html and "tenure_months" in html
    markdown = render_markdown("churn", [flagged])
    assert "| north | churn-north@1 | 200 |" in markdown and "skew tenure_months" in markdown
    assert metrics([flagged])["north/max_skew"] > 0.3 and metrics([flagged])["flagged_segments"] == 1.0


def test_small_and_empty_windows_are_reported_not_judged(served):
    platform, spec = served
    empty = monitor_endpoint(spec, platform, platform.home, "churn-north", now=T0)
    assert empty.rows == 0 and empty.skew == [] and not empty.anomalies
    assert "0 logged request row(s)" in empty.note and "drift needs 50 rows" in empty.note
    _log(platform, make_churn(rows_per_segment=20, segments=1, seed=5), T0 - timedelta(minutes=5))
    small = monitor_endpoint(spec, platform, platform.home, "churn-north", now=T0)
    assert small.rows == 20 and "at least 50 are needed" in small.note


def test_alerts_go_to_the_log_and_the_webhook(served, capsys):
    platform, spec = served
    report = SimpleNamespace(
        anomalies=["skew plan"],
        skew=[],
        drift=[],
        endpoint_id="churn-north",
        segment="north",
        model_id="churn-north",
        version_id="1",
    )
    with Webhook() as hook:
        [alert] = send_alerts("churn", [report], platform.home, f"{hook.endpoint}/alerts")
        posted = hook.requests[0]
    assert alert["delivery"] == "webhook answered 200"
    assert (
        posted["path"] == "/alerts"
        and posted["body"]["segment"] == "north"
        and posted["body"]["anomalies"] == ["skew plan"]
    )
    assert read_alerts(platform.home)[0]["endpoint_id"] == "churn-north"
    assert '"severity": "WARNING"' in capsys.readouterr().out  # the structured line Cloud Logging ingests
    [unreachable] = send_alerts("churn", [report], platform.home, "http://127.0.0.1:9/nothing")
    assert unreachable["delivery"].startswith("webhook failed")
    assert len(read_alerts(platform.home)) == 2
