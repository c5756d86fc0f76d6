"""Data on the Vertex platform: the real google-cloud-bigquery client against a loopback BigQuery stand-in."""

import pytest
from google.auth.credentials import AnonymousCredentials

from fleetops import training_steps
from fleetops.data.sample import make_churn
from fleetops.errors import UserError
from fleetops.platform import connect
from fleetops.platform.vertex import gcs_local_path
from tests.fake_bigquery import FakeBigQuery

KEY = "projects/p/locations/us/keyRings/r/cryptoKeys/k"


@pytest.fixture
def churn_rows():
    return make_churn(rows_per_segment=60, segments=2, seed=4)


@pytest.fixture
def bigquery(churn_rows):
    with FakeBigQuery({"proj-1.crm.churn": churn_rows}) as server:
        yield server


@pytest.fixture
def vertex(bigquery):
    uri = f"vertex://proj-1/us-central1?bigquery_endpoint={bigquery.endpoint}&labels=team:ml&encryption_key={KEY}"
    return connect(uri, credentials=AnonymousCredentials())


def test_a_bq_table_is_read_with_a_labelled_query_job(vertex, bigquery, churn_rows):
    frame = vertex.read_table("bq://proj-1.crm.churn")
    assert len(frame) == len(churn_rows) and list(frame.columns) == list(churn_rows.columns)
    job = bigquery.requests[0]
    assert job["path"] == "/bigquery/v2/projects/proj-1/jobs"
    config = job["body"]["configuration"]
    assert config["query"]["query"] == "SELECT * FROM `proj-1.crm.churn`"
    assert config["query"]["useLegacySql"] is False
    assert config["labels"] == {"team": "ml"}
    assert config["query"]["destinationEncryptionConfiguration"] == {"kmsKeyName": KEY}


def test_sql_sources_run_in_bigquery(vertex, churn_rows):
    counts = vertex.read_table("SELECT region, COUNT(*) AS n FROM `proj-1.crm.churn` GROUP BY region ORDER BY region")
    assert counts.to_dict("list") == {"region": ["north", "south"], "n": [60, 60]}


def test_bigquery_refusals_name_the_source(vertex):
    with pytest.raises(UserError, match=r"data source 'SELECT nope FROM `proj-1.crm.churn`' failed in BigQuery"):
        vertex.read_table("SELECT nope FROM `proj-1.crm.churn`")


def test_rows_from_bigquery_pass_validation(vertex, spec, tmp_path):
    remote = spec.model_copy(update={"data": spec.data.model_copy(update={"source": "bq://proj-1.crm.churn"})})
    summary = training_steps.ingest(remote, vertex, tmp_path / "raw.parquet")
    report, baseline = training_steps.validate_dataset(remote, tmp_path / "raw.parquet")
    assert summary["rows"] == 120 and report.ok, report.problems
    assert set(baseline["segments"]) == {"north", "south"}


def test_gcs_files_are_read_through_the_fuse_mount():
    assert gcs_local_path("gs://bucket/data/churn.csv") == "/gcs/bucket/data/churn.csv"
    assert gcs_local_path("/local/churn.csv") == "/local/churn.csv"


def test_paths_under_the_cloud_storage_mount_are_gs_objects(tmp_path, monkeypatch):
    from fleetops.platform.vertex import gcs_uri

    assert gcs_uri("/gcs/bucket/root/model") == "gs://bucket/root/model"  # a Vertex task's FUSE mount
    assert gcs_uri("gs://bucket/x") == "gs://bucket/x" and gcs_uri("/elsewhere/x") == "/elsewhere/x"
    monkeypatch.setenv("FLEETOPS_GCS_MOUNT", str(tmp_path))  # a folder standing in for the mount
    assert gcs_uri(tmp_path / "bucket" / "run" / "model") == "gs://bucket/run/model"
    assert gcs_local_path("gs://bucket/run/model") == str(tmp_path / "bucket" / "run" / "model")
    assert gcs_uri("/gcs/bucket/x") == "/gcs/bucket/x"  # no longer the mount
