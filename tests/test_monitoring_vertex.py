"""Vertex-managed monitoring and schedules: the requests the real SDK sends, against the loopback stand-in."""

import json
from datetime import UTC, datetime

import pytest
from google.auth.credentials import AnonymousCredentials

from fleetops.errors import UserError
from fleetops.monitoring.service import narrow_to_segments, run_monitoring
from fleetops.names import MODEL_METADATA_FILE
from fleetops.platform import connect
from fleetops.platform.vertex.monitoring import DRIFT, SKEW, configure_fleet_monitoring
from fleetops.spec import parse_spec
from fleetops.training.artifact import FORMAT
from tests.fake_vertex import FakeVertex, Refusal, connect_to, monitoring_stats


@pytest.fixture
def vertex(artifact_dirs, spec):
    with FakeVertex() as fake:
        platform = connect(
            f"vertex://proj-1/us-central1?api_endpoint={fake.endpoint}&labels=team:ml",
            credentials=AnonymousCredentials(),
        )
        platform.registry.upload_version("churn-north", artifact_dirs[0], artifact_uri="gs://b/m", serving_image="img")
        platform.endpoints.create("churn-north", labels={"fleet": "churn"})
        platform.endpoints.deploy("churn-north", "churn-north", "1")
        platform.fake = fake
        yield platform


def test_monitoring_job_request(vertex, spec):
    base = spec.model_dump(mode="json")
    monitored = parse_spec(
        base
        | {
            "monitoring": {
                "skew_threshold": 0.2,
                "drift_threshold": 0.25,
                "feature_thresholds": {"plan": 0.1},
                "interval_hours": 6,
                "sampling_rate": 0.5,
                "alert_emails": ["ml-oncall@example.com"],
            }
        }
    )
    [name] = configure_fleet_monitoring(monitored, vertex, "bq://proj-1.crm.churn_training")
    assert name == "projects/proj-1/locations/us-central1/modelDeploymentMonitoringJobs/1"
    job = vertex.fake.calls("POST", "modelDeploymentMonitoringJobs")[0]["body"]
    assert job["endpoint"] == "projects/proj-1/locations/us-central1/endpoints/churn-north"
    [objective] = job["modelDeploymentMonitoringObjectiveConfigs"]
    config = objective["objectiveConfig"]
    skew = config["trainingPredictionSkewDetectionConfig"]["skewThresholds"]
    assert skew["plan"] == {"value": 0.1} and skew["tenure_months"] == {"value": 0.2}
    assert config["predictionDriftDetectionConfig"]["driftThresholds"]["contract"] == {"value": 0.25}
    assert config["trainingDataset"]["bigquerySource"] == {"inputUri": "bq://proj-1.crm.churn_training"}
    assert config["trainingDataset"]["targetField"] == "churned"
    assert job["loggingSamplingStrategy"] == {"randomSampleConfig": {"sampleRate": 0.5}}
    assert job["modelDeploymentMonitoringScheduleConfig"]["monitorInterval"] == "21600s"
    assert job["modelMonitoringAlertConfig"]["emailAlertConfig"] == {"userEmails": ["ml-oncall@example.com"]}
    assert job["modelMonitoringAlertConfig"]["enableLogging"] is True
    assert job["labels"] == {"team": "ml", "fleet": "churn"}


def test_a_monitoring_job_created_before_its_answer_was_lost_is_not_created_again(vertex, spec):
    vertex.fake.refusals.append(
        Refusal(503, count=1, after_handling=True, method="POST", path_suffix="modelDeploymentMonitoringJobs")
    )
    vertex.calls.sleep = lambda seconds: None  # the back-off's wait
    [name] = configure_fleet_monitoring(spec, vertex, "bq://proj-1.crm.churn_training")
    assert name == "projects/proj-1/locations/us-central1/modelDeploymentMonitoringJobs/1"
    assert len(vertex.fake.calls("POST", "modelDeploymentMonitoringJobs")) == 1


def test_training_data_must_be_on_gcp(vertex, spec):
    with pytest.raises(UserError, match="must be bq://project.dataset.table or gs://"):
        configure_fleet_monitoring(spec, vertex, "/local/train.csv")


