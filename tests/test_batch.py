"""Batch prediction: bad rows to errors with a reason, rows routed to their segment's model, Vertex jobs."""

import json
import math

import pandas as pd
import pyarrow.parquet as pq
import pytest
from google.auth.credentials import AnonymousCredentials

from fleetops.batch import batch_predict, fleet_batch_predict
from fleetops.data.sample import SAMPLE_SPEC, make_churn
from fleetops.errors import UserError
from fleetops.platform import connect
from fleetops.serving.predictor import FLOAT32_MAX, Predictor
from fleetops_cli.cli import main
from tests.fake_vertex import FakeVertex


@pytest.fixture
def rows():
    df = make_churn(rows_per_segment=100, segments=2, seed=9)
    df["tenure_months"] = df["tenure_months"].astype(object)
    df.loc[3, "tenure_months"] = "ten"
    df.loc[7, "monthly_charges"] = float("inf")
    return df


def test_bad_rows_go_to_errors_and_never_fail_the_job(trained_models, rows, tmp_path):
    predictor = Predictor.load(trained_models[0])
    result = batch_predict(predictor, rows, tmp_path)
    assert (result.rows, result.predicted, result.errors) == (200, 198, 2)
    predictions = pq.read_table(result.predictions_path).to_pandas()
    assert list(predictions.columns) == [*rows.columns, "prediction"]
    first = predictions.loc[0, "prediction"]
    assert list(first["classes"]) == ["0", "1"] and abs(sum(first["scores"]) - 1) < 1e-6
    errors = pd.read_parquet(result.errors_path)
    messages = {row["customer_id"]: row["errors"]["message"] for _, row in errors.iterrows()}
    assert messages["c0000003"] == "feature 'tenure_months' must be a number, got 'ten'"
    assert messages["c0000007"] == "feature 'monthly_charges' must be a number, got inf"
    assert set(errors["errors"].map(lambda e: e["code"])) == {3}
    # The batch job scores a row exactly as the server does.
    good = rows.drop(index=[3, 7]).head(3)
    instances = [
        {f: (None if pd.isna(v) else (float(v) if f in predictor.numeric else v)) for f, v in row.items()}
        for row in good[predictor.features].to_dict("records")
    ]
    served = predictor.predict_columns(predictor.columns(instances))
    batch = [s for p in predictions.head(3)["prediction"] for s in p["scores"]]
    assert batch == pytest.approx(served.ravel().tolist(), abs=1e-6)


def test_missing_feature_column_fails_up_front(trained_models, rows, tmp_path):
    with pytest.raises(UserError, match=r"lacks feature column\(s\) \['plan'\]"):
        batch_predict(Predictor.load(trained_models[0]), rows.drop(columns=["plan"]), tmp_path)


def test_fleet_rows_go_to_their_segment_champion(platform, trained_models, rows, spec, tmp_path):
    platform.registry.upload_version("churn-north", trained_models[0], aliases=["champion"])
    source = tmp_path / "score.csv"
    rows.to_csv(source, index=False)
    result = fleet_batch_predict(spec, platform, str(source), tmp_path / "out")
    predictions = pd.read_parquet(result.predictions_path)
    assert set(predictions["model_id"]) == {"churn-north"} and set(predictions["version_id"]) == {"1"}
    errors = pd.read_parquet(result.errors_path)
    south = errors[errors["region"] == "south"]
    assert len(south) == 100
    assert "model 'churn-south' is not in the registry" in south.iloc[0]["errors"]["message"]
    assert result.predicted + result.errors == 200


def test_local_platform_batch_predict(platform, trained_models, rows, tmp_path):
    platform.registry.upload_version("churn-north", trained_models[0], aliases=["champion"])
    rows.to_csv(tmp_path / "rows.csv", index=False)
    summary = platform.batch_predict("churn-north", "champion", str(tmp_path / "rows.csv"), str(tmp_path / "out"))
    assert summary["predicted"] == 198 and summary["errors"] == 2
    assert summary["model"].endswith("models/churn-north@1")


