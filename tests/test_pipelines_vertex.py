"""Every compiled pipeline, run for real under kfp.local with `platform=vertex://...` against the Vertex stand-in.

The tasks are the same processes as on the twin; each connects to the loopback
Vertex REST stand-in (`api_endpoint`, `credentials=anonymous`) and reads and
writes Cloud Storage through a folder standing in for the /gcs mount
(`FLEETOPS_GCS_MOUNT`, which the runs' pipeline root is under, as on Vertex).
Each test checks the resources the stand-in ends with.
"""

import json
import os
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from fleetops.data.sample import SAMPLE_SPEC, make_churn
from fleetops.names import OUTPUT_RETURN_VALUE, PARAM_PLATFORM, pipeline_arguments
from fleetops.platform.local.pipeline_runs import run_compiled
from fleetops.platform.vertex.monitoring import DRIFT
from fleetops.spec import parse_spec
from pipelines.compile import compile_all
from tests.fake_vertex import FakeVertex, monitoring_stats

pytestmark = pytest.mark.slow

BUCKET = "proj-1-staging"
IMAGE = "us-docker.pkg.dev/proj-1/fleetops/serve:1"


class VertexRuns:
    """The stand-in, the folder standing in for Cloud Storage, the compiled pipelines, and a way to run them."""

    def __init__(self, fake: FakeVertex, mount, templates, spec):
        self.fake, self.mount, self.templates, self.spec = fake, mount, templates, spec
        self.uri = (
            f"vertex://proj-1/us-central1?staging_bucket=gs://{BUCKET}&api_endpoint={fake.endpoint}"
            "&credentials=anonymous&labels=cost-center:ml-platform"
        )

    def run(self, pipeline: str, out, **arguments):
        """Run a compiled pipeline; its pipeline root is under the bucket, as Vertex's is."""
        arguments = {PARAM_PLATFORM: self.uri, **arguments}
        return run_compiled(self.templates[pipeline], arguments, self.mount / BUCKET, out=out)


@pytest.fixture(scope="module")
def vertex(tmp_path_factory):
    work = tmp_path_factory.mktemp("vertex-runs")
    mount = work / "gcs"
    (mount / BUCKET / "data").mkdir(parents=True)
    make_churn(rows_per_segment=250, segments=2, seed=5).to_csv(mount / BUCKET / "data" / "churn.csv", index=False)
    base = parse_spec(SAMPLE_SPEC.format(source=f"gs://{BUCKET}/data/churn.csv")).model_dump(mode="json")
    base["architectures"] = ["gbt"]  # the quickest to train: these tests are about the platform
    base["training"] |= {"num_trees": 20}
    spec = parse_spec(base)
    previous = os.environ.get("FLEETOPS_GCS_MOUNT")
    os.environ["FLEETOPS_GCS_MOUNT"] = str(mount)  # inherited by the runs' task processes
    try:
        with FakeVertex() as fake:
            runs = VertexRuns(fake, mount, compile_all(work / "build"), spec)
            trained = runs.run("fleet_training", open(work / "training.txt", "w"), **_training(runs))
            assert trained.ok, trained.log_path.read_text()[-3000:]
            yield runs
    finally:
        os.environ.pop("FLEETOPS_GCS_MOUNT") if previous is None else os.environ.update(FLEETOPS_GCS_MOUNT=previous)


def _training(runs: VertexRuns) -> dict:
    return pipeline_arguments(runs.spec.to_json(), runs.uri, IMAGE)


def test_training_registers_evaluates_and_deploys_each_segment_on_vertex(vertex):
    fake = vertex.fake
    assert sorted(fake.models) == ["churn-north", "churn-south"]
    for segment in ("north", "south"):
        [version] = fake.models[f"churn-{segment}"]["versions"].values()
        assert set(version["versionAliases"]) == {"champion", "default"}
        assert version["labels"]["fleet"] == "churn" and version["labels"]["cost-center"] == "ml-platform"
        assert version["labels"]["segment"] == segment and version["labels"]["architecture"] == "gbt"
        # The artifact is the train step's output under the pipeline root: its gs:// object, not a local path.
        assert version["artifactUri"].startswith(f"gs://{BUCKET}/pipeline_root/")
        assert version["containerSpec"]["imageUri"] == IMAGE
        [evaluation] = fake.evaluations[f"churn-{segment}@1"]
        assert 0.5 < evaluation["metrics"]["auRoc"] <= 1.0
        endpoint = fake.endpoints[f"churn-{segment}"]
        [deployed] = endpoint["deployedModels"]
        assert deployed["model"].endswith(f"models/churn-{segment}") and deployed["modelVersionId"] == "1"
        assert endpoint["trafficSplit"] == {deployed["id"]: 100} and endpoint["labels"]["fleet"] == "churn"