def test_vertex_schedule_request(vertex, spec, tmp_path):
    from fleetops.platform import vertex_settings
    from fleetops.platform.vertex.pipeline_jobs import build_pipeline_job, create_schedule
    from pipelines.compile import compile_all

    template = compile_all(tmp_path)["continuous_training"]
    settings = vertex_settings(
        f"vertex://proj-1/us-central1?api_endpoint={vertex.fake.endpoint}&staging_bucket=gs://bkt"
        "&service_account=runner@proj-1.iam.gserviceaccount.com"
    )
    job = build_pipeline_job(
        settings,
        template,
        {"fleet_spec": spec.to_json(), "platform": "vertex://proj-1/us-central1"},
        display_name="churn-continuous",
        credentials=AnonymousCredentials(),
    )
    with pytest.raises(UserError, match="must have 5 fields"):
        create_schedule(job, settings, "hourly", "churn-schedule")
    name = create_schedule(job, settings, "0 * * * *", "churn-schedule", max_concurrent_run_count=1)
    request = vertex.fake.calls("POST", "/schedules")[0]["body"]
    assert name.startswith("projects/proj-1/locations/us-central1/schedules/")
    assert request["cron"] == "0 * * * *" and request["maxConcurrentRunCount"] == "1"
    created = request["createPipelineJobRequest"]
    assert created["pipelineJob"]["runtimeConfig"]["gcsOutputDirectory"] == "gs://bkt/pipeline_root"
    assert created["pipelineJob"]["serviceAccount"] == "runner@proj-1.iam.gserviceaccount.com"


# -- monitoring as a platform capability: Platform.monitor on Vertex ------------------------------

KEY = "projects/proj-1/locations/us-central1/keyRings/r/cryptoKeys/k"
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def _on_vertex(spec, source, **monitoring):
    """The spec with its data read from `source` and these monitoring settings."""
    base = spec.model_dump(mode="json")
    return parse_spec(base | {"data": base["data"] | {"source": source}, "monitoring": monitoring})


@pytest.fixture
def fleet(tmp_path, monkeypatch):
    """Two segments' models, each served by its endpoint, artifacts under a stand-in for the /gcs mount."""
    mount = tmp_path / "gcs"
    monkeypatch.setenv("FLEETOPS_GCS_MOUNT", str(mount))
    with FakeVertex() as fake:
        platform = connect_to(fake, f"&labels=team:ml&encryption_key={KEY}")
        for segment in ("north", "south"):
            artifact = mount / "b" / segment
            artifact.mkdir(parents=True)
            (artifact / MODEL_METADATA_FILE).write_text(json.dumps({"format": FORMAT, "segment": segment}))
            model = f"churn-{segment}"
            platform.registry.upload_version(model, artifact, artifact_uri=f"gs://b/{segment}", serving_image="img")
            platform.endpoints.create(model, labels={"fleet": "churn"})
            platform.endpoints.deploy(model, model, "1")
        yield platform


def _serving(platform, endpoint_id):
    return platform.endpoints.get(endpoint_id).deployed_models[0].deployed_model_id


def test_monitor_creates_one_job_per_endpoint_and_a_rerun_reuses_it(fleet, spec):
    monitored = _on_vertex(
        spec,
        "bq://proj-1.crm.churn",
        skew_threshold=0.2,
        drift_threshold=0.25,
        feature_thresholds={"plan": 0.1},
        interval_hours=6,
        sampling_rate=0.5,
        alert_emails=["ml-oncall@example.com"],
    )
    fleet.monitor(monitored, NOW)
    fleet.monitor(monitored, NOW)  # a rerun finds the jobs
    created = [c["body"] for c in fleet.fake.calls("POST", "modelDeploymentMonitoringJobs")]
    assert sorted(job["endpoint"].rsplit("/", 1)[-1] for job in created) == ["churn-north", "churn-south"]
    job = created[0]
    config = job["modelDeploymentMonitoringObjectiveConfigs"][0]["objectiveConfig"]
    skew = config["trainingPredictionSkewDetectionConfig"]["skewThresholds"]
    assert skew["plan"] == {"value": 0.1} and skew["tenure_months"] == {"value": 0.2}
    assert config["predictionDriftDetectionConfig"]["driftThresholds"]["contract"] == {"value": 0.25}
    assert config["trainingDataset"]["bigquerySource"] == {"inputUri": "bq://proj-1.crm.churn"}
    assert job["loggingSamplingStrategy"] == {"randomSampleConfig": {"sampleRate": 0.5}}
    assert job["modelDeploymentMonitoringScheduleConfig"]["monitorInterval"] == "21600s"
    assert job["modelMonitoringAlertConfig"]["emailAlertConfig"] == {"userEmails": ["ml-oncall@example.com"]}
    assert job["labels"] == {"team": "ml", "fleet": "churn"}
    assert job["encryptionSpec"] == {"kmsKeyName": KEY}


