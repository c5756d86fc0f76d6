"""Tuning on Vertex: `VertexPlatform.tune` submits a HyperparameterTuningJob (the real SDK against the stand-in)
whose trials run our image's trainer on the dataset's gs:// object, waits for it, and keeps the best feasible trial.
"""

import json
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml
from google.cloud.aiplatform_v1.types import StudySpec

from fleetops.data.sample import SAMPLE_SPEC
from fleetops.errors import PlatformError, UserError
from fleetops.platform.vertex import gcs_local_path
from fleetops.spec import parse_spec
from fleetops.tuning.local import study_name
from fleetops.tuning.vertex import IMAGE_VARIABLE, REQUEST_LABEL
from tests.fake_vertex import FakeVertex, Refusal, connect_to

IMAGE = "us-docker.pkg.dev/proj-1/fleetops/components:abc123"
KEY = "projects/proj-1/locations/us-central1/keyRings/r/cryptoKeys/k"
NETWORK = "projects/123456/global/networks/vpc"
ACCOUNT = "runner@proj-1.iam.gserviceaccount.com"
RUN_AS = f"&service_account={ACCOUNT}&network={NETWORK}&encryption_key={KEY}&labels=team:ml"


def _spec(**tuning):
    base = yaml.safe_load(SAMPLE_SPEC.format(source="bq://proj-1.crm.churn"))
    base["training"] |= {"epochs": 3}
    base["tuning"] = {
        "enabled": True,
        "algorithm": "random",
        "max_trial_count": 6,
        "parallel_trial_count": 2,
        "max_failed_trial_count": 3,
        "parameters": {
            "learning_rate": {"type": "double", "min": 0.001, "max": 0.1, "scale": "log"},
            "batch_size": {"type": "discrete", "values": [32, 64]},
            "epochs": {"type": "integer", "min": 2, "max": 4, "scale": "linear"},
            "architecture": {"type": "categorical", "values": ["linear", "dnn"]},
        },
        **tuning,
    }
    return parse_spec(base)


def _trial(trial_id, state, learning_rate, metrics=None, **more):
    """A trial as Vertex's REST API returns it."""
    trial = {
        "id": trial_id,
        "state": state,
        "parameters": [
            {"parameterId": "learning_rate", "value": learning_rate},
            {"parameterId": "batch_size", "value": 64.0},
            {"parameterId": "epochs", "value": 3.0},
            {"parameterId": "architecture", "value": "linear"},
        ],
        "startTime": "2026-11-27T10:00:00Z",
        "endTime": "2026-11-27T10:05:00Z",
        **more,
    }
    if metrics:
        trial["finalMeasurement"] = {"metrics": [{"metricId": k, "value": v} for k, v in metrics.items()]}
    return trial


TRIALS = [
    _trial("1", "SUCCEEDED", 0.01, {"auRoc": 0.81, "logLoss": 0.40}),
    _trial("2", "SUCCEEDED", 0.02, {"auRoc": 0.86, "logLoss": 0.45}),
    # Infeasible with the best values of all: counted, never chosen.
    _trial("3", "INFEASIBLE", 0.09, {"auRoc": 0.99, "logLoss": 0.01}, infeasibleReason="the trainer exited with 2"),
    _trial("4", "SUCCEEDED", 0.05),  # ended without reporting the metric
    _trial("5", "SUCCEEDED", 0.03, {"auRoc": 0.70, "logLoss": 0.30}),
]


@pytest.fixture
def mount(tmp_path, monkeypatch):
    """A folder standing in for /gcs, the image naming itself, and the split dataset under the mount."""
    monkeypatch.setenv("FLEETOPS_GCS_MOUNT", str(tmp_path / "gcs"))
    monkeypatch.setenv("FLEETOPS_IMAGE", IMAGE)
    dataset = tmp_path / "gcs" / "bkt" / "pipeline_root" / "run-1" / "split" / "dataset"
    dataset.parent.mkdir(parents=True)
    dataset.write_bytes(b"parquet")
    return dataset


