"""run_monitoring through `Platform.monitor` on both platforms: alerts kept where each keeps them, and the
monitor component on a vertex:// URI."""

import json
from datetime import timedelta

import pytest

from fleetops.data.sample import make_churn
from fleetops.monitoring.alerts import ALERTS_FILE, read_alerts
from fleetops.monitoring.service import run_monitoring
from fleetops.names import MODEL_METADATA_FILE
from fleetops.platform.vertex.monitoring import SKEW
from fleetops.spec import parse_spec
from fleetops.training.artifact import FORMAT
from tests.fake_vertex import FakeVertex, connect_to, monitoring_stats
from tests.test_monitoring_jobs import T0, Webhook, _drifted, _log


def _monitored(spec, **changes):
    base = spec.model_dump(mode="json")
    return parse_spec(base | {"monitoring": base["monitoring"] | changes})


def test_on_the_twin_alerts_are_kept_in_its_alert_log(platform, trained_models, spec):
    platform.registry.upload_version("churn-north", trained_models[0], aliases=["champion"])
    platform.endpoints.create("churn-north", labels={"fleet": "churn"}, request_logging_rate=1.0)
    platform.endpoints.deploy("churn-north", "churn-north", "champion")
    monitored = _monitored(spec, window_hours=1.0, min_rows=50)
    _log(platform, make_churn(rows_per_segment=200, segments=1, seed=21), T0 + timedelta(minutes=10))
    _log(platform, _drifted(make_churn(rows_per_segment=200, segments=1, seed=22)), T0 + timedelta(minutes=70))

    run = run_monitoring(monitored, platform, T0 + timedelta(minutes=100))
    assert run.drifted == ["north"] and "skew tenure_months" in run.reports[0].anomalies
    assert [a["segment"] for a in read_alerts(platform.home)] == ["north"] == [a["segment"] for a in run.alerts]


@pytest.fixture
def vertex_fleet(tmp_path, monkeypatch):
    """One segment's model on a Vertex endpoint (the stand-in), its artifact under a stand-in /gcs mount."""
    monkeypatch.setenv("FLEETOPS_GCS_MOUNT", str(tmp_path / "gcs"))
    artifact = tmp_path / "gcs" / "b" / "north"
    artifact.mkdir(parents=True)
    (artifact / MODEL_METADATA_FILE).write_text(json.dumps({"format": FORMAT, "segment": "north"}))
    with FakeVertex() as fake:
        platform = connect_to(fake)
        platform.registry.upload_version("churn-north", artifact, artifact_uri="gs://b/north", serving_image="img")
        platform.endpoints.create("churn-north", labels={"fleet": "churn"})
        _, deployed = platform.endpoints.deploy("churn-north", "churn-north", "1")
        features = dict.fromkeys(["tenure_months", "plan"], 0.05) | {"tenure_months": 0.7}
        window = ("2026-11-20T10:00:00Z", "2026-11-20T11:00:00Z")
        fake.monitoring_stats["churn-north"] = [monitoring_stats(deployed, SKEW, features, 0.3, *window)]
        yield platform


def test_on_vertex_alerts_reach_the_webhook_and_no_local_file(vertex_fleet, spec, tmp_path, capsys):
    with Webhook() as hook:
        monitored = _monitored(spec, webhook=f"{hook.endpoint}/alerts")
        run = run_monitoring(monitored.model_copy(update={"data": _bq(monitored)}), vertex_fleet, T0)
        [posted] = hook.requests
    [alert] = run.alerts
    assert alert["delivery"] == "webhook answered 200" and posted["body"]["anomalies"] == ["skew tenure_months"]
    assert '"severity": "WARNING"' in capsys.readouterr().out  # the structured line Cloud Logging ingests
    assert not list(tmp_path.rglob(ALERTS_FILE))  # Vertex emails and logs; nothing is kept on disk here


def test_the_monitor_component_runs_on_a_vertex_uri(vertex_fleet, spec, tmp_path):
    from kfp.dsl import HTML, Artifact, Markdown, Metrics

    from components import monitoring

    outputs = {
        "report": HTML(uri=str(tmp_path / "report.html")),
        "summary": Markdown(uri=str(tmp_path / "summary.md")),
        "metrics": Metrics(uri=str(tmp_path / "metrics")),
        "anomalies": Artifact(uri=str(tmp_path / "anomalies.json")),
        "scorecard": HTML(uri=str(tmp_path / "scorecard.html")),
    }
    uri = f"vertex://proj-1/us-central1?api_endpoint={vertex_fleet.fake.endpoint}&credentials=anonymous"
    monitored = spec.model_copy(update={"data": _bq(spec)})
    flagged = monitoring.monitor.python_func(fleet_spec=monitored.to_json(), platform=uri, **outputs)
    assert flagged is True
    found = json.loads((tmp_path / "anomalies.json").read_text())
    assert found["segments"] == ["north"] and found["endpoints"][0]["anomalies"] == ["skew tenure_months"]


def _bq(spec):
    return spec.data.model_copy(update={"source": "bq://proj-1.crm.churn"})
