"""The monitoring loop for real: a trained fleet, drift in one segment, continuous training under kfp.local."""

import numpy as np
import pytest

from fleetops.data.sample import SAMPLE_SPEC, make_churn
from fleetops.monitoring.alerts import read_alerts
from fleetops.names import pipeline_arguments
from fleetops.platform import connect, local_uri
from fleetops.platform.local.pipeline_runs import run_compiled, run_every
from fleetops.serving.request_log import RequestLogWriter
from fleetops.spec import parse_spec
from pipelines.compile import compile_all

pytestmark = pytest.mark.slow


def _spec(source):
    base = parse_spec(SAMPLE_SPEC.format(source=source)).model_dump(mode="json")
    base["training"] |= {"epochs": 6, "hidden_units": [8]}
    base["architectures"] = ["linear"]
    return parse_spec(base)


def _traffic(platform, spec, segment, rows):
    endpoint = platform.endpoints.get(f"churn-{segment}")
    deployed = max(endpoint.deployed_models, key=lambda m: endpoint.traffic_split[m.deployed_model_id])
    records = rows[spec.features.all].to_dict("records")
    instances = [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()} for r in records]
    writer = RequestLogWriter(platform.home)
    writer.log(endpoint.endpoint_id, deployed, instances, [{}] * len(instances))
    writer.close()


def test_drift_in_one_segment_retrains_that_segment_only(tmp_path):
    home, data = tmp_path / "home", tmp_path / "churn.csv"
    make_churn(rows_per_segment=250, segments=2, seed=5).to_csv(data, index=False)
    spec = _spec(data)
    templates = compile_all(tmp_path / "build")
    arguments = pipeline_arguments(spec.to_json(), local_uri(home))
    assert run_compiled(templates["fleet_training"], arguments, home, out=open(tmp_path / "t.txt", "w")).ok
    platform = connect(local_uri(home))

    fresh = make_churn(rows_per_segment=250, segments=2, seed=6)
    north = fresh["region"] == "north"
    fresh.loc[north, "tenure_months"] += 50  # north's customers changed
    fresh.loc[north, "plan"] = "premium"
    fresh.to_csv(data, index=False)  # the fresh data retraining reads
    _traffic(platform, spec, "north", fresh[north].head(100))
    _traffic(platform, spec, "south", fresh[~north].head(100))

    progress = tmp_path / "progress.txt"
    run = run_compiled(templates["continuous_training"], arguments, home, out=open(progress, "w"))
    assert run.ok, run.log_path.read_text()[-3000:]
    shown = progress.read_text()
    assert "ok  monitor" in shown and "ok  plan-retraining" in shown and shown.count("ok  train ") == 1
    assert "ok  promote-canaries" in shown
    assert [v.version_id for v in platform.registry.list_versions("churn-north")] == ["1", "2"]
    assert [v.version_id for v in platform.registry.list_versions("churn-south")] == ["1"]  # no drift, no retraining
    north_endpoint = platform.endpoints.get("churn-north")
    assert len(north_endpoint.deployed_models) == 1  # promoted (or, had v2 lost, never deployed)
    alerts = read_alerts(home)
    assert [a["segment"] for a in alerts] == ["north"] and "skew tenure_months" in alerts[0]["anomalies"]
    reports = list((home / "pipeline_root").glob("fleetops-continuous-training-*/monitor/report"))
    assert reports and "tenure_months" in reports[0].read_text()
    # The monitoring run's fleet scorecard: its heat map and the drifted segment's findings.
    [scorecard] = list((home / "pipeline_root").glob("fleetops-continuous-training-*/monitor/scorecard"))
    page = scorecard.read_text()
    assert 'id="heatmap-title"' in page and "tenure_months" in page

    # The local schedule runs the same pipeline again; with no new traffic nothing more is retrained.
    sleeps = []
    assert run_every(templates["continuous_training"], arguments, home, minutes=5, runs=2, sleep=sleeps.append) == [
        True,
        True,
    ]
    assert len(sleeps) == 1 and 0 < sleeps[0] <= 300
    assert [v.version_id for v in platform.registry.list_versions("churn-north")] == ["1", "2"]
    assert [v.version_id for v in platform.registry.list_versions("churn-south")] == ["1"]
