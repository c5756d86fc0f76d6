"""Batch prediction component: score a table with each segment's model of a fleet."""

from kfp.dsl import Dataset, Output

from components.image import fleetops_component


@fleetops_component
def batch_predict(
    fleet_spec: str,
    platform: str,
    source: str,
    version: str,
    predictions: Output[Dataset],
    errors: Output[Dataset],
) -> str:
    """Score every row of `source` with its segment's model; bad rows go to `errors` and never fail the job.

    Args:
        fleet_spec: The fleet spec, YAML or JSON text (its name and segment column route the rows).
        platform: Platform URI: `local:///path` or `vertex://PROJECT/REGION`.
        source: A CSV/Parquet file, a SQL query, or bq://project.dataset.table.
        version: The alias or version id to use for every segment ('champion' by default in the pipeline).
        predictions: Output. The instances plus `prediction`, `model_id` and `version_id` (Parquet).
        errors: Output. Rows that could not be scored, with `errors` {code, message} (Parquet).

    Returns:
        Counts and timings as JSON text.
    """
    import json
    import os
    import shutil

    from fleetops.platform import connect
    from fleetops.spec import parse_spec

    # The task's own folder under the pipeline root (on Vertex, under the Cloud Storage mount): where
    # the platform's batch jobs read their instances and write their outputs; they stay with the run.
    work = os.path.join(os.path.dirname(predictions.path), "work")
    result = connect(platform).fleet_batch_predict(parse_spec(fleet_spec), source, work, version)
    os.makedirs(os.path.dirname(predictions.path), exist_ok=True)
    os.makedirs(os.path.dirname(errors.path), exist_ok=True)
    shutil.move(str(result.predictions_path), predictions.path)
    shutil.move(str(result.errors_path), errors.path)
    predictions.metadata.update({"rows": result.predicted})
    errors.metadata.update({"rows": result.errors})
    return json.dumps({k: v for k, v in result.summary().items() if k not in ("predictions", "errors_path")})
