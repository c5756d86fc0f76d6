"""The light runtime: LiteRT flatbuffers exported with every model, checked against Keras, served by choice.

Real models trained on the sample data (the session's `trained_models`, and small packed fleets here);
the flatbuffers run in LiteRT's interpreter. Nothing of fleetops is replaced by a fake.
"""

import json
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from fleetops import training_steps
from fleetops.batch import batch_predict
from fleetops.data.sample import SAMPLE_SPEC, make_churn
from fleetops.data.split import SPLIT_COLUMN, VALIDATION, with_splits
from fleetops.data.validation import segment_values
from fleetops.errors import UserError
from fleetops.evaluation.report import evaluation_report
from fleetops.names import METADATA_IDENTITY, MODEL_METADATA_FILE
from fleetops.serving.explain import explain
from fleetops.serving.predictor import RUNTIME_VARIABLE, Predictor, choose_runtime
from fleetops.spec import parse_spec
from fleetops.training.artifact import load_artifact, read_metadata
from fleetops.training.litert import AGREEMENT_TOLERANCE, FILES, LiteExporter, Template, describe
from fleetops.training.packed import train_pack
from fleetops.training.segments import SEGMENT_COLUMN, train_segment

FAST = {"epochs": 6, "batch_size": 32, "hidden_units": [8, 4], "early_stopping_patience": 3, "seed": 5}


def _spec(**changes):
    base = parse_spec(SAMPLE_SPEC.format(source="x.csv")).model_dump(mode="json")
    training = base["training"] | FAST | changes.pop("training", {})
    return parse_spec(base | {"training": training} | changes)


def _rows(spec, segments=3, rows=240, seed=3):
    df = make_churn(rows_per_segment=rows, segments=segments, seed=seed)
    df[SEGMENT_COLUMN] = segment_values(df, spec)
    return with_splits(df, spec.data.split, spec.data.split_key)


def _hard_instances(features, n=60, seed=11):
    """Real rows with missing numbers, missing and unseen categories (one not even ASCII)."""
    df = make_churn(rows_per_segment=n, segments=1, seed=seed).head(n).reset_index(drop=True)
    df.loc[::4, "tenure_months"] = np.nan
    df.loc[1::5, "monthly_charges"] = np.nan
    df.loc[::3, "plan"] = "platinum"  # never seen in training
    df.loc[2::7, "contract"] = None
    df.loc[5, "payment_method"] = "crédit ✓"
    df.loc[6, features["numeric"]] = np.nan  # every number missing
    return [
        {name: (None if pd.isna(row[name]) else row[name]) for name in features["numeric"] + features["categorical"]}
        for _, row in df.iterrows()
    ]


def _both(directory):
    return Predictor.load(directory), Predictor.load(directory, runtime="keras")