def test_vertex_batch_prediction_job_request(artifact_dirs):
    with FakeVertex() as fake:
        platform = connect(
            f"vertex://proj-1/us-central1?api_endpoint={fake.endpoint}&labels=team:ml",
            credentials=AnonymousCredentials(),
        )
        platform.registry.upload_version("churn-north", artifact_dirs[0], artifact_uri="gs://b/m", serving_image="img")
        summary = platform.batch_predict(
            "churn-north",
            "1",
            "bq://proj-1.crm.churn",
            "bq://proj-1.scores",
            machine_type="n1-standard-8",
            batch_size=256,
        )
        job = fake.calls("POST", "batchPredictionJobs")[0]["body"]
        with pytest.raises(UserError, match="reads bq://project.dataset.table or gs://"):
            platform.batch_predict("churn-north", "1", "/local/file.csv", "bq://proj-1.scores")
    assert summary["state"] == "JOB_STATE_SUCCEEDED"
    assert job["model"] == "projects/proj-1/locations/us-central1/models/churn-north@1"
    assert job["inputConfig"] == {
        "instancesFormat": "bigquery",
        "bigquerySource": {"inputUri": "bq://proj-1.crm.churn"},
    }
    assert job["outputConfig"]["bigqueryDestination"] == {"outputUri": "bq://proj-1.scores"}
    assert job["dedicatedResources"]["machineSpec"]["machineType"] == "n1-standard-8"
    assert job["manualBatchTuningParameters"] == {"batchSize": 256}
    # The platform's labels, and the one a retried submit is looked up by (unique to the call).
    assert job["labels"]["team"] == "ml" and len(job["labels"]["fleetops-batch-input"]) == 40


def test_a_column_missing_throughout_one_chunk_keeps_the_file_schema(trained_models, tmp_path):
    rows = make_churn(rows_per_segment=100, segments=2, seed=9)
    rows["payment_method"] = rows["payment_method"].astype(object)
    rows.loc[100:, "payment_method"] = None  # the whole second chunk has no payment method
    result = batch_predict(Predictor.load(trained_models[0]), rows, tmp_path, chunk_rows=100)
    assert result.predicted == 200
    written = pq.read_table(result.predictions_path)
    assert written.schema.field("payment_method").type == "string"
    assert written.column("payment_method").null_count == 100 + rows["payment_method"].iloc[:100].isna().sum()


def test_numbers_beyond_float32_are_errors_not_nan_scores(trained_models, tmp_path):
    rows = make_churn(rows_per_segment=10, segments=1, seed=9)
    rows.loc[1, "tenure_months"], rows.loc[2, "monthly_charges"], rows.loc[3, "data_usage_gb"] = 1e39, -1e39, 1e308
    rows.loc[4, "support_calls"] = FLOAT32_MAX  # the bound itself fits
    result = batch_predict(Predictor.load(trained_models[0]), rows, tmp_path)
    assert (result.rows, result.predicted, result.errors) == (10, 7, 3)
    errors = pd.read_parquet(result.errors_path)
    messages = {row["customer_id"]: row["errors"]["message"] for _, row in errors.iterrows()}
    allowed = "must be a number from -3.4028235e+38 to 3.4028235e+38 (the model's inputs are float32)"
    assert messages == {
        "c0000001": f"feature 'tenure_months' {allowed}, got 1e+39",
        "c0000002": f"feature 'monthly_charges' {allowed}, got -1e+39",
        "c0000003": f"feature 'data_usage_gb' {allowed}, got 1e+308",
    }
    assert set(errors["errors"].map(lambda e: e["code"])) == {3}
    scores = [s for p in pd.read_parquet(result.predictions_path)["prediction"] for s in p["scores"]]
    assert len(scores) == 14 and all(math.isfinite(s) for s in scores)


def test_a_row_the_model_scores_as_nan_goes_to_errors(trained_models, tmp_path):
    # Weights this large overflow float32 for extreme (yet in-range) inputs: +inf from one feature
    # meets -inf from another and the score is NaN. Ordinary rows still get finite scores.
    # The Keras model is altered in memory, so it is the runtime (the LiteRT flatbuffer keeps its weights).
    predictor = Predictor.load(trained_models[0], runtime="keras")
    layer = predictor.artifact.model.get_layer("probability")
    kernel, bias = layer.get_weights()
    kernel[: len(predictor.numeric)] = 1e20
    layer.set_weights([kernel, bias])
    rows = make_churn(rows_per_segment=10, segments=1, seed=9)
    rows.loc[5, ["tenure_months", "monthly_charges"]] = [1e30, -1e30]
    for chunk_rows in (4, 1000):  # the row's chunk keeps its other rows; one chunk for all
        result = batch_predict(predictor, rows, tmp_path / str(chunk_rows), chunk_rows=chunk_rows)
        assert (result.rows, result.predicted, result.errors) == (10, 9, 1)
        errors = pd.read_parquet(result.errors_path)
        assert errors["customer_id"].tolist() == ["c0000005"] and errors.loc[0, "tenure_months"] == 1e30
        assert errors.loc[0, "errors"] == {
            "code": 3,
            "message": "the model's score for this row is not a finite number "
            "(its numeric values are probably too extreme for the model)",
        }
        predictions = pd.read_parquet(result.predictions_path)
        assert "c0000005" not in set(predictions["customer_id"])
        assert all(math.isfinite(s) for p in predictions["prediction"] for s in p["scores"])