def _split_dataset(spec, destination, work):
    """A real split dataset of one segment ("north") at `destination`; the spec reading its sample data."""
    from fleetops import training_steps
    from fleetops.data.sample import write_sample
    from fleetops.platform import connect, local_uri

    data = write_sample(work / "churn.csv", rows_per_segment=200, segments=1, seed=3)
    spec = spec.model_copy(update={"data": spec.data.model_copy(update={"source": str(data)})})
    training_steps.ingest(spec, connect(local_uri(work / "home")), work / "raw.parquet")
    training_steps.split_dataset(spec, work / "raw.parquet", destination)
    return spec


@pytest.fixture
def fake():
    with FakeVertex() as server:
        yield server


def test_a_vertex_tune_submits_our_trainer_and_keeps_the_best_feasible_trial(fake, mount):
    vertex = connect_to(fake, f"&staging_bucket=gs://bkt{RUN_AS}")
    fake.tuning_trials, fake.tuning_reads_running = TRIALS, 2
    spec = _spec()
    record = vertex.tune(spec, mount, "north", log=lambda *_: None)

    [post] = fake.calls("POST", "/hyperparameterTuningJobs")
    job = post["body"]
    folder = f"gs://bkt/pipeline_root/tuning/{study_name(spec, 'north')}/{job['labels'][REQUEST_LABEL]}"
    trial_job = job["trialJobSpec"]
    [worker] = trial_job["workerPoolSpecs"]
    assert worker["containerSpec"] == {
        "imageUri": IMAGE,
        "command": ["python", "-m", "fleetops.training.trial"],
        "args": ["--spec", f"{folder}/spec.json", "--data", "gs://bkt/pipeline_root/run-1/split/dataset"]
        + ["--segment", "north"],
    }
    assert worker["machineSpec"] == {"machineType": "n1-standard-4"} and worker["replicaCount"] == "1"
    # The trials' models go under the tuning folder; the spec they read was written there through the mount.
    assert trial_job["baseOutputDirectory"] == {"outputUriPrefix": folder}
    assert parse_spec(json.loads(Path(gcs_local_path(f"{folder}/spec.json")).read_text())) == spec
    assert (trial_job["serviceAccount"], trial_job["network"]) == (ACCOUNT, NETWORK)

    study = job["studySpec"]  # the REST transport sends enums as their numbers
    assert study["metrics"] == [{"metricId": "auRoc", "goal": StudySpec.MetricSpec.GoalType.MAXIMIZE.value}]
    assert study["algorithm"] == StudySpec.Algorithm.RANDOM_SEARCH.value
    scales = StudySpec.ParameterSpec.ScaleType
    parameters = {p["parameterId"]: p for p in study["parameters"]}
    assert parameters["learning_rate"]["doubleValueSpec"] == {"minValue": 0.001, "maxValue": 0.1}
    assert parameters["learning_rate"]["scaleType"] == scales.UNIT_LOG_SCALE.value
    assert parameters["epochs"]["integerValueSpec"] == {"minValue": "2", "maxValue": "4"}
    assert parameters["epochs"]["scaleType"] == scales.UNIT_LINEAR_SCALE.value
    assert parameters["batch_size"]["discreteValueSpec"] == {"values": [32.0, 64.0]}
    assert parameters["architecture"]["categoricalValueSpec"] == {"values": ["linear", "dnn"]}
    assert (job["maxTrialCount"], job["parallelTrialCount"], job["maxFailedTrialCount"]) == (6, 2, 3)
    assert job["labels"]["team"] == "ml" and job["encryptionSpec"] == {"kmsKeyName": KEY}

    # Polled through reads (running twice, then ended), waiting between them on the call layer's clock.
    assert len(fake.calls("GET", "/hyperparameterTuningJobs/1")) == 3 and vertex.time.sleeps == [30.0, 60.0]
    assert record["scope"] == "per_segment" and record["job"].endswith("/hyperparameterTuningJobs/1")
    assert (record["metric"], record["goal"], record["best_value"]) == ("auRoc", "maximize", 0.86)
    assert record["best_parameters"] == {"learning_rate": 0.02, "batch_size": 64, "epochs": 3, "architecture": "linear"}
    states = {t["trial_id"]: (t["state"], t["error"]) for t in record["trials"]}
    assert states == {
        "1": ("SUCCEEDED", ""),
        "2": ("SUCCEEDED", ""),
        "3": ("FAILED", "INFEASIBLE: the trainer exited with 2"),
        "4": ("FAILED", "reported no finite auRoc (got None)"),
        "5": ("SUCCEEDED", ""),
    }
    assert record["trials"][0]["seconds"] == 300.0


