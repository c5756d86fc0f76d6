"""A model artifact directory: the model, its metadata and its training statistics.

Three kinds, told apart by the metadata's `format`:

- `fleetops-keras/1`: a Keras model (`model.keras`), architectures linear and dnn;
- `fleetops-gbt/1`: gradient-boosted trees (`model.ubj`, `fleetops.training.trees`), its input
  encoding in the metadata;
- `fleetops-ensemble/1`: member artifacts under `members/<name>/` combined with weights, and fixed
  feature values the members take but requests do not carry (`fleetops.training.ensemble`): the
  ensemble architecture, and the fleet's global model standing for one segment (its segment fixed).

The same directory is what the registry stores, what evaluation loads, and
what the serving container will load from `AIP_STORAGE_URI`. Artifacts trained
since the light runtime also hold the model's LiteRT flatbuffers
(`fleetops.training.litert`: `model.tflite`, `model_int8.tflite` when it is
quantized at all), recorded under `litert` in the metadata; older ones do not,
and are served with Keras.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fleetops.errors import UserError
from fleetops.fingerprints import model_identity_sha256
from fleetops.names import METADATA_IDENTITY, MODEL_FILE, MODEL_METADATA_FILE, MODEL_STATISTICS_FILE

# The identity key is optional (older artifacts lack it) and readers ignore keys they do not
# use, so adding it kept the format at /1.
FORMAT = "fleetops-keras/1"
GBT_FORMAT = "fleetops-gbt/1"
ENSEMBLE_FORMAT = "fleetops-ensemble/1"
KINDS = {FORMAT: "keras", GBT_FORMAT: "gbt", ENSEMBLE_FORMAT: "ensemble"}
_PREDICT_CHUNK = 8192


class ModelArtifact:
    """A model artifact with what is needed to score a DataFrame; the Keras model is loaded when first used.

    A server that serves an artifact's LiteRT flatbuffer never needs its Keras model unless it is
    asked to `:explain`; loading it then (once, under a lock: explanations run in worker threads)
    spares the hundreds of milliseconds and megabytes a Keras model costs.
    """

    def __init__(self, model: Any, metadata: dict[str, Any], path: str | Path):
        self._model = model
        self.metadata = metadata
        self.path = Path(path)
        self._lock = threading.Lock()

    @property
    def model(self) -> Any:
        """The Keras model, the `TreeModel` or the `EnsembleModel`, loaded when first asked for."""
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = _load_model(self.path, self.metadata)
        return self._model

    @property
    def kind(self) -> str:
        """keras, gbt or ensemble."""
        return KINDS[self.metadata["format"]]

    @property
    def keras_loaded(self) -> bool:
        return self._model is not None

    @property
    def task(self) -> str:
        return self.metadata["task"]

    @property
    def classes(self) -> list[str]:
        return self.metadata.get("classes", [])

    @property
    def features(self) -> dict[str, list[str]]:
        return self.metadata["features"]

    def scores(self, df: pd.DataFrame) -> np.ndarray:
        """Class probabilities (n, k) for classification, values (n,) for regression."""
        from fleetops.data.validation import coerce_features
        from fleetops.training.model import to_inputs

        missing = [c for c in self.features["numeric"] + self.features["categorical"] if c not in df.columns]
        if missing:
            raise UserError(f"cannot score: columns {missing} are missing; the model needs {self.features}")
        typed = coerce_features(df, self.features["numeric"], self.features["categorical"])
        parts = []
        for start in range(0, len(typed), _PREDICT_CHUNK):
            chunk = typed.iloc[start : start + _PREDICT_CHUNK]
            if self.kind == "keras":
                parts.append(np.asarray(self.model.predict_on_batch(to_inputs(chunk, self.features))))
            else:
                parts.append(self.model.predict(frame_arrays(chunk, self.features)))
        return shape_outputs(self.task, np.concatenate(parts) if parts else np.zeros((0, 1)))


def frame_arrays(typed: pd.DataFrame, features: dict[str, list[str]]) -> dict[str, np.ndarray]:
    """Named (n, 1) inputs from a typed frame: float32 numerics (NaN = missing), str categoricals ('' = missing)."""
    arrays = {c: typed[c].to_numpy(dtype="float32").reshape(-1, 1) for c in features["numeric"]}
    arrays |= {c: typed[c].astype(str).to_numpy(dtype=object).reshape(-1, 1) for c in features["categorical"]}
    return arrays


def shape_outputs(task: str, out: np.ndarray) -> np.ndarray:
    """Raw model outputs as class probabilities (n, k), the sigmoid made two columns, or values (n,)."""
    if task == "regression":
        return out.reshape(-1)
    if task == "binary_classification":
        p = out.reshape(-1)
        return np.stack([1.0 - p, p], axis=1)
    return out


def save_artifact(model: Any, metadata: dict[str, Any], statistics: dict[str, Any], directory: str | Path) -> Path:
    """Write the model, its metadata and its training statistics into `directory`.

    The metadata gains `identity_sha256`, the model's identity (weights, configuration,
    data, spec, settings): the registry keys versions on it, because the `.keras` bytes
    differ between saves of the same model.
    """
    from fleetops.training.ensemble import EnsembleModel
    from fleetops.training.trees import ENCODING_KEY, TreeModel

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(model, TreeModel):
        metadata = {**metadata, ENCODING_KEY: model.encoding}
        model.save(directory)
        form = GBT_FORMAT
    elif isinstance(model, EnsembleModel):
        metadata = {**metadata, "ensemble": model.describe()}
        model.save(directory)
        form = ENSEMBLE_FORMAT
    else:
        model.save(directory / MODEL_FILE)
        form = FORMAT
    identity = model_identity_sha256(model, metadata, statistics)
    document = {"format": form, **metadata, METADATA_IDENTITY: identity}
    (directory / MODEL_METADATA_FILE).write_bytes(_readable_json(document))
    (directory / MODEL_STATISTICS_FILE).write_bytes(_readable_json(statistics))
    return directory


def _readable_json(document: Any) -> bytes:
    """Indented JSON with sorted keys, by orjson: `json.dumps(indent=2)` takes the pure-Python encoder, which
    was the largest single cost of saving a model at fleet scale (a metadata file holds hundreds of values)."""
    import orjson

    try:
        return orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY)
    except TypeError:  # keys that are not strings: the standard library turns them into strings
        return json.dumps(document, indent=2, sort_keys=True).encode()


def read_metadata(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / MODEL_METADATA_FILE
    if not path.is_file():
        raise UserError(f"{str(directory)!r} is not a fleetops model artifact: {MODEL_METADATA_FILE} is missing")
    metadata = json.loads(path.read_text())
    if metadata.get("format") not in KINDS:
        raise UserError(
            f"model artifact format {metadata.get('format')!r} is not supported; expected one of {sorted(KINDS)}"
        )
    return metadata


def load_artifact(directory: str | Path, keras_model: bool = True) -> ModelArtifact:
    """The artifact in `directory`; with `keras_model=False` its model is loaded only when first used."""
    metadata = read_metadata(directory)
    model = _load_model(Path(directory), metadata) if keras_model else None
    return ModelArtifact(model=model, metadata=metadata, path=Path(directory))


def _load_model(directory: Path, metadata: dict[str, Any]) -> Any:
    kind = KINDS[metadata["format"]]
    if kind == "gbt":
        from fleetops.training.trees import TreeModel

        return TreeModel.load(directory, metadata)
    if kind == "ensemble":
        from fleetops.training.ensemble import EnsembleModel

        return EnsembleModel.load(directory, metadata)
    return _load_keras(directory)


def _load_keras(directory: Path) -> Any:
    import keras

    import fleetops.training.model  # noqa: F401  registers the custom layers

    return keras.models.load_model(directory / MODEL_FILE)
