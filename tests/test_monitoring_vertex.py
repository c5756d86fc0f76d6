"""Vertex-managed monitoring and schedules: the requests the real SDK sends, against the loopback stand-in."""

import pytest
from google.auth.credentials import AnonymousCredentials

from fleetops.errors import UserError
from fleetops.platform import connect
from fleetops.platform.vertex.monitoring import configure_fleet_monitoring
from fleetops.spec import parse_spec
from tests.fake_vertex import FakeVertex, Refusal


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