def test_the_float32_flatbuffer_agrees_with_keras_on_hard_rows(trained_models):
    lite, keras = _both(trained_models[0])
    assert lite.runtime == "float32" and keras.runtime == "keras"
    assert not lite.artifact.keras_loaded  # served through LiteRT, the Keras model is not even loaded
    record = lite.artifact.metadata["litert"]
    assert record["variants"]["float32"]["max_delta"] <= AGREEMENT_TOLERANCE
    assert record["variants"]["float32"]["patched"]  # the template's buffers were found
    assert record["agreement_rows"] == lite.artifact.metadata["rows"]["validation"] + 2  # + the probe rows
    # The sample DNN is too small for the converter to quantize anything: no int8 file, and why.
    assert "at least 1024 elements" in record["skipped"]["int8"]
    assert not (trained_models[0] / FILES["int8"]).exists()

    columns = lite.columns(_hard_instances(lite.artifact.features))
    a, b = lite.predict_columns(columns), keras.predict_columns(columns)
    assert a.shape == b.shape == (60, 2)
    np.testing.assert_allclose(a, b, atol=AGREEMENT_TOLERANCE, rtol=0)
    assert lite.format_predictions(a)[0]["classes"] == keras.format_predictions(b)[0]["classes"]


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_packed_fleets_get_one_template_and_flatbuffers_that_agree(tmp_path, task):
    """Every segment's flatbuffer is the architecture's template with its own constants, and scores as Keras."""
    rows = _rows(_spec())
    numeric, categorical = ["tenure_months", "support_calls", "data_usage_gb"], ["contract", "payment_method"]
    if task == "multiclass":
        label, metric = "plan", "logLoss"
        changes = {"task": "multiclass_classification", "evaluation": {"primary_metric": metric}}
        numeric.append("monthly_charges")
    else:
        label, metric = "monthly_charges", "rootMeanSquaredError"
        changes = {"task": "regression", "evaluation": {"primary_metric": metric}}
        categorical.append("plan")
    spec = _spec(label=label, features={"numeric": numeric, "categorical": categorical}, **changes)
    results = train_pack(rows, spec, tmp_path, log=lambda *_: None)
    assert len(results) == 3
    instances = None
    outputs = []
    for result in results:
        lite, keras = _both(result.artifact_dir)
        assert lite.runtime == "float32"
        assert result.metadata["litert"]["variants"]["float32"]["patched"]
        instances = instances or _hard_instances(lite.artifact.features)
        columns = lite.columns([{k: i[k] for k in lite.features} for i in instances])
        a, b = lite.predict_columns(columns), keras.predict_columns(columns)
        scale = np.maximum(1.0, np.abs(b))  # regression values: the tolerance is relative beyond 1
        assert np.max(np.abs(a - b) / scale) <= AGREEMENT_TOLERANCE
        outputs.append(a)
    # The segments' models differ (their own constants were written in, not the template's or another's).
    assert not np.allclose(outputs[0], outputs[1])


def test_the_template_is_converted_once_and_patched_exactly_where_the_sentinels_were(trained_models):
    artifact = load_artifact(trained_models[0])
    layout, constants = describe(artifact.model, artifact.features, artifact.task)
    template = Template(layout)
    assert template.slots is not None and set(template.slots) == set(constants)
    patched = template.flatbuffer(constants)
    assert len(patched) == len(template.content) and patched != template.content
    # Only the located buffers changed: the graph around them is the template's.
    changed = np.flatnonzero(np.frombuffer(patched, np.uint8) != np.frombuffer(template.content, np.uint8))
    inside = np.zeros(len(patched), bool)
    for slot in template.slots.values():
        inside[slot.start : slot.start + slot.nbytes] = True
    assert inside[changed].all()


@pytest.fixture(scope="module")
def quantizable(tmp_path_factory):
    """A DNN wide enough (17 inputs x 64 units) for the converter to quantize its first kernel, and its data."""
    root = tmp_path_factory.mktemp("quantizable")
    spec = _spec(architectures=["dnn"], training={"hidden_units": [64, 8], "epochs": 8})
    rows = _rows(spec, segments=1, rows=600)
    rows.to_parquet(root / "dataset.parquet", index=False)
    segment = rows[SEGMENT_COLUMN].iloc[0]
    train_segment(rows, spec, segment, root / "model" / segment)
    return spec, rows, segment, root


