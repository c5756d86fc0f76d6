"""The tuning adapter: how a trainer takes a trial's tuned values and gives back its metric.

Tuned values go over the spec's training settings (`apply_parameters`; a tuner's doubles made
whole where the setting is an integer, `whole_numbers`); in a Vertex hyperparameter tuning
trial the trial command reports the tuning metric with cloudml-hypertune (`report_to_vertex_tuning`).
"""

from __future__ import annotations

import os
from typing import Any

from fleetops.spec import Architecture, FleetSpec, TrainingSpec

# The training settings that are integers, as TrainingSpec declares them (epochs, batch_size, ...).
INTEGER_SETTINGS = frozenset(name for name, f in TrainingSpec.model_fields.items() if f.annotation is int)


def whole_numbers(parameters: dict[str, Any]) -> dict[str, Any]:
    """Integer settings as ints: a tuner hands discrete values over as doubles (batch_size 64.0 is 64)."""
    return {k: int(v) if k in INTEGER_SETTINGS and v is not None else v for k, v in parameters.items()}


def apply_parameters(spec: FleetSpec, parameters: dict[str, Any]) -> tuple[TrainingSpec, list[Architecture] | None]:
    """Tuned values over the spec's training settings; an `architecture` parameter picks the architecture."""
    values = whole_numbers(parameters)
    architecture = values.pop("architecture", None)
    if isinstance(values.get("hidden_units"), str):
        values["hidden_units"] = [int(x) for x in values["hidden_units"].split(",")]
    params = TrainingSpec.model_validate(spec.training.model_dump() | values)
    return params, ([Architecture(architecture)] if architecture else None)


def report_to_vertex_tuning(metric: str, value: float | None) -> None:
    """In a Vertex hyperparameter tuning trial, report the tuning metric (the study's metric id, which may
    differ from the primary metric) with cloudml-hypertune; Vertex reads it. No value: the trial is infeasible."""
    if not os.environ.get("CLOUD_ML_TRIAL_ID") or value is None:
        return
    import hypertune

    hypertune.HyperTune().report_hyperparameter_tuning_metric(hyperparameter_metric_tag=metric, metric_value=value)
