"""Packed fleet training on small fleets: independence per segment, standalone exports, quality."""

import json

import numpy as np
import pandas as pd
import pytest

from fleetops.data.sample import SAMPLE_SPEC, make_churn
from fleetops.data.split import SPLIT_COLUMN, TEST, VALIDATION, with_splits
from fleetops.data.validation import segment_values
from fleetops.evaluation.metrics import classification_metrics
from fleetops.spec import Architecture, parse_spec
from fleetops.training.artifact import load_artifact, read_metadata
from fleetops.training.model import build_model
from fleetops.training.packed import encode, fit_packed, predict_packed, train_pack
from fleetops.training.segments import SEGMENT_COLUMN, class_names, encode_labels, train_segment

FAST = {"epochs": 12, "batch_size": 32, "hidden_units": [8, 4], "early_stopping_patience": 3, "seed": 5}


def _spec(**training):
    base = parse_spec(SAMPLE_SPEC.format(source="x.csv")).model_dump(mode="json")
    return parse_spec(base | {"training": base["training"] | FAST | training})


def _rows(spec, segments=4, rows=240, seed=3):
    df = make_churn(rows_per_segment=rows, segments=segments, seed=seed)
    df[SEGMENT_COLUMN] = segment_values(df, spec)
    return with_splits(df, spec.data.split, spec.data.split_key)


def _weights(fit, s):
    return [a for layer in fit.segment_layers(s) for a in layer]