def test_a_rerun_adds_no_version_and_no_endpoint(vertex, tmp_path):
    before = {m: sorted(e["versions"]) for m, e in vertex.fake.models.items()}
    endpoints = {e: [d["id"] for d in x["deployedModels"]] for e, x in vertex.fake.endpoints.items()}
    rerun = vertex.run("fleet_training", open(tmp_path / "rerun.txt", "w"), **_training(vertex))
    assert rerun.ok, rerun.log_path.read_text()[-3000:]
    assert {m: sorted(e["versions"]) for m, e in vertex.fake.models.items()} == before
    assert {e: [d["id"] for d in x["deployedModels"]] for e, x in vertex.fake.endpoints.items()} == endpoints


def test_batch_prediction_submits_a_job_per_champion(vertex, tmp_path):
    source = f"gs://{BUCKET}/data/churn.csv"
    run = vertex.run(
        "fleet_batch_prediction",
        open(tmp_path / "batch.txt", "w"),
        fleet_spec=vertex.spec.to_json(),
        source=source,
        version="champion",
    )
    assert run.ok, run.log_path.read_text()[-3000:]
    jobs = [job for (kind, _), job in vertex.fake.jobs.items() if kind == "batchPredictionJobs"]
    assert sorted(job["model"].rsplit("/", 1)[-1] for job in jobs) == ["churn-north@1", "churn-south@1"]
    assert all(job["state"] == "JOB_STATE_SUCCEEDED" for job in jobs)
    summary = json.loads(run.outputs[OUTPUT_RETURN_VALUE])
    assert summary["predicted"] == 500 and summary["errors"] == 0
    predictions = pd.read_parquet(
        next((vertex.mount / BUCKET).glob("pipeline_root/fleetops-batch-prediction-*/batch-predict/predictions"))
    )
    assert len(predictions) == 500 and set(predictions["model_id"]) == {"churn-north", "churn-south"}


def test_continuous_training_retrains_what_vertex_found_drifting_and_promotes_it(vertex, tmp_path):
    fake = vertex.fake
    north = fake.endpoints["churn-north"]["deployedModels"][0]["id"]
    south = fake.endpoints["churn-south"]["deployedModels"][0]["id"]
    end = datetime.now(UTC) - timedelta(minutes=5)
    window = ((end - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"), end.strftime("%Y-%m-%dT%H:%M:%SZ"))
    quiet = dict.fromkeys(vertex.spec.features.all, 0.05)
    fake.monitoring_stats["churn-north"] = [monitoring_stats(north, DRIFT, quiet | {"plan": 0.9}, 0.3, *window)]
    fake.monitoring_stats["churn-south"] = [monitoring_stats(south, DRIFT, quiet, 0.3, *window)]
    fresh = make_churn(rows_per_segment=250, segments=2, seed=6)  # what retraining reads: north's plans changed
    fresh.loc[fresh["region"] == "north", "plan"] = "premium"
    fresh.to_csv(vertex.mount / BUCKET / "data" / "churn.csv", index=False)
    run = vertex.run("continuous_training", open(tmp_path / "continuous.txt", "w"), **_training(vertex))
    assert run.ok, run.log_path.read_text()[-3000:]
    # One monitoring job per endpoint, with the spec's thresholds; only north was retrained and promoted.
    jobs = [job for (kind, _), job in fake.jobs.items() if kind == "modelDeploymentMonitoringJobs"]
    assert sorted(job["endpoint"].rsplit("/", 1)[-1] for job in jobs) == ["churn-north", "churn-south"]
    assert sorted(fake.models["churn-north"]["versions"]) == ["1", "2"]
    assert sorted(fake.models["churn-south"]["versions"]) == ["1"]
    # Promoted (or, had version 2 lost to version 1, never deployed): one model takes all the traffic.
    [serving] = fake.endpoints["churn-north"]["deployedModels"]
    assert fake.endpoints["churn-north"]["trafficSplit"] == {serving["id"]: 100}
    champion = next(v for v, m in fake.models["churn-north"]["versions"].items() if "champion" in m["versionAliases"])
    assert serving["modelVersionId"] == champion


def test_promote_and_rollback_run_with_nothing_to_do(vertex, tmp_path):
    for pipeline in ("fleet_promote", "fleet_rollback"):
        run = vertex.run(pipeline, open(tmp_path / f"{pipeline}.txt", "w"), fleet_name="churn")
        assert run.ok, run.log_path.read_text()[-3000:]
        assert json.loads(run.outputs[OUTPUT_RETURN_VALUE]) == []