def test_vertex_results_become_reports_and_the_drifted_segment_is_planned_for_retraining(fleet, spec):
    monitored = _on_vertex(spec, "gs://b/churn.csv", skew_threshold=0.3, drift_threshold=0.3)
    north = _serving(fleet, "churn-north")
    quiet = dict.fromkeys(spec.features.all, 0.05)
    fleet.fake.monitoring_stats["churn-north"] = [
        monitoring_stats(north, SKEW, quiet, 0.3, "2026-11-20T09:00:00Z", "2026-11-20T10:00:00Z"),
        monitoring_stats(north, SKEW, quiet | {"tenure_months": 0.62}, 0.3, "2026-11-20T10:00:00Z", _T11),
        monitoring_stats(north, DRIFT, quiet | {"plan": 0.3}, 0.3, "2026-11-20T10:00:00Z", _T11),
        # After `now`: not this run's.
        monitoring_stats(north, DRIFT, quiet | {"plan": 0.9}, 0.3, _T11, "2026-11-20T13:00:00Z"),
    ]
    run = run_monitoring(monitored, fleet, NOW)

    reports = {r.endpoint_id: r for r in run.reports}
    flagged, waiting = reports["churn-north"], reports["churn-south"]
    assert (flagged.segment, flagged.model_id, flagged.version_id) == ("north", "churn-north", "1")
    assert flagged.anomalies == ["skew tenure_months"]  # drift of plan is 0.3: not above 0.3
    [tenure] = [r for r in flagged.skew if r.feature == "tenure_months"]
    assert (tenure.distance, tenure.threshold, tenure.metric) == (0.62, 0.3, "jensen_shannon")
    [plan] = [r for r in flagged.drift if r.feature == "plan"]
    assert (plan.distance, plan.metric, plan.anomaly) == (0.3, "l_infinity", False)
    assert flagged.window_start.startswith("2026-11-20T10:00") and flagged.window_end.startswith("2026-11-20T11:00")
    assert waiting.skew == [] and waiting.drift == [] and not waiting.anomalies
    assert "no skew results yet" in waiting.note and "no drift results yet" in waiting.note

    assert run.drifted == ["north"] and [a["segment"] for a in run.alerts] == ["north"]
    assert narrow_to_segments(monitored, run.drifted).data.segments == ["north"]
    search = fleet.fake.calls("POST", ":searchModelDeploymentMonitoringStatsAnomalies")[0]["body"]
    assert search["deployedModelId"] == north and search["endTime"].startswith("2026-11-20T12:00:00")
    assert {o["type"] for o in search["objectives"]} == {1, 2}  # RAW_FEATURE_SKEW, RAW_FEATURE_DRIFT (as numbers)


def test_the_report_follows_the_model_taking_most_traffic(fleet, spec, tmp_path):
    retrained = tmp_path / "gcs" / "b" / "north-2"
    retrained.mkdir()
    (retrained / MODEL_METADATA_FILE).write_text(json.dumps({"format": FORMAT, "segment": "north", "retrained": 1}))
    fleet.registry.upload_version("churn-north", retrained, artifact_uri="gs://b/north-2", serving_image="img")
    old = _serving(fleet, "churn-north")
    _, new = fleet.endpoints.deploy("churn-north", "churn-north", "2", traffic_percentage=90)
    quiet = dict.fromkeys(spec.features.all, 0.05)
    window = ("2026-11-20T10:00:00Z", _T11)
    fleet.fake.monitoring_stats["churn-north"] = [
        monitoring_stats(old, DRIFT, quiet | {"plan": 0.8}, 0.3, *window),
        monitoring_stats(new, DRIFT, quiet, 0.3, *window),
    ]
    [north, _] = fleet.monitor(_on_vertex(spec, "gs://b/churn.csv"), NOW)
    assert north.version_id == "2" and not north.anomalies


