"""Submitting the compiled pipeline: Vertex requests built offline, KFP through the real kfp.Client."""

import json
import socket

import pytest
from google.auth.credentials import AnonymousCredentials
from google.protobuf import json_format

from fleetops.errors import UserError
from fleetops.names import pipeline_arguments
from fleetops.platform import vertex_settings
from fleetops.platform.vertex.pipeline_jobs import build_pipeline_job, pipeline_job_request
from fleetops_cli.cli import main
from fleetops_cli.submit import submit_to_kfp
from pipelines.compile import compile_all
from tests.fake_kfp import FakeKfp

KEY = "projects/p/locations/us-central1/keyRings/r/cryptoKeys/k"
PLATFORM = (
    "vertex://proj-1/us-central1?staging_bucket=gs://proj-1-staging&service_account=runner@proj-1.iam.gserviceaccount.com"
    f"&encryption_key={KEY}&network=projects/123/global/networks/vpc&labels=team:growth"
)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return compile_all(tmp_path_factory.mktemp("build"), image="us-docker.pkg.dev/proj-1/fleetops/components:v1")[
        "fleet_training"
    ]


def test_vertex_pipeline_job_request(template):
    settings = vertex_settings(PLATFORM)
    job = build_pipeline_job(
        settings,
        template,
        pipeline_arguments("{}", PLATFORM, "img"),
        display_name="churn-training",
        job_id="churn-training-1",
        enable_caching=False,
        labels={"fleet": "churn"},
        credentials=AnonymousCredentials(),
    )
    request = type(job._gca_resource).to_dict(job._gca_resource)
    assert request["display_name"] == "churn-training"
    assert request["runtime_config"]["gcs_output_directory"] == "gs://proj-1-staging/pipeline_root"
    assert request["runtime_config"]["parameter_values"]["platform"] == PLATFORM
    assert request["labels"]["team"] == "growth" and request["labels"]["fleet"] == "churn"
    assert request["encryption_spec"]["kms_key_name"] == KEY
    executors = request["pipeline_spec"]["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {"us-docker.pkg.dev/proj-1/fleetops/components:v1"}
    tasks = request["pipeline_spec"]["root"]["dag"]["tasks"]
    assert all(t["cachingOptions"] == {"enableCache": False} for t in tasks.values())  # reaches every task
    assert job.job_id == "churn-training-1"


def test_vertex_job_id_and_root_are_checked(template):
    settings = vertex_settings(PLATFORM)
    with pytest.raises(UserError, match=r"job id 'Bad_ID' is invalid"):
        build_pipeline_job(
            settings, template, {}, display_name="x", job_id="Bad_ID", credentials=AnonymousCredentials()
        )
    with pytest.raises(UserError, match="needs a pipeline root"):
        build_pipeline_job(
            vertex_settings("vertex://proj-1/us-central1"),
            template,
            {},
            display_name="x",
            credentials=AnonymousCredentials(),
        )


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to reach a server fails the test: a name lookup, a connect, or opening a gRPC channel."""
    import grpc
    from google.api_core import grpc_helpers

    def refuse(*args, **kwargs):
        raise AssertionError(f"a dry run tried to reach the network: {args}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    for module, name in [(grpc, "secure_channel"), (grpc, "insecure_channel"), (grpc_helpers, "create_channel")]:
        monkeypatch.setattr(module, name, refuse)


@pytest.fixture
def fresh_sdk_config(monkeypatch):
    """The SDK's global configuration as a new `fleetops submit` process has it (other tests call aiplatform.init)."""
    from google.cloud.aiplatform import initializer

    monkeypatch.setattr(initializer, "global_config", initializer._Config())


def test_cli_submit_dry_run_prints_the_request(tmp_path, spec, capsys, template, no_network, fresh_sdk_config):
    remote = spec.model_copy(update={"data": spec.data.model_copy(update={"source": "bq://proj-1.crm.churn"})})
    (tmp_path / "fleet.yaml").write_text(remote.to_json())
    code = main(
        [
            "submit",
            str(tmp_path / "fleet.yaml"),
            "--platform",
            PLATFORM,
            "--dry-run",
            "--job-id",
            "churn-1",
            "--template",
            str(template),
        ]
    )
    assert code == 0
    request = json.loads(capsys.readouterr().out)
    assert request["method"] == "POST"
    assert (
        request["url"]
        == "https://us-central1-aiplatform.googleapis.com/v1/projects/proj-1/locations/us-central1/pipelineJobs"
    )
    assert request["params"]["pipelineJobId"] == "churn-1"
    body = request["body"]
    assert body["serviceAccount"] == "runner@proj-1.iam.gserviceaccount.com"
    assert body["network"] == "projects/123/global/networks/vpc"
    assert body["encryptionSpec"] == {"kmsKeyName": KEY}
    assert body["labels"] == {"team": "growth", "fleet": "churn"}
    assert body["displayName"] == "churn-1"
    assert body["runtimeConfig"]["gcsOutputDirectory"] == "gs://proj-1-staging/pipeline_root"
    parameters = body["runtimeConfig"]["parameterValues"]
    assert (
        parameters["platform"] == PLATFORM
        and json.loads(parameters["fleet_spec"])["data"]["source"] == "bq://proj-1.crm.churn"
    )
    assert body["pipelineSpec"]["pipelineInfo"]["name"] == "fleetops-training"


def test_the_dry_run_request_is_what_the_sdks_submit_would_send(template, no_network):
    """`PipelineJob.submit` sets the run-as fields on the job before creating it; the dry run leaves the job as is."""
    settings = vertex_settings(PLATFORM)
    job = build_pipeline_job(
        settings,
        template,
        {"fleet_spec": "{}"},
        display_name="churn",
        job_id="churn-2",
        credentials=AnonymousCredentials(),
    )
    request = pipeline_job_request(job, settings)
    assert job._gca_resource.service_account == "" and job._gca_resource.network == ""
    job._gca_resource.service_account, job._gca_resource.network = settings.service_account, settings.network
    assert request["body"] == json_format.MessageToDict(job._gca_resource._pb)


def test_cli_refuses_a_local_file_on_vertex(tmp_path, spec, capsys):
    (tmp_path / "fleet.yaml").write_text(spec.to_json())
    assert main(["submit", str(tmp_path / "fleet.yaml"), "--platform", PLATFORM, "--dry-run", "--template", "x"]) == 2
    assert "is a file on this machine; on Vertex use gs://" in capsys.readouterr().err


def test_cli_reports_a_bad_spec_without_running(tmp_path, capsys):
    (tmp_path / "fleet.yaml").write_text(
        "name: churn\ntask: binary_classification\nlabel: y\nfeatures: {numeric: [a]}\nextra: 1\n"
    )
    assert main(["run", str(tmp_path / "fleet.yaml"), "--home", str(tmp_path / "home")]) == 2
    err = capsys.readouterr().err
    assert "data: required field is missing" in err and "extra: unknown field" in err
    assert not (tmp_path / "home" / "runs").exists()


def test_kfp_cluster_run_through_the_real_client(template):
    with FakeKfp() as fake:
        run_id = submit_to_kfp(fake.host, template, pipeline_arguments("{}", "local"), run_name="churn-1")
    assert run_id == "run-1"
    paths = [(r["method"], r["path"]) for r in fake.requests]
    assert paths[0] == ("GET", "/apis/v2beta1/healthz")
    run = next(r["body"] for r in fake.requests if r["path"] == "/apis/v2beta1/runs")
    assert run["display_name"] == "churn-1" and run["experiment_id"] == "exp-1"
    assert run["pipeline_spec"]["pipelineInfo"]["name"] == "fleetops-training"
    assert run["runtime_config"]["parameters"] == pipeline_arguments("{}", "local")
    assert json.dumps(run).count("us-docker.pkg.dev/proj-1/fleetops/components:v1") == 10


# Submission and schedules are platform capabilities: the CLI never asks which platform it has.


def test_a_vertex_run_is_submitted_once_even_when_its_answer_is_lost(template):
    from fleetops.platform import PipelineRun
    from tests.fake_vertex import FakeVertex, Refusal, connect_to

    with FakeVertex() as fake:
        platform = connect_to(
            fake, "&staging_bucket=gs://proj-1-staging&service_account=runner@proj-1.iam.gserviceaccount.com"
        )
        run = PipelineRun(template, {"fleet_spec": "{}"}, display_name="churn", job_id="churn-7", labels={"a": "b"})
        fake.refusals.append(Refusal(503, count=1, after_handling=True, method="POST", path_suffix="/pipelineJobs"))
        fake.refusals.append(Refusal(429, count=1, method="POST", path_suffix="/pipelineJobs"))
        submission = platform.submit_pipeline(run)
        assert submission.name == "projects/proj-1/locations/us-central1/pipelineJobs/churn-7" and submission.ok is None
        assert list(fake.pipeline_jobs) == [submission.name]  # refused once, created once and its answer lost
        job = fake.pipeline_jobs[submission.name]
        assert job["serviceAccount"] == "runner@proj-1.iam.gserviceaccount.com" and job["labels"] == {"a": "b"}
        assert platform.time.sleeps  # the 429 was waited out, on the platform's clock
        # What was sent is what a dry run prints for the same run.
        sent = fake.calls("POST", "/pipelineJobs")[-1]
        assert sent["body"] == platform.submit_pipeline(run, dry_run=True).request["body"]
        assert "pipelineJobId=churn-7" in sent["query"]
        with pytest.raises(UserError, match="runs on cron, not every_minutes"):
            platform.schedule_pipeline(run, every_minutes=5)
        with pytest.raises(UserError, match=r"cron 'hourly' must have 5 fields"):
            platform.schedule_pipeline(run, cron="hourly")


def test_cli_schedule_dry_run_prints_the_vertex_request(tmp_path, spec, capsys, no_network, fresh_sdk_config):
    remote = spec.model_copy(update={"data": spec.data.model_copy(update={"source": "bq://proj-1.crm.churn"})})
    (tmp_path / "fleet.yaml").write_text(remote.to_json())
    args = ["schedule", str(tmp_path / "fleet.yaml"), "--platform", PLATFORM, "--home", str(tmp_path / "home")]
    assert main([*args, "--cron", "0 * * * *", "--dry-run"]) == 0
    request = json.loads(capsys.readouterr().out)
    assert request["cron"] == "0 * * * *" and request["maxConcurrentRunCount"] == 1
    body = request["createPipelineJobRequest"]
    assert body["serviceAccount"] == "runner@proj-1.iam.gserviceaccount.com"
    assert body["network"] == "projects/123/global/networks/vpc" and body["encryptionSpec"] == {"kmsKeyName": KEY}
    assert body["pipelineSpec"]["pipelineInfo"]["name"] == "fleetops-continuous-training"
    assert main([*args, "--every-minutes", "5", "--dry-run"]) == 2
    assert "runs on cron, not every_minutes 5.0" in capsys.readouterr().err


def test_the_local_twin_runs_what_is_submitted_and_refuses_what_it_cannot(tmp_path, spec, capsys, template):
    from fleetops.platform import PipelineRun, connect, local_uri

    platform = connect(local_uri(tmp_path / "home"))
    run = PipelineRun(template, {"fleet_spec": spec.to_json()}, display_name="churn")
    dry = platform.submit_pipeline(run, dry_run=True)
    assert dry.request["runner"] == "kfp.local" and dry.request["template"] == str(template)
    assert not (tmp_path / "home" / "runs").exists()  # a dry run runs nothing
    with pytest.raises(UserError, match=r"not on cron '0 \* \* \* \*'"):
        platform.schedule_pipeline(run, cron="0 * * * *")
    with pytest.raises(UserError, match="needs every_minutes > 0"):
        platform.schedule_pipeline(run, every_minutes=0)
    with pytest.raises(UserError, match="is in Cloud Storage, which the local twin does not read"):
        platform.check_source("gs://bucket/churn.csv")
    platform.check_source("bq://proj-1.crm.churn")