def test_the_best_trial_follows_the_metrics_goal(fake, mount):
    vertex = connect_to(fake, "&staging_bucket=gs://bkt")
    fake.tuning_trials = TRIALS
    record = vertex.tune(_spec(metric="logLoss"), mount, "north", log=lambda *_: None)
    goal = fake.calls("POST", "/hyperparameterTuningJobs")[0]["body"]["studySpec"]["metrics"]
    assert goal == [{"metricId": "logLoss", "goal": StudySpec.MetricSpec.GoalType.MINIMIZE.value}]
    assert (record["goal"], record["best_value"], record["best_parameters"]["learning_rate"]) == ("minimize", 0.3, 0.03)


def test_a_job_past_the_timeout_is_cancelled(fake, mount):
    vertex = connect_to(fake, "&staging_bucket=gs://bkt")
    fake.tuning_reads_running = 10**6
    with pytest.raises(PlatformError, match=r"hyperparameterTuningJobs/1 for segment 'north' did not finish within 24"):
        vertex.tune(_spec(), mount, "north", log=lambda *_: None)
    assert len(fake.calls("POST", "/hyperparameterTuningJobs/1:cancel")) == 1
    assert fake.jobs[("hyperparameterTuningJobs", "1")]["state"] == "JOB_STATE_CANCELLED"
    assert sum(vertex.time.sleeps) == 24 * 3600 and max(vertex.time.sleeps) == 600


def test_a_failed_job_or_one_without_a_feasible_trial_is_an_error(fake, mount):
    vertex = connect_to(fake, "&staging_bucket=gs://bkt")
    fake.tuning_trials = [TRIALS[2], TRIALS[3]]
    with pytest.raises(UserError, match=r"no trial of Vertex job .*/hyperparameterTuningJobs/1 succeeded .*INFEASIBLE"):
        vertex.tune(_spec(), mount, "north", log=lambda *_: None)
    fake.tuning_end_state = "JOB_STATE_FAILED"
    with pytest.raises(PlatformError, match="hyperparameterTuningJobs/2 for segment 'north' ended JOB_STATE_FAILED"):
        vertex.tune(_spec(), mount, "north", log=lambda *_: None)


def test_a_create_whose_answer_was_lost_is_not_repeated(fake, mount):
    vertex = connect_to(fake, "&staging_bucket=gs://bkt")
    fake.tuning_trials = TRIALS
    fake.refusals = [Refusal(503, count=1, after_handling=True, method="POST", path_suffix="/hyperparameterTuningJobs")]
    record = vertex.tune(_spec(), mount, "north", log=lambda *_: None)
    assert len(fake.calls("POST", "/hyperparameterTuningJobs")) == 1  # the retry found the job by its label
    [listing] = fake.calls("GET", "/hyperparameterTuningJobs")
    assert f"filter=labels.{REQUEST_LABEL}=" in listing["query"]
    assert len([k for k in fake.jobs if k[0] == "hyperparameterTuningJobs"]) == 1 and record["best_value"] == 0.86


def test_a_refused_create_leaves_no_spec_behind(fake, mount):
    vertex = connect_to(fake, "&staging_bucket=gs://bkt")
    fake.refusals = [Refusal(500, count=1, method="POST", path_suffix="/hyperparameterTuningJobs")]
    with pytest.raises(PlatformError, match="hyperparameter tuning job creation for segment 'north' failed"):
        vertex.tune(_spec(), mount, "north", log=lambda *_: None)
    assert not list(Path(gcs_local_path("gs://bkt/pipeline_root/tuning")).rglob("spec.json"))


