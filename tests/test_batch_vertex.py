"""A fleet's batch prediction on Vertex: a BatchPredictionJob per segment, against the loopback stand-in.

The real SDK sends the requests; the stand-in runs each job on our `Predictor` (standing in for
Vertex running our serving container) and writes its outputs under the Cloud Storage mount's
stand-in folder, where the platform collects them into the local twin's schema.
"""

import json
import shutil
from urllib.parse import parse_qs

import pandas as pd
import pytest

from fleetops.batch import INVALID_ARGUMENT, NOT_FOUND, BatchMachine, fleet_batch_predict
from fleetops.data.sample import make_churn
from fleetops.errors import PlatformError, UserError
from tests.fake_vertex import FakeVertex, Refusal, connect_to

KMS_KEY = "projects/proj-1/locations/us-central1/keyRings/r/cryptoKeys/k"
RUNNER = "runner@proj-1.iam.gserviceaccount.com"
SETTINGS = f"&labels=team:ml&encryption_key={KMS_KEY}&service_account={RUNNER}&jobs_per_minute=600"
JOB_PATH = "batchPredictionJobs"


@pytest.fixture
def mount(tmp_path, monkeypatch):
    """A folder standing in for the Cloud Storage mount (/gcs in a Vertex task)."""
    folder = tmp_path / "gcs"
    monkeypatch.setenv("FLEETOPS_GCS_MOUNT", str(folder))
    return folder


@pytest.fixture
def source(tmp_path):
    """Two segments of rows, two of them with values no model takes, two with a value missing."""
    rows = make_churn(rows_per_segment=60, segments=2, seed=9)
    rows["tenure_months"] = rows["tenure_months"].astype(object)
    rows.loc[3, "tenure_months"] = "ten"
    rows.loc[70, "monthly_charges"] = float("inf")
    rows.loc[5, "plan"] = None  # missing values are not errors: the model imputes them
    rows.loc[80, "support_calls"] = None
    path = tmp_path / "score.csv"
    rows.to_csv(path, index=False)
    return str(path)


@pytest.fixture
def artifacts(mount, trained_models):
    """The two trained models, copied into the bucket (under the mount) as the registry's artifacts."""
    paths = {}
    for segment, model in zip(("north", "south"), trained_models, strict=True):
        paths[segment] = mount / "bucket" / "models" / segment
        shutil.copytree(model, paths[segment])
    return paths


@pytest.fixture
def fake():
    with FakeVertex() as server:
        yield server


@pytest.fixture
def vertex(fake, artifacts):
    platform = connect_to(fake, SETTINGS)
    for segment, path in artifacts.items():
        platform.registry.upload_version(f"churn-{segment}", path, serving_image="img", aliases=["champion"])
    return platform


@pytest.fixture
def work(mount):
    return mount / "bucket" / "pipeline_root" / "run-1" / "batch-predict" / "work"


def _frames(result):
    predictions = pd.read_parquet(result.predictions_path).sort_values("customer_id", ignore_index=True)
    errors = pd.read_parquet(result.errors_path).sort_values("customer_id", ignore_index=True)
    return predictions, errors


def test_each_segment_is_a_job_on_its_champion_with_the_platform_settings(vertex, fake, spec, source, work):
    machine = BatchMachine("n1-standard-8", starting_replica_count=2, max_replica_count=5, batch_size=32)
    vertex.fleet_batch_predict(spec, source, work, machine=machine)
    bodies = [call["body"] for call in fake.calls("POST", JOB_PATH)]
    assert [body["model"] for body in bodies] == [
        "projects/proj-1/locations/us-central1/models/churn-north@1",
        "projects/proj-1/locations/us-central1/models/churn-south@1",
    ]
    north = bodies[0]
    work_uri = "gs://bucket/pipeline_root/run-1/batch-predict/work"
    assert north["inputConfig"] == {
        "instancesFormat": "jsonl",
        "gcsSource": {"uris": [f"{work_uri}/instances/churn-north.jsonl"]},
    }
    assert north["instanceConfig"] == {"instanceType": "object", "keyField": "fleetops_row"}
    assert north["outputConfig"] == {
        "predictionsFormat": "jsonl",
        "gcsDestination": {"outputUriPrefix": f"{work_uri}/outputs/churn-north"},
    }
    assert north["dedicatedResources"] == {
        "machineSpec": {"machineType": "n1-standard-8"},
        "startingReplicaCount": 2,
        "maxReplicaCount": 5,
    }
    assert north["manualBatchTuningParameters"] == {"batchSize": 32}
    assert north["encryptionSpec"] == {"kmsKeyName": KMS_KEY}
    assert north["serviceAccount"] == RUNNER
    assert north["labels"]["team"] == "ml" and north["labels"]["fleet"] == "churn"
    assert north["labels"]["fleetops-batch-input"] != bodies[1]["labels"]["fleetops-batch-input"]
    # The instances: the model's features and the row key, nothing else; the bad row was not sent.
    lines = [json.loads(line) for line in (work / "instances" / "churn-north.jsonl").read_text().splitlines()]
    assert set(lines[0]) == {"fleetops_row", *spec.features.all}
    assert len(lines) == 59 and 3 not in {line["fleetops_row"] for line in lines}


