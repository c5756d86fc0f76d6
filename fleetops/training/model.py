"""Keras models whose preprocessing lives inside the model.

Imputation, normalisation and vocabularies are fitted on the training split and
baked into layers of the saved model, so training and serving cannot disagree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402

from fleetops.data.validation import MAX_VOCABULARY  # noqa: E402
from fleetops.spec import Architecture, FleetSpec, Task, TrainingSpec  # noqa: E402


@keras.saving.register_keras_serializable(package="fleetops")
class FillMissing(keras.layers.Layer):
    """Replace NaN with a constant fitted on the training split (its mean)."""

    def __init__(self, value: float = 0.0, **kwargs: Any):
        super().__init__(**kwargs)
        self.value = float(value)

    def call(self, inputs: Any) -> Any:
        return keras.ops.where(keras.ops.isnan(inputs), self.value, inputs)

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {"value": self.value}


@dataclass(frozen=True)
class Preprocessing:
    """What the model's preprocessing layers were fitted to (train split only)."""

    means: dict[str, float]
    variances: dict[str, float]
    vocabularies: dict[str, list[str]]
    label_mean: float = 0.0
    label_std: float = 1.0


def fit_preprocessing(train: pd.DataFrame, spec: FleetSpec) -> Preprocessing:
    means, variances = {}, {}
    for column in spec.features.numeric:
        values = train[column].to_numpy(dtype="float64")
        finite = values[np.isfinite(values)]
        means[column] = float(finite.mean()) if finite.size else 0.0
        variances[column] = float(finite.var()) if finite.size else 1.0
    vocabularies = fit_vocabularies(train, spec)
    label_mean, label_std = 0.0, 1.0
    if spec.task is Task.REGRESSION:
        y = train[spec.label].to_numpy(dtype="float64")
        label_mean, label_std = float(y.mean()), float(y.std() or 1.0)
    return Preprocessing(means, variances, vocabularies, label_mean, label_std)


def fit_vocabularies(train: pd.DataFrame, spec: FleetSpec) -> dict[str, list[str]]:
    """Each categorical feature's vocabulary: its most frequent train values (at most MAX_VOCABULARY), sorted."""
    vocabularies = {}
    for column in spec.features.categorical:
        counts = train[column].astype(str).value_counts()
        vocabularies[column] = sorted(counts.index[:MAX_VOCABULARY].tolist())
    return vocabularies


def build_model(
    spec: FleetSpec,
    architecture: Architecture,
    params: TrainingSpec,
    prep: Preprocessing,
    n_classes: int,
) -> keras.Model:
    """A compiled Keras model: named inputs -> preprocessing -> linear or DNN body -> task head."""
    inputs: dict[str, keras.KerasTensor] = {}
    encoded = []
    for column in spec.features.numeric:
        inputs[column] = keras.Input(shape=(1,), name=column, dtype="float32")
        filled = FillMissing(prep.means[column], name=f"fill_{column}")(inputs[column])
        encoded.append(
            keras.layers.Normalization(mean=prep.means[column], variance=prep.variances[column], name=f"norm_{column}")(
                filled
            )
        )
    for column in spec.features.categorical:
        inputs[column] = keras.Input(shape=(1,), name=column, dtype="string")
        encoded.append(
            keras.layers.StringLookup(
                vocabulary=prep.vocabularies[column], output_mode="one_hot", num_oov_indices=1, name=f"vocab_{column}"
            )(inputs[column])
        )
    x = keras.layers.Concatenate(name="features")(encoded) if len(encoded) > 1 else encoded[0]
    if architecture is Architecture.DNN:
        for i, units in enumerate(params.hidden_units):
            x = keras.layers.Dense(units, activation="relu", name=f"hidden_{i}")(x)
            if params.dropout:
                x = keras.layers.Dropout(params.dropout, seed=params.seed + i, name=f"dropout_{i}")(x)

    optimizer = keras.optimizers.Adam(learning_rate=params.learning_rate)
    if spec.task is Task.BINARY:
        output = keras.layers.Dense(1, activation="sigmoid", name="probability")(x)
        loss = "binary_crossentropy"
    elif spec.task is Task.MULTICLASS:
        output = keras.layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
        loss = "sparse_categorical_crossentropy"
    else:
        raw = keras.layers.Dense(1, name="scaled_value")(x)
        output = keras.layers.Rescaling(scale=prep.label_std, offset=prep.label_mean, name="value")(raw)
        loss = "mse"
    model = keras.Model(inputs=inputs, outputs=output, name=f"{spec.name}_{architecture.value}")
    model.compile(optimizer=optimizer, loss=loss)
    return model


def to_inputs(df: pd.DataFrame, spec_features: dict[str, list[str]]) -> dict[str, tf.Tensor]:
    """Model inputs from a typed frame: float32 numerics (NaN = missing), string categoricals."""
    inputs = {}
    for column in spec_features["numeric"]:
        inputs[column] = tf.constant(df[column].to_numpy(dtype="float32").reshape(-1, 1))
    for column in spec_features["categorical"]:
        inputs[column] = tf.constant(df[column].astype(str).tolist(), dtype=tf.string, shape=(len(df), 1))
    return inputs


def set_determinism(seed: int) -> None:
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
