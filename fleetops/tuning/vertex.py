"""Hyperparameter tuning on Vertex AI: a HyperparameterTuningJob whose trials run our image's trainer.

Each trial is a CustomJob worker running `python -m fleetops.training.trainer`
with the trial's parameters as flags (`--learning_rate=0.01`); the trainer
reports its metric with cloudml-hypertune. Results come back in the same
`Trial` shape as local tuning.
"""

from __future__ import annotations

from typing import Any

from fleetops.platform import VertexSettings
from fleetops.spec import METRIC_GOALS, Algorithm, FleetSpec, ParameterKind
from fleetops.tuning.local import FAILED, SUCCEEDED, Trial, TuningResult

_SCALES = {"linear": "linear", "log": "log", "reverse_log": "reverse_log"}


def tune_on_vertex(
    spec: FleetSpec,
    settings: VertexSettings,
    image: str,
    spec_uri: str,
    dataset_uri: str,
    segment: str,
    output_uri: str,
    machine_type: str = "n1-standard-4",
    credentials: Any = None,
) -> TuningResult:
    """Run the study as a Vertex HyperparameterTuningJob and wait for it; return its trials."""
    from google.cloud import aiplatform
    from google.cloud.aiplatform import hyperparameter_tuning as hpt

    from fleetops.platform.vertex import gcs_local_path

    tuning = spec.tuning
    worker = {
        "machine_spec": {"machine_type": machine_type},
        "replica_count": 1,
        "container_spec": {
            "image_uri": image,
            "command": ["python", "-m", "fleetops.training.trainer"],
            "args": ["--spec", gcs_local_path(spec_uri), "--data", gcs_local_path(dataset_uri), "--segment", segment],
        },
    }
    custom_job = aiplatform.CustomJob(
        display_name=f"{spec.name}-trial",
        worker_pool_specs=[worker],
        base_output_dir=output_uri,
        labels=dict(settings.labels) or None,
        encryption_spec_key_name=settings.encryption_key,
        staging_bucket=settings.staging_bucket,
        project=settings.project,
        location=settings.region,
        credentials=credentials,
    )
    parameters = {}
    for name, p in tuning.parameters.items():
        if p.type is ParameterKind.DOUBLE:
            parameters[name] = hpt.DoubleParameterSpec(min=p.min, max=p.max, scale=_SCALES[p.scale.value])
        elif p.type is ParameterKind.INTEGER:
            parameters[name] = hpt.IntegerParameterSpec(min=int(p.min), max=int(p.max), scale=_SCALES[p.scale.value])
        elif p.type is ParameterKind.CATEGORICAL:
            parameters[name] = hpt.CategoricalParameterSpec(values=list(p.values))
        else:
            parameters[name] = hpt.DiscreteParameterSpec(values=[float(v) for v in p.values], scale="linear")
    goal = METRIC_GOALS[spec.task][spec.tuning_metric]
    job = aiplatform.HyperparameterTuningJob(
        display_name=f"{spec.name}-{segment}-tuning"[:128],
        custom_job=custom_job,
        metric_spec={spec.tuning_metric: goal},
        parameter_spec=parameters,
        max_trial_count=tuning.max_trial_count,
        parallel_trial_count=tuning.parallel_trial_count,
        max_failed_trial_count=tuning.max_failed_trial_count,
        search_algorithm=None if tuning.algorithm is Algorithm.DEFAULT else tuning.algorithm.value,
        labels=dict(settings.labels) or None,
        encryption_spec_key_name=settings.encryption_key,
        project=settings.project,
        location=settings.region,
        credentials=credentials,
    )
    job.run(service_account=settings.service_account, network=settings.network, sync=True)
    trials = [_trial(t, spec.tuning_metric) for t in job.trials]
    succeeded = [t for t in trials if t.state == SUCCEEDED]
    best = max(succeeded, key=lambda t: t.value if goal == "maximize" else -t.value) if succeeded else None
    return TuningResult(
        segment, spec.tuning_metric, goal, best.parameters if best else {}, best.value if best else None, trials
    )


def _trial(trial: Any, metric: str) -> Trial:
    values = {p.parameter_id: p.value for p in trial.parameters}
    measured = {m.metric_id: m.value for m in trial.final_measurement.metrics}
    state = SUCCEEDED if trial.state.name == "SUCCEEDED" else FAILED
    return Trial(
        trial_id=trial.id,
        state=state,
        parameters=values,
        metric=metric,
        value=measured.get(metric),
        start_time=trial.start_time.isoformat() if trial.start_time else "",
        error="" if state == SUCCEEDED else trial.state.name,
    )