def test_a_model_deployed_after_the_job_was_created_is_watched_with_the_same_objective(fleet, spec, tmp_path):
    monitored = _on_vertex(spec, "bq://proj-1.crm.churn", drift_threshold=0.2)
    fleet.monitor(monitored, NOW)
    first = _serving(fleet, "churn-north")
    retrained = tmp_path / "gcs" / "b" / "north-2"
    retrained.mkdir()
    (retrained / MODEL_METADATA_FILE).write_text(json.dumps({"format": FORMAT, "segment": "north", "retrained": 1}))
    fleet.registry.upload_version("churn-north", retrained, artifact_uri="gs://b/north-2", serving_image="img")
    _, canary = fleet.endpoints.deploy("churn-north", "churn-north", "2", traffic_percentage=10)

    fleet.monitor(monitored, NOW)
    fleet.monitor(monitored, NOW)  # watched now: nothing more to update
    [update] = fleet.fake.calls("PATCH", "modelDeploymentMonitoringJobs/1")
    assert "updateMask=modelDeploymentMonitoringObjectiveConfigs" in update["query"]
    configs = update["body"]["modelDeploymentMonitoringObjectiveConfigs"]
    assert [c["deployedModelId"] for c in configs] == [first, canary]
    assert configs[1]["objectiveConfig"] == configs[0]["objectiveConfig"]
    assert configs[1]["objectiveConfig"]["trainingDataset"]["bigquerySource"] == {"inputUri": "bq://proj-1.crm.churn"}
    assert len(fleet.fake.calls("POST", "modelDeploymentMonitoringJobs")) == 2  # one per endpoint, ever


def test_a_data_source_vertex_cannot_read_gives_drift_only_and_says_why(fleet, spec):
    monitored = _on_vertex(spec, "gs://b/churn.parquet")
    north = _serving(fleet, "churn-north")
    quiet = dict.fromkeys(spec.features.all, 0.05)
    fleet.fake.monitoring_stats["churn-north"] = [
        monitoring_stats(north, DRIFT, quiet, 0.3, "2026-11-20T10:00:00Z", _T11)
    ]
    report = fleet.monitor(monitored, NOW)[0]
    job = fleet.fake.calls("POST", "modelDeploymentMonitoringJobs")[0]["body"]
    config = job["modelDeploymentMonitoringObjectiveConfigs"][0]["objectiveConfig"]
    assert "trainingDataset" not in config and "trainingPredictionSkewDetectionConfig" not in config
    assert "predictionDriftDetectionConfig" in config
    assert report.skew == [] and len(report.drift) == len(spec.features.all)
    assert "skew is not monitored on Vertex" in report.note and "gs://b/churn.parquet" in report.note


def test_a_threshold_changed_since_the_job_was_created_and_the_policy_vertex_cannot_apply_are_noted(fleet, spec):
    north = _serving(fleet, "churn-north")
    fleet.fake.monitoring_stats["churn-north"] = [
        monitoring_stats(north, DRIFT, {"plan": 0.25}, 0.4, "2026-11-20T10:00:00Z", _T11)
    ]
    monitored = _on_vertex(spec, "bq://proj-1.crm.churn", drift_threshold=0.2, policy="calibrated")
    report = fleet.monitor(monitored, NOW)[0]
    assert "Vertex judges with the fixed rule" in report.note
    by_feature = {r.feature: r for r in report.drift}
    assert by_feature["plan"].anomaly and "judges against 0.4" in by_feature["plan"].note
    assert by_feature["contract"].distance is None and "no statistics" in by_feature["contract"].note


def test_an_artifact_out_of_reach_is_named(fleet, spec, tmp_path, monkeypatch):
    monkeypatch.setenv("FLEETOPS_GCS_MOUNT", str(tmp_path / "elsewhere"))
    with pytest.raises(UserError, match=r"artifact of .*churn-north@1 \(gs://b/north\) is not readable"):
        fleet.monitor(_on_vertex(spec, "bq://proj-1.crm.churn"), NOW)


def test_vertex_monitoring_needs_a_vertex_platform(platform, spec):
    with pytest.raises(UserError, match="needs a vertex:// platform"):
        configure_fleet_monitoring(spec, platform, "bq://proj-1.crm.churn_training")


_T11 = "2026-11-20T11:00:00Z"