def _malformed_csv(rows, path):
    """`rows` as CSV with line 51 one field too long and line 91 one field short (both north rows)."""
    rows.to_csv(path, index=False)
    lines = path.read_text().splitlines()
    lines[50] += ",surplus"
    lines[90] = lines[90].rsplit(",", 1)[0]
    path.write_text("\n".join(lines) + "\n")
    return lines


def test_malformed_csv_lines_are_errors_and_the_rest_is_scored(platform, trained_models, rows, tmp_path, capsys):
    platform.registry.upload_version("churn-north", trained_models[0], aliases=["champion"])
    lines = _malformed_csv(rows, tmp_path / "score.csv")
    spec_path = tmp_path / "fleet.yaml"
    spec_path.write_text(SAMPLE_SPEC.format(source=tmp_path / "score.csv"))
    home, out = str(tmp_path / "home"), str(tmp_path / "out")
    assert main(["batch-predict", str(spec_path), "--home", home, "--output", out]) == 0
    summary = json.loads(capsys.readouterr().out)
    # 200 rows: 2 lines unparsed, 2 north rows invalid, 100 south rows without a model, 96 scored.
    assert (summary["rows"], summary["predicted"], summary["errors"]) == (200, 96, 104)
    errors = pd.read_parquet(tmp_path / "out" / "errors.parquet")
    unparsed = errors[errors["errors"].map(lambda e: e["message"].startswith("line "))]
    assert unparsed.drop(columns="errors").isna().all().all()  # no instance values: the line did not split
    assert unparsed["errors"].tolist() == [
        {"code": 3, "message": f"line 51 has 11 field(s), the header has 10: {lines[50]!r}"},
        {"code": 3, "message": f"line 91 has 9 field(s), the header has 10: {lines[90]!r}"},
    ]
    predictions = pd.read_parquet(tmp_path / "out" / "predictions.parquet")
    assert not {rows.loc[49, "customer_id"], rows.loc[89, "customer_id"]} & set(predictions["customer_id"])

    summary = platform.batch_predict("churn-north", "champion", str(tmp_path / "score.csv"), str(tmp_path / "one"))
    assert (summary["rows"], summary["predicted"], summary["errors"]) == (200, 196, 4)
    errors = pd.read_parquet(tmp_path / "one" / "errors.parquet")
    assert [e["message"][:8] for e in errors["errors"]] == ["line 51 ", "line 91 ", "feature ", "feature "]


def test_the_component_scores_through_the_platform_into_its_outputs(platform, trained_models, rows, spec, tmp_path):
    from kfp.dsl import Dataset

    from components import batch

    platform.registry.upload_version("churn-north", trained_models[0], aliases=["champion"])
    rows.to_csv(tmp_path / "score.csv", index=False)
    task = tmp_path / "pipeline_root" / "run" / "batch-predict"
    predictions, errors = Dataset(uri=str(task / "predictions")), Dataset(uri=str(task / "errors"))
    counts = batch.batch_predict.python_func(
        fleet_spec=spec.to_json(),
        platform=platform.uri,
        source=str(tmp_path / "score.csv"),
        version="champion",
        predictions=predictions,
        errors=errors,
    )
    summary = json.loads(counts)
    assert (summary["rows"], summary["predicted"], summary["errors"]) == (200, 98, 102)
    assert len(pd.read_parquet(task / "predictions")) == 98 and len(pd.read_parquet(task / "errors")) == 102
    assert predictions.metadata == {"rows": 98} and (task / "work").is_dir()  # the task's work folder