def test_the_quantized_variant_records_its_metric_change_and_is_served_only_within_tolerance(quantizable):
    spec, rows, segment, root = quantizable
    directory = root / "model" / segment
    record = read_metadata(directory)["litert"]
    int8 = record["variants"]["int8"]
    assert int8["quantized_tensors"] >= 1 and (directory / FILES["int8"]).is_file()
    assert int8["bytes"] < record["variants"]["float32"]["bytes"]  # the 64x17 kernel went from 4 bytes to 1
    assert int8["metric"] == "auRoc" and int8["keras_value"] is not None and int8["value"] is not None
    assert int8["metric_drop"] == pytest.approx(int8["keras_value"] - int8["value"])  # auRoc: a drop is a loss
    assert int8["max_delta"] < 0.05  # close, though not float32-close

    # The recorded drop decides, against the spec's tolerance; only litert_quantized may use int8 at all.
    metadata = read_metadata(directory)
    lenient = metadata | {"serving": {"runtime": "litert_quantized", "quantized_max_metric_drop": 1.0}}
    strict = lenient | {"litert": record | {"variants": record["variants"] | {"int8": int8 | {"metric_drop": 0.01}}}}
    strict["serving"] = {"runtime": "litert_quantized", "quantized_max_metric_drop": 0.002}
    assert choose_runtime(lenient) == "int8"
    assert choose_runtime(strict) == "float32"
    assert choose_runtime(lenient, "litert") == "float32"
    unknown = lenient | {"litert": record | {"variants": record["variants"] | {"int8": int8 | {"metric_drop": None}}}}
    assert choose_runtime(unknown) == "float32"  # an undefined metric is no evidence

    quantized = Predictor.load(directory, runtime="litert_quantized")
    expected = "int8" if int8["metric_drop"] <= spec.serving.quantized_max_metric_drop else "float32"
    assert quantized.runtime == expected
    columns = quantized.columns(_hard_instances(quantized.artifact.features))
    assert np.isfinite(Predictor.load(directory, runtime="litert_quantized").predict_columns(columns)).all()

    # The evaluation measures every runtime on the test rows: sizes, load and p50 times, the metric change.
    platform_home = root / "home"
    from fleetops.platform import connect, local_uri

    [evaluation] = training_steps.evaluate_shard(
        spec, connect(local_uri(platform_home)), root / "dataset.parquet", root / "model", [segment]
    )
    runtimes = evaluation["runtimes"]
    assert set(runtimes["variants"]) == {"keras", "float32", "int8"} and runtimes["serving"] == "float32"
    for name, figures in runtimes["variants"].items():
        assert min(figures[k] for k in ("bytes", "load_ms", "first_ms", "p50_ms")) > 0, name
    test_auc = evaluation["metrics"]["auRoc"]
    assert runtimes["variants"]["int8"]["metric_delta"] is not None
    assert abs(runtimes["variants"]["int8"]["metric_delta"]) < 0.05 and test_auc > 0.5
    assert runtimes["variants"]["float32"]["max_delta"] <= AGREEMENT_TOLERANCE
    assert runtimes["variants"]["float32"]["metric_delta"] == pytest.approx(0.0, abs=1e-6)
    assert "**Runtimes** (serving: float32)" in evaluation_report([evaluation])


def test_the_runtime_follows_the_spec_the_environment_and_the_identity(trained_models, tmp_path, monkeypatch):
    metadata = read_metadata(trained_models[0])
    assert metadata["serving"] == {"runtime": "litert", "quantized_max_metric_drop": 0.002}
    assert choose_runtime(metadata) == "float32"
    assert choose_runtime(metadata | {"serving": {"runtime": "keras"}}) == "keras"
    monkeypatch.setenv(RUNTIME_VARIABLE, "keras")
    assert choose_runtime(metadata) == "keras" and Predictor.load(trained_models[0]).runtime == "keras"
    monkeypatch.setenv(RUNTIME_VARIABLE, "tflite")
    with pytest.raises(UserError, match="serving runtime 'tflite' is not one of"):
        choose_runtime(metadata)
    monkeypatch.delenv(RUNTIME_VARIABLE)
    # A flatbuffer that did not agree is never served.
    disagreeing = json.loads(json.dumps(metadata))
    disagreeing["litert"]["variants"]["float32"]["max_delta"] = 2 * AGREEMENT_TOLERANCE
    assert choose_runtime(disagreeing) == "keras"
    # A record checked against another model (same metadata saved with other weights) is not trusted.
    assert choose_runtime(metadata | {METADATA_IDENTITY: "0" * 64}) == "keras"


