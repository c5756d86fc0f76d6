"""Models made of models: weighted ensembles, and the fleet's global model standing for one segment.

An `EnsembleModel` holds member artifacts (each a whole artifact: Keras with its LiteRT
flatbuffers, or boosted trees) and a weight per member. It scores as the weighted average of
its members' outputs: class probabilities for classification, values for regression. It may
also fix feature values that its members take and requests do not carry: the fleet's global
model (trained with the segment as a feature) serves a segment as a one-member ensemble whose
segment column is fixed to that segment.

`fit_weights` fits the weights on the validation split (non-negative, summing to one, the
loss the models were trained on), and `cross_fitted` scores an ensemble on validation rows it
did not fit its weights on (two halves, each scored with weights fitted on the other): the
value that decides whether the ensemble beats its members, so that the choice has no leakage
from the rows that set the weights (and none ever from the test split).

Saved, the artifact holds `members/<name>/` and, in its metadata, `ensemble`: the members
(name, weight, identity) and the fixed features.
"""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from fleetops.errors import UserError

MEMBERS_DIR = "members"
# Weights are searched on a grid over the simplex: steps of 1/WEIGHT_STEPS (21 points for 2 members,
# 231 for 3); the loss is flat near its minimum, so a finer grid changes test metrics by noise only.
WEIGHT_STEPS = 20


class EnsembleModel:
    """Members (name -> artifact or model), weights and fixed features; `predict` averages members' outputs."""

    def __init__(
        self,
        task: str,
        members: dict[str, Any],
        weights: dict[str, float],
        fixed_features: dict[str, str] | None = None,
        directories: dict[str, Path] | None = None,
        identities: dict[str, str] | None = None,
    ):
        if set(members) != set(weights):
            raise ValueError(f"members {sorted(members)} and weights {sorted(weights)} name different models")
        self.task = task
        self.members = dict(members)  # name -> Predictor (loaded) or a model to save
        self.weights = {name: float(w) for name, w in weights.items()}
        self.fixed_features = dict(fixed_features or {})
        self.directories = dict(directories or {})  # name -> saved member artifact (copied into the ensemble)
        self.identities = dict(identities or {})

    def describe(self) -> dict[str, Any]:
        return {
            "members": [
                {"name": name, "weight": self.weights[name], "identity_sha256": self.identities.get(name)}
                for name in self.members
            ],
            "fixed_features": self.fixed_features,
        }

    # -- identity -------------------------------------------------------------------------------------

    def get_config(self) -> dict[str, Any]:
        return self.describe()

    def get_weights(self) -> list[np.ndarray]:
        return []

    # -- files ----------------------------------------------------------------------------------------

    def save(self, directory: str | Path) -> None:
        """Copy each member's saved artifact under `directory/members/<name>/`."""
        root = Path(directory) / MEMBERS_DIR
        root.mkdir(parents=True, exist_ok=True)
        for name, source in self.directories.items():
            target = root / name
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(source, target)

    @classmethod
    def load(cls, directory: str | Path, metadata: dict[str, Any]) -> EnsembleModel:
        from fleetops.serving.predictor import Predictor

        described = metadata["ensemble"]
        members, weights = {}, {}
        for member in described["members"]:
            path = Path(directory) / MEMBERS_DIR / member["name"]
            if not path.is_dir():
                raise UserError(f"ensemble artifact {str(directory)!r} lacks its member {member['name']!r}")
            members[member["name"]] = Predictor.load(path)
            weights[member["name"]] = member["weight"]
        return cls(metadata["task"], members, weights, described.get("fixed_features"))

    # -- scoring --------------------------------------------------------------------------------------

    def with_fixed(self, arrays: dict[str, Any]) -> dict[str, Any]:
        """`arrays` plus the fixed features, as (n, 1) columns."""
        if not self.fixed_features:
            return arrays
        n = len(next(iter(arrays.values())))
        fixed = {name: np.full((n, 1), value, dtype=object) for name, value in self.fixed_features.items()}
        return arrays | fixed

    def member_outputs(self, arrays: dict[str, Any]) -> dict[str, np.ndarray]:
        """Each member's shaped outputs ((n, k) probabilities or (n,) values) for named (n, 1) inputs."""
        full = self.with_fixed(arrays)
        return {name: member.predict_arrays(full) for name, member in self.members.items() if self.weights[name]}

    def predict(self, arrays: dict[str, Any]) -> np.ndarray:
        """Raw outputs, as a single model gives them: (n, 1) P(positive) or value, (n, k) probabilities."""
        outputs = self.member_outputs(arrays)
        combined = sum(self.weights[name] * out for name, out in outputs.items())
        return raw_outputs(self.task, np.asarray(combined, dtype=np.float32))


def raw_outputs(task: str, shaped: np.ndarray) -> np.ndarray:
    """Shaped outputs back to a model's raw convention (the inverse of `artifact.shape_outputs`)."""
    if task == "regression":
        return shaped.reshape(-1, 1)
    if task == "binary_classification":
        return shaped[:, 1:2]
    return shaped


def combine(outputs: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    """The weighted average of shaped outputs."""
    return sum(weights[name] * outputs[name] for name in weights)


def loss(task: str, y: np.ndarray, shaped: np.ndarray) -> float:
    """The training loss of shaped outputs: log loss for classification, mean squared error for regression."""
    if task == "regression":
        return float(np.mean((shaped.reshape(-1) - y) ** 2))
    p = np.clip(shaped[np.arange(len(y)), y.astype(int)], 1e-7, 1.0)
    return float(-np.mean(np.log(p)))


def simplex(names: list[str], steps: int = WEIGHT_STEPS) -> list[dict[str, float]]:
    """Every weighting of `names` on the grid of the simplex (non-negative, summing to one)."""
    grid = []
    for cut in itertools.combinations(range(steps + len(names) - 1), len(names) - 1):
        parts = np.diff([-1, *cut, steps + len(names) - 1]) - 1
        grid.append({name: float(p) / steps for name, p in zip(names, parts, strict=True)})
    return grid


def fit_weights(task: str, y: np.ndarray, outputs: dict[str, np.ndarray]) -> dict[str, float]:
    """The grid weighting with the least loss on (y, outputs); ties go to the first (the lower-indexed members)."""
    names = sorted(outputs)
    best, best_loss = None, np.inf
    for weights in simplex(names):
        value = loss(task, y, combine(outputs, weights))
        if value < best_loss - 1e-12:
            best, best_loss = weights, value
    assert best is not None
    return best


def cross_fitted(task: str, y: np.ndarray, outputs: dict[str, np.ndarray]) -> np.ndarray:
    """Ensemble outputs on the validation rows, each half scored with weights fitted on the other half."""
    # Interleaved halves: rows are in the split's order, which follows a hash, not time or label.
    first = np.arange(len(y)) % 2 == 0
    shaped = np.zeros_like(next(iter(outputs.values())))
    for fit_on in (first, ~first):
        score = ~fit_on
        if not fit_on.any() or not score.any():
            weights = {name: 1.0 / len(outputs) for name in outputs}
        else:
            weights = fit_weights(task, y[fit_on], {k: v[fit_on] for k, v in outputs.items()})
        shaped[score] = combine({k: v[score] for k, v in outputs.items()}, weights)
    return shaped