@pytest.mark.parametrize("architecture", [Architecture.LINEAR, Architecture.DNN])
def test_a_segment_trains_the_same_alone_or_in_a_pack(architecture):
    """Own parameters, loss, Adam state, shuffles, dropout and early stopping: the pack changes nothing."""
    spec = _spec()
    rows = _rows(spec)
    classes = class_names(rows[spec.label])
    pack = encode(rows, spec, SEGMENT_COLUMN, classes)
    together = fit_packed(pack, spec, architecture, spec.training)
    for s, segment in enumerate(pack.segments):
        alone_data = encode(rows[rows[SEGMENT_COLUMN] == segment], spec, SEGMENT_COLUMN, classes)
        # The shared vocabulary is the pack's; give the lone segment the same one so inputs line up.
        assert alone_data.width == pack.width
        alone = fit_packed(alone_data, spec, architecture, spec.training)
        assert alone.epochs_trained[0] == together.epochs_trained[s]
        for a, b in zip(_weights(alone, 0), _weights(together, s), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # Segments really differ: their own statistics and weights.
    assert pack.preprocessing[0].means != pack.preprocessing[1].means
    assert not np.allclose(_weights(together, 0)[0], _weights(together, 1)[0])


def test_early_stopping_per_segment_keeps_each_best_epoch():
    spec = _spec(epochs=40, early_stopping_patience=2, learning_rate=0.05)
    rows = _rows(spec)
    pack = encode(rows, spec, SEGMENT_COLUMN, class_names(rows[spec.label]))
    fit = fit_packed(pack, spec, Architecture.DNN, spec.training)
    assert fit.epochs_trained.min() < 40  # stopped early
    assert len(set(fit.epochs_trained.tolist())) > 1  # each segment on its own schedule
    # The kept weights are the best epoch's: their validation loss is the recorded best.
    val = pack.rows_of(VALIDATION)
    p = predict_packed(fit, pack, spec, val)[:, 0].astype("float64")
    y = pack.labels[val]
    for s in range(len(pack.segments)):
        mine = pack.segment_index[val] == s
        loss = -np.mean(y[mine] * np.log(p[mine]) + (1 - y[mine]) * np.log(1 - p[mine]))
        assert loss == pytest.approx(fit.best_val_loss[s], rel=1e-4)


def test_exported_models_are_standalone_and_score_as_the_pack(tmp_path):
    spec = _spec()
    rows = _rows(spec)
    results = train_pack(rows, spec, tmp_path, log=lambda *_: None)
    assert [r.segment for r in results] == sorted(rows[SEGMENT_COLUMN].unique())
    classes = class_names(rows[spec.label])
    pack = encode(rows, spec, SEGMENT_COLUMN, classes)
    for s, result in enumerate(results):
        artifact = load_artifact(result.artifact_dir)
        metadata = read_metadata(result.artifact_dir)
        assert metadata["trainer"]["kind"] == "packed" and metadata["architecture"] == result.architecture
        assert set(metadata["candidates"] if "candidates" in metadata else result.candidates) == {"linear", "dnn"}
        # The same config as the one-at-a-time trainer's model with this segment's statistics.
        fresh = build_model(spec, Architecture(result.architecture), spec.training, pack.preprocessing[s], 2)
        saved = json.loads(artifact.model.to_json())["config"]["layers"]
        assert saved == json.loads(fresh.to_json())["config"]["layers"]
        # Scores from the loaded artifact equal the packed model's for this segment's test rows.
        test = np.flatnonzero((pack.segment_index == s) & (pack.split == TEST))
        fit = fit_packed(pack, spec, Architecture(result.architecture), spec.training)
        expected = predict_packed(fit, pack, spec, test)[:, 0]
        frame = rows[(rows[SEGMENT_COLUMN] == result.segment) & (rows[SPLIT_COLUMN] == TEST)]
        np.testing.assert_allclose(artifact.scores(frame)[:, 1], expected, atol=1e-5)
        assert json.loads((result.artifact_dir / "statistics.json").read_text())["rows"] == metadata["rows"]["train"]


def test_multiclass_and_regression_pack(tmp_path):
    rng = np.random.default_rng(0)
    n = 900
    df = pd.DataFrame(
        {
            "id": np.arange(n),
            "seg": np.repeat(["a", "b", "c"], n // 3),
            "x1": rng.normal(size=n),
            "x2": rng.normal(size=n),
            "c": rng.choice(["u", "v"], n),
        }
    )
    df.loc[::13, "x1"] = np.nan
    df["kind"] = np.where(df["x2"] > 0.5, "high", np.where(df["x2"] < -0.5, "low", "mid"))
    df["spend"] = 100 + np.where(df["seg"] == "b", -30, 30) * df["x2"] + 5 * (df["c"] == "u")
    common = {
        "name": "t",
        "data": {"source": "x.csv", "segment_column": "seg", "split_key": "id"},
        "features": {"numeric": ["x1", "x2"], "categorical": ["c"]},
        "architectures": ["linear", "dnn"],
        "training": FAST | {"epochs": 30, "learning_rate": 0.05},
    }
    spec = parse_spec(common | {"task": "multiclass_classification", "label": "kind"})
    rows = with_splits(df.assign(**{SEGMENT_COLUMN: df["seg"]}), spec.data.split, "id")
    results = train_pack(rows, spec, tmp_path / "m", log=lambda *_: None)
    assert all(r.validation_value < 0.8 for r in results)  # logLoss well under the 1.10 of guessing
    assert load_artifact(results[0].artifact_dir).classes == ["high", "low", "mid"]

    spec = parse_spec(common | {"task": "regression", "label": "spend"})
    results = train_pack(rows, spec, tmp_path / "r", log=lambda *_: None)
    for r in results:
        segment = rows[rows[SEGMENT_COLUMN] == r.segment]
        # Segment b's slope has the other sign: one shared model could not fit both.
        assert r.validation_value < 0.3 * segment["spend"].std()
        assert load_artifact(r.artifact_dir).scores(segment.head(3)).shape == (3,)


def test_packed_quality_matches_one_at_a_time_on_held_out_rows(tmp_path):
    """Mean test auRoc over a fleet: packed at most 0.005 below the per-segment trainer (same settings)."""
    spec = _spec(epochs=30, batch_size=64, hidden_units=[16, 8], early_stopping_patience=4)
    rows = _rows(spec, segments=6, rows=400, seed=11)
    packed = {r.segment: r for r in train_pack(rows, spec, tmp_path / "p", log=lambda *_: None)}

    def test_auc(directory, segment):
        artifact = load_artifact(directory)
        test = rows[(rows[SEGMENT_COLUMN] == segment) & (rows[SPLIT_COLUMN] == TEST)]
        y = encode_labels(test[spec.label], artifact.classes)
        return classification_metrics(y, artifact.scores(test), artifact.classes)["auRoc"]

    ours, theirs = [], []
    for segment, result in packed.items():
        single = train_segment(rows[rows[SEGMENT_COLUMN] == segment], spec, segment, tmp_path / "s" / segment)
        ours.append(test_auc(result.artifact_dir, segment))
        theirs.append(test_auc(single.artifact_dir, segment))
    assert np.mean(ours) >= np.mean(theirs) - 0.005


def test_global_model_warm_start_and_fallback(tmp_path):
    """The global model trains on every segment's rows; warm-started segments record both starts."""
    from fleetops.training.packed import export_fallback, load_global, train_global
    from fleetops.training.segments import read_outcome, train_shard

    spec = _spec(warm_start="global")
    rows = _rows(spec, segments=4, rows=400)
    found = train_global(rows, spec, tmp_path / "global", log=lambda *_: None)
    assert found.architecture in {"linear", "dnn"} and set(found.layers) == {"linear", "dnn"}
    again = load_global(tmp_path / "global")
    assert again.preprocessing["dnn"] == found.preprocessing["dnn"]
    assert read_metadata(found.best_dir)["rows"]["train"] == int((rows[SPLIT_COLUMN] == "train").sum())

    data = tmp_path / "dataset.parquet"
    rows.to_parquet(data)
    segments = sorted(rows[SEGMENT_COLUMN].unique())
    outcome = train_shard(
        data, spec, segments[:3], tmp_path / "shard", log=lambda *_: None, global_model=found,
        fallback={"atlantis": "has no rows in the data"},
    )  # fmt: skip
    assert [r.segment for r in outcome.results] == segments[:3] and outcome.fallback == ["atlantis"]
    for result in outcome.results:
        transfer = result.metadata["transfer"]
        assert set(transfer) >= {"scratch", "warm_start", "chosen", "metric"}
        assert transfer["scratch"]["test"] is not None and transfer["warm_start"]["validation"] is not None
        assert set(result.candidates) == {"linear", "dnn", "linear+warm_start", "dnn+warm_start"}
        chosen = transfer["chosen"]
        # The validation split chose the start; the test values are only reported.
        assert result.validation_value == transfer[chosen]["validation"]
    fallback = read_metadata(tmp_path / "shard" / "atlantis")
    assert fallback["segment"] == "atlantis" and fallback["fallback"]["model"] == "global"
    assert fallback["identity_sha256"] == read_metadata(found.best_dir)["identity_sha256"]
    assert read_outcome(tmp_path / "shard")["fallback"] == ["atlantis"]
    assert export_fallback(found, "x/y", "why", tmp_path / "other").name.startswith("x-y-")
