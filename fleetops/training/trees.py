"""Gradient-boosted trees (architecture `gbt`): XGBoost boosters with their input encoding.

A `TreeModel` is what the other runtimes are to the serving path (`Predictor`, batch prediction,
evaluation): named `(n, 1)` inputs in, raw outputs out (a sigmoid column for binary
classification, softmax rows for multiclass, a value column for regression). The encoding is
fitted on the train split and saved with the booster, so training and serving cannot disagree:

- numeric features are float32 as given; NaN (a missing value) takes each split's learned default
  branch, as XGBoost does;
- categorical features are XGBoost categories (optimal partitioning, no one-hot) whose codes are
  the positions in the feature's vocabulary (`model.fit_vocabularies`: at most `MAX_VOCABULARY`
  most frequent train values); a value outside it is treated as missing.

Training stops early on the validation split (`early_stopping_rounds`) and keeps the best round.
`shap` gives exact TreeSHAP (XGBoost's `pred_contribs`) per feature.

Why XGBoost (measured on the sample fleet, 40 segments x 500 rows, 2-core x86, against YDF 0.16):
mean test auRoc 0.795 vs 0.785 (scikit-learn's HistGradientBoosting: 0.795); one instance scores in
~0.09 ms vs ~0.31 ms; training ~17 ms vs ~10 ms a segment (both far under the Keras models); the
`xgboost-cpu` wheel is 5.6 MB (YDF 45 MB), and Vertex has prebuilt XGBoost containers.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fleetops.errors import UserError
from fleetops.spec import Task, TrainingSpec

BOOSTER_FILE = "model.ubj"
ENCODING_KEY = "encoding"


class TreeModel:
    """An XGBoost booster and the encoding of its inputs; `predict` is thread-safe."""

    def __init__(self, booster: Any, task: str, numeric: list[str], categorical: list[str], vocabularies: dict):
        self.booster = booster
        self.task = task
        self.numeric = list(numeric)
        self.categorical = list(categorical)
        self.vocabularies = {c: list(vocabularies[c]) for c in self.categorical}
        self._codes = {c: {v: float(i) for i, v in enumerate(self.vocabularies[c])} for c in self.categorical}
        self._lock = threading.Lock()

    # -- what the model takes -------------------------------------------------------------------------

    @property
    def encoding(self) -> dict[str, Any]:
        """What is saved beside the booster (and hashed into the model's identity)."""
        return {
            "task": self.task,
            "numeric": self.numeric,
            "categorical": self.categorical,
            "vocabularies": self.vocabularies,
        }

    def matrix(self, arrays: dict[str, Any]) -> np.ndarray:
        """The booster's input: (n, features) float32, numerics then category codes (NaN = missing/unknown)."""
        first = next(iter(arrays.values()))
        n = len(first)
        out = np.empty((n, len(self.numeric) + len(self.categorical)), dtype=np.float32)
        for j, name in enumerate(self.numeric):
            out[:, j] = np.asarray(arrays[name], dtype=np.float32).reshape(-1)
        nan = float("nan")
        for k, name in enumerate(self.categorical):
            codes = self._codes[name]
            values = np.asarray(arrays[name], dtype=object).reshape(-1)
            out[:, len(self.numeric) + k] = [codes.get(_text(v), nan) for v in values]
        return out

    def frame_matrix(self, typed: pd.DataFrame) -> np.ndarray:
        """The booster's input for a typed frame (`validation.coerce_features`)."""
        out = np.empty((len(typed), len(self.numeric) + len(self.categorical)), dtype=np.float32)
        for j, name in enumerate(self.numeric):
            out[:, j] = typed[name].to_numpy(dtype="float32")
        for k, name in enumerate(self.categorical):
            index = pd.Index(self.vocabularies[name])
            codes = index.get_indexer(typed[name].astype(str)).astype("float32")
            codes[codes < 0] = np.nan
            out[:, len(self.numeric) + k] = codes
        return out

    # -- scoring --------------------------------------------------------------------------------------

    def predict(self, arrays: dict[str, Any]) -> np.ndarray:
        """Raw outputs for named (n, 1) inputs: (n, 1) probability or value, (n, k) class probabilities."""
        return self.predict_matrix(self.matrix(arrays))

    def predict_matrix(self, x: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            width = len(self.booster_classes()) if self.task == Task.MULTICLASS.value else 1
            return np.zeros((0, width), dtype=np.float32)
        with self._lock:  # one booster, many threads (batch prediction): predictions are serialised
            out = self.booster.inplace_predict(x, validate_features=False)
        out = np.asarray(out, dtype=np.float32)
        return out.reshape(len(x), -1)

    def booster_classes(self) -> list[int]:
        return list(range(int(json.loads(self.booster.save_config())["learner"]["learner_model_param"]["num_class"])))

    def margins(self, x: np.ndarray) -> np.ndarray:
        """The booster's raw margins (log-odds, class logits or values): (n, 1) or (n, k)."""
        with self._lock:
            out = self.booster.inplace_predict(x, predict_type="margin", validate_features=False)
        return np.asarray(out, dtype=np.float64).reshape(len(x), -1)

    def shap(self, x: np.ndarray) -> np.ndarray:
        """Exact TreeSHAP in margin space: (n, outputs, features + 1), the last column the bias."""
        import xgboost as xgb

        matrix = xgb.DMatrix(x, feature_types=self.feature_types, enable_categorical=True, nthread=1)
        with self._lock:
            contributions = self.booster.predict(matrix, pred_contribs=True, validate_features=False)
        contributions = np.asarray(contributions, dtype=np.float64)
        return contributions.reshape(len(x), -1, contributions.shape[-1])

    @property
    def feature_types(self) -> list[str]:
        return ["q"] * len(self.numeric) + ["c"] * len(self.categorical)

    # -- identity and files ---------------------------------------------------------------------------

    def get_config(self) -> dict[str, Any]:
        """The encoding (what is not a tree but changes predictions), for `model_identity_sha256`."""
        return self.encoding

    def get_weights(self) -> list[np.ndarray]:
        """The trees, as the booster's bytes: its identity changes with any split or leaf value."""
        return [np.frombuffer(bytes(self.booster.save_raw(raw_format="ubj")), dtype=np.uint8)]

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(str(directory / BOOSTER_FILE))

    @classmethod
    def load(cls, directory: str | Path, metadata: dict[str, Any]) -> TreeModel:
        import xgboost as xgb

        path = Path(directory) / BOOSTER_FILE
        if not path.is_file():
            raise UserError(f"gbt model artifact {str(directory)!r} has no {BOOSTER_FILE}")
        booster = xgb.Booster(params={"nthread": 1}, model_file=str(path))
        encoding = metadata[ENCODING_KEY]
        return cls(booster, encoding["task"], encoding["numeric"], encoding["categorical"], encoding["vocabularies"])


def fit_trees(
    train: pd.DataFrame,
    validation: pd.DataFrame,
    y_train: np.ndarray,
    y_validation: np.ndarray,
    task: Task,
    numeric: list[str],
    categorical: list[str],
    vocabularies: dict[str, list[str]],
    params: TrainingSpec,
    n_classes: int,
    threads: int = 1,
) -> tuple[TreeModel, int]:
    """Fit boosted trees on typed train rows with early stopping on validation; the model and rounds kept."""
    model = TreeModel(None, task.value, numeric, categorical, vocabularies)
    rounds = fit_booster(
        model,
        model.frame_matrix(train),
        y_train,
        model.frame_matrix(validation),
        y_validation,
        params,
        n_classes,
        threads,
    )
    return model, rounds


def fit_booster(
    model: TreeModel,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_validation: np.ndarray,
    y_validation: np.ndarray,
    params: TrainingSpec,
    n_classes: int,
    threads: int = 1,
) -> int:
    """Fit `model`'s booster on encoded rows (`TreeModel.frame_matrix`), early stopping on validation; rounds kept."""
    import xgboost as xgb

    task = Task(model.task)
    booster_params = {
        "objective": {
            Task.BINARY: "binary:logistic",
            Task.MULTICLASS: "multi:softprob",
            Task.REGRESSION: "reg:squarederror",
        }[task],
        "eval_metric": {Task.BINARY: "logloss", Task.MULTICLASS: "mlogloss", Task.REGRESSION: "rmse"}[task],
        "tree_method": "hist",
        "max_depth": params.max_depth,
        "eta": params.tree_learning_rate,
        "min_child_weight": params.min_child_weight,
        "subsample": params.subsample,
        "lambda": params.l2_regularization,
        "seed": params.seed,
        "nthread": threads,
        "max_cat_to_onehot": 1,  # partition categories optimally, never one-hot
        "verbosity": 0,
    }
    if task is Task.MULTICLASS:
        booster_params["num_class"] = n_classes
    kind = {"feature_types": model.feature_types, "enable_categorical": True, "nthread": threads}
    d_train = xgb.DMatrix(x_train, label=y_train, **kind)
    d_validation = xgb.DMatrix(x_validation, label=y_validation, **kind)
    # xgb.train's early stopping, as a plain loop over the booster's own update and eval: the same rounds and
    # trees (the tests compare both), without its callback machinery, which held the GIL for ~30% of a
    # small segment's fit and kept threads training segments side by side from running in parallel.
    booster = xgb.Booster(booster_params, [d_train, d_validation])
    best, best_round = np.inf, 0
    for round_ in range(params.num_trees):
        booster.update(d_train, round_)
        loss = float(booster.eval(d_validation, "validation", round_).rsplit(":", 1)[1])
        if loss < best:
            best, best_round = loss, round_
        elif round_ - best_round >= params.early_stopping_rounds:
            break
    rounds = best_round + 1
    if rounds < booster.num_boosted_rounds():
        booster = booster[:rounds]  # the best round's trees only, as Keras restores the best epoch's weights
    booster.set_param({"nthread": 1})  # a server holds many models; one thread each
    model.booster = booster
    return rounds


def _text(value: Any) -> str:
    """A category as the vocabulary holds it: missing is '' (as `coerce_features` makes it)."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode()
    return value if isinstance(value, str) else str(value)
