"""Real Keras training on tiny data: each task, determinism, preprocessing inside the model."""

import json

import numpy as np
import pandas as pd
import pytest

from fleetops.data.split import with_splits
from fleetops.data.validation import segment_values
from fleetops.errors import UserError
from fleetops.spec import parse_spec
from fleetops.training.artifact import load_artifact, read_metadata
from fleetops.training.segments import SEGMENT_COLUMN, class_names, train_segment
from fleetops.training.trial import main

FAST = {"epochs": 4, "batch_size": 64, "hidden_units": [8], "early_stopping_patience": 2, "seed": 1}


def _prepared(df, spec):
    out = with_splits(df, spec.data.split, spec.data.split_key)
    out[SEGMENT_COLUMN] = segment_values(out, spec)
    return out


def _spec(task, label, source="x.csv", **extra):
    return parse_spec(
        {
            "name": "t",
            "task": task,
            "label": label,
            "data": {"source": source, "split_key": "id"},
            "features": {"numeric": ["x1", "x2"], "categorical": ["c"]},
            "architectures": ["linear", "dnn"],
            "training": FAST,
            **extra,
        }
    )


def _frame(n=400, seed=0):
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    c = rng.choice(["a", "b", "c"], n)
    x1[::17] = np.nan
    return pd.DataFrame({"id": np.arange(n), "x1": x1, "x2": x2, "c": c}), x1, x2, c


def test_binary_model_is_deterministic_and_carries_its_preprocessing(tmp_path):
    df, x1, x2, c = _frame()
    df["y"] = ((np.nan_to_num(x1) + (c == "a")) > 0.3).astype(int)
    spec = _spec("binary_classification", "y")
    rows = _prepared(df, spec)
    first = train_segment(rows, spec, "__all__", tmp_path / "a")
    second = train_segment(rows, spec, "__all__", tmp_path / "b")
    assert first.validation_value == second.validation_value
    assert first.validation_value > 0.8
    assert set(first.candidates) == {"linear", "dnn"}
    model = load_artifact(tmp_path / "a")
    raw = pd.DataFrame({"x1": [np.nan, 2.0], "x2": [0.0, 0.1], "c": [None, "never-seen"]})
    scores = model.scores(raw)  # NaN, a missing category and an unknown category are handled inside
    assert scores.shape == (2, 2) and np.allclose(scores.sum(axis=1), 1)
    np.testing.assert_allclose(scores, load_artifact(tmp_path / "b").scores(raw), rtol=1e-6)
    metadata = read_metadata(tmp_path / "a")
    assert metadata["classes"] == ["0", "1"] and metadata["rows"]["train"] > 200
    assert json.loads((tmp_path / "a" / "statistics.json").read_text())["rows"] == metadata["rows"]["train"]
    with pytest.raises(UserError, match=r"columns \['c'\] are missing"):
        model.scores(raw.drop(columns=["c"]))


def test_multiclass_and_regression(tmp_path):
    df, x1, x2, c = _frame(seed=1)
    df["kind"] = np.where(x2 > 0.5, "high", np.where(x2 < -0.5, "low", "mid"))
    spec = _spec("multiclass_classification", "kind")
    result = train_segment(_prepared(df, spec), spec, "__all__", tmp_path / "m")
    assert result.metric == "logLoss" and result.validation_value < 1.0
    assert load_artifact(tmp_path / "m").classes == ["high", "low", "mid"]

    df["spend"] = 100 + 30 * df["x2"] + 5 * (df["c"] == "b")
    spec = _spec("regression", "spend")
    result = train_segment(_prepared(df, spec), spec, "__all__", tmp_path / "r")
    assert result.metric == "rootMeanSquaredError"
    assert result.validation_value < 0.5 * df["spend"].std()  # far better than predicting the mean
    assert load_artifact(tmp_path / "r").scores(df.head(3)).shape == (3,)


def test_class_names_order_numbers_numerically():
    assert class_names(pd.Series([10, 2, 2, 1])) == ["1", "2", "10"]
    assert class_names(pd.Series(["yes", "no"])) == ["no", "yes"]
    assert class_names(pd.Series([1.0, 0.0])) == ["0", "1"]


def test_trainer_command_line_takes_hyperparameter_flags(tmp_path, spec, churn, capsys):
    from fleetops import training_steps

    (tmp_path / "fleet.yaml").write_text(spec.to_json())
    churn.to_parquet(tmp_path / "raw.parquet")
    training_steps.split_dataset(spec, tmp_path / "raw.parquet", tmp_path / "ds.parquet")
    code = main(
        [
            "--spec",
            str(tmp_path / "fleet.yaml"),
            "--data",
            str(tmp_path / "ds.parquet"),
            "--segment",
            "north",
            "--output-dir",
            str(tmp_path / "out"),
            "--architecture",
            "dnn",
            "--learning-rate",
            "0.02",
            "--hidden-units",
            "6,3",
            "--epochs",
            "3",
        ]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["metric"] == "auRoc" and printed["architecture"] == "dnn"
    hyper = read_metadata(tmp_path / "out")["hyperparameters"]
    assert hyper["learning_rate"] == 0.02 and hyper["hidden_units"] == [6, 3] and hyper["epochs"] == 3