def test_results_are_what_the_local_twin_gives_on_the_same_models(vertex, platform, artifacts, spec, source, work):
    for segment, path in artifacts.items():
        platform.registry.upload_version(f"churn-{segment}", path, aliases=["champion"])
    local = fleet_batch_predict(spec, platform, source, work.parent / "local")
    remote = fleet_batch_predict(spec, vertex, source, work)
    counts = (remote.rows, remote.predicted, remote.errors)
    assert counts == (local.rows, local.predicted, local.errors) == (120, 118, 2)
    (local_predictions, local_errors), (predictions, errors) = _frames(local), _frames(remote)
    assert list(predictions.columns) == list(local_predictions.columns)
    assert list(predictions.columns[-3:]) == ["prediction", "model_id", "version_id"]
    other = [c for c in predictions.columns if c != "prediction"]
    pd.testing.assert_frame_equal(predictions[other], local_predictions[other])
    for mine, theirs in zip(predictions["prediction"], local_predictions["prediction"], strict=True):
        assert list(mine["classes"]) == list(theirs["classes"])
        assert list(mine["scores"]) == pytest.approx(list(theirs["scores"]), abs=1e-6)
    pd.testing.assert_frame_equal(errors, local_errors)
    assert set(errors["errors"].map(lambda e: e["code"])) == {INVALID_ARGUMENT}
    assert predictions["customer_id"].isin(["c0000005", "c0000080"]).sum() == 2


def test_a_failed_job_names_its_segment_and_the_other_segments_are_kept(vertex, fake, spec, source, work):
    fake.failing_batch_models["churn-south@1"] = "the serving container exited with code 1"
    result = vertex.fleet_batch_predict(spec, source, work)
    predictions, errors = _frames(result)
    assert set(predictions["model_id"]) == {"churn-north"} and result.predicted == 59
    [failure] = result.failures
    assert failure["segment"] == "south" and failure["model"].endswith("models/churn-south@1")
    assert failure["job"] == "projects/proj-1/locations/us-central1/batchPredictionJobs/2"
    south = errors[errors["region"] == "south"]
    assert len(south) == 60  # its 59 valid rows and the one no model takes
    message = south[south["customer_id"] != "c0000070"].iloc[0]["errors"]["message"]
    assert "segment 'south' (model projects/proj-1/locations/us-central1/models/churn-south@1)" in message
    assert "JOB_STATE_FAILED: the serving container exited with code 1" in message
    assert result.summary()["failures"] == result.failures


def test_instances_the_container_refuses_are_errors_with_its_message(vertex, fake, spec, source, work):
    fake.refuse_batch_instance = lambda instance: "plan 'premium' is retired" if instance["plan"] == "premium" else None
    result = vertex.fleet_batch_predict(spec, source, work, machine=BatchMachine(batch_size=1))
    predictions, errors = _frames(result)
    refused = errors[errors["errors"].map(lambda e: e["message"] == "plan 'premium' is retired")]
    assert len(refused) > 0 and set(refused["plan"]) == {"premium"}
    assert set(refused["errors"].map(lambda e: e["code"])) == {INVALID_ARGUMENT}  # from the status name
    assert "premium" not in set(predictions["plan"])
    assert result.predicted + result.errors == result.rows == 120 and not result.failures


def test_a_submit_whose_answer_was_lost_is_found_not_made_twice(vertex, fake, spec, source, work):
    fake.refusals.append(Refusal(503, count=1, after_handling=True, method="POST", path_suffix=JOB_PATH))
    result = vertex.fleet_batch_predict(spec, source, work)
    assert len(fake.calls("POST", JOB_PATH)) == 2  # one per segment: the refused one was not sent again
    assert sorted(job_id for kind, job_id in fake.jobs if kind == JOB_PATH) == ["1", "2"]
    assert result.predicted == 118 and not result.failures


