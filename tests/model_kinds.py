"""Real boosted-trees and ensemble artifacts, saved as the trainers save them, for the steps after training.

`build` trains on the sample churn data (`make_churn`, the `spec` fixture's rows) and writes, under `root`:

- `gbt/north`: XGBoost trees for north (`fit_trees`), architecture gbt;
- `ensemble/north`: north's trees and a Keras linear model (a session's `trained_models` artifact, with its
  LiteRT flatbuffers) as members under `members/<name>/`, weights fitted on validation;
- `global/south`: the fleet's global model standing for south: trees trained on every segment with the
  region as a feature, a one-member ensemble with `region` fixed to south (architecture global_gbt).

Each carries a `selection` record in the trainers' format; its figures are illustrative (the trainers
measure them), while evaluation measures the models' real test metrics.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from fleetops.data.split import SPLIT_COLUMN, TRAIN, VALIDATION, with_splits
from fleetops.data.validation import coerce_features, segment_values, statistics
from fleetops.spec import FleetSpec, Task
from fleetops.training.artifact import read_metadata, save_artifact
from fleetops.training.ensemble import MEMBERS_DIR, EnsembleModel
from fleetops.training.model import fit_vocabularies
from fleetops.training.segments import SEGMENT_COLUMN, encode_labels, segment_metadata
from fleetops.training.trees import fit_trees

CLASSES = ["0", "1"]
FAILED_DNN = "training failed: ValueError: injected for the test"


def split_rows(spec: FleetSpec, df: pd.DataFrame) -> pd.DataFrame:
    """Rows with the segment and split columns, as `training_steps.split_dataset` writes them."""
    rows = with_splits(df, spec.data.split, spec.data.split_key)
    rows[SEGMENT_COLUMN] = segment_values(rows, spec)
    return rows


def selection(chosen: str, candidates: dict[str, Any], reason: str, failed: dict[str, str] | None = None) -> dict:
    return {
        "metric": "auRoc",
        "goal": "maximize",
        "candidates": candidates,
        "failed": failed or {},
        "chosen": chosen,
        "reason": reason,
    }


def build(spec: FleetSpec, df: pd.DataFrame, keras_linear: Path, root: Path) -> dict[str, Path]:
    """Train and save the three artifacts; their directories by name (`gbt`, `ensemble`, `global`)."""
    rows = split_rows(spec, df)
    north = rows[rows[SEGMENT_COLUMN] == "north"]
    south = rows[rows[SEGMENT_COLUMN] == "south"]
    numeric, categorical = spec.features.numeric, spec.features.categorical

    north_gbt = root / "gbt" / "north"
    model, typed = _fit(spec, north, categorical)
    picked = selection(
        "gbt",
        {"linear": {"validation": 0.7712, "test": 0.7655}, "gbt": {"validation": 0.82341, "test": 0.80123}},
        "gbt has the best validation auRoc: 0.8234 (next: linear 0.7712)",
        {"dnn": FAILED_DNN},
    )
    _save(model, spec, "north", north, typed, "gbt", picked, north_gbt)

    ensemble = root / "ensemble" / "north"
    members = ensemble / MEMBERS_DIR
    members.mkdir(parents=True)
    shutil.copytree(north_gbt, members / "gbt")
    shutil.copytree(keras_linear, members / "linear")
    # Weights as `fit_weights` might give them (fitted here, the session's 3-epoch linear model gets none).
    weights = {"gbt": 0.6, "linear": 0.4}
    identities = {name: read_metadata(members / name)["identity_sha256"] for name in ("gbt", "linear")}
    combined = EnsembleModel(spec.task.value, dict.fromkeys(weights), weights, identities=identities)
    picked = selection(
        "ensemble",
        {
            "linear": {"validation": 0.7712, "test": 0.7655},
            "gbt": {"validation": 0.82341, "test": 0.80123},
            "ensemble": {"validation": 0.8261, "test": 0.8031},
        },
        "ensemble has the best validation auRoc: 0.8261 (next: gbt 0.8234)",
    )
    _save(combined, spec, "north", north, typed, "ensemble", picked, ensemble)

    global_south = root / "global" / "south"
    member = global_south / MEMBERS_DIR / "global"
    segment_column = spec.data.segment_column
    everything, everything_typed = _fit(spec, rows, [*categorical, segment_column], region=segment_column)
    save_artifact(
        everything,
        {
            "task": spec.task.value,
            "features": {"numeric": numeric, "categorical": [*categorical, segment_column]},
            "classes": CLASSES,
            "architecture": "gbt",
        },
        statistics(everything_typed[everything_typed[SPLIT_COLUMN] == TRAIN], spec),
        member,
    )
    standing = EnsembleModel(
        spec.task.value,
        {"global": None},
        {"global": 1.0},
        fixed_features={segment_column: "south"},
        identities={"global": read_metadata(member)["identity_sha256"]},
    )
    picked = selection(
        "global",
        {
            "gbt": {"validation": 0.7301, "test": 0.7222},
            "global": {"architecture": "gbt", "validation": 0.7533, "test": 0.7480},
        },
        "the global model (gbt) has the best validation auRoc: 0.7533 (next: gbt 0.7301)",
    )
    south_typed = coerce_features(south, numeric, categorical)
    _save(standing, spec, "south", south, south_typed, "global_gbt", picked, global_south)
    return {"gbt": north_gbt, "ensemble": ensemble, "global": global_south}


def _fit(spec: FleetSpec, rows: pd.DataFrame, categorical: list[str], region: str | None = None) -> tuple[Any, Any]:
    """Boosted trees on the rows' train split, early-stopped on validation; the model and the typed rows."""
    typed = coerce_features(rows, spec.features.numeric, categorical)
    train, validation = typed[typed[SPLIT_COLUMN] == TRAIN], typed[typed[SPLIT_COLUMN] == VALIDATION]
    vocabularies = fit_vocabularies(train, spec)
    if region:  # the global model's segment feature
        vocabularies[region] = sorted(train[region].astype(str).unique())
    model, _ = fit_trees(
        train,
        validation,
        encode_labels(train[spec.label], CLASSES),
        encode_labels(validation[spec.label], CLASSES),
        Task.BINARY,
        spec.features.numeric,
        categorical,
        vocabularies,
        spec.training,
        len(CLASSES),
    )
    return model, typed


def _save(model: Any, spec: FleetSpec, segment: str, rows, typed, architecture: str, picked: dict, directory: Path):
    details = {
        "trainer": {"kind": "one_at_a_time"},
        "validation_metrics": {"auRoc": picked["candidates"][picked["chosen"]]["validation"]},
        "selection": picked,
    }
    metadata = segment_metadata(spec, segment, rows, typed, CLASSES, architecture, spec.training, None, details)
    save_artifact(model, metadata, statistics(typed[typed[SPLIT_COLUMN] == TRAIN], spec), directory)