def test_an_older_artifact_without_flatbuffers_loads_as_keras(trained_models, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(trained_models[0], old)
    for name in FILES.values():
        (old / name).unlink(missing_ok=True)
    metadata = json.loads((old / MODEL_METADATA_FILE).read_text())
    del metadata["litert"], metadata["serving"]
    (old / MODEL_METADATA_FILE).write_text(json.dumps(metadata))
    predictor = Predictor.load(old)
    assert predictor.runtime == "keras" and predictor.lite is None and predictor.artifact.keras_loaded
    lite = Predictor.load(trained_models[0])
    columns = lite.columns(_hard_instances(lite.artifact.features)[:5])
    np.testing.assert_allclose(predictor.predict_columns(columns), lite.predict_columns(columns), atol=1e-4)
    # Metadata that names a flatbuffer the directory lacks: the Keras model serves.
    copied = tmp_path / "copied"
    shutil.copytree(trained_models[0], copied)
    (copied / FILES["float32"]).unlink()
    assert Predictor.load(copied).runtime == "keras"


def test_explain_loads_the_keras_model_only_when_asked(trained_models):
    predictor = Predictor.load(trained_models[0])
    columns = predictor.columns(_hard_instances(predictor.artifact.features)[:4])
    predictor.predict_columns(columns)
    assert not predictor.artifact.keras_loaded
    explanations = explain(predictor, columns)
    assert predictor.artifact.keras_loaded and len(explanations) == 4
    keras = Predictor.load(trained_models[0], runtime="keras")
    assert explanations == explain(keras, columns)


def test_batch_prediction_through_litert_matches_keras(trained_models, tmp_path):
    rows = make_churn(rows_per_segment=300, segments=1, seed=9)
    rows.loc[::9, "tenure_months"] = np.nan
    rows.loc[::4, "plan"] = "platinum"
    lite, keras = _both(trained_models[0])
    assert lite.runtime == "float32"
    results = [batch_predict(p, rows, tmp_path / p.runtime, chunk_rows=128) for p in (lite, keras)]
    assert [(r.rows, r.predicted, r.errors) for r in results] == [(300, 300, 0)] * 2
    a, b = (pq.read_table(r.predictions_path).to_pandas() for r in results)
    assert a["customer_id"].tolist() == b["customer_id"].tolist()
    scores = [np.array([p["scores"] for p in frame["prediction"]]) for frame in (a, b)]
    np.testing.assert_allclose(scores[0], scores[1], atol=AGREEMENT_TOLERANCE, rtol=0)


def test_one_interpreter_is_safe_to_call_from_threads(trained_models):
    predictor = Predictor.load(trained_models[0])
    instances = _hard_instances(predictor.artifact.features)
    batches = [predictor.columns(instances[i : i + 1 + i % 7]) for i in range(40)]
    expected = [predictor.predict_columns(b) for b in batches]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(5):
            got = list(pool.map(predictor.predict_columns, batches))
            for a, b in zip(got, expected, strict=True):
                np.testing.assert_array_equal(a, b)


def test_output_that_overflows_is_refused_through_litert_too(trained_models, tmp_path):
    """check_finite works whichever runtime scores: an overflowing instance is a UserError naming it."""
    from fleetops.data.validation import coerce_features, statistics
    from fleetops.training.artifact import save_artifact
    from fleetops.training.segments import export_litert

    spec = _spec(architectures=["linear"])
    artifact = load_artifact(trained_models[0])
    layer = artifact.model.get_layer("probability")
    kernel, bias = layer.get_weights()
    kernel[:2] = [[1e30], [-1e30]]  # tenure_months and monthly_charges: +inf meets -inf for large values
    layer.set_weights([kernel, bias])
    rows = _rows(spec, segments=1)
    features = artifact.features
    validation = coerce_features(rows[rows[SPLIT_COLUMN] == VALIDATION], features["numeric"], features["categorical"])
    metadata = {k: v for k, v in artifact.metadata.items() if k not in ("format", METADATA_IDENTITY, "litert")}
    stats = statistics(rows, spec)
    metadata["litert"] = export_litert(
        LiteExporter(), artifact.model, tmp_path / "m", spec, validation, artifact.classes, metadata, stats
    )
    save_artifact(artifact.model, metadata, stats, tmp_path / "m")
    predictor = Predictor.load(tmp_path / "m")
    assert predictor.runtime == "float32"
    good = {name: value for name, value in _hard_instances(features)[1].items()}
    huge = dict(good, tenure_months=1e12, monthly_charges=1e12)
    columns = predictor.columns([good, huge])
    outputs = predictor.predict_columns(columns)
    assert np.isfinite(outputs[0]).all() and not np.isfinite(outputs[1]).all()
    with pytest.raises(UserError, match=r"^instance 1: the model's output is not a finite number"):
        predictor.check_finite(outputs, columns)