def test_rows_of_a_segment_without_a_champion_are_errors_and_get_no_job(fake, artifacts, spec, source, work):
    vertex = connect_to(fake, SETTINGS)
    vertex.registry.upload_version("churn-north", artifacts["north"], serving_image="img", aliases=["champion"])
    result = vertex.fleet_batch_predict(spec, source, work)
    _, errors = _frames(result)
    south = errors[errors["region"] == "south"]
    assert len(south) == 60 and set(south["errors"].map(lambda e: e["code"])) == {NOT_FOUND}
    assert "churn-south" in south.iloc[0]["errors"]["message"]
    assert [call["body"]["model"].rsplit("/", 1)[-1] for call in fake.calls("POST", JOB_PATH)] == ["churn-north@1"]


def test_running_jobs_are_polled_and_cancelled_at_the_timeout(vertex, fake, spec, source, work):
    fake.batch_reads_running = 2
    finished = vertex.fleet_batch_predict(spec, source, work / "a")
    assert finished.predicted == 118 and vertex.time.sleeps.count(30.0) == 2
    # Each poll is one listing of the call's jobs by their run label, not a read per job.
    assert len(fake.calls("GET", JOB_PATH)) == 3 and not fake.calls("GET", f"{JOB_PATH}/1")
    [run] = {call["body"]["labels"]["fleetops_batch_run"] for call in fake.calls("POST", JOB_PATH)}
    assert parse_qs(fake.calls("GET", JOB_PATH)[0]["query"])["filter"] == [f'labels.fleetops_batch_run="{run}"']
    fake.batch_reads_running = 1000
    late = vertex.fleet_batch_predict(spec, source, work / "b", machine=BatchMachine(timeout_seconds=100))
    assert late.predicted == 0 and len(late.failures) == 2
    assert {call["path"].rsplit("/", 1)[-1] for call in fake.calls("POST", ":cancel")} == {"3:cancel", "4:cancel"}
    assert [fake.jobs[(JOB_PATH, i)]["state"] for i in "34"] == ["JOB_STATE_CANCELLED"] * 2
    reasons = pd.read_parquet(late.errors_path)["errors"]
    timed_out = [r for r in reasons if r["code"] == 4]
    assert len(timed_out) == 118  # every row sent; the two bad ones are errors for their values
    assert "still JOB_STATE_RUNNING after 100 s, so it was cancelled" in timed_out[0]["message"]


def test_the_work_folder_must_be_under_the_cloud_storage_mount(vertex, spec, source, tmp_path):
    with pytest.raises(UserError, match="under the Cloud Storage mount"):
        vertex.fleet_batch_predict(spec, source, tmp_path / "elsewhere")


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"batch_size": 0}, "batch_size 0 must be a whole number of at least 1"),
        ({"starting_replica_count": 3, "max_replica_count": 2}, "max_replica_count 2 must be at least"),
        ({"timeout_seconds": 0}, "timeout_seconds 0 must be a positive number"),
    ],
)
def test_machine_settings_are_checked_before_anything_is_sent(settings, problem):
    with pytest.raises(UserError, match=problem):
        BatchMachine(**settings)


def test_one_versions_job_is_submitted_once_and_waited_on(vertex, fake):
    fake.refusals.append(Refusal(503, count=1, after_handling=True, method="POST", path_suffix=JOB_PATH))
    fake.batch_reads_running = 2  # the look-up's listing reads it once, then two polls
    summary = vertex.batch_predict("churn-north", "champion", "bq://proj-1.crm.churn", "bq://proj-1.scores")
    assert summary["state"] == "JOB_STATE_SUCCEEDED" and len(fake.jobs) == 1  # found after the lost answer
    assert vertex.time.sleeps.count(30.0) == 1  # polled by our clock, not the SDK's own wait
    fake.failing_batch_models["churn-south@1"] = "out of quota for n1-standard-4"
    with pytest.raises(PlatformError, match=r"churn-south@1 ended JOB_STATE_FAILED: out of quota for n1-standard-4"):
        vertex.batch_predict("churn-south", "1", "bq://proj-1.crm.churn", "bq://proj-1.scores")