def test_nothing_is_sent_without_the_image_or_a_dataset_in_cloud_storage(fake, mount, tmp_path, monkeypatch):
    vertex = connect_to(fake, "&staging_bucket=gs://bkt")
    (tmp_path / "local.parquet").write_bytes(b"parquet")
    with pytest.raises(UserError, match="dataset '.*local.parquet' is not in Cloud Storage"):
        vertex.tune(_spec(), tmp_path / "local.parquet", "north", log=lambda *_: None)
    monkeypatch.delenv("FLEETOPS_IMAGE")
    with pytest.raises(UserError, match=r"named by \$FLEETOPS_IMAGE"):
        vertex.tune(_spec(), mount, "north", log=lambda *_: None)
    assert fake.calls("POST") == []


def test_vertex_work_folders_are_on_the_tasks_own_disk(fake, mount):
    vertex = connect_to(fake, "&staging_bucket=gs://bkt")
    folder, other = vertex.work_folder("tuning"), vertex.work_folder("monitoring")
    for made in (folder, other):
        shutil.rmtree(made)  # the test's own leftovers (a Vertex task's disk goes with the task)
    assert folder.parent == Path(tempfile.gettempdir()) and folder.name.startswith("fleetops-tuning-")
    assert vertex.work_folder("tuning") == folder and other != folder
    assert not folder.resolve().is_relative_to(mount.parents[4].resolve())  # not under the Cloud Storage mount
    with pytest.raises(UserError, match="work folder purpose '../x' must be a simple folder name"):
        vertex.work_folder("../x")


def test_the_train_step_on_vertex_tunes_through_a_job_and_writes_no_study_into_its_model(
    fake, mount, tmp_path, monkeypatch
):
    """The train component's own function, given a vertex:// URI: the segment is tuned by a Vertex job and
    trained with its best trial; the model artifact (under the Cloud Storage mount) holds no study."""
    import google.auth
    from google.auth.credentials import AnonymousCredentials
    from kfp.dsl import Artifact, Dataset, Model

    from components.training import train
    from fleetops.training.artifact import read_metadata

    # The task's Application Default Credentials (Google's, not ours): anonymous, for the loopback stand-in.
    monkeypatch.setattr(google.auth, "default", lambda *a, **k: (AnonymousCredentials(), "proj-1"))
    spec = _split_dataset(
        _spec(parameters={"learning_rate": {"type": "double", "min": 0.001, "max": 0.1, "scale": "log"}}),
        mount,
        tmp_path,
    )
    fake.tuning_trials = [
        _trial("1", "SUCCEEDED", 0.004, {"auRoc": 0.7}),
        _trial("2", "SUCCEEDED", 0.03, {"auRoc": 0.8}),
    ]
    for trial in fake.tuning_trials:  # the spec tunes the learning rate only
        trial["parameters"] = trial["parameters"][:1]
    run = mount.parents[1]  # gs://bkt/pipeline_root/run-1 under the mount
    (run / "tune").write_text(json.dumps({"best_parameters": None}))
    (run / "global").mkdir()
    # Artifacts at their local paths under the mount, as a Vertex task sees them (/gcs/...).
    model = Model(uri=str(run / "train" / "model"))
    train.python_func(
        fleet_spec=spec.to_json(),
        platform=f"vertex://proj-1/us-central1?api_endpoint={fake.endpoint}&staging_bucket=gs://bkt",
        dataset=Dataset(uri=str(mount)),
        shard={"shard": 0, "segments": ["north"], "fallback": {}},
        tuning=Artifact(uri=str(run / "tune")),
        global_model=Model(uri=str(run / "global")),
        cpu_limit="4",
        memory_limit="16G",
        model=model,
    )
    [job] = fake.calls("POST", "/hyperparameterTuningJobs")
    assert job["body"]["trialJobSpec"]["workerPoolSpecs"][0]["containerSpec"]["args"][3] == (
        "gs://bkt/pipeline_root/run-1/split/dataset"
    )
    metadata = read_metadata(Path(model.path) / "north")
    assert metadata["hyperparameters"]["learning_rate"] == 0.03 and metadata["tuning"]["best_value"] == 0.8
    written = [p.relative_to(model.path).as_posix() for p in Path(model.path).rglob("*")]
    assert written and not [p for p in written if "tuning" in p or "trial" in p or p.endswith((".sqlite3", ".db"))]
    assert not list(mount.parents[4].rglob("*.sqlite3"))  # nor anywhere under the Cloud Storage mount


def test_the_fleet_tune_step_on_vertex_shares_the_jobs_best_parameters(fake, mount, tmp_path, monkeypatch):
    import google.auth
    import pandas as pd
    from google.auth.credentials import AnonymousCredentials
    from kfp.dsl import Artifact, Dataset

    from components.tuning import tune
    from fleetops.training.segments import SEGMENT_COLUMN

    monkeypatch.setattr(google.auth, "default", lambda *a, **k: (AnonymousCredentials(), "proj-1"))
    pd.DataFrame({SEGMENT_COLUMN: ["south", "north", "north"]}).to_parquet(mount)
    fake.tuning_trials = TRIALS
    trials = Artifact(uri=str(tmp_path / "trials"))
    tune.python_func(
        fleet_spec=_spec(scope="fleet").to_json(),
        platform=f"vertex://proj-1/us-central1?api_endpoint={fake.endpoint}&staging_bucket=gs://bkt",
        dataset=Dataset(uri=str(mount)),
        trials=trials,
    )
    study = json.loads(Path(trials.path).read_text())
    assert (
        study["scope"] == "fleet" and study["segment"] == "north" and study["best_parameters"]["learning_rate"] == 0.02
    )
    assert trials.metadata == {"segment": "north", "best_value": 0.86}
    assert (
        fake.calls("POST", "/hyperparameterTuningJobs")[0]["body"]["trialJobSpec"]["workerPoolSpecs"][0][
            "containerSpec"
        ]["args"][-1]
        == "north"
    )


def test_the_components_image_names_itself_for_the_trials():
    """The trials run the image the train step runs in: the Dockerfile bakes in the URI Cloud Build pushes."""
    root = Path(__file__).resolve().parents[1]
    dockerfile = (root / "Dockerfile").read_text()
    assert f"ARG {IMAGE_VARIABLE}" in dockerfile and f"ENV {IMAGE_VARIABLE}=${{{IMAGE_VARIABLE}}}" in dockerfile
    build = yaml.safe_load((root / "cloudbuild.yaml").read_text())
    [step] = [s for s in build["steps"] if s["id"] == "build-image"]
    args = step["args"]
    assert args[args.index("--tag") + 1] == "${_IMAGE}" and f"{IMAGE_VARIABLE}=${{_IMAGE}}" in args


def test_a_trial_reads_gs_uris_through_the_mount_and_reports_the_studys_metric(mount, tmp_path, monkeypatch, capsys):
    """What a trial's container runs: the trainer given gs:// URIs and Vertex's trial variables reports the
    tuning metric (here logLoss, not the primary auRoc) to cloudml-hypertune and writes AIP_MODEL_DIR."""
    from fleetops.training.trial import main

    spec = _split_dataset(_spec(metric="logLoss"), mount, tmp_path)
    spec_file = Path(gcs_local_path("gs://bkt/tuning/spec.json"))
    spec_file.parent.mkdir(parents=True)
    spec_file.write_text(spec.to_json())
    metrics = tmp_path / "hypertune" / "output.metrics"
    monkeypatch.setenv("CLOUD_ML_TRIAL_ID", "7")
    monkeypatch.setenv("CLOUD_ML_HP_METRIC_FILE", str(metrics))
    monkeypatch.setenv("AIP_MODEL_DIR", "gs://bkt/tuning/7/model")
    args = ["--spec", "gs://bkt/tuning/spec.json", "--data", "gs://bkt/pipeline_root/run-1/split/dataset"]
    assert main([*args, "--segment", "north", "--learning_rate=0.02", "--architecture=linear"]) == 0
    validation = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["validation_metrics"]
    [reported] = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert reported["trial"] == "7" and "auRoc" not in reported  # hypertune writes values as text
    assert float(reported["logLoss"]) == pytest.approx(validation["logLoss"])
    assert Path(gcs_local_path("gs://bkt/tuning/7/model/metadata.json")).is_file()
